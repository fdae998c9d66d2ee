"""Renewal's bookkeeping: which lease targets share which account's TGT, and what each holds.

A *target* is one lease's copy of one gMSA's credentials (a ccache, maybe a keytab). Targets of
one account -- (domain, gMSA, identity that reads the password) -- form a *group*: they carry
the same TGT, so renewing them costs one AS exchange (RFC 4120 §3.1) however many there are.

:class:`GroupIndex` keeps the groups and the indexes that make a delete, a status or a count
cost the same at 20 leases or 20,000: which group each target is in, which gMSAs each lease
has, the ticket each target's file holds and each target's last failed write. It decides no
policy (when a group is due, how long a failure waits): that is :mod:`credfetcher.renewal`'s,
whose lock guards every call here.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from credfetcher import tickets
from credfetcher.files import Ownership
from credfetcher.keys import KerberosKey

__all__ = [
    "Account",
    "GroupIndex",
    "GroupState",
    "Target",
    "TargetKey",
    "TargetStatus",
    "WriteFailure",
    "keys_due",
    "keys_due_at",
]

#: (lease id, gMSA name): one target.
TargetKey = tuple[str, str]


class Account(Protocol):
    """What renewal needs from an account (see :class:`credfetcher.accounts.GmsaAccount`)."""

    principal: str
    gmsa: str

    def acquire_tgt(self) -> tuple[tickets.Tgt, Any]: ...

    def keytab_keys(self, material: Any, *, rc4: bool) -> list[KerberosKey]: ...


@dataclass(frozen=True)
class Target:
    """One lease's copy of a gMSA's credentials."""

    lease_id: str
    gmsa: str
    ccache: Path
    ownership: Ownership
    keytab: Path | None = None

    @property
    def key(self) -> TargetKey:
        return (self.lease_id, self.gmsa)


@dataclass
class GroupState:
    """Renewal state of one account and every target that shares its TGT."""

    account: Account | None  # None: a domainless lease waiting for its user's credentials
    targets: dict[TargetKey, Target] = field(default_factory=dict)
    starttime: float = 0.0
    endtime: float = 0.0
    renew_till: float = 0.0
    next_attempt: float = 0.0
    failures: int = 0
    last_error: str = ""
    failing_since: float | None = None
    material_id: int = 0  # id() of the key material last written to keytabs
    keytabs: int = 0  # how many targets have a keytab: O(1) for keys_due at any lease count
    registered_at: float = 0.0
    # The last TGT and key material the account gave: what a failed write is retried with.
    tgt: tickets.Tgt | None = field(default=None, repr=False)
    material: Any = field(default=None, repr=False)

    @property
    def stuck_since(self) -> float | None:
        """Since when the group's leases have gone without a usable renewal (None: they have
        not): the end of what may be renewed, else the first failure or the registration."""
        if self.account is None:
            # A domainless lease whose credentials were lost at restart and never renewed
            # (RenewNonDomainJoinedKerberosLease) is as stuck as a failing one.
            return self.renew_till or self.registered_at
        if self.failing_since is not None:
            return self.renew_till or self.failing_since
        return None


@dataclass
class WriteFailure:
    """A target whose files could not be written (or were tampered with) at the last attempt."""

    error: str
    since: float
    failures: int = 0
    next_attempt: float = 0.0
    retry: bool = True  # False: every file was written; only a tampering report remains


@dataclass(frozen=True)
class TargetStatus:
    """What ListLeases and HealthCheck show about one target."""

    endtime: float
    renew_till: float
    next_attempt: float
    last_error: str
    waiting_for_credentials: bool


@dataclass
class GroupIndex:
    """The groups and their indexes, kept in step. Not thread-safe: the scheduler's lock guards
    every call (its methods read these fields under the same lock)."""

    groups: dict[Hashable, GroupState] = field(default_factory=dict)
    where: dict[TargetKey, Hashable] = field(default_factory=dict)  # target -> its group's key
    by_lease: dict[str, set[str]] = field(default_factory=dict)  # lease -> its gMSAs
    ticket_times: dict[TargetKey, tickets.TicketInfo] = field(default_factory=dict)
    write_failures: dict[TargetKey, WriteFailure] = field(default_factory=dict)

    def attach(
        self, key: Hashable, account: Account | None, target: Target, now: float
    ) -> tuple[GroupState, bool]:
        """Put ``target`` in the group ``key`` (made at ``now`` if new), out of any other; a
        known ``account`` replaces the group's. Returns the group and whether it already had
        targets."""
        tk = target.key
        if self.where.get(tk, key) != key:
            self.detach(tk)
        group = self.groups.get(key)
        if group is None:
            group = GroupState(account=account, registered_at=now)
            self.groups[key] = group
        elif account is not None:
            group.account = account
        joined = bool(group.targets)
        replaced = group.targets.get(tk)
        group.keytabs += (target.keytab is not None) - (
            replaced is not None and replaced.keytab is not None
        )
        group.targets[tk] = target
        self.where[tk] = key
        self.by_lease.setdefault(target.lease_id, set()).add(target.gmsa)
        return group, joined

    def detach(self, tk: TargetKey) -> None:
        """Forget one target wherever it is; its group goes with its last target."""
        key = self.where.pop(tk, None)
        group = self.groups.get(key) if key is not None else None
        if group is not None:
            gone = group.targets.pop(tk, None)
            group.keytabs -= gone is not None and gone.keytab is not None
            if not group.targets:
                del self.groups[key]
        self.ticket_times.pop(tk, None)
        self.write_failures.pop(tk, None)
        gmsas = self.by_lease.get(tk[0])
        if gmsas is not None:
            gmsas.discard(tk[1])
            if not gmsas:
                del self.by_lease[tk[0]]

    def detach_lease(self, lease_id: str) -> None:
        """Forget every target of a lease."""
        for gmsa in list(self.by_lease.get(lease_id, ())):
            self.detach((lease_id, gmsa))

    def group_of(self, tk: TargetKey) -> GroupState | None:
        key = self.where.get(tk)
        return self.groups.get(key) if key is not None else None

    def status(self, tk: TargetKey) -> TargetStatus | None:
        group = self.group_of(tk)
        if group is None:
            return None
        # The ticket this target's file holds; the group's earliest one otherwise.
        own = self.ticket_times.get(tk)
        write = self.write_failures.get(tk)
        errors = [group.last_error, write.error if write else ""]
        return TargetStatus(
            endtime=float(own.endtime) if own else group.endtime,
            renew_till=float(own.renew_till) if own else group.renew_till,
            next_attempt=(
                min(group.next_attempt, write.next_attempt) if write else group.next_attempt
            ),
            last_error="; ".join(e for e in errors if e),
            waiting_for_credentials=group.account is None,
        )

    def failing_groups(self) -> list[tuple[str, str]]:
        return [
            (g.account.principal, g.last_error)
            for g in self.groups.values()
            if g.failures and g.account is not None
        ]

    def record_write(
        self,
        tk: TargetKey,
        error: str | None,
        retry: bool,
        info: tickets.TicketInfo | None,
        now: float,
    ) -> WriteFailure | None:
        """Note how a target's write went: ``info`` is the ticket its ccache now holds (None:
        not written), ``error`` what went wrong (None: nothing). Returns the target's failure,
        counted, for the caller to schedule; None when clean or the target is gone."""
        if tk not in self.where:
            return None
        if info is not None:
            self.ticket_times[tk] = info
        if error is None:
            self.write_failures.pop(tk, None)
            return None
        failure = self.write_failures.setdefault(tk, WriteFailure(error, since=now))
        failure.failures += 1
        failure.error = error
        failure.retry = retry
        return failure

    def rewrites_due(self, now: float) -> list[tuple[Account, Target, tickets.Tgt, Any]]:
        """Each target whose failed write is due again, with what to write: its group's
        account, current TGT and key material."""
        due = []
        # Only the failures are walked: a pass costs nothing per healthy lease.
        for tk, failure in self.write_failures.items():
            group = self.group_of(tk)
            if group is None or group.account is None or group.tgt is None:
                continue  # nothing to write yet: the group's own renewal comes first
            if failure.next_attempt <= now:
                due.append((group.account, group.targets[tk], group.tgt, group.material))
        return due

    def live_counts(self) -> tuple[dict[str, int], dict[str, float]]:
        """Leases per state (the worst of their targets'), and per account principal the end of
        the earliest ticket its leases hold."""
        rank = {"active": 0, "failing": 1, "waiting-for-credentials": 2}
        states: dict[str, str] = {}
        ends: dict[str, float] = {}
        for group in self.groups.values():
            if group.account is None:
                state = "waiting-for-credentials"
            else:
                state = "failing" if group.last_error else "active"
                if group.targets and group.endtime:
                    ends[group.account.principal] = min(
                        group.endtime, ends.get(group.account.principal, group.endtime)
                    )
            for tk in group.targets:
                own = "failing" if state == "active" and tk in self.write_failures else state
                if rank[own] > rank[states.get(tk[0], "active")]:
                    states[tk[0]] = own
                else:
                    states.setdefault(tk[0], own)
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        return counts, ends

    def all_writes_failing(self) -> str | None:
        """The first write error when every target's last write left a file unwritten."""
        # Counts first: HealthCheck asks this, and must not walk 20,000 healthy leases.
        if not self.where or len(self.write_failures) < len(self.where):
            return None
        failures = list(self.write_failures.values())
        if any(not f.retry for f in failures):
            return None
        return failures[0].error


def keys_due(group: GroupState, now: float) -> bool:
    """A group with keytabs is due when its account's keys must be read again or change.

    Keytabs follow the password, not the ticket (``docs/rotation.md``): at a change the account
    switches to the next password it was told of, then reads the DC to confirm its kvno, and the
    keytabs must get the new password then, not at the ticket's expiry hours later. An account
    whose keys were never read (leases recovered at start-up) is due at once: the keytabs on
    disk may predate a change. Not while the group is backing off after a failure: its own
    ``next_attempt`` decides then.
    """
    if group.failures or not group.keytabs:
        return False
    due_at = getattr(group.account, "keys_due_at", None)
    if not callable(due_at):
        return False
    when = due_at()
    return when is None or (isinstance(when, float) and when <= now)


def keys_due_at(group: GroupState) -> float | None:
    """When :func:`keys_due` turns true for ``group`` (None: not by itself, or at once)."""
    if group.account is None or group.failures or not group.keytabs:
        return None
    due_at = getattr(group.account, "keys_due_at", None)
    when = due_at() if callable(due_at) else None
    return when if isinstance(when, float) else None
