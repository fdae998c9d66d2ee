"""Renewal: every lease's ccache stays valid for as long as the lease lives, at the least DC cost.

Leases are grouped by account — (domain, gMSA, identity that reads the password) — because every
lease of one account can carry the same TGT: a renewal cycle makes one AS exchange per account
(RFC 4120 §3.1) and writes the result into each lease's file, atomically and with that lease's
own owner and mode. 1,000 leases over 10 gMSAs cost the DC 10 AS exchanges, and LDAP searches
only when the managed password's QueryPasswordInterval has run out (:mod:`credfetcher.accounts`).

Each group is due when its ticket's remaining life drops under the margin (``CF_RENEW_MARGIN``,
capped at half the ticket's life) less a random jitter, so hosts that started together don't
renew together. A failure backs off exponentially with jitter, per group and capped, so one
failing gMSA never delays the others and a returning DC is used within the cap. A renewal that
fails never touches the existing ccache: a still-valid ticket stays in place. Groups whose
renewal keeps failing past ``renew_till + orphan_after`` are handed to ``on_orphan``.

Each target's *write* counts on its own: a lease whose file could not be written (disk full,
EIO, a read-only remount, a directory planted at its name) or whose directory was tampered with
(:class:`credfetcher.files.TamperedError`) shows as failing with the reason, and is written again
from the group's current TGT (kept in memory, no new AS exchange) on its own backoff -- at most
``BACKOFF_CAP`` apart, so long before the ticket its file still holds ends -- until a write is
clean. The other targets of the group are not held back.

The clock is injectable and :meth:`RenewalScheduler.run_due` does one pass synchronously, so
unit tests drive the scheduler without sleeping.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from credfetcher import metrics, tickets
from credfetcher.errors import (
    BindError,
    CredfetcherError,
    KerberosError,
    KeyRejectedError,
    StorageError,
)
from credfetcher.files import Ownership, TamperedError, regular_file_exists
from credfetcher.identity import UserIdentity
from credfetcher.keys import KerberosKey
from credfetcher.keytab import write_keytab
from credfetcher.krbcodes import is_dc_outage

log = logging.getLogger(__name__)

BACKOFF_BASE = 2.0
BACKOFF_CAP = 30.0
JITTER = 0.1
MAX_MARGIN_FRACTION = 0.9
LIFE_SLACK = 5.0
MIN_AGE_FRACTION = 0.05
# A domainless user's password that the DC or KDC refused is tried again no sooner than this
# (CF_REJECTED_PASSWORD_RETRY): every try is a failed pre-authentication that AD counts towards
# the account's lockout, and the count only resets once its observation window has passed since
# the last failure. See docs/configuration.md.
REJECTED_PASSWORD_RETRY = 1860.0
# Groups renewed at once in one pass: a KDC that black-holes one request then delays the others
# by its timeout only once per batch, not once per group.
RENEWAL_WORKERS = 4


class Account(Protocol):
    """What the scheduler needs from an account (see :class:`credfetcher.accounts.GmsaAccount`)."""

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


@dataclass
class GroupState:
    """Renewal state of one account and every target that shares its TGT."""

    account: Account | None  # None: a domainless lease waiting for its user's credentials
    targets: dict[tuple[str, str], Target] = field(default_factory=dict)
    starttime: float = 0.0
    endtime: float = 0.0
    renew_till: float = 0.0
    next_attempt: float = 0.0
    failures: int = 0
    last_error: str = ""
    last_success: float = 0.0
    failing_since: float | None = None
    material_id: int = 0  # id() of the key material last written to keytabs
    keytabs: int = 0  # how many targets have a keytab: O(1) for _keys_due at any lease count
    registered_at: float = 0.0
    # The last TGT and key material the account gave: what a failed write is retried with.
    tgt: tickets.Tgt | None = field(default=None, repr=False)
    material: Any = field(default=None, repr=False)


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


def _user_identity(account: Account) -> str | None:
    """The identity key of a domainless user's account (whose refused password AD counts)."""
    identity = getattr(account, "identity", None)
    return "|".join(identity.key) if isinstance(identity, UserIdentity) else None


class RenewalScheduler:
    """Keeps every registered target's ccache fresh, one AS exchange per account and cycle."""

    def __init__(
        self,
        *,
        margin: float,
        orphan_after: float,
        rc4: bool = False,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        on_orphan: Callable[[str], None] | None = None,
        rejected_retry: float = REJECTED_PASSWORD_RETRY,
        krb_dir: Path | None = None,
    ) -> None:
        self.margin = margin
        self.rejected_retry = rejected_retry
        # Per user identity whose password was refused: when it may be tried again. Held per
        # identity, not per group, so N gMSAs read by one user cost one try per period, not N.
        self._rejected: dict[str, float] = {}
        # The root every target's directory is walked from (see credfetcher.files).
        self.krb_dir = krb_dir
        self.orphan_after = orphan_after
        self.rc4 = rc4
        self.clock = clock
        self.rng = rng
        self.on_orphan = on_orphan
        self._groups: dict[Hashable, GroupState] = {}
        self._ticket_times: dict[tuple[str, str], tickets.TicketInfo] = {}
        self._write_failures: dict[tuple[str, str], WriteFailure] = {}
        # Indexes, so that a delete, a status or a count costs the same at 20 leases or 20,000:
        # which group each target is in, and which gMSAs each lease has.
        self._where: dict[tuple[str, str], Hashable] = {}
        self._by_lease: dict[str, set[str]] = {}
        self._lock = threading.RLock()
        self._lease_locks: dict[str, threading.Lock] = {}
        self._wake = threading.Event()
        # When (self.clock) the loop wakes by itself: register() wakes it only for a group due
        # sooner, so 20,000 leases loaded or added cost the loop no pass each.
        self._wake_at = float("inf")
        self._held = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = 0.0
        # Message of the last DC/KDC failure; "" once a later call succeeded.
        self.last_dc_error = ""

    # -- registration ----------------------------------------------------------------------

    def lease_lock(self, lease_id: str) -> threading.Lock:
        """Held while a lease's files are written or removed, so the two never interleave."""
        with self._lock:
            return self._lease_locks.setdefault(lease_id, threading.Lock())

    def register(
        self,
        key: Hashable,
        account: Account | None,
        target: Target,
        info: tickets.TicketInfo | None,
    ) -> None:
        """Track ``target`` under the account ``key``; ``info`` is the ticket just written."""
        tk = (target.lease_id, target.gmsa)
        with self._lock:
            if self._where.get(tk, key) != key:
                self._detach(tk)
            group = self._groups.get(key)
            if group is None:
                group = GroupState(account=account, registered_at=self.clock())
                self._groups[key] = group
            elif account is not None:
                group.account = account
            joined = bool(group.targets)
            replaced = group.targets.get(tk)
            group.keytabs += (target.keytab is not None) - (
                replaced is not None and replaced.keytab is not None
            )
            group.targets[tk] = target
            self._where[tk] = key
            self._by_lease.setdefault(target.lease_id, set()).add(target.gmsa)
            if info is not None:
                self._ticket_times[(target.lease_id, target.gmsa)] = info
            if info is None:
                # This target has no usable ticket: renew the group (all its files) now.
                now = self.clock()
                group.next_attempt = min(group.next_attempt, now) if joined else now
            elif not joined or info.endtime < group.endtime:
                # The group is scheduled by its earliest ticket: a newer lease's later ticket must
                # not push the renewal past the end of the tickets the older leases hold.
                self._succeeded(group, info)
            if not self._held.is_set():
                now = self.clock()
                due_at = 0.0 if _keys_due(group, now) else group.next_attempt
                if group.account is not None and due_at < self._wake_at:
                    self._wake.set()

    def _detach(self, tk: tuple[str, str]) -> None:
        """Forget one target wherever it is (the caller holds the lock)."""
        key = self._where.pop(tk, None)
        group = self._groups.get(key) if key is not None else None
        if group is not None:
            gone = group.targets.pop(tk, None)
            group.keytabs -= gone is not None and gone.keytab is not None
            if not group.targets:
                del self._groups[key]
        self._ticket_times.pop(tk, None)
        self._write_failures.pop(tk, None)
        gmsas = self._by_lease.get(tk[0])
        if gmsas is not None:
            gmsas.discard(tk[1])
            if not gmsas:
                del self._by_lease[tk[0]]

    def unregister_lease(self, lease_id: str) -> None:
        with self._lock:
            for gmsa in list(self._by_lease.get(lease_id, ())):
                self._detach((lease_id, gmsa))
            self._lease_locks.pop(lease_id, None)

    def move_target(
        self,
        new_key: Hashable,
        account: Account,
        target: Target,
        info: tickets.TicketInfo | None,
    ) -> None:
        """Track ``target`` under the account ``new_key`` from now on, wherever it was.

        Only that target moves: each gMSA of a lease has its own account, and moving the whole
        lease would write one gMSA's TGT into another's ccache. Unlike :meth:`unregister_lease`
        the lease keeps its lock, so renewal writes and a delete stay serialised across the move.
        ``info`` is the still-valid ticket the target's file holds: joining with it, the target
        is not due, and the background loop does not race the caller's own renewal.
        """
        with self._lock:
            self._detach((target.lease_id, target.gmsa))
            self.register(new_key, account, target, info)

    # -- status ----------------------------------------------------------------------------

    def status(self, lease_id: str, gmsa: str) -> TargetStatus | None:
        with self._lock:
            key = self._where.get((lease_id, gmsa))
            group = self._groups.get(key) if key is not None else None
            if group is None:
                return None
            # The ticket this target's file holds; the group's earliest one otherwise.
            own = self._ticket_times.get((lease_id, gmsa))
            write = self._write_failures.get((lease_id, gmsa))
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
        """(principal or key, last error) of every group whose last attempt failed."""
        with self._lock:
            return [
                (g.account.principal, g.last_error)
                for k, g in self._groups.items()
                if g.failures and g.account is not None
            ]

    def live_counts(self) -> tuple[dict[str, int], dict[str, float]]:
        """Leases per state (the worst of their targets'), and per account principal the end of
        the earliest ticket its leases hold: what the metrics endpoint shows at each scrape."""
        rank = {"active": 0, "failing": 1, "waiting-for-credentials": 2}
        states: dict[str, str] = {}
        ends: dict[str, float] = {}
        with self._lock:
            for group in self._groups.values():
                if group.account is None:
                    state = "waiting-for-credentials"
                else:
                    state = "failing" if group.last_error else "active"
                    if group.targets and group.endtime:
                        ends[group.account.principal] = min(
                            group.endtime, ends.get(group.account.principal, group.endtime)
                        )
                for tk in group.targets:
                    own = "failing" if state == "active" and tk in self._write_failures else state
                    if rank[own] > rank[states.get(tk[0], "active")]:
                        states[tk[0]] = own
                    else:
                        states.setdefault(tk[0], own)
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        return counts, ends

    def ticket_info(self, lease_id: str, gmsa: str) -> tickets.TicketInfo | None:
        """The ticket the daemon last wrote into this target's file (None: none known)."""
        with self._lock:
            return self._ticket_times.get((lease_id, gmsa))

    def all_writes_failing(self) -> str | None:
        """The first write error when no target's files could be written at its last attempt
        (and there is one). A tampering report alone (the file was written) does not count."""
        with self._lock:
            # Counts first: HealthCheck asks this, and must not walk 20,000 healthy leases.
            if not self._where or len(self._write_failures) < len(self._where):
                return None
            failures = list(self._write_failures.values())
            if any(not f.retry for f in failures):
                return None
            return failures[0].error

    def lease_count(self) -> int:
        with self._lock:
            return len(self._by_lease)

    def alive(self, max_age: float) -> bool:
        """The loop thread runs and has completed a pass within ``max_age`` seconds."""
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and time.monotonic() - self.heartbeat <= max_age
        )

    # -- the work --------------------------------------------------------------------------

    def effective_margin(self, group: GroupState) -> float:
        """The configured margin, or half the ticket's life when the margin would not fit.

        A margin up to 90 % of the life is honoured as set: short tickets need it (the KDC
        refuses service tickets for a TGT near its end, so a 150 s ticket must be renewed while
        well over 120 s remain). A margin larger than that (the 2 h default against 60 s tickets)
        would mean renewing continuously; half the life is used instead.

        The life is measured with :data:`LIFE_SLACK` to spare: the KDC counts it from its own
        clock, and a ticket asked for 150 s sometimes comes back with 149. Without the slack a
        margin set at exactly 90 % of the configured life (135 s on 150 s tickets) flipped to
        half the life on such a ticket, and the renewal came too late for the KDC to issue
        service tickets from it (seen in CI: test_container_view).
        """
        life = max(group.endtime - group.starttime, 0.0)
        if not life or self.margin <= MAX_MARGIN_FRACTION * (life + LIFE_SLACK):
            return self.margin
        return life / 2

    def _succeeded(self, group: GroupState, info: tickets.TicketInfo) -> None:
        group.starttime = float(info.starttime)
        group.endtime = float(info.endtime)
        group.renew_till = float(info.renew_till)
        margin = self.effective_margin(group)
        life = group.endtime - group.starttime
        group.next_attempt = max(
            group.endtime - margin * (1.0 + JITTER * self.rng()),
            # Jitter on a margin close to the whole life must not renew a ticket just issued.
            group.starttime + MIN_AGE_FRACTION * life,
        )
        group.failures = 0
        group.last_error = ""
        group.failing_since = None
        group.last_success = self.clock()

    def _failed(self, group: GroupState, message: str) -> None:
        now = self.clock()
        group.failures += 1
        group.last_error = message
        if group.failing_since is None:
            group.failing_since = now
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (group.failures - 1))
        group.next_attempt = now + delay * (0.5 + 0.5 * self.rng())

    def due(self) -> list[Hashable]:
        now = self.clock()
        with self._lock:
            return [
                k
                for k, g in self._groups.items()
                if g.account is not None and (g.next_attempt <= now or _keys_due(g, now))
            ]

    def next_due_in(self) -> float:
        now = self.clock()
        with self._lock:
            times = [g.next_attempt for g in self._groups.values() if g.account is not None]
            times += [w.next_attempt for w in self._write_failures.values()]
            # Keytabs change at the password change itself, to the second (_keys_due).
            times += [t for g in self._groups.values() if (t := _keys_due_at(g)) is not None]
        return max(0.0, min(times) - now) if times else 3600.0

    def run_due(self) -> int:
        """Renew every group that is due; return how many groups were attempted."""
        keys = self.due()
        if len(keys) > 1:
            with ThreadPoolExecutor(
                max_workers=min(RENEWAL_WORKERS, len(keys)), thread_name_prefix="renew"
            ) as pool:
                list(pool.map(self._renew_guarded, keys))
        else:
            for key in keys:
                self._renew_guarded(key)
        self._retry_writes()
        self._collect_orphans()
        return len(keys)

    def _renew_guarded(self, key: Hashable) -> None:
        try:
            self.renew_group(key)
        except Exception as exc:
            # A bug or an untranslated library error in one group must neither stop the pass
            # for the others nor leave this group due at once (the loop would spin on it).
            log.exception("renewal of %s failed unexpectedly", key)
            with self._lock:
                group = self._groups.get(key)
                if group is not None:
                    self._failed(group, f"unexpected {type(exc).__name__}: {exc}")

    def renew_group(self, key: Hashable, *, asked: bool = False) -> CredfetcherError | None:
        """Renew one group now; return the error when it failed (None on success).

        ``asked``: a caller wants the group renewed with new credentials. A ticket that ends no
        later than the current one (issued in the same second) then still counts: it proves the
        credentials, and is as good as the one it replaces.
        """
        with self._lock:
            group = self._groups.get(key)
            if group is None or group.account is None:
                return None
            account = group.account
            old_end = group.endtime
            held = _user_identity(account)
            if held is not None and held in self._rejected:
                now = self.clock()
                if not asked and now < self._rejected[held]:
                    # Another group of this identity was refused: wait for the same window.
                    group.next_attempt = max(group.next_attempt, self._rejected[held])
                    return None
                # This attempt is the identity's one try for the period: others wait for it.
                self._rejected[held] = now + self.rejected_retry
        started = time.monotonic()
        try:
            tgt, material = account.acquire_tgt()
        except CredfetcherError as exc:
            metrics.inc(metrics.RENEWAL_FAILURES, account.gmsa)
            refused = held is not None and isinstance(exc, BindError | KeyRejectedError)
            with self._lock:
                self._failed(group, exc.message)
                if held is not None and refused:
                    until = self.clock() + self.rejected_retry
                    self._rejected[held] = until
                    group.next_attempt = until + self.rejected_retry * JITTER * self.rng()
                elif held is not None and held in self._rejected:
                    self._rejected[held] = self.clock()  # not a refusal: the next try may go
                retry = group.next_attempt - self.clock()
            log.warning(
                "renewal of %s failed (attempt %d, next in %.0f s): %s",
                account.principal,
                group.failures,
                retry,
                exc.message,
                extra={"GMSA": account.gmsa},
            )
            if is_dc_outage(exc):
                self.last_dc_error = exc.message
            return exc
        self.last_dc_error = ""
        if held is not None:
            with self._lock:
                self._rejected.pop(held, None)
        if tgt.info.endtime <= old_end and not asked:
            # The KDC gave us nothing new (e.g. the account's max ticket life was reached):
            # keep the current files and try again later rather than rewriting them.
            stale = KerberosError(
                f"the KDC issued no later ticket for {tgt.principal} (ends {tgt.info.endtime})",
                principal=tgt.principal,
            )
            with self._lock:
                self._failed(group, stale.message)
            return stale
        with self._lock:
            targets = list(group.targets.values())
            write_keytabs = group.material_id != id(material)
            group.tgt, group.material = tgt, material
        for target in targets:
            self._write_target(account, target, tgt, material, write_keytabs)
            # A pass over tens of thousands of files outlasts HealthCheck's and the watchdog's
            # 60 s: progress counts as life.
            self.heartbeat = time.monotonic()
        with self._lock:
            self._succeeded(group, tgt.info)
            group.material_id = id(material)
        metrics.inc(metrics.RENEWALS, account.gmsa)
        metrics.observe(metrics.RENEWAL_SECONDS, time.monotonic() - started)
        log.debug("renewed %s for %d lease(s)", tgt.principal, len(targets))
        return None

    def _write_target(
        self,
        account: Account,
        target: Target,
        tgt: tickets.Tgt,
        material: Any,
        write_keytab_now: bool,
    ) -> str | None:
        """Write one target's ccache (and keytab); record and return what went wrong, if
        anything. A target unregistered meanwhile (its lease deleted) is left alone."""
        tk = (target.lease_id, target.gmsa)
        with self.lease_lock(target.lease_id):
            if not self._registered(tk):
                return None  # the lease was deleted meanwhile (delete holds this lock)
            problems: list[str] = []
            retry = False  # True: a file is not written; False: at most a tampering report
            try:
                tickets.store_tgt(tgt, target.ccache, target.ownership, root=self.krb_dir)
                stored = True
            except TamperedError as exc:
                stored = True  # written, but something else sat at its name: reported
                problems.append(exc.message)
            except StorageError as exc:
                stored, retry = False, True
                problems.append(exc.message)
            if stored:
                with self._lock:
                    self._ticket_times[tk] = tgt.info
            if target.keytab is not None and (
                write_keytab_now
                or tk in self._write_failures
                or not regular_file_exists(
                    target.keytab, root=self.krb_dir, owner=target.ownership.expected_uid
                )
            ):
                try:
                    keys = account.keytab_keys(material, rc4=self.rc4)
                    write_keytab(
                        target.keytab, tgt.principal, keys, target.ownership, root=self.krb_dir
                    )
                except TamperedError as exc:
                    problems.append(exc.message)
                except StorageError as exc:
                    retry = True
                    problems.append(exc.message)
            message = "; ".join(problems) or None
            self._record_write(tk, message, retry=retry)
        if message is not None:
            log.warning(
                "cannot refresh %s: %s",
                target.ccache,
                message,
                extra={"LEASE_ID": target.lease_id, "GMSA": target.gmsa},
            )
        return message

    def _registered(self, tk: tuple[str, str]) -> bool:
        with self._lock:
            return tk in self._where

    def _record_write(self, tk: tuple[str, str], message: str | None, *, retry: bool) -> None:
        """A clean write clears the target's failure; a failed one backs off on its own.

        Without ``retry`` (every file was written, but something planted at a name was
        replaced) the report stays until the group's next renewal writes the files again:
        long enough for ListLeases to show it, and there is nothing to repair before then.
        """
        with self._lock:
            if message is None:
                self._write_failures.pop(tk, None)
                return
            if tk not in self._where:
                return
            now = self.clock()
            failure = self._write_failures.setdefault(tk, WriteFailure(message, since=now))
            failure.failures += 1
            failure.error = message
            failure.retry = retry
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failure.failures - 1))
            failure.next_attempt = (
                now + delay * (0.5 + 0.5 * self.rng()) if retry else float("inf")
            )

    def _retry_writes(self) -> None:
        """Write the group's current TGT again into every target whose write failed and is due."""
        now = self.clock()
        due: list[tuple[Account, Target, tickets.Tgt, Any]] = []
        with self._lock:
            # Only the failures are walked: a pass costs nothing per healthy lease.
            for tk, failure in self._write_failures.items():
                key = self._where.get(tk)
                group = self._groups.get(key) if key is not None else None
                if group is None or group.account is None or group.tgt is None:
                    continue  # nothing to write yet: the group's own renewal comes first
                if failure.next_attempt <= now:
                    due.append((group.account, group.targets[tk], group.tgt, group.material))
        for account, target, tgt, material in due:
            try:
                self._write_target(account, target, tgt, material, True)
            except Exception as exc:
                # Like _renew_guarded: one target's bug must not end the pass for the others.
                log.exception("rewriting %s failed unexpectedly", target.ccache)
                self._record_write(
                    (target.lease_id, target.gmsa),
                    f"unexpected {type(exc).__name__}: {exc}",
                    retry=True,
                )

    def _collect_orphans(self) -> None:
        if self.on_orphan is None:
            return
        now = self.clock()
        orphans: set[str] = set()
        with self._lock:
            for group in self._groups.values():
                if group.account is None:
                    # A domainless lease whose credentials were lost at restart and never
                    # renewed (RenewNonDomainJoinedKerberosLease) is as stuck as a failing one.
                    anchor = group.renew_till or group.registered_at
                elif group.failing_since is not None:
                    anchor = group.renew_till or group.failing_since
                else:
                    continue
                if now >= anchor + self.orphan_after:
                    orphans.update(tk[0] for tk in group.targets)
        for lease_id in sorted(orphans):
            log.warning(
                "removing lease %s: it could not be renewed for too long",
                lease_id,
                extra={"LEASE_ID": lease_id},
            )
            try:
                self.on_orphan(lease_id)
            except Exception:
                # One lease that cannot be removed must not end the pass for the others.
                log.exception("cannot remove orphaned lease %s", lease_id)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="renewal", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def hold(self) -> None:
        """No renewal pass until :meth:`release`; the loop keeps its heartbeat meanwhile.

        For start-up recovery: leases registered one by one with expired tickets would each
        make their group due, and a pass per lease loaded would rewrite the group's files over
        and over. Held, the first pass after :meth:`release` renews each group once.
        """
        self._held.set()

    def release(self) -> None:
        self._held.clear()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before looking at the state, so a wake-up that comes after this point is
            # never lost (the wait below returns at once).
            self._wake.clear()
            held = self._held.is_set()
            self.heartbeat = time.monotonic()
            try:
                if not held:
                    self.run_due()
            except Exception:
                # The loop must outlive any bug in one renewal; the traceback goes to the log.
                log.exception("renewal pass failed")
            self.heartbeat = time.monotonic()
            # Wake at least every 10 s: keeps the heartbeat (watchdog, HealthCheck) fresh. Held,
            # nothing runs before release() wakes the loop: a group already due must not make it
            # spin (it did, a whole core while 20,000 leases were loaded). Under the lock, so a
            # register() sees either this wake-up time or a schedule that includes its group.
            with self._lock:
                timeout = 10.0 if held else min(self.next_due_in(), 10.0)
                self._wake_at = self.clock() + timeout
            self._wake.wait(timeout)


def _keys_due(group: GroupState, now: float) -> bool:
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
    keys_due_at = getattr(group.account, "keys_due_at", None)
    if not callable(keys_due_at):
        return False
    when = keys_due_at()
    return when is None or (isinstance(when, float) and when <= now)


def _keys_due_at(group: GroupState) -> float | None:
    """When :func:`_keys_due` turns true for ``group`` (None: not by itself, or at once)."""
    if group.account is None or group.failures or not group.keytabs:
        return None
    keys_due_at = getattr(group.account, "keys_due_at", None)
    when = keys_due_at() if callable(keys_due_at) else None
    return when if isinstance(when, float) else None
