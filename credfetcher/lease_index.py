"""The leases the service knows: their records in memory, and those found on disk not loaded yet.

Start-up lists krbdir and serves at once; the leases are loaded in the background
(:meth:`credfetcher.service.LeaseService.recover`, :meth:`LeaseIndex.load_all`). A call that
names one loads it first, or waits for the thread loading it (:meth:`LeaseIndex.ensure_loaded`);
a call that concerns every lease waits for the loader (:meth:`LeaseIndex.wait_loaded`). Each
lease is loaded exactly once, by whichever thread claimed it first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from credfetcher.leases import LeaseRecord, LoadedLease
from credfetcher.sortedids import SortedIds

Load = Callable[[str], LoadedLease | None]
Register = Callable[[LoadedLease], None]

#: Lease ids the loader claims at a time: a call naming one waits for at most this many loads
#: (some 10 ms at ~150 µs each).
CHUNK = 64


class LeaseIndex:
    """Lease id → record, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, LeaseRecord] = {}
        # Lease directories found at start-up and not loaded yet.
        self._pending: set[str] = set()
        # The ids of both, sorted: a ListLeases page is a slice, not a sort of every id.
        self._ids = SortedIds()
        # Ids being loaded now, each by the one thread that claimed it: the event it sets when
        # done with them (one per chunk of the loader's, one per call's lease).
        self._loading: dict[str, threading.Event] = {}
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
        """What the loader could not load is no lease to wait for. Loads other threads still
        run are waited for first: once :meth:`wait_loaded` returns, every lease is in."""
        with self._lock:
            running = set(self._loading.values())
        for done in running:
            done.wait()
        with self._lock:
            for lease_id in self._pending - self._records.keys():
                self._ids.remove(lease_id)
            self._pending.clear()
        self._loaded.set()

    def wait_loaded(self) -> None:
        """Block until every lease found at start-up is loaded (at once when none is pending)."""
        self._loaded.wait()

    def load_all(self, lease_ids: Sequence[str], load: Load, register: Register) -> None:
        """The loader: load ``lease_ids`` in order, claiming :data:`CHUNK` of them at a time.

        Ids a call claimed first (:meth:`ensure_loaded`) are skipped, never waited for here. A
        call naming an id of the loader's chunk waits for that chunk (some milliseconds): a
        listing that follows the loader wakes once per chunk, not once per lease. Claiming a
        chunk is one short hold of the index's lock: HealthCheck and ListLeases never wait
        behind a load.
        """
        for start in range(0, len(lease_ids), CHUNK):
            with self._lock:
                claimed = [i for i in lease_ids[start : start + CHUNK] if i in self._pending]
                done = self._claim(claimed)
            left = iter(claimed)
            try:
                for lease_id in left:
                    self._load_claimed(lease_id, load, register)
            except BaseException:
                self._unclaim(list(left))
                raise
            finally:
                done.set()

    def ensure_loaded(self, lease_id: str, load: Load, register: Register) -> bool:
        """Load ``lease_id`` now (``load``, then ``register``) if it was found at start-up and
        is not loaded yet; True when this call loaded it. Being loaded by another thread (the
        loader's chunk, another call): wait for that load, without a lock held."""
        while True:
            with self._lock:
                running = self._loading.get(lease_id)
                mine = running is None and lease_id in self._pending
                if mine:
                    running = self._claim([lease_id])
            if running is None:
                return False
            if mine:
                try:
                    return self._load_claimed(lease_id, load, register)
                finally:
                    running.set()
            running.wait()  # then look again: loaded, or given back by a loader that failed

    def _claim(self, lease_ids: list[str]) -> threading.Event:
        """Take ``lease_ids`` from the pending ones for the caller to load (under ``_lock``);
        the caller sets the event returned once it is done with them."""
        done = threading.Event()
        for lease_id in lease_ids:
            self._pending.discard(lease_id)
            self._loading[lease_id] = done
        return done

    def _unclaim(self, lease_ids: list[str]) -> None:
        """Give back ids claimed and not loaded: pending again (their waiters look again)."""
        with self._lock:
            for lease_id in lease_ids:
                del self._loading[lease_id]
                self._pending.add(lease_id)

    def _load_claimed(self, lease_id: str, load: Load, register: Register) -> bool:
        loaded = None
        try:
            loaded = load(lease_id)
            if loaded is not None:
                self.put(loaded.record)
                register(loaded)
        finally:
            with self._lock:
                del self._loading[lease_id]
                if lease_id not in self._records:
                    self._ids.remove(lease_id)
        return loaded is not None
