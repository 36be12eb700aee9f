"""sennet_input: one pinned input (Debian package or wheel) as a repository with its sha256.

The URL is not in the repository: a helper (images/sennet_image/mirrors.py)
derives it from the machine's apt sources or pip configuration, or from
SENNET_DEBIAN_MIRROR / SENNET_DEBIAN_SECURITY_MIRROR / SENNET_WHEEL_BASE.
Air-gapped: `rctx.download` with a sha256 consults Bazel's repository cache
(keyed by sha256) and --distdir (keyed by file name) before any URL. The rule
asks them first with no URL at all (nothing to fail, so nothing is printed),
and only on a miss asks the machine's configuration for URLs: a filled cache
builds without network and without running the helper (which, for wheels,
reads the index). A file whose sha256 differs from the lock fails the fetch,
and Bazel names this repository. Bazel's own progress line ("Fetching
@deb_...") shows what is being fetched; the rule prints nothing itself.
"""

def _sennet_input_impl(rctx):
    filename = rctx.attr.filename
    out = "file/" + filename
    rctx.file("file/BUILD.bazel", 'filegroup(name = "file", srcs = ["%s"], visibility = ["//visibility:public"])\n' % filename)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)

    # 1. The repository cache (by sha256), asked with no URL.
    cached = rctx.download(url = [], output = out, sha256 = rctx.attr.sha256, allow_fail = True)
    if cached.success:
        return

    # 2. Where the file lives, from the machine's package configuration.
    helper = rctx.path(Label("//images:sennet_image/mirrors.py"))
    res = rctx.execute(["python3", helper, "url", rctx.attr.kind, rctx.attr.archive, rctx.attr.path or "-", filename], quiet = True)
    urls = [u for u in res.stdout.split("\n") if u] if res.return_code == 0 else []
    if not urls:
        # No URL (offline, a wheel index out of reach): --distdir, keyed by the URL's
        # file name, is the one place left that can serve it.
        distdir = rctx.download(url = ["file:///distdir/" + filename], output = out, sha256 = rctx.attr.sha256, allow_fail = True)
        if distdir.success:
            return
        fail("sennet input %s (%s): not in the repository cache or --distdir, and no download URL: %s" % (rctx.name, filename, res.stderr))

    # 3. The URLs (--distdir is consulted first, by file name). No allow_fail: on a
    # sha256 mismatch Bazel reports "Checksum was X but wanted Y" for this repository
    # (named after the package), and the build stops.
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
