"""The OTLP Resource: who is reporting, in OpenTelemetry semantic-convention names.

host.id is the agent id (stable across restarts and reboots, kept in the state
directory), so a backend keeps one identity per appliance even when the host
name changes. The appliance image identifies itself in /etc/os-release
(ID=sennet, VERSION_ID, and IMAGE_ID/IMAGE_VERSION/BUILD_ID where the build
sets them); a host install has some other os-release and reports none of it.
"""

from __future__ import annotations

import platform
import socket
from pathlib import Path

from opentelemetry.proto.resource.v1 import resource_pb2

from sennet.agent.sinks.otlp.metrics import attributes

OS_RELEASE = Path("/etc/os-release")
# os-release keys carrying the image's identity, and their resource attribute names
IMAGE_KEYS = {
    "VERSION_ID": "sennet.image.version",
    "IMAGE_ID": "sennet.image.id",
    "IMAGE_VERSION": "sennet.image.build",
    "BUILD_ID": "sennet.image.digest",
}


def read_os_release(path: Path) -> dict[str, str]:
    """KEY=value lines, quotes removed; an absent or unreadable file is simply empty."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("\"'")
    return out


def resource_attributes(
    agent_id: str, version: str, os_release: Path = OS_RELEASE
) -> list[tuple[str, str]]:
    attrs = [
        ("service.name", "sennet-agent"),
        ("service.version", version),
        ("service.instance.id", agent_id),
        ("host.name", socket.gethostname()),
        ("host.id", agent_id),
        (
            "host.arch",
            {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
        ),
        ("os.type", "linux"),
        ("os.version", platform.release()),
    ]
    release = read_os_release(os_release)
    if release.get("PRETTY_NAME"):
        attrs.append(("os.description", release["PRETTY_NAME"]))
    if release.get("ID") == "sennet":
        attrs += [(name, release[key]) for key, name in IMAGE_KEYS.items() if release.get(key)]
    return attrs


def build_resource(
    agent_id: str, version: str, os_release: Path = OS_RELEASE
) -> resource_pb2.Resource:
    return resource_pb2.Resource(
        attributes=attributes(resource_attributes(agent_id, version, os_release))
    )
