"""Groups with keytabs are due when their account's keys must be read again (docs/rotation.md).

A keytab follows the password, not the ticket: five minutes before a change and right after it
the account re-reads the managed password, and the renewal loop must rewrite the keytabs then,
not at the ticket's expiry hours later. Plain :class:`RenewalScheduler`, fake clock, fake account.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credfetcher import tickets
from credfetcher.errors import DCUnavailableError
from credfetcher.keys import KerberosKey
from credfetcher.renewal import RenewalScheduler, Target
from credfetcher.testing import FakeClock, target_in

T0 = 1_800_000_000.0
LIFE = 36_000


@dataclass
class Account:
    """An account whose keys are due at ``due`` (None: never read)."""

    due: float | None
    gmsa: str = "webapp01"
    principal: str = "webapp01$@EXAMPLE.TEST"
    fail_with: Exception | None = None

    def keys_due_at(self) -> float | None:
        return self.due

    def acquire_tgt(self) -> tuple[tickets.Tgt, Any]:
        raise self.fail_with or AssertionError("not renewed in these tests")

    def keytab_keys(self, material: Any, *, rc4: bool) -> list[KerberosKey]:
        return []


def scheduler(clock: FakeClock) -> RenewalScheduler:
    return RenewalScheduler(margin=600, orphan_after=3600, clock=clock, rng=lambda: 0.0)


def ticket() -> tickets.TicketInfo:
    return tickets.TicketInfo("webapp01$@EXAMPLE.TEST", int(T0), int(T0) + LIFE, int(T0) + LIFE)


def target(tmp_path: Path, *, keytab: bool) -> Target:
    return target_in(tmp_path, "lease", "webapp01", keytab=keytab)


def test_a_group_with_a_keytab_is_due_when_its_keys_are(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sched = scheduler(clock)
    sched.register("g", Account(due=T0 + 300), target(tmp_path, keytab=True), ticket())
    assert sched.due() == []
    clock.now = T0 + 300
    assert sched.due() == ["g"]


def test_without_a_keytab_the_ticket_alone_decides(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sched = scheduler(clock)
    sched.register("g", Account(due=T0 + 300), target(tmp_path, keytab=False), ticket())
    clock.now = T0 + 301
    assert sched.due() == []


def test_keys_never_read_make_a_recovered_keytab_due_at_once(tmp_path: Path) -> None:
    """Leases recovered at start-up: their keytab may predate a change."""
    sched = scheduler(FakeClock(T0))
    sched.register("g", Account(due=None), target(tmp_path, keytab=True), ticket())
    assert sched.due() == ["g"]


def test_a_failing_group_keeps_its_back_off(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    sched = scheduler(clock)
    account = Account(due=T0, fail_with=DCUnavailableError("no DC answered", attempts=[]))
    sched.register("g", account, target(tmp_path, keytab=True), ticket())
    assert sched.renew_group("g") is not None  # backs off (2 s * 0.5 with rng 0)
    assert sched.due() == []
    clock.now = T0 + 1
    assert sched.due() == ["g"]
