"""The leases the service knows: their records in memory, and those found on disk not loaded yet.

Start-up lists krbdir and serves at once; the leases are loaded in the background
(:meth:`credfetcher.service.LeaseService.recover`). A call that names one loads it first
(:meth:`LeaseIndex.ensure_loaded`); a call that concerns every lease waits for the loader
(:meth:`LeaseIndex.wait_loaded`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from credfetcher.leases import LeaseRecord
from credfetcher.sortedids import SortedIds


class LeaseIndex:
    """Lease id → record, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, LeaseRecord] = {}
        # Lease directories found at start-up and not loaded yet.
        self._pending: set[str] = set()
        # The ids of both, sorted: a ListLeases page is a slice, not a sort of every id.
        self._ids = SortedIds()
        self._load_lock = threading.Lock()
        self._loaded = threading.Event()
        self._loaded.set()

    def get(self, lease_id: str) -> LeaseRecord | None:
        with self._lock:
            return self._records.get(lease_id)

    def put(self, record: LeaseRecord) -> None:
        with self._lock:
            self._records[record.lease_id] = record
            self._ids.add(record.lease_id)

    def pop(self, lease_id: str) -> None:
        with self._lock:
            self._records.pop(lease_id, None)
            self._ids.remove(lease_id)

    def __contains__(self, lease_id: str) -> bool:
        with self._lock:
            return lease_id in self._records

    def records(self, kind: str | None = None) -> list[LeaseRecord]:
        """The loaded records (of ``kind`` when given), a snapshot."""
        with self._lock:
            return [r for r in self._records.values() if kind is None or r.kind == kind]

    def replace(self, record: LeaseRecord, write: Callable[[LeaseRecord], None]) -> bool:
        """``write(record)`` then keep ``record``, unless its lease is gone; True when kept.

        One step under the index's lock, so a lease deleted meanwhile is not brought back.
        """
        with self._lock:
            if record.lease_id not in self._records:
                return False
            write(record)
            self._records[record.lease_id] = record
            return True

    def ids_after(self, after: str) -> Iterator[str]:
        """Every lease id greater than ``after``, loaded or not yet, in order, read a chunk at a
        time (:meth:`SortedIds.walk`): one deleted meanwhile is skipped, one added past the
        position reached is given, none twice."""
        return self._ids.walk(after, self._lock)

    def count(self, lease_ids: Iterable[str]) -> int:
        with self._lock:
            return sum(i in self._records for i in lease_ids)

    # -- start-up loading ----------------------------------------------------------------------

    def begin_loading(self, lease_ids: Iterable[str]) -> None:
        with self._lock:
            self._pending = set(lease_ids)
            self._ids.load([*self._pending, *self._records])
        self._loaded.clear()

    def end_loading(self) -> None:
        """What the loader could not load is no lease to wait for."""
        with self._lock:
            for lease_id in self._pending - self._records.keys():
                self._ids.remove(lease_id)
            self._pending.clear()
        self._loaded.set()

    def wait_loaded(self) -> None:
        """Block until every lease found at start-up is loaded (at once when none is pending)."""
        self._loaded.wait()

    def ensure_loaded(
        self, lease_id: str, load: Callable[[str], LeaseRecord | None],
        register: Callable[[LeaseRecord], None],
    ) -> bool:
        """Load ``lease_id`` now (``load``, then ``register``) if it was found at start-up and
        is not loaded yet; True when this call loaded it."""
        with self._lock:
            if lease_id not in self._pending:
                return False
        with self._load_lock:
            with self._lock:
                if lease_id not in self._pending:
                    return False  # another caller loaded it while we waited
            record = None
            try:
                record = load(lease_id)
                if record is not None:
                    self.put(record)
                    register(record)
            finally:
                with self._lock:
                    self._pending.discard(lease_id)
                    if lease_id not in self._records:
                        self._ids.remove(lease_id)
        return record is not None
