"""Tests of the image build tooling: unit tests run in seconds; `integration` ones boot QEMU."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: builds or boots the real image (slow)")
    config.addinivalue_line(
        "markers", "kit: the air-gap kit and the offline rebuild (images/check-reproducible)"
    )
