"""Throwaway certificates for TLS and mTLS tests, made by openssl (not by our code)."""

from __future__ import annotations

from pathlib import Path

from sennet.common.proc import run


def make_pki(d: Path, server_name: str = "controlplane.test") -> dict[str, Path]:
    """A CA, a server certificate for `server_name` and a client certificate (openssl).

    Files in `d`: ca.pem, srv.pem, srv-key.pem, cli.pem, cli-key.pem (and the CA key).
    """

    def ossl(*args: str) -> None:
        run(["openssl", *args])

    p = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "srv", "srv-key", "cli", "cli-key")}
    ossl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(p["ca-key"]),
        "-out",
        str(p["ca"]),
        "-subj",
        "/CN=sennet test CA",
        "-days",
        "2",
    )
    for name, cn, ext in (
        ("srv", server_name, f"subjectAltName=DNS:{server_name}"),
        ("cli", "agent", "extendedKeyUsage=clientAuth"),
    ):
        csr = d / f"{name}.csr"
        ossl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(p[f"{name}-key"]),
            "-out",
            str(csr),
            "-subj",
            f"/CN={cn}",
        )
        extfile = d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        ossl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(p["ca"]),
            "-CAkey",
            str(p["ca-key"]),
            "-CAcreateserial",
            "-out",
            str(p[name]),
            "-days",
            "2",
            "-extfile",
            str(extfile),
        )
    return p
