"""Fixtures the unit tests share; the fakes themselves are in :mod:`credfetcher.testing`."""

from __future__ import annotations

import pytest

from credfetcher import tickets
from credfetcher.testing import StoreRecorder, Write


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Write]:
    """``tickets.store_tgt`` replaced by a recorder: every ccache write (or its absence) is seen,
    and nothing is written."""
    recorder = StoreRecorder()
    monkeypatch.setattr(tickets, "store_tgt", recorder)
    return recorder.writes
