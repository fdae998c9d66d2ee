"""RenewalScheduler with a fake clock, a fixed rng and fake accounts: no DC, no sleeping.

``tickets.store_tgt`` is replaced by a recorder, so every ccache write (or its absence) is seen.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from credfetcher import metrics, tickets
from credfetcher.errors import DCUnavailableError, KerberosError, StorageError
from credfetcher.files import Ownership, TamperedError
from credfetcher.groups import GroupState
from credfetcher.renewal import BACKOFF_BASE, BACKOFF_CAP, JITTER, RenewalScheduler, Target
from credfetcher.testing import FakeAccount, FakeClock, FixedRng, Write, target_in

T0 = 1_800_000_000.0
LIFE = 36_000  # 10 h tickets: FakeAccount's default
RENEW = 7 * 86_400
MARGIN = 7_200.0
ORPHAN_AFTER = 7 * 86_400.0


@pytest.fixture(autouse=True)
def _clean_metrics() -> None:
    metrics.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def make_scheduler(
    clock: FakeClock,
    rng: float = 0.5,
    *,
    margin: float = MARGIN,
    orphans: list[str] | None = None,
) -> RenewalScheduler:
    on_orphan: Callable[[str], None] | None = None if orphans is None else orphans.append
    return RenewalScheduler(
        margin=margin,
        orphan_after=ORPHAN_AFTER,
        clock=clock,
        rng=FixedRng(rng),
        on_orphan=on_orphan,
    )


def target(root: Path, lease: str, gmsa: str, mode: int = 0o600) -> Target:
    return target_in(root, lease, gmsa, mode=mode)


def register(
    sched: RenewalScheduler, account: FakeAccount, tgt_target: Target, *, fresh: bool = True
) -> tickets.TicketInfo | None:
    info = account.ticket().info if fresh else None
    sched.register(account.gmsa, account, tgt_target, info)
    return info


# -- grouping ------------------------------------------------------------------------------------


def test_leases_of_one_account_share_one_acquisition_per_cycle(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock)
    accounts = [FakeAccount(f"gmsa{i}", clock) for i in range(4)]
    for n in range(100):
        account = accounts[n % 4]
        register(sched, account, target(tmp_path, f"lease{n:03}", account.gmsa, 0o640 + n % 2))

    clock.advance(LIFE)  # every group is due
    assert sched.run_due() == 4
    assert [len(a.calls) for a in accounts] == [1, 1, 1, 1]
    # ...and every lease's own file was written, with that lease's own ownership.
    assert len(writes) == 100
    assert {w.path.parent.parent.name for w in writes} == {f"lease{n:03}" for n in range(100)}
    for w in writes:
        n = int(w.path.parent.parent.name.removeprefix("lease"))
        assert w.ownership.mode == 0o640 + n % 2
        assert w.endtime == int(clock()) + LIFE
    assert metrics.get(metrics.RENEWALS) == 4

    # Nothing is due again until the new tickets reach their margin.
    assert sched.run_due() == 0
    assert sum(len(a.calls) for a in accounts) == 4


def test_a_lease_joining_a_group_does_not_push_back_the_older_tickets(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    """The group is scheduled by its earliest ticket: every lease in it must stay valid."""
    sched = make_scheduler(clock, rng=0.0)
    account = FakeAccount("webapp", clock)
    first = register(sched, account, target(tmp_path, "old", "webapp"))
    assert first is not None
    clock.advance(9 * 3600)  # a second lease arrives late in the first ticket's life
    register(sched, account, target(tmp_path, "new", "webapp"))

    status = sched.status("old", "webapp")
    assert status is not None
    assert status.next_attempt <= first.endtime - MARGIN
    clock.advance(first.endtime - MARGIN - clock())
    assert sched.run_due() == 1
    assert {w.path.parent.parent.name for w in writes} == {"old", "new"}


def test_a_lease_without_a_ticket_makes_its_group_due_now(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    """A recovered lease whose ccache is missing joins a healthy group: it is written at once."""
    sched = make_scheduler(clock)
    account = FakeAccount("webapp", clock)
    register(sched, account, target(tmp_path, "fine", "webapp"))
    clock.advance(60)  # e.g. a restart: "fine" still has its ccache, "missing" lost it
    register(sched, account, target(tmp_path, "missing", "webapp"), fresh=False)
    assert sched.run_due() == 1
    assert "missing" in {w.path.parent.parent.name for w in writes}


# -- timing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rng", [0.0, 0.37, 0.999999])
@pytest.mark.parametrize(
    ("life", "margin", "expected_margin"),
    [
        (LIFE, MARGIN, MARGIN),  # 10 h tickets, 2 h margin
        (60, MARGIN, 30.0),  # margin capped at half the life
        (3 * 3600, 3600.0, 3600.0),
    ],
)
def test_next_attempt_is_endtime_less_margin_with_jitter(
    tmp_path: Path,
    clock: FakeClock,
    writes: list[Write],
    *,
    rng: float,
    life: int,
    margin: float,
    expected_margin: float,
) -> None:
    sched = make_scheduler(clock, rng, margin=margin)
    account = FakeAccount("webapp", clock, life=life)
    info = register(sched, account, target(tmp_path, "lease", "webapp"))
    assert info is not None
    status = sched.status("lease", "webapp")
    assert status is not None
    latest = info.endtime - expected_margin
    earliest = info.endtime - expected_margin * (1 + JITTER)
    assert earliest <= status.next_attempt <= latest
    assert status.next_attempt == pytest.approx(info.endtime - expected_margin * (1 + JITTER * rng))

    # Not attempted a moment before, attempted at the moment.
    clock.now = status.next_attempt - 0.001
    assert sched.run_due() == 0
    clock.now = status.next_attempt
    assert sched.run_due() == 1
    assert len(account.calls) == 1


def test_jitter_spreads_hosts_that_start_together(tmp_path: Path, writes: list[Write]) -> None:
    times = set()
    for rng in (0.0, 0.25, 0.5, 0.75):
        clock = FakeClock()
        sched = make_scheduler(clock, rng)
        register(sched, FakeAccount("webapp", clock), target(tmp_path, "lease", "webapp"))
        status = sched.status("lease", "webapp")
        assert status is not None
        times.add(status.next_attempt)
    assert len(times) == 4
    assert max(times) - min(times) == pytest.approx(0.75 * JITTER * MARGIN)


# -- failures ------------------------------------------------------------------------------------


def expected_delays(rng: float, count: int) -> list[float]:
    return [min(BACKOFF_CAP, BACKOFF_BASE * 2**i) * (0.5 + 0.5 * rng) for i in range(count)]


@pytest.mark.parametrize("rng", [0.0, 1.0, 0.5])
def test_backoff_grows_exponentially_up_to_the_cap(
    tmp_path: Path, clock: FakeClock, writes: list[Write], rng: float
) -> None:
    sched = make_scheduler(clock, rng)
    account = FakeAccount("webapp", clock)
    register(sched, account, target(tmp_path, "lease", "webapp"), fresh=False)
    account.fail_with = DCUnavailableError("no DC answered", attempts=[])

    delays = []
    for _ in range(8):
        assert sched.run_due() == 1
        status = sched.status("lease", "webapp")
        assert status is not None
        assert status.last_error == "no DC answered"
        delays.append(status.next_attempt - clock())
        clock.now = status.next_attempt
    assert delays == pytest.approx(expected_delays(rng, 8))
    assert delays[-1] == pytest.approx(BACKOFF_CAP * (0.5 + 0.5 * rng))  # capped
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert writes == []
    assert metrics.get(metrics.RENEWAL_FAILURES, "webapp") == 8

    # Success resets the backoff and schedules by the new ticket.
    account.fail_with = None
    assert sched.run_due() == 1
    status = sched.status("lease", "webapp")
    assert status is not None
    assert status.last_error == ""
    assert status.next_attempt > clock() + LIFE / 2
    assert sched.failing_groups() == []


def test_one_failing_group_does_not_delay_the_others(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock, rng=1.0)
    bad = FakeAccount("bad", clock, fail_with=KerberosError("KDC says no", principal="bad$"))
    good = [FakeAccount(f"good{i}", clock) for i in range(3)]
    for account in [bad, *good]:
        register(sched, account, target(tmp_path, f"lease-{account.gmsa}", account.gmsa))
    undisturbed = {a.gmsa: sched.status(f"lease-{a.gmsa}", a.gmsa) for a in good}

    clock.advance(LIFE)
    assert sched.run_due() == 4
    assert all(len(a.calls) == 1 for a in good)
    assert {w.path.parent.name for w in writes} == {"good0", "good1", "good2"}
    assert [p for p, _ in sched.failing_groups()] == [bad.principal]

    # The failing group retries on its own backoff; the others are not pulled along.
    for _ in range(10):
        status = sched.status("lease-bad", "bad")
        assert status is not None
        clock.now = status.next_attempt
        assert sched.run_due() == 1
    assert len(bad.calls) == 11
    assert all(len(a.calls) == 1 for a in good)
    for account in good:
        before = undisturbed[account.gmsa]
        after = sched.status(f"lease-{account.gmsa}", account.gmsa)
        assert before is not None
        assert after is not None
        assert after.next_attempt > before.next_attempt
        assert after.last_error == ""


@pytest.mark.parametrize(
    "error",
    [
        OSError(113, "No route to host"),
        RuntimeError("a bug in one account"),
        ValueError("undecodable reply"),
    ],
    ids=["oserror", "runtimeerror", "valueerror"],
)
def test_an_unexpected_exception_is_a_failure_of_that_group_only(
    tmp_path: Path, clock: FakeClock, writes: list[Write], error: BaseException
) -> None:
    """Not only CredfetcherError: any error in one group must leave the pass and others intact."""
    sched = make_scheduler(clock, rng=1.0)
    bad = FakeAccount("aaa-bad", clock, fail_with=error)  # sorted and registered first
    good = FakeAccount("zzz-good", clock)
    register(sched, bad, target(tmp_path, "l1", bad.gmsa))
    register(sched, good, target(tmp_path, "l2", good.gmsa))
    clock.advance(LIFE)

    assert sched.run_due() == 2
    assert len(good.calls) == 1
    assert [w.path.parent.name for w in writes] == ["zzz-good"]
    status = sched.status("l1", bad.gmsa)
    assert status is not None
    # Backed off (no hot loop on the same error) and reported.
    assert status.next_attempt == pytest.approx(clock() + BACKOFF_BASE)
    assert status.last_error
    assert sched.run_due() == 0


def test_a_failed_renewal_never_rewrites_or_deletes_the_ccache(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock)
    account = FakeAccount("webapp", clock)
    t = target(tmp_path, "lease", "webapp")
    t.ccache.write_bytes(b"\x05\x04still-valid-ticket")
    register(sched, account, t)
    account.fail_with = DCUnavailableError("DC down", attempts=[("dc1", "timed out")])

    clock.advance(LIFE - MARGIN)
    for _ in range(20):  # well past the ticket's end
        assert sched.run_due() == 1
        status = sched.status("lease", "webapp")
        assert status is not None
        clock.now = status.next_attempt
    assert writes == []
    assert t.ccache.read_bytes() == b"\x05\x04still-valid-ticket"
    assert sorted(p.name for p in t.ccache.parent.iterdir()) == ["krb5cc"]


def test_a_renewal_without_a_later_endtime_is_a_failure(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock, rng=1.0)
    account = FakeAccount("webapp", clock)
    info = register(sched, account, target(tmp_path, "lease", "webapp"))
    assert info is not None
    account.frozen_endtime = info.endtime  # e.g. the KDC capped the life at what we have

    clock.advance(LIFE - MARGIN)
    assert sched.run_due() == 1
    status = sched.status("lease", "webapp")
    assert status is not None
    assert writes == []
    assert "no later ticket" in status.last_error
    assert status.endtime == info.endtime
    assert status.next_attempt == pytest.approx(clock() + BACKOFF_BASE)
    assert [p for p, _ in sched.failing_groups()] == [account.principal]

    account.frozen_endtime = info.endtime - 10  # an *earlier* end is no better
    clock.now = status.next_attempt
    assert sched.run_due() == 1
    assert writes == []

    account.frozen_endtime = None
    clock.now = sched.status("lease", "webapp").next_attempt  # type: ignore[union-attr]
    assert sched.run_due() == 1
    assert len(writes) == 1
    assert sched.failing_groups() == []


# -- orphans -------------------------------------------------------------------------------------


def test_orphans_are_removed_after_renew_till_plus_orphan_after(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    orphans: list[str] = []
    sched = make_scheduler(clock, orphans=orphans)
    doomed = FakeAccount("doomed", clock)
    healthy = FakeAccount("healthy", clock)
    info = register(sched, doomed, target(tmp_path, "lease-a", "doomed"))
    register(sched, doomed, target(tmp_path, "lease-b", "doomed"))
    register(sched, healthy, target(tmp_path, "lease-c", "healthy"))
    assert info is not None
    doomed.fail_with = KerberosError("account disabled", principal=doomed.principal)

    deadline = info.renew_till + ORPHAN_AFTER
    # Fail for days: no orphan until renew_till + orphan_after.
    while clock() < deadline - 60:
        sched.run_due()
        clock.advance(min(3600.0, deadline - 60 - clock()))
    assert orphans == []
    clock.now = deadline
    sched.run_due()
    assert sorted(set(orphans)) == ["lease-a", "lease-b"]
    assert len(healthy.calls) > 0
    assert sched.failing_groups() != []


def test_a_healthy_group_is_never_an_orphan(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    orphans: list[str] = []
    sched = make_scheduler(clock, orphans=orphans)
    register(sched, FakeAccount("fine", clock), target(tmp_path, "lease", "fine"))
    clock.advance(RENEW + ORPHAN_AFTER + LIFE)
    sched.run_due()
    assert orphans == []


# -- domainless leases waiting for credentials ----------------------------------------------------


def test_domainless_group_without_account_waits_and_is_never_attempted(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    orphans: list[str] = []
    sched = make_scheduler(clock, orphans=orphans)
    key = ("waiting", "user@example.test", "example.test")
    sched.register(key, None, target(tmp_path, "dl", "webapp"), None)

    status = sched.status("dl", "webapp")
    assert status is not None
    assert status.waiting_for_credentials
    for _ in range(5):
        clock.advance(LIFE)
        assert sched.run_due() == 0
    assert sched.renew_group(key) is None  # nothing to do without credentials
    assert writes == []
    assert sched.failing_groups() == []
    assert sched.next_due_in() == 3600.0

    # Credentials arrive (RenewNonDomainJoinedKerberosLease): the lease moves and is renewed.
    account = FakeAccount("webapp", clock)
    sched.move_target("user-account", account, target(tmp_path, "dl", "webapp"), None)
    assert sched.run_due() == 1
    assert len(writes) == 1
    status = sched.status("dl", "webapp")
    assert status is not None
    assert not status.waiting_for_credentials


# -- short tickets, parallel groups, stuck leases ------------------------------------------------


@pytest.mark.parametrize("rng", [0.0, 0.5, 1.0])
def test_a_margin_that_fits_the_life_is_honoured(
    clock: FakeClock, tmp_path: Path, writes: list[Write], rng: float
) -> None:
    """150 s tickets renewed 135 s before their end keep > 120 s of life at every moment."""
    sched = make_scheduler(clock, rng, margin=135)
    account = FakeAccount("short", clock, life=150)
    info = register(sched, account, target(tmp_path, "l1", "short"))
    assert info is not None
    status = sched.status("l1", "short")
    assert status is not None
    latest = info.endtime - 135
    floor = info.starttime + 0.05 * 150
    assert floor <= status.next_attempt <= latest
    assert status.next_attempt == pytest.approx(max(info.endtime - 135 * (1 + JITTER * rng), floor))


def test_groups_due_together_are_renewed_in_parallel(
    clock: FakeClock, tmp_path: Path, writes: list[Write]
) -> None:
    barrier = threading.Barrier(3, timeout=5)

    class Blocking(FakeAccount):
        def acquire_tgt(self) -> tuple[tickets.Tgt, Any]:
            barrier.wait()  # passes only when three renewals run at the same time
            return super().acquire_tgt()

    sched = make_scheduler(clock)
    accounts = [Blocking(f"g{i}", clock) for i in range(3)]
    for i, account in enumerate(accounts):
        register(sched, account, target(tmp_path, f"l{i}", account.gmsa), fresh=False)
    assert sched.run_due() == 3
    assert all(len(a.calls) == 1 for a in accounts)
    assert len(writes) == 3


def test_a_lease_waiting_for_credentials_is_orphaned_eventually(
    clock: FakeClock, tmp_path: Path, writes: list[Write]
) -> None:
    orphans: list[str] = []
    sched = make_scheduler(clock, orphans=orphans)
    old = tickets.TicketInfo("w$@EXAMPLE.TEST", int(T0) - LIFE, int(T0) - 60, int(T0) + 3600)
    sched.register(("waiting", "user"), None, target(tmp_path, "lw", "w"), old)
    clock.advance(3600 + ORPHAN_AFTER - 10)
    sched.run_due()
    assert orphans == []
    clock.advance(20)
    sched.run_due()
    assert orphans == ["lw"]


def test_an_orphan_that_cannot_be_removed_does_not_end_the_pass(
    clock: FakeClock, tmp_path: Path, writes: list[Write]
) -> None:
    removed: list[str] = []

    def remove(lease_id: str) -> None:
        if lease_id == "a":
            raise OSError("busy")
        removed.append(lease_id)

    sched = RenewalScheduler(
        margin=MARGIN, orphan_after=ORPHAN_AFTER, clock=clock, rng=FixedRng(0.5), on_orphan=remove
    )
    for lease in ("a", "b"):
        sched.register(("waiting", lease), None, target(tmp_path, lease, "w"), None)
    clock.advance(ORPHAN_AFTER + 1)
    sched.run_due()
    assert removed == ["b"]


def test_moving_one_gmsa_leaves_the_lease_s_other_gmsas_alone(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock)
    for gmsa in ("a", "b"):
        sched.register(("waiting", gmsa), None, target(tmp_path, "dl", gmsa), None)
    account_a = FakeAccount("a", clock)
    lock = sched.lease_lock("dl")
    sched.move_target("acct-a", account_a, target(tmp_path, "dl", "a"), None)
    assert sched.lease_lock("dl") is lock  # writes and a delete stay serialised across the move
    sched.run_due()
    # Only a's cache was written, with a's ticket; b still waits for its own credentials.
    assert [(w.path.parent.name, w.endtime) for w in writes] == [("a", int(clock()) + LIFE)]
    status_b = sched.status("dl", "b")
    assert status_b is not None
    assert status_b.waiting_for_credentials


def test_a_moved_target_with_a_valid_ticket_is_not_due(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    """New credentials for a lease whose file still holds a good ticket: the loop leaves it to
    the caller's own renewal instead of racing it for the same second's ticket."""
    sched = make_scheduler(clock)
    old = FakeAccount("w", clock)
    info = register(sched, old, target(tmp_path, "dl", "w"))
    assert info is not None
    new = FakeAccount("w", clock)
    sched.move_target("new-identity", new, target(tmp_path, "dl", "w"), info)
    assert sched.run_due() == 0
    assert writes == []
    # Asked for in the same second as the ticket it replaces: no later ticket, still a success.
    assert sched.renew_group("new-identity", asked=True) is None
    assert len(writes) == 1
    status = sched.status("dl", "w")
    assert status is not None
    assert not status.waiting_for_credentials
    # The old group had only this target: it is gone, not left to renew an empty lease.
    assert sched.renew_group("w") is None
    assert len(writes) == 1


def test_a_renewal_in_the_same_second_as_the_last_is_a_success(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    """At a password change a group is renewed for the new password, then about a second later
    for the confirmed keys (accounts.CONFIRM_AFTER). In the same second the KDC's ticket has the
    very times of the one it replaces: as good as it, not a failure. (Counted as one, HealthCheck
    said "renewal failing" and the keytab waited for a retry: seen in the two-DC test.)"""
    sched = make_scheduler(clock)
    account = FakeAccount("webapp", clock)
    register(sched, account, target(tmp_path, "lease", "webapp"))
    clock.advance(LIFE - MARGIN)
    assert sched.run_due() == 1
    assert len(writes) == 1
    assert sched.renew_group("webapp") is None
    assert len(writes) == 2
    status = sched.status("lease", "webapp")
    assert status is not None
    assert status.last_error == ""
    assert sched.failing_groups() == []
    # A second later the same end is no better than what the files hold: still a failure.
    account.frozen_endtime = int(status.endtime)
    clock.advance(1)
    assert sched.renew_group("webapp") is not None
    assert len(writes) == 2


def test_status_shows_each_lease_s_own_ticket(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    """ListLeases must report the ticket a lease's file holds, not its group's earliest."""
    sched = make_scheduler(clock)
    account = FakeAccount("shared", clock)
    first = register(sched, account, target(tmp_path, "old", "shared"))
    clock.advance(3600)
    second = register(sched, account, target(tmp_path, "new", "shared"))
    assert first is not None
    assert second is not None
    old_status = sched.status("old", "shared")
    new_status = sched.status("new", "shared")
    assert old_status is not None
    assert new_status is not None
    assert old_status.endtime == first.endtime
    assert new_status.endtime == second.endtime
    # After a renewal both files hold the same new ticket.
    clock.advance(LIFE)
    sched.run_due()
    statuses = [sched.status(lease, "shared") for lease in ("old", "new")]
    assert {s.endtime for s in statuses if s is not None} == {int(clock()) + LIFE}


# -- indexes -------------------------------------------------------------------------------------


def test_registrations_moves_and_deletes_keep_every_view_consistent(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Delete, status and the lease count go through indexes: whatever order leases come, move
    and go in, they agree with the groups themselves, and nothing is left behind."""
    sched = make_scheduler(clock)
    accounts = [FakeAccount(f"gmsa{i}", clock) for i in range(3)]
    for n in range(30):
        for account in accounts[: 1 + n % 3]:  # leases of one, two and three gMSAs
            register(sched, account, target(tmp_path, f"lease{n:02}", account.gmsa))
    assert sched.lease_count() == 30
    # A gMSA's target moves to another account (new credentials) and keeps its status.
    moved = target(tmp_path, "lease05", "gmsa0")
    other = FakeAccount("gmsa0", clock)
    sched.move_target("other-key", other, moved, other.ticket().info)
    assert sched.status("lease05", "gmsa0") is not None
    # Registering a target again under another key moves it too: it is never in two groups.
    sched.register("third-key", other, moved, None)
    assert sched.status("lease05", "gmsa0") is not None

    for n in range(0, 30, 2):
        sched.unregister_lease(f"lease{n:02}")
    sched.unregister_lease("lease99")  # unknown: nothing happens
    assert sched.lease_count() == 15
    for n in range(30):
        expected = n % 2 == 1
        for account in accounts[: 1 + n % 3]:
            assert (sched.status(f"lease{n:02}", account.gmsa) is not None) is expected
    for n in range(1, 30, 2):
        sched.unregister_lease(f"lease{n:02}")
    assert sched.lease_count() == 0
    assert sched.live_counts() == ({}, {})
    assert sched.next_due_in() == 3600.0  # no group left to schedule


# -- each target's write counts (issue 17) -------------------------------------------------------


@dataclass
class FlakyStore:
    """Replaces ``store_tgt``: fails for the leases in ``failing`` with the error mapped there
    (a TamperedError after "writing"), records every write it makes in ``written``."""

    failing: dict[str, StorageError] = field(default_factory=dict)
    written: list[tuple[str, int]] = field(default_factory=list)

    def __call__(
        self, tgt: tickets.Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
    ) -> tickets.TicketInfo:
        lease = path.parent.parent.name
        error = self.failing.get(lease)
        if error is not None and not isinstance(error, TamperedError):
            raise error
        self.written.append((lease, tgt.info.endtime))
        if error is not None:
            raise error
        return tgt.info


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> FlakyStore:
    store = FlakyStore()
    monkeypatch.setattr(tickets, "store_tgt", store)
    return store


def test_a_failed_write_is_failing_and_retried_on_its_own(
    tmp_path: Path, clock: FakeClock, flaky: FlakyStore
) -> None:
    sched = make_scheduler(clock, rng=0.0)
    account = FakeAccount("webapp", clock)
    old = register(sched, account, target(tmp_path, "full", "webapp"))
    register(sched, account, target(tmp_path, "fine", "webapp"))
    assert old is not None
    flaky.failing["full"] = StorageError("cannot write krb5cc: No space left on device", path="x")

    clock.advance(LIFE)
    assert sched.run_due() == 1
    status = sched.status("full", "webapp")
    assert status is not None
    assert "No space left on device" in status.last_error
    assert status.endtime == old.endtime  # the file still holds the old ticket
    assert status.next_attempt <= clock() + BACKOFF_BASE
    fine = sched.status("fine", "webapp")
    assert fine is not None
    assert fine.last_error == ""
    assert sched.failing_groups() == []  # the account itself renews fine
    assert sched.all_writes_failing() is None  # one lease of two: not a health problem

    # Retried from the TGT in memory: no new AS exchange, only the failing target written.
    calls = len(account.calls)
    before = len(flaky.written)
    clock.advance(BACKOFF_BASE)
    del flaky.failing["full"]
    sched.run_due()
    assert len(account.calls) == calls
    assert [w[0] for w in flaky.written[before:]] == ["full"]
    status = sched.status("full", "webapp")
    assert status is not None
    assert status.last_error == ""
    assert status.endtime > old.endtime


def test_write_backoff_is_capped_well_inside_a_ticket(
    tmp_path: Path, clock: FakeClock, flaky: FlakyStore
) -> None:
    sched = make_scheduler(clock, rng=1.0)
    account = FakeAccount("webapp", clock)
    register(sched, account, target(tmp_path, "full", "webapp"))
    flaky.failing["full"] = StorageError("cannot write: EIO", path="x")
    clock.advance(LIFE)
    sched.run_due()
    attempts = []
    for _ in range(12):
        status = sched.status("full", "webapp")
        assert status is not None
        attempts.append(status.next_attempt - clock())
        clock.advance(status.next_attempt - clock())
        sched.run_due()
    assert max(attempts) == BACKOFF_CAP
    assert sched.all_writes_failing() == "cannot write: EIO"


def test_tampering_is_reported_until_the_next_renewal(
    tmp_path: Path, clock: FakeClock, flaky: FlakyStore
) -> None:
    sched = make_scheduler(clock, rng=0.0)
    account = FakeAccount("webapp", clock)
    register(sched, account, target(tmp_path, "attacked", "webapp"))
    flaky.failing["attacked"] = TamperedError(
        "found a FIFO at krb5cc (replaced it)", path="x", found="a FIFO"
    )
    clock.advance(LIFE)
    sched.run_due()
    del flaky.failing["attacked"]
    status = sched.status("attacked", "webapp")
    assert status is not None
    assert "found a FIFO" in status.last_error
    assert sched.all_writes_failing() is None  # written after all: not a health problem
    assert status.endtime == int(clock()) + LIFE  # the file was written nonetheless
    before = len(flaky.written)
    clock.advance(BACKOFF_CAP)
    sched.run_due()
    assert len(flaky.written) == before  # nothing to repair: no extra write
    clock.advance(LIFE)  # the next renewal writes it clean
    sched.run_due()
    status = sched.status("attacked", "webapp")
    assert status is not None
    assert status.last_error == ""


def test_a_deleted_lease_forgets_its_write_failure(
    tmp_path: Path, clock: FakeClock, flaky: FlakyStore
) -> None:
    sched = make_scheduler(clock)
    account = FakeAccount("webapp", clock)
    register(sched, account, target(tmp_path, "gone", "webapp"))
    flaky.failing["gone"] = StorageError("cannot write", path="x")
    clock.advance(LIFE)
    sched.run_due()
    sched.unregister_lease("gone")
    assert sched.status("gone", "webapp") is None
    assert sched.next_due_in() == 3600.0


@pytest.mark.parametrize(("life", "margin"), [(150, 135.0), (149, 135.0), (146, 135.0)])
def test_a_margin_at_ninety_percent_survives_a_ticket_a_second_short(
    life: int, margin: float
) -> None:
    """The KDC counts a ticket's life from its own clock: a 150 s ticket may come back with 149.
    A margin set at 90 % of the configured life must still be honoured, not halved (which made
    the first renewal come after the KDC would no longer issue service tickets from it)."""
    sched = RenewalScheduler(margin=margin, orphan_after=ORPHAN_AFTER)
    group = GroupState(account=None, starttime=1000.0, endtime=1000.0 + life)
    assert sched.effective_margin(group) == margin
    # Far past 90 %: half the life, as before.
    assert RenewalScheduler(margin=7200, orphan_after=ORPHAN_AFTER).effective_margin(group) == (
        life / 2
    )
