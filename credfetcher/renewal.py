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
from credfetcher.errors import CredfetcherError, KerberosError, StorageError
from credfetcher.files import Ownership
from credfetcher.keys import KerberosKey
from credfetcher.keytab import write_keytab

log = logging.getLogger(__name__)

BACKOFF_BASE = 2.0
BACKOFF_CAP = 30.0
JITTER = 0.1
MAX_MARGIN_FRACTION = 0.9
MIN_AGE_FRACTION = 0.05
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
    registered_at: float = 0.0


@dataclass(frozen=True)
class TargetStatus:
    """What ListLeases and HealthCheck show about one target."""

    endtime: float
    renew_till: float
    next_attempt: float
    last_error: str
    waiting_for_credentials: bool


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
    ) -> None:
        self.margin = margin
        self.orphan_after = orphan_after
        self.rc4 = rc4
        self.clock = clock
        self.rng = rng
        self.on_orphan = on_orphan
        self._groups: dict[Hashable, GroupState] = {}
        self._ticket_times: dict[tuple[str, str], tickets.TicketInfo] = {}
        self._lock = threading.RLock()
        self._lease_locks: dict[str, threading.Lock] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = 0.0
        self.last_dc_success = 0.0
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
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                group = GroupState(account=account, registered_at=self.clock())
                self._groups[key] = group
            elif account is not None:
                group.account = account
            joined = bool(group.targets)
            group.targets[(target.lease_id, target.gmsa)] = target
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
        self._wake.set()

    def set_account(self, key: Hashable, account: Account) -> None:
        with self._lock:
            if key in self._groups:
                self._groups[key].account = account

    def unregister_lease(self, lease_id: str) -> None:
        with self._lock:
            for key in list(self._groups):
                group = self._groups[key]
                for tk in [tk for tk in group.targets if tk[0] == lease_id]:
                    del group.targets[tk]
                    self._ticket_times.pop(tk, None)
                if not group.targets:
                    del self._groups[key]
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
        tk = (target.lease_id, target.gmsa)
        with self._lock:
            for key in list(self._groups):
                group = self._groups[key]
                if group.targets.pop(tk, None) is not None:
                    if not group.targets:
                        del self._groups[key]
                    break
            self._ticket_times.pop(tk, None)
            self.register(new_key, account, target, info)

    # -- status ----------------------------------------------------------------------------

    def status(self, lease_id: str, gmsa: str) -> TargetStatus | None:
        with self._lock:
            for group in self._groups.values():
                if (lease_id, gmsa) in group.targets:
                    # The ticket this target's file holds; the group's earliest one otherwise.
                    own = self._ticket_times.get((lease_id, gmsa))
                    return TargetStatus(
                        endtime=float(own.endtime) if own else group.endtime,
                        renew_till=float(own.renew_till) if own else group.renew_till,
                        next_attempt=group.next_attempt,
                        last_error=group.last_error,
                        waiting_for_credentials=group.account is None,
                    )
        return None

    def failing_groups(self) -> list[tuple[str, str]]:
        """(principal or key, last error) of every group whose last attempt failed."""
        with self._lock:
            return [
                (g.account.principal, g.last_error)
                for k, g in self._groups.items()
                if g.failures and g.account is not None
            ]

    def lease_count(self) -> int:
        with self._lock:
            return len({tk[0] for g in self._groups.values() for tk in g.targets})

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
        """
        life = max(group.endtime - group.starttime, 0.0)
        if not life or self.margin <= MAX_MARGIN_FRACTION * life:
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
        try:
            tgt, material = account.acquire_tgt()
        except CredfetcherError as exc:
            metrics.inc(metrics.RENEWAL_FAILURES, account.gmsa)
            with self._lock:
                self._failed(group, exc.message)
                retry = group.next_attempt - self.clock()
            log.warning(
                "renewal of %s failed (attempt %d, next in %.0f s): %s",
                account.principal,
                group.failures,
                retry,
                exc.message,
                extra={"GMSA": account.gmsa},
            )
            self.last_dc_error = exc.message
            return exc
        self.last_dc_success = time.monotonic()
        self.last_dc_error = ""
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
        for target in targets:
            self._write_target(account, target, tgt, material, write_keytabs)
        with self._lock:
            self._succeeded(group, tgt.info)
            group.material_id = id(material)
        metrics.inc(metrics.RENEWALS, account.gmsa)
        log.debug("renewed %s for %d lease(s)", tgt.principal, len(targets))
        return None

    def _write_target(
        self,
        account: Account,
        target: Target,
        tgt: tickets.Tgt,
        material: Any,
        write_keytab_now: bool,
    ) -> None:
        with self.lease_lock(target.lease_id):
            if not target.ccache.parent.is_dir():
                return  # the lease was deleted meanwhile
            try:
                tickets.store_tgt(tgt, target.ccache, target.ownership)
                with self._lock:
                    self._ticket_times[(target.lease_id, target.gmsa)] = tgt.info
                if target.keytab is not None and (write_keytab_now or not target.keytab.exists()):
                    keys = account.keytab_keys(material, rc4=self.rc4)
                    write_keytab(target.keytab, tgt.principal, keys, target.ownership)
            except StorageError as exc:
                if target.ccache.parent.is_dir():
                    log.exception("cannot refresh %s: %s", target.ccache, exc.message)

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

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            try:
                self.run_due()
            except Exception:
                # The loop must outlive any bug in one renewal; the traceback goes to the log.
                log.exception("renewal pass failed")
            self.heartbeat = time.monotonic()
            # Wake at least every 10 s: keeps the heartbeat (watchdog, HealthCheck) fresh.
            self._wake.wait(timeout=min(self.next_due_in(), 10.0))
            self._wake.clear()


def _keys_due(group: GroupState, now: float) -> bool:
    """A group with keytabs is due when its account's keys must be read again.

    Keytabs follow the password, not the ticket (``docs/rotation.md``): the account re-reads the
    managed password five minutes before a change and right after it, and the keytabs must get
    the next (then the new) password then, not at the ticket's expiry hours later. An account
    whose keys were never read (leases recovered at start-up) is due at once: the keytabs on
    disk may predate a change. Not while the group is backing off after a failure: its own
    ``next_attempt`` decides then. The loop wakes at least every 10 s, so no ``next_due_in``
    change is needed.
    """
    if group.failures or not any(t.keytab is not None for t in group.targets.values()):
        return False
    keys_due_at = getattr(group.account, "keys_due_at", None)
    if not callable(keys_due_at):
        return False
    when = keys_due_at()
    return when is None or (isinstance(when, float) and when <= now)
