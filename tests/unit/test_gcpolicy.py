"""credfetcher.gcpolicy: thresholds set, start-up and recovered objects frozen, full collections
on the thread's own schedule. The collector's global state is restored after each test."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from unittest import mock

import pytest

from credfetcher import gcpolicy

WAIT = 10.0


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_apply_raises_the_young_threshold_and_freezes_what_exists() -> None:
    survivor = [object()]  # tracked by the collector
    gcpolicy.apply()
    assert gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
    assert gc.get_threshold()[2] > 10  # automatic full collections made rare
    assert gc.get_freeze_count() > 0
    assert not gc.is_finalized(survivor)  # frozen, not collected


def test_objects_made_during_recovery_are_frozen_once_it_is_done() -> None:
    stop = threading.Event()
    recovered = threading.Event()
    frozen = threading.Event()
    real_freeze = gc.freeze

    def freeze() -> None:
        real_freeze()
        if recovered.is_set():
            frozen.set()

    with mock.patch.object(gc, "freeze", side_effect=freeze):
        thread = gcpolicy.start(stop, loaded=recovered.wait, every=3600.0)
        before = gc.get_freeze_count()
        leases = [[n] for n in range(1000)]  # what recovery loads (lists: always tracked)
        assert not frozen.is_set()
        recovered.set()
        assert frozen.wait(WAIT)
    assert gc.get_freeze_count() >= before + len(leases)
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_full_collections_run_on_the_schedule_and_stop_with_the_daemon() -> None:
    stop = threading.Event()
    collected = threading.Event()
    calls: list[int] = []

    def collect(generation: int = 2) -> int:
        calls.append(generation)
        collected.set()
        return 0

    with mock.patch.object(gc, "collect", side_effect=collect):
        thread = gcpolicy.start(stop, every=0.01)
        assert collected.wait(WAIT)
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert calls
    assert set(calls) == {2}  # full collections only
