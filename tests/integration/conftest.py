"""Every test in this folder runs against the real DC."""

from __future__ import annotations

import pytest

# The private two-DC domain on a fake clock (test_rotation, test_two_dcs).
from tests.integration.rotation_domain import rotation_domain  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
