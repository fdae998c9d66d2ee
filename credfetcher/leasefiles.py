"""Writing one lease target's files -- its ccache and keytab -- and saying how it went.

Each target's write counts on its own: a lease whose file could not be written (disk full, EIO,
a read-only remount, a directory planted at its name) must show as failing and be written again,
while the other leases of its account are not held back. :meth:`LeaseFiles.refresh` therefore
never raises for a storage problem: it writes what it can and returns a :class:`WriteOutcome`,
from which :mod:`credfetcher.renewal` decides when to try again. A group's renewal goes through
:meth:`LeaseFiles.refresh_all`, which writes a large group's ccaches in batches
(:mod:`credfetcher.batchwrite`: one ``syncfs`` for a chunk instead of two fsyncs per file) with
the same outcome per target.

The per-lease locks live here too: a lease's files are written and removed (a delete, in
:mod:`credfetcher.service`) under its lock, so the two never interleave.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from credfetcher import batchwrite, tickets
from credfetcher.errors import StorageError
from credfetcher.files import TamperedError, regular_file_exists
from credfetcher.groups import Target
from credfetcher.keys import KerberosKey
from credfetcher.keytab import write_keytab

__all__ = ["BATCH_MIN", "LeaseFiles", "WriteJob", "WriteOutcome"]

log = logging.getLogger(__name__)

#: A group's renewal with this many targets or more writes their ccaches in syncfs batches.
BATCH_MIN = 8


@dataclass(frozen=True)
class WriteOutcome:
    """How one target's refresh went.

    ``error`` is None when every file was written cleanly. Otherwise ``retry`` says whether a
    file is still unwritten (True: try again soon) or everything was written but something
    planted at a name was replaced (:class:`credfetcher.files.TamperedError`: a report only).
    ``stored``: the ccache now holds the new ticket.
    """

    error: str | None
    retry: bool
    stored: bool


@dataclass(frozen=True)
class WriteJob:
    """What :meth:`LeaseFiles.refresh_all` writes, and the caller's side of each target.

    ``due(target)`` (called under the target's lease lock) says whether its keytab is due, or
    None when the target is no longer registered: its lease was deleted (a delete holds that
    lock), so nothing is written and the lease's directory is not re-created.
    ``record(target, outcome)`` is called under the lock too; ``progress()`` after each target.
    """

    tgt: tickets.Tgt
    keys: Callable[[], Sequence[KerberosKey]]
    due: Callable[[Target], bool | None]
    record: Callable[[Target, WriteOutcome], None]
    progress: Callable[[], None]


class LeaseFiles:
    """Writes lease targets' files under ``krb_dir`` (the root every directory is walked from,
    see :mod:`credfetcher.files`) and holds the per-lease locks."""

    def __init__(self, krb_dir: Path | None = None) -> None:
        self.krb_dir = krb_dir
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # lease id -> gMSA -> writes of that target so far (guarded by _locks_lock).
        self._writes: dict[str, dict[str, int]] = {}

    def lock(self, lease_id: str) -> threading.Lock:
        """Held while a lease's files are written or removed, so the two never interleave."""
        with self._locks_lock:
            return self._locks.setdefault(lease_id, threading.Lock())

    def forget(self, lease_id: str) -> None:
        """Drop a deleted lease's lock (a later lease of that id gets a fresh one)."""
        with self._locks_lock:
            self._locks.pop(lease_id, None)
            self._writes.pop(lease_id, None)

    def refresh(
        self,
        target: Target,
        tgt: tickets.Tgt,
        keys: Callable[[], Sequence[KerberosKey]],
        keytab_due: bool,
    ) -> WriteOutcome:
        """Write ``tgt`` into the target's ccache, and its keytab from ``keys()`` when
        ``keytab_due`` or when no keytab the daemon made sits at its name.

        The caller holds :meth:`lock` of the target's lease, and records the outcome before
        letting go of it: two writes of one target (the renewal loop's and a caller's) are then
        recorded in the order they were made. ``keys`` is called only when a keytab is written.
        """
        self._count_write(target)
        try:
            tickets.store_tgt(tgt, target.ccache, target.ownership, root=self.krb_dir)
            ccache = None
        except StorageError as exc:
            ccache = exc
        return _outcome(ccache, self._keytab(target, tgt, keys, keytab_due))

    def refresh_all(self, targets: Sequence[Target], job: WriteJob) -> None:
        """Write ``job.tgt`` into every target's files (a group's renewal), each target's under
        its lease's lock, with ``job``'s callbacks (see :class:`WriteJob`).

        :data:`BATCH_MIN` targets or more share one serialised ccache and :mod:`syncfs batches
        <credfetcher.batchwrite>`, with the same outcomes as :meth:`refresh`; their keytabs are
        written one by one, after the ccache. Fewer, or when the ccache cannot be serialised
        (a full disk: then each target's own write says so), each target goes through
        :meth:`refresh`.
        """
        data = None
        if len(targets) >= BATCH_MIN and self.krb_dir is not None:
            try:
                data = batchwrite.ccache_bytes(job.tgt, self.krb_dir)
            except StorageError as exc:
                log.info("writing %d ccaches one at a time: %s", len(targets), exc.message)
        if data is None or self.krb_dir is None:
            self._refresh_each(targets, job)
            return
        for start in range(0, len(targets), batchwrite.CHUNK):
            chunk = targets[start : start + batchwrite.CHUNK]
            files = [(target.ccache, target.ownership) for target in chunk]
            try:
                batch = batchwrite.Chunk(self.krb_dir, data, files)
            except StorageError as exc:
                log.info("writing %d ccaches one at a time: %s", len(chunk), exc.message)
                self._refresh_each(chunk, job)
                continue
            with batch:
                self._refresh_chunk(batch, chunk, job)

    def _refresh_each(self, targets: Sequence[Target], job: WriteJob) -> None:
        for target in targets:
            with self.lock(target.lease_id):
                keytab_due = job.due(target)
                if keytab_due is not None:
                    job.record(target, self.refresh(target, job.tgt, job.keys, keytab_due))
            job.progress()

    def _refresh_chunk(
        self, batch: batchwrite.Chunk, chunk: Sequence[Target], job: WriteJob
    ) -> None:
        """One chunk of :meth:`refresh_all`'s batch, ``batch`` holding its targets' files."""
        batch.stage()  # in the private directory: no lease's lock needed
        batch.sync()
        written = []
        for i, target in enumerate(chunk):
            with self.lock(target.lease_id):
                keytab_due = job.due(target)
                if keytab_due is not None:  # else deleted: its staged file is removed
                    batch.install(i)
                    keytab = self._keytab(target, job.tgt, job.keys, keytab_due)
                    written.append((i, target, self._count_write(target), keytab))
            job.progress()
        batch.sync()
        for i, target, count, keytab in written:
            outcome = _outcome(batch.result(i), keytab)
            with self.lock(target.lease_id):
                # A write of the target made since (a caller's renewal) recorded its own outcome.
                if self._writes.get(target.lease_id, {}).get(target.gmsa) == count:
                    job.record(target, outcome)

    def _count_write(self, target: Target) -> int:
        """Number a write of ``target`` (its lease's lock is held): outcomes are recorded in
        the order the writes were made, and only the last write's is."""
        with self._locks_lock:
            counts = self._writes.setdefault(target.lease_id, {})
            counts[target.gmsa] = counts.get(target.gmsa, 0) + 1
            return counts[target.gmsa]

    def _keytab(
        self,
        target: Target,
        tgt: tickets.Tgt,
        keys: Callable[[], Sequence[KerberosKey]],
        keytab_due: bool,
    ) -> tuple[str | None, bool]:
        """Write the target's keytab when due or missing: (problem or None, retry)."""
        if target.keytab is None or not (
            keytab_due
            or not regular_file_exists(
                target.keytab, root=self.krb_dir, owner=target.ownership.expected_uid
            )
        ):
            return None, False
        try:
            write_keytab(
                target.keytab, tgt.principal, list(keys()), target.ownership, root=self.krb_dir
            )
        except TamperedError as exc:
            return exc.message, False
        except StorageError as exc:
            return exc.message, True
        return None, False


def _outcome(ccache: StorageError | None, keytab: tuple[str | None, bool]) -> WriteOutcome:
    """A target's outcome from its ccache's error (None: written cleanly) and its keytab's."""
    problems = []
    stored, retry = True, keytab[1]
    if ccache is not None:
        problems.append(ccache.message)
        if not isinstance(ccache, TamperedError):  # a TamperedError: written, but reported
            stored, retry = False, True
    if keytab[0] is not None:
        problems.append(keytab[0])
    return WriteOutcome("; ".join(problems) or None, retry, stored)
