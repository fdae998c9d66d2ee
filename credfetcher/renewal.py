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
clean. The other targets of the group are not held back. The files are written by
:mod:`credfetcher.leasefiles`, which reports each write's outcome; the groups and their indexes
are kept by :mod:`credfetcher.groups`; this module decides when.

The clock is injectable and :meth:`RenewalScheduler.run_due` does one pass synchronously, so
unit tests drive the scheduler without sleeping.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from credfetcher import metrics, tickets
from credfetcher.errors import BindError, CredfetcherError, KerberosError, KeyRejectedError
from credfetcher.groups import (
    Account,
    GroupIndex,
    GroupState,
    Target,
    TargetStatus,
    keys_due,
    keys_due_at,
)
from credfetcher.keys import KerberosKey
from credfetcher.krbcodes import is_dc_outage
from credfetcher.leasefiles import LeaseFiles, WriteJob, WriteOutcome
from credfetcher.lockout import REJECTED_PASSWORD_RETRY, RefusedPasswords

# Defined with the group bookkeeping; service.py builds its Targets from here.
__all__ = ["REJECTED_PASSWORD_RETRY", "Account", "RenewalScheduler", "Target", "TargetStatus"]

log = logging.getLogger(__name__)

BACKOFF_BASE = 2.0
BACKOFF_CAP = 30.0
JITTER = 0.1
MAX_MARGIN_FRACTION = 0.9
LIFE_SLACK = 5.0
MIN_AGE_FRACTION = 0.05
# Groups renewed at once: a KDC that black-holes a request delays the others once per batch.
RENEWAL_WORKERS = 4


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
        # Domainless users whose password was refused: tried again only when lockout-safe.
        self._refused = RefusedPasswords(rejected_retry)
        self.orphan_after = orphan_after
        self.rc4 = rc4
        self.clock = clock
        self.rng = rng
        self.on_orphan = on_orphan
        # The groups and their indexes; self._lock guards it and every GroupState in it.
        self._index = GroupIndex()
        # Each target's files, and the per-lease locks (krb_dir: see credfetcher.files).
        self.files = LeaseFiles(krb_dir)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        # When the loop wakes by itself: register() wakes it only for a group due sooner.
        self._wake_at = float("inf")
        self._held = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = 0.0
        # Message of the last DC/KDC failure; "" once a later call succeeded.
        self.last_dc_error = ""


    def lease_lock(self, lease_id: str) -> threading.Lock:
        """Held while a lease's files are written or removed, so the two never interleave."""
        return self.files.lock(lease_id)

    def register(
        self,
        key: Hashable,
        account: Account | None,
        target: Target,
        info: tickets.TicketInfo | None,
    ) -> None:
        """Track ``target`` under the account ``key``; ``info`` is the ticket just written."""
        with self._lock:
            group, joined = self._index.attach(key, account, target, self.clock())
            if info is not None:
                self._index.ticket_times[target.key] = info
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
                due_at = 0.0 if keys_due(group, now) else group.next_attempt
                if group.account is not None and due_at < self._wake_at:
                    self._wake.set()

    def unregister_lease(self, lease_id: str) -> None:
        with self._lock:
            self._index.detach_lease(lease_id)
            self.files.forget(lease_id)

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
            self._index.detach(target.key)
            self.register(new_key, account, target, info)


    def status(self, lease_id: str, gmsa: str) -> TargetStatus | None:
        with self._lock:
            return self._index.status((lease_id, gmsa))

    def failing_groups(self) -> list[tuple[str, str]]:
        """(principal or key, last error) of every group whose last attempt failed."""
        with self._lock:
            return self._index.failing_groups()

    def live_counts(self) -> tuple[dict[str, int], dict[str, float]]:
        """Leases per state (the worst of their targets'), and per account principal the end of
        the earliest ticket its leases hold: what the metrics endpoint shows at each scrape."""
        with self._lock:
            return self._index.live_counts()

    def ticket_info(self, lease_id: str, gmsa: str) -> tickets.TicketInfo | None:
        """The ticket the daemon last wrote into this target's file (None: none known)."""
        with self._lock:
            return self._index.ticket_times.get((lease_id, gmsa))

    def all_writes_failing(self) -> str | None:
        """The first write error when no target's files could be written at its last attempt
        (and there is one). A tampering report alone (the file was written) does not count."""
        with self._lock:
            return self._index.all_writes_failing()

    def lease_count(self) -> int:
        with self._lock:
            return len(self._index.by_lease)

    def alive(self, max_age: float) -> bool:
        """The loop thread runs and has completed a pass within ``max_age`` seconds."""
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and time.monotonic() - self.heartbeat <= max_age
        )


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
                for k, g in self._index.groups.items()
                if g.account is not None and (g.next_attempt <= now or keys_due(g, now))
            ]

    def next_due_in(self) -> float:
        now = self.clock()
        with self._lock:
            groups = self._index.groups.values()
            times = [g.next_attempt for g in groups if g.account is not None]
            times += [w.next_attempt for w in self._index.write_failures.values()]
            # Keytabs change at the password change itself, to the second (keys_due).
            times += [t for g in groups if (t := keys_due_at(g)) is not None]
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
                group = self._index.groups.get(key)
                if group is not None:
                    self._failed(group, f"unexpected {type(exc).__name__}: {exc}")

    def renew_group(self, key: Hashable, *, asked: bool = False) -> CredfetcherError | None:
        """Renew one group now; return the error when it failed (None on success).

        ``asked``: a caller wants the group renewed with new credentials. A ticket that ends no
        later than the current one (issued in the same second) then still counts: it proves the
        credentials, and is as good as the one it replaces.
        """
        with self._lock:
            group = self._index.groups.get(key)
            if group is None or group.account is None:
                return None
            account = group.account
            old_start, old_end = group.starttime, group.endtime
            held = self._refused.identity_of(account)
            wait = None if held is None else self._refused.claim(held, self.clock(), asked=asked)
            if wait is not None:
                group.next_attempt = max(group.next_attempt, wait)
                return None
        started = time.monotonic()
        try:
            tgt, material = account.acquire_tgt()
        except CredfetcherError as exc:
            metrics.inc(metrics.RENEWAL_FAILURES, account.gmsa)
            refused = isinstance(exc, BindError | KeyRejectedError)
            with self._lock:
                self._failed(group, exc.message)
                if held is not None:
                    until = self._refused.failed(held, self.clock(), refused=refused)
                    if until is not None:  # the password itself: wait until lockout-safe
                        group.next_attempt = until + self._refused.retry * JITTER * self.rng()
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
                self._refused.succeeded(held)
        # A ticket of the same second as the current one has its very times: as good as it, and
        # the group was due for another reason (at a password change the keys are confirmed a
        # second after the switch, and the keytab must be written again).
        same_second = tgt.info.starttime == old_start and tgt.info.endtime == old_end
        if tgt.info.endtime <= old_end and not asked and not same_second:
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
        self.files.refresh_all(targets, self._write_job(tgt, account, material, write_keytabs))
        with self._lock:
            self._succeeded(group, tgt.info)
            group.material_id = id(material)
        metrics.inc(metrics.RENEWALS, account.gmsa)
        metrics.observe(metrics.RENEWAL_SECONDS, time.monotonic() - started)
        log.debug("renewed %s for %d lease(s)", tgt.principal, len(targets))
        return None

    def _write_job(
        self, tgt: tickets.Tgt, account: Account, material: Any, keytab_due: bool
    ) -> WriteJob:
        """Writes of ``tgt`` (:meth:`LeaseFiles.refresh_all`): each target's outcome recorded,
        a failed write backing off on its own. A target unregistered meanwhile (its lease
        deleted: delete holds the lease's lock, held when ``due`` is asked) is left alone."""

        def due(target: Target) -> bool | None:
            with self._lock:
                if target.key not in self._index.where:
                    return None
                return keytab_due or target.key in self._index.write_failures

        def progress() -> None:
            # A pass over tens of thousands of files outlasts HealthCheck's and the watchdog's
            # 60 s: progress counts as life.
            self.heartbeat = time.monotonic()

        def record(target: Target, outcome: WriteOutcome) -> None:
            self._record_write(target, outcome, tgt.info)

        return WriteJob(tgt, self._keys_of(account, material), due, record, progress)

    def _record_write(
        self, target: Target, outcome: WriteOutcome, info: tickets.TicketInfo | None = None
    ) -> None:
        """A clean write clears the target's failure; a failed one backs off on its own.

        Without ``retry`` (every file was written, but something planted at a name was
        replaced) the report stays until the group's next renewal writes the files again:
        long enough for ListLeases to show it, and there is nothing to repair before then.
        """
        if outcome.error is not None:
            log.warning(
                "cannot refresh %s: %s",
                target.ccache,
                outcome.error,
                extra={"LEASE_ID": target.lease_id, "GMSA": target.gmsa},
            )
        with self._lock:
            now = self.clock()
            written = info if outcome.stored else None
            failure = self._index.record_write(
                target.key, outcome.error, outcome.retry, written, now
            )
            if failure is None:
                return
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failure.failures - 1))
            failure.next_attempt = (
                now + delay * (0.5 + 0.5 * self.rng()) if outcome.retry else float("inf")
            )

    def _retry_writes(self) -> None:
        """Write the group's current TGT again into every target whose write failed and is due."""
        now = self.clock()
        with self._lock:
            due = self._index.rewrites_due(now)
        for account, target, tgt, material in due:
            try:
                self.files.refresh_all([target], self._write_job(tgt, account, material, True))
            except Exception as exc:
                # Like _renew_guarded: one target's bug must not end the pass for the others.
                log.exception("rewriting %s failed unexpectedly", target.ccache)
                self._record_write(
                    target, WriteOutcome(f"unexpected {type(exc).__name__}: {exc}", True, False)
                )

    def _keys_of(self, account: Account, material: Any) -> Callable[[], Sequence[KerberosKey]]:
        """The account's keytab keys from ``material``, derived once, and only when a keytab is
        written: a renewal of 1,000 leases' files needs them once, not 1,000 times."""
        return functools.cache(lambda: account.keytab_keys(material, rc4=self.rc4))

    def _collect_orphans(self) -> None:
        if self.on_orphan is None:
            return
        now = self.clock()
        orphans: set[str] = set()
        with self._lock:
            for group in self._index.groups.values():
                stuck = group.stuck_since
                if stuck is not None and now >= stuck + self.orphan_after:
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
        """No renewal pass until :meth:`release` (the heartbeat goes on): during recovery a
        pass per lease loaded would rewrite its group's files over and over; released, the first
        pass renews each group once."""
        self._held.set()

    def release(self) -> None:
        self._held.clear()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before looking, so a later wake-up is never lost.
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
            # At least every 10 s, for the heartbeat. Held, only release() wakes it (a due group
            # made it spin a core). Locked: register() sees this time or a schedule with its group.
            with self._lock:
                timeout = 10.0 if held else min(self.next_due_in(), 10.0)
                self._wake_at = self.clock() + timeout
            self._wake.wait(timeout)
