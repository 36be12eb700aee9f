"""The files the agent reads from power-on to counting, placed first in their layer.

Python's start reads a hundred small files (.pyc, a few extension modules), and squashfs packs
small files into shared 256 KiB fragment blocks in directory order: the stdlib's top level
alone spans most of its blocks, and on a cold page cache each block is unpacked and its
dm-verity hashes checked when first read. Measured in the guest: `import sennet.agent.cli`
took 3.8 s cold against 1.7 s warm. mksquashfs `-sort` writes these files first, so they share
a few blocks. The list is what `python3 -v -c "import sennet.agent.cli, sennet.agent.runloop"`
opened on the appliance; a name the tree no longer has is skipped (the layout only gets less
compact), and the build logs how many.
"""

from __future__ import annotations

from pathlib import Path

from sennet_image.proc import log

STARTUP_FILES = (
    "/opt/sennet/bpf/sennet_tc.bpf.o",
    "/opt/sennet/lib/sennet/__pycache__/__init__.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/__init__.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/cli.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/config.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/counters.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/events.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/heap.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/identity.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/image_state.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/marks.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/runloop.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/snapshot.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/statedir.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/__pycache__/telemetry.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/__init__.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/bcc_loader.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/bpffs.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/dns_layout.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/layout.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/libbpf.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/libbpf_loader.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/linkwatch.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/loader_types.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/manager.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/netlink_attach.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/nsthread.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/pins.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/record.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/slots.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/tc.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/tcdump.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/datapath/__pycache__/xdp.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/sinks/__pycache__/__init__.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/sinks/__pycache__/endpoints.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/sinks/__pycache__/log_sink.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/sinks/__pycache__/protocol.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/sinks/otlp/__pycache__/__init__.cpython-311.pyc",
    "/opt/sennet/lib/sennet/agent/sinks/otlp/__pycache__/settings.cpython-311.pyc",
    "/opt/sennet/lib/sennet/common/__pycache__/__init__.cpython-311.pyc",
    "/opt/sennet/lib/sennet/common/__pycache__/errors.cpython-311.pyc",
    "/opt/sennet/lib/sennet/common/__pycache__/files.cpython-311.pyc",
    "/opt/sennet/lib/sennet/common/__pycache__/log.cpython-311.pyc",
    "/opt/sennet/lib/sennet/common/__pycache__/netns.cpython-311.pyc",
    "/opt/sennet/lib/sennet/common/__pycache__/proc.cpython-311.pyc",
    "/usr/lib/python3.11/__future__.pyc",
    "/usr/lib/python3.11/_weakrefset.pyc",
    "/usr/lib/python3.11/argparse.pyc",
    "/usr/lib/python3.11/ast.pyc",
    "/usr/lib/python3.11/collections/__init__.pyc",
    "/usr/lib/python3.11/collections/abc.pyc",
    "/usr/lib/python3.11/contextlib.pyc",
    "/usr/lib/python3.11/copy.pyc",
    "/usr/lib/python3.11/copyreg.pyc",
    "/usr/lib/python3.11/ctypes/__init__.pyc",
    "/usr/lib/python3.11/ctypes/_endian.pyc",
    "/usr/lib/python3.11/dataclasses.pyc",
    "/usr/lib/python3.11/datetime.pyc",
    "/usr/lib/python3.11/dis.pyc",
    "/usr/lib/python3.11/encodings/__init__.pyc",
    "/usr/lib/python3.11/encodings/aliases.pyc",
    "/usr/lib/python3.11/encodings/ascii.pyc",
    "/usr/lib/python3.11/encodings/utf_8.pyc",
    "/usr/lib/python3.11/enum.pyc",
    "/usr/lib/python3.11/fnmatch.pyc",
    "/usr/lib/python3.11/functools.pyc",
    "/usr/lib/python3.11/gettext.pyc",
    "/usr/lib/python3.11/heapq.pyc",
    "/usr/lib/python3.11/importlib/__init__.pyc",
    "/usr/lib/python3.11/importlib/_abc.pyc",
    "/usr/lib/python3.11/inspect.pyc",
    "/usr/lib/python3.11/ipaddress.pyc",
    "/usr/lib/python3.11/json/__init__.pyc",
    "/usr/lib/python3.11/json/decoder.pyc",
    "/usr/lib/python3.11/json/encoder.pyc",
    "/usr/lib/python3.11/json/scanner.pyc",
    "/usr/lib/python3.11/keyword.pyc",
    "/usr/lib/python3.11/lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3.11/lib-dynload/_queue.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3.11/lib-dynload/_typing.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3.11/lib-dynload/mmap.cpython-311-x86_64-linux-gnu.so",
    "/usr/lib/python3.11/linecache.pyc",
    "/usr/lib/python3.11/locale.pyc",
    "/usr/lib/python3.11/logging/__init__.pyc",
    "/usr/lib/python3.11/opcode.pyc",
    "/usr/lib/python3.11/operator.pyc",
    "/usr/lib/python3.11/pathlib.pyc",
    "/usr/lib/python3.11/queue.pyc",
    "/usr/lib/python3.11/re/__init__.pyc",
    "/usr/lib/python3.11/re/_casefix.pyc",
    "/usr/lib/python3.11/re/_compiler.pyc",
    "/usr/lib/python3.11/re/_constants.pyc",
    "/usr/lib/python3.11/re/_parser.pyc",
    "/usr/lib/python3.11/reprlib.pyc",
    "/usr/lib/python3.11/selectors.pyc",
    "/usr/lib/python3.11/shlex.pyc",
    "/usr/lib/python3.11/signal.pyc",
    "/usr/lib/python3.11/sitecustomize.pyc",
    "/usr/lib/python3.11/socket.pyc",
    "/usr/lib/python3.11/string.pyc",
    "/usr/lib/python3.11/struct.pyc",
    "/usr/lib/python3.11/subprocess.pyc",
    "/usr/lib/python3.11/textwrap.pyc",
    "/usr/lib/python3.11/threading.pyc",
    "/usr/lib/python3.11/token.pyc",
    "/usr/lib/python3.11/tokenize.pyc",
    "/usr/lib/python3.11/tomllib/__init__.pyc",
    "/usr/lib/python3.11/tomllib/_parser.pyc",
    "/usr/lib/python3.11/tomllib/_re.pyc",
    "/usr/lib/python3.11/tomllib/_types.pyc",
    "/usr/lib/python3.11/traceback.pyc",
    "/usr/lib/python3.11/types.pyc",
    "/usr/lib/python3.11/typing.pyc",
    "/usr/lib/python3.11/urllib/__init__.pyc",
    "/usr/lib/python3.11/urllib/parse.pyc",
    "/usr/lib/python3.11/warnings.pyc",
    "/usr/lib/python3.11/weakref.pyc",
)
PRIORITY = 100


def sort_file(tree: Path, mount: str, out: Path) -> Path:
    """mksquashfs's -sort list for the layer mounted at `mount` built from `tree`: each
    startup file in it, relative to the tree, at PRIORITY (every other file at 0)."""
    prefix = mount.rstrip("/") + "/"
    lines, missing = [], 0
    for name in STARTUP_FILES:
        if not name.startswith(prefix):
            continue
        rel = name[len(prefix) :]
        if (tree / rel).is_file():
            lines.append(f"{rel} {PRIORITY}\n")
        else:
            missing += 1
    out.write_text("".join(lines))
    log("startup_files", layer=mount, placed_first=len(lines), missing=missing)
    return out
