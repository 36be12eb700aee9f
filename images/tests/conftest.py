"""Tests of the image build tooling: unit tests run in seconds; `integration` ones boot QEMU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: builds or boots the real image (slow)")
    config.addinivalue_line(
        "markers", "kit: the air-gap kit and the offline rebuild (images/check-reproducible)"
    )


@pytest.fixture(scope="module")
def image_dir() -> Path:
    """The built image the integration tests boot: $SENNET_IMAGE_DIR, else build/image
    (images/build), else bazel-bin/images."""
    for candidate in (
        os.environ.get("SENNET_IMAGE_DIR"),
        REPO / "build/image",
        REPO / "bazel-bin/images",
    ):
        if candidate and (Path(candidate) / "appliance.qcow2").is_file():
            return Path(candidate)
    pytest.skip("no built image: run images/build or bazel build //images:appliance")
