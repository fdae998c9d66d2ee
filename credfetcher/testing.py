"""Fakes for driving credfetcher without a DC, a KDC or a wall clock: one copy for every test.

The scheduler and the accounts take their clock and random source as callables (trio's habit:
time is injected, never slept on), so a test moves time by hand and fixes the jitter. Used by
the unit tests, some integration tests and ``bench/run.py``; nothing in the daemon imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credfetcher import tickets
from credfetcher.files import Ownership
from credfetcher.groups import Target
from credfetcher.keys import KerberosKey

__all__ = ["EPOCH", "FakeAccount", "FakeClock", "FixedRng", "StoreRecorder", "Write", "target_in"]

#: Where a :class:`FakeClock` starts by default: a fixed instant (in 2027), so tests that print
#: times print the same ones every run.
EPOCH = 1_800_000_000.0


class FakeClock:
    """A clock that stands still until told: ``now`` is what it says; ``None`` makes it follow
    the real clock (for a test that moves time only now and then)."""

    def __init__(self, now: float | None = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now

    def advance(self, seconds: float) -> None:
        self.now = self() + seconds


class FixedRng:
    """A ``random.random`` that always returns ``value``: jitter without the randomness."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


@dataclass
class FakeAccount:
    """An account for :class:`credfetcher.renewal.RenewalScheduler`: hands out TGTs valid for
    ``life`` seconds from the clock's now, renewable for ``renew``; ``calls`` records when."""

    gmsa: str
    clock: FakeClock
    life: int = 36_000
    renew: int = 7 * 86_400
    fail_with: BaseException | None = None  # raised by acquire_tgt when set
    frozen_endtime: int | None = None  # the KDC keeps issuing this endtime
    calls: list[float] = field(default_factory=list)
    principal: str = ""

    def __post_init__(self) -> None:
        self.principal = self.principal or f"{self.gmsa}$@EXAMPLE.TEST"

    def ticket(self) -> tickets.Tgt:
        now = int(self.clock())
        end = self.frozen_endtime if self.frozen_endtime is not None else now + self.life
        info = tickets.TicketInfo(self.principal, now, end, now + self.renew)
        return tickets.Tgt(info=info, marshalled=b"opaque")

    def acquire_tgt(self) -> tuple[tickets.Tgt, Any]:
        self.calls.append(self.clock())
        if self.fail_with is not None:
            raise self.fail_with
        return self.ticket(), object()

    def keytab_keys(self, material: Any, *, rc4: bool) -> list[KerberosKey]:
        return []


@dataclass(frozen=True)
class Write:
    """One ccache write seen by a :class:`StoreRecorder`."""

    path: Path
    endtime: int
    ownership: Ownership


@dataclass
class StoreRecorder:
    """Stands in for :func:`credfetcher.tickets.store_tgt` (monkeypatched over it): writes
    nothing, records every write in ``writes``."""

    writes: list[Write] = field(default_factory=list)

    def __call__(
        self, tgt: tickets.Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
    ) -> tickets.TicketInfo:
        self.writes.append(Write(path, tgt.info.endtime, ownership))
        return tgt.info


def target_in(
    root: Path, lease: str, gmsa: str, *, mode: int = 0o600, keytab: bool = False
) -> Target:
    """A renewal target whose files go to ``root/lease/gmsa`` (the directory is made)."""
    directory = root / lease / gmsa
    directory.mkdir(parents=True, exist_ok=True)
    return Target(
        lease,
        gmsa,
        directory / "krb5cc",
        Ownership(uid=None, gid=None, mode=mode),
        keytab=directory / "krb5.keytab" if keytab else None,
    )
