"""sennet_buildroot: the build's tools, unpacked from the pinned build-root debs.

Each deb is its own sha256-pinned repository (buildroot_deps.bzl, from
buildroot.lock.json); this rule unpacks them all (`dpkg-deb -x`, no maintainer
scripts) with images/sennet_image/buildroot.py, once per output base, not once
per action. Actions take `@sennet_buildroot//:buildroot.stamp` as an input (it
names the digest of every deb in the root) and enter the root beside it through
SENNET_BUILD_ROOT (images/sennet_image/proc.py): a lock change changes the stamp,
so every step that ran a tool runs again.
"""

def _sennet_buildroot_impl(rctx):
    images = rctx.path(Label("//images:BUILD.bazel")).dirname
    python = rctx.path(Label("//python:BUILD.bazel")).dirname
    debs = [rctx.path(d) for d in rctx.attr.debs]
    res = rctx.execute(
        ["python3", "-m", "sennet_image.buildroot", str(rctx.path("root"))] + [str(d) for d in debs],
        environment = {"PYTHONPATH": "%s:%s" % (images, python), "PYTHONDONTWRITEBYTECODE": "1"},
        quiet = True,
        timeout = 1200,
    )
    if res.return_code != 0:
        fail("sennet_buildroot: unpacking the build root failed: " + res.stderr)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD.bazel", 'exports_files(["root/buildroot.stamp"], visibility = ["//visibility:public"])\n')

sennet_buildroot = repository_rule(
    implementation = _sennet_buildroot_impl,
    attrs = {
        "debs": attr.label_list(mandatory = True, allow_files = [".deb"]),
    },
)
