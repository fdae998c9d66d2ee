"""Writing one lease target's files -- its ccache and keytab -- and saying how it went.

Each target's write counts on its own: a lease whose file could not be written (disk full, EIO,
a read-only remount, a directory planted at its name) must show as failing and be written again,
while the other leases of its account are not held back. :meth:`LeaseFiles.refresh` therefore
never raises for a storage problem: it writes what it can and returns a :class:`WriteOutcome`,
from which :mod:`credfetcher.renewal` decides when to try again.

The per-lease locks live here too: a lease's files are written and removed (a delete, in
:mod:`credfetcher.service`) under its lock, so the two never interleave.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from credfetcher import tickets
from credfetcher.errors import StorageError
from credfetcher.files import TamperedError, regular_file_exists
from credfetcher.groups import Target
from credfetcher.keys import KerberosKey
from credfetcher.keytab import write_keytab

__all__ = ["LeaseFiles", "WriteOutcome"]


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


class LeaseFiles:
    """Writes lease targets' files under ``krb_dir`` (the root every directory is walked from,
    see :mod:`credfetcher.files`) and holds the per-lease locks."""

    def __init__(self, krb_dir: Path | None = None) -> None:
        self.krb_dir = krb_dir
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def lock(self, lease_id: str) -> threading.Lock:
        """Held while a lease's files are written or removed, so the two never interleave."""
        with self._locks_lock:
            return self._locks.setdefault(lease_id, threading.Lock())

    def forget(self, lease_id: str) -> None:
        """Drop a deleted lease's lock (a later lease of that id gets a fresh one)."""
        with self._locks_lock:
            self._locks.pop(lease_id, None)

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
        problems: list[str] = []
        retry = False
        try:
            tickets.store_tgt(tgt, target.ccache, target.ownership, root=self.krb_dir)
            stored = True
        except TamperedError as exc:
            stored = True  # written, but something else sat at its name: reported
            problems.append(exc.message)
        except StorageError as exc:
            stored, retry = False, True
            problems.append(exc.message)
        if target.keytab is not None and (
            keytab_due
            or not regular_file_exists(
                target.keytab, root=self.krb_dir, owner=target.ownership.expected_uid
            )
        ):
            try:
                write_keytab(
                    target.keytab, tgt.principal, list(keys()), target.ownership, root=self.krb_dir
                )
            except TamperedError as exc:
                problems.append(exc.message)
            except StorageError as exc:
                retry = True
                problems.append(exc.message)
        return WriteOutcome("; ".join(problems) or None, retry, stored)
