"""Fixtures the unit tests share; the fakes themselves are in :mod:`credfetcher.testing`."""

from __future__ import annotations

import pytest

from credfetcher import leasefiles, tickets
from credfetcher.testing import StoreRecorder, Write


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Write]:
    """``tickets.store_tgt`` replaced by a recorder: every ccache write (or its absence) is seen,
    and nothing is written. Every group is written target by target (through ``store_tgt``):
    the batched writes of large groups are tested on real files in test_batchwrite."""
    recorder = StoreRecorder()
    monkeypatch.setattr(tickets, "store_tgt", recorder)
    monkeypatch.setattr(leasefiles, "BATCH_MIN", 1 << 30)
    return recorder.writes
