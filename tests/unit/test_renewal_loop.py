"""The renewal thread itself: it sleeps while held or while nothing is due, and wakes for what is.

The loop runs on its own thread here (the rest of the scheduler's tests drive ``run_due`` by
hand); the scheduler's clock is fake, so "due" and "not due" are exact. A test waits on events
the loop sets, and only the no-busy-loop checks watch the loop for a fixed 0.5 s.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from pathlib import Path

import pytest

from credfetcher import tickets
from credfetcher.files import Ownership
from credfetcher.renewal import RenewalScheduler
from credfetcher.testing import FakeAccount, FakeClock, Write
from tests.unit.test_renewal import LIFE, make_scheduler, register, target

WATCH = 0.5  # seconds the loop is watched for a busy loop
WAIT = 10.0  # an upper bound on waiting for the loop, never reached when it works


class CountingScheduler(RenewalScheduler):
    """Counts the loop's looks at the schedule; ``passed`` is set after each renewal pass."""

    def __init__(self, base: RenewalScheduler) -> None:
        super().__init__(
            margin=base.margin, orphan_after=base.orphan_after, clock=base.clock, rng=base.rng
        )
        self.due_calls = 0
        self.next_due_calls = 0
        self.passes = 0
        self.passed = threading.Event()

    def due(self) -> list[Hashable]:
        self.due_calls += 1
        return super().due()

    def next_due_in(self) -> float:
        self.next_due_calls += 1
        return super().next_due_in()

    def run_due(self) -> int:
        attempted = super().run_due()
        self.passes += 1
        self.passed.set()
        return attempted


@pytest.fixture
def sched(clock: FakeClock) -> Iterator[CountingScheduler]:
    scheduler = CountingScheduler(make_scheduler(clock))
    yield scheduler
    scheduler.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Write]:
    """Every ccache write the loop makes (none reaches the disk)."""
    recorded: list[Write] = []

    def store(
        tgt: tickets.Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
    ) -> tickets.TicketInfo:
        recorded.append(Write(path, tgt.info.endtime, ownership))
        return tgt.info

    monkeypatch.setattr(tickets, "store_tgt", store)
    return recorded


def start_and_wait_for_pass(sched: CountingScheduler) -> None:
    sched.passed.clear()
    sched.start()
    assert sched.passed.wait(WAIT), "the loop made no pass"


def test_a_held_loop_with_a_due_group_waits_for_release(
    tmp_path: Path, clock: FakeClock, sched: CountingScheduler, writes: list[Write]
) -> None:
    account = FakeAccount("gmsa0", clock)
    sched.hold()
    sched.start()
    # Recovery registers leases whose tickets ended: their group is due at once.
    for n in range(50):
        register(sched, account, target(tmp_path, f"lease{n:02}", "gmsa0"), fresh=False)

    threading.Event().wait(WATCH)
    # One look when the loop started, none per registration and none while it waits.
    assert sched.due_calls == 0
    assert sched.next_due_calls <= 1
    assert sched.passes == 0
    assert account.calls == []
    assert sched.alive(max_age=60.0)  # the heartbeat was set: held is not dead

    sched.passed.clear()
    sched.release()
    assert sched.passed.wait(WAIT)
    # The first pass after release renews the group once, for every lease loaded meanwhile.
    assert len(account.calls) == 1
    assert len(writes) == 50


def test_an_idle_loop_does_not_look_at_the_schedule_until_a_group_is_due(
    tmp_path: Path, clock: FakeClock, sched: CountingScheduler, writes: list[Write]
) -> None:
    account = FakeAccount("gmsa0", clock)
    register(sched, account, target(tmp_path, "lease0", "gmsa0"))
    start_and_wait_for_pass(sched)
    due_calls, next_due_calls = sched.due_calls, sched.next_due_calls

    # A lease of the same account with a fresh ticket is due no sooner: no wake-up.
    for n in range(1, 50):
        register(sched, account, target(tmp_path, f"lease{n:02}", "gmsa0"))
    threading.Event().wait(WATCH)
    assert (sched.due_calls, sched.next_due_calls) == (due_calls, next_due_calls)
    assert account.calls == []


def test_a_group_due_sooner_than_the_loops_wake_up_wakes_it(
    tmp_path: Path, clock: FakeClock, sched: CountingScheduler, writes: list[Write]
) -> None:
    waiting = FakeAccount("gmsa0", clock)
    register(sched, waiting, target(tmp_path, "lease0", "gmsa0"))
    start_and_wait_for_pass(sched)

    urgent = FakeAccount("gmsa1", clock)
    sched.passed.clear()
    register(sched, urgent, target(tmp_path, "lease1", "gmsa1"), fresh=False)
    assert sched.passed.wait(WAIT)
    assert len(urgent.calls) == 1
    assert waiting.calls == []
    assert [w.path.parent.name for w in writes] == ["gmsa1"]


def test_release_wakes_a_loop_whose_groups_became_due_while_held(
    tmp_path: Path, clock: FakeClock, sched: CountingScheduler, writes: list[Write]
) -> None:
    accounts = [FakeAccount(f"gmsa{i}", clock) for i in range(3)]
    for n, account in enumerate(accounts):
        register(sched, account, target(tmp_path, f"lease{n}", account.gmsa))
    start_and_wait_for_pass(sched)
    sched.hold()
    clock.advance(LIFE)  # every group is due, but the loop is held

    threading.Event().wait(WATCH)
    assert all(a.calls == [] for a in accounts)
    sched.passed.clear()
    sched.release()
    assert sched.passed.wait(WAIT)
    assert [len(a.calls) for a in accounts] == [1, 1, 1]
