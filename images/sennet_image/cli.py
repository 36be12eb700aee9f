"""`python -m sennet_image COMMAND`: the one entry to the image tooling.

build        every artefact without Bazel, into build/image (what images/build runs)
boot         boot the built image under QEMU (images/boot)
repro        two clean builds compared byte for byte (images/check-reproducible)
lock-update  re-pin the image's inputs (images/lock-update)
bundle       a build's slot images as a signed update bundle (images/make-bundle)
flash        write an image to a disk or file and verify it (images/flash)
kit          the air-gap kit: images, wheels, inputs, source, signed sums (images/airgap-kit)
run          one command inside the pinned build root (what each step's tools run in)
step         one build step, as Bazel's genrules run them one by one

Operator errors print one `sennet_image: error: ...` line and exit 2 (Sennet's
one exit-code rule); a check that fails (repro, lock-update --check, boot
--until-ready) exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

from sennet.common.errors import run_main

REPO = Path(__file__).resolve().parent.parent.parent
PROG = "sennet_image"


def parser() -> argparse.ArgumentParser:
    """Every subcommand's flags; `--help` on each explains it."""
    from sennet_image import boot, bundle, flash, kit, repro

    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bo = sub.add_parser(
        "boot",
        help="boot the built image under QEMU (direct or UEFI)",
        description=boot.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    boot.add_arguments(bo)
    rp = sub.add_parser(
        "repro",
        help="build twice from clean and compare every artefact",
        description=repro.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    repro.add_arguments(rp)
    lu = sub.add_parser(
        "lock-update",
        help="resolve current versions, rewrite locks and deps.bzl",
        description=_doc("lockupdate"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lu.add_argument("--refresh", action="store_true", help="apt-get update (signed index) first")
    lu.add_argument("--check", action="store_true", help="only report; exit 1 if pins would move")
    lu.add_argument(
        "--only-if-gone",
        action="store_true",
        help="CI: rewrite only if a pinned package left the registry, loudly",
    )
    bu = sub.add_parser(
        "bundle",
        help="a build's slot images as one signed update bundle",
        description=bundle.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bundle.add_arguments(bu)
    fl = sub.add_parser(
        "flash",
        help="write an image to a block device or file, verify by reading back",
        description=flash.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flash.add_arguments(fl)
    st = sub.add_parser(
        "step",
        help="one build step (what Bazel's genrules run)",
        description="One build step of images/BUILD.bazel. Quiet on success (Bazel prints any"
        " stderr of an action); on failure the step's log comes first, then the error.",
    )
    steps = st.add_subparsers(dest="step", required=True, metavar="STEP")
    r = steps.add_parser("root-layer", help="root debs + wheels + overlay -> root.squashfs")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--files", type=Path, required=True)
    r.add_argument("--root-hash", type=Path, required=True, help="out: dm-verity root hash")
    r.add_argument("--debs", type=Path, nargs="+", required=True)
    r.add_argument("--wheels", type=Path, nargs="+", required=True)
    r.add_argument("--kernel-deb", type=Path, required=True, help="its USB-stick drivers")
    a = steps.add_parser("agent-layer", help="python/sennet + BPF objects -> agent.squashfs")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--root-hash", type=Path, required=True, help="out: dm-verity root hash")
    a.add_argument("--python-src", type=Path, required=True, help="directory holding sennet/")
    a.add_argument("--bpf", type=Path, nargs="+", required=True)
    t = steps.add_parser("test-layer", help="test-only extras (dropbear) -> test.squashfs")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--debs", type=Path, nargs="+", required=True)
    k = steps.add_parser("boot-files", help="kernel, initramfs, cmdline and a UKI per slot")
    k.add_argument("--kernel-deb", type=Path, required=True)
    k.add_argument("--busybox-deb", type=Path, required=True)
    k.add_argument("--outdir", type=Path, required=True)
    for layer in ("root", "agent"):
        k.add_argument(f"--{layer}", type=Path, required=True, help=f"{layer}.squashfs (digest)")
        k.add_argument(f"--{layer}-hash", type=Path, required=True, help=f"{layer}.roothash")
    k.add_argument(
        "--lib-debs", type=Path, nargs="+", required=True, help="dmsetup and its libraries' debs"
    )
    d = steps.add_parser("disk", help="GPT disk (raw and qcow2) from slot a's UKI and layers")
    d.add_argument("--uki", type=Path, required=True, help="slot a's UKI")
    d.add_argument("--image-json", type=Path, required=True, help="the build's image.json")
    d.add_argument("--root", type=Path, required=True)
    d.add_argument("--agent", type=Path, required=True)
    d.add_argument("--test", type=Path)
    d.add_argument("--sbom", type=Path, help="sbom.spdx.json, shipped on the ESP")
    d.add_argument("--raw", type=Path, required=True)
    d.add_argument("--qcow2", type=Path, required=True)
    m = steps.add_parser("manifest", help="manifest.json: pins, host tools, BPF, artefacts")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--debian-lock", type=Path, required=True)
    m.add_argument("--wheels-lock", type=Path, required=True)
    m.add_argument("--artefacts", type=Path, nargs="+", required=True)
    m.add_argument("--bpf", type=Path, nargs="+", required=True, help="the BPF objects")
    sb = steps.add_parser("sbom", help="sbom.spdx.json: SPDX 2.3 from the locks and artefacts")
    sb.add_argument("--out", type=Path, required=True)
    sb.add_argument("--debian-lock", type=Path, required=True)
    sb.add_argument("--wheels-lock", type=Path, required=True)
    sb.add_argument("--debs", type=Path, nargs="+", required=True, help="every pinned .deb")
    sb.add_argument("--wheels", type=Path, nargs="+", required=True)
    sb.add_argument("--artefacts", type=Path, nargs="+", required=True)
    sb.add_argument("--bpf", type=Path, nargs="+", required=True, help="the BPF objects")
    n = steps.add_parser("nix-image", help="the layout from nixpkgs parts (flake.nix)")
    for flag in ("closure", "python-env", "busybox", "libbpf", "kernel", "python-src", "out"):
        n.add_argument(f"--{flag}", type=Path, required=True)
    n.add_argument("--bpf", type=Path, nargs="+", required=True)
    b = sub.add_parser(
        "build",
        help="build every artefact without Bazel (fetches pinned inputs)",
        description=_doc("build"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--out", type=Path, default=REPO / "build" / "image")
    ki = sub.add_parser(
        "kit",
        help="the air-gap kit (images, wheels, pinned inputs, source, signed SHA256SUMS)",
        description=kit.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kit.add_arguments(ki)
    ru = sub.add_parser(
        "run",
        help="run one command inside the pinned build root",
        description=_doc("buildroot"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ru.add_argument("argv", nargs="+", metavar="COMMAND", help="the command and its arguments")
    return p


def _doc(module: str) -> str | None:
    """A module's docstring, imported only for --help text."""
    import importlib

    return importlib.import_module(f"sennet_image.{module}").__doc__


def _quiet_step(args: argparse.Namespace) -> int:
    """Run a step with its progress log held back; shown only if the step fails.

    Bazel echoes an action's stderr (and, with it, its sandbox's own chatter) for
    every genrule that writes any, so a successful step writes nothing.
    """
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            return _step(args)
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise


def _step(args: argparse.Namespace) -> int:
    """Dispatch one build step to its function in sennet_image.build (or nix, manifest)."""
    from sennet_image import build, disk, lock, manifest, sbom

    if args.step == "root-layer":
        build.base_layer(
            args.debs, args.wheels, args.kernel_deb, args.out, args.files, args.root_hash
        )
    elif args.step == "agent-layer":
        build.agent_layer(args.python_src, args.bpf, args.out, args.root_hash)
    elif args.step == "test-layer":
        build.test_layer(args.debs, args.out)
    elif args.step == "boot-files":
        build.boot_files(
            args.kernel_deb,
            args.busybox_deb,
            args.lib_debs,
            args.outdir,
            disk.DEFAULT_CMDLINE,
            (args.root, args.agent),
            (args.root_hash, args.agent_hash),
        )
    elif args.step == "disk":
        build.disks(
            args.uki,
            args.image_json,
            (args.root, args.agent, args.test),
            args.raw,
            args.qcow2,
            sbom=args.sbom,
        )
    elif args.step == "nix-image":
        from sennet_image import nix

        nix.image(
            closure=args.closure,
            python_env=args.python_env,
            busybox=args.busybox,
            libbpf=args.libbpf,
            kernel=args.kernel,
            python_src=args.python_src,
            bpf_objects=args.bpf,
            out=args.out,
        )
    elif args.step == "sbom":
        sbom.write(
            sbom.inputs(
                lock.load_debs(args.debian_lock),
                lock.load_wheels(args.wheels_lock),
                args.debs + args.wheels,
                args.artefacts,
                args.bpf,
            ),
            args.out,
        )
    elif args.step == "manifest":
        manifest.write(
            args.out,
            lock.load_debs(args.debian_lock),
            lock.load_wheels(args.wheels_lock),
            manifest.bpf_sources(args.bpf),
            {p.name: p for p in args.artefacts},
            {"builder": "bazel //images:appliance"},
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "boot":
        from sennet_image import boot

        return boot.main(args)
    if args.command == "repro":
        from sennet_image import repro

        return repro.main(args)
    if args.command == "lock-update":
        from sennet_image import lockupdate

        return lockupdate.update(
            refresh=args.refresh, check=args.check, only_if_gone=args.only_if_gone
        )
    if args.command == "bundle":
        from sennet_image import bundle

        return bundle.main(args)
    if args.command == "flash":
        from sennet_image import flash

        return flash.main(args)
    if args.command == "kit":
        from sennet_image import kit

        return kit.main(args)
    if args.command == "step":
        from sennet_image import buildroot
        from sennet_image.proc import build_root

        root = build_root()
        if root is not None:  # Bazel's steps (a step run by hand uses the host's tools)
            buildroot.activate(root)
        return _quiet_step(args)
    _use_build_root()
    if args.command == "run":
        from sennet_image.proc import run

        return run(args.argv, capture=False, check=False).returncode
    from sennet_image import build

    build.build_all(args.out.resolve())
    return 0


def _use_build_root() -> None:
    """The build root Bazel names (@sennet_buildroot's stamp in SENNET_BUILD_ROOT), else the
    one for the current lock, unpacked once under build/buildroot/; every tool the build
    runs then runs inside it."""
    from sennet_image import buildroot
    from sennet_image.proc import build_root

    buildroot.activate(build_root() or buildroot.ensure())


def main(argv: list[str]) -> int:
    """Parse arguments and run one command under Sennet's exit-code rule."""
    args = parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args))
