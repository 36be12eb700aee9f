"""sennet_input: one pinned input (Debian package or wheel) as a repository with its sha256.

The URL is not in the repository: a helper (images/sennet_image/mirrors.py)
derives it from the machine's apt sources or pip configuration, or from
SENNET_DEBIAN_MIRROR / SENNET_DEBIAN_SECURITY_MIRROR / SENNET_WHEEL_BASE.
Air-gapped: Bazel's repository cache (keyed by sha256) or --distdir (keyed by
file name) serves the file before any network is tried. A file whose sha256
differs from the lock fails the fetch, and Bazel names this repository.
"""

def _sennet_input_impl(rctx):
    filename = rctx.attr.filename
    out = "file/" + filename
    rctx.file("file/BUILD.bazel", 'filegroup(name = "file", srcs = ["%s"], visibility = ["//visibility:public"])\n' % filename)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)

    # 1. Offline first: the repository cache (by sha256) and --distdir (by file name).
    offline = rctx.download(
        url = ["file:///nonexistent/sennet-offline/" + filename],
        output = out,
        sha256 = rctx.attr.sha256,
        allow_fail = True,
    )
    if offline.success:
        return

    # 2. Ask the machine's package configuration where the file lives.
    helper = rctx.path(Label("//images:sennet_image/mirrors.py"))
    res = rctx.execute(["python3", helper, "url", rctx.attr.kind, rctx.attr.archive, rctx.attr.path or "-", filename], quiet = True)
    if res.return_code != 0:
        fail("sennet input %s (%s): cannot find a download URL: %s" % (rctx.name, filename, res.stderr))
    urls = [u for u in res.stdout.split("\n") if u]
    # No allow_fail: on a sha256 mismatch Bazel reports "Checksum was X but wanted Y"
    # for this repository (named after the package), and the build stops.
    print("fetching %s (%s)" % (filename, rctx.attr.sha256[:12]))
    rctx.download(url = urls, output = out, sha256 = rctx.attr.sha256)

sennet_input = repository_rule(
    implementation = _sennet_input_impl,
    attrs = {
        "kind": attr.string(mandatory = True, values = ["deb", "wheel"]),
        "archive": attr.string(mandatory = True),
        "path": attr.string(),
        "filename": attr.string(mandatory = True),
        "sha256": attr.string(mandatory = True),
    },
    environ = ["SENNET_DEBIAN_MIRROR", "SENNET_DEBIAN_SECURITY_MIRROR", "SENNET_WHEEL_BASE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"],
)
