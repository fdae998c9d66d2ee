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

#: Lease ids the loader claims at a time: a caller naming one waits for at most this many loads
#: (some 10 ms at start-up's ~150 µs each).
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
        # Ids being loaded now, each by the one thread that claimed it; set when it is done.
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
            running = list(self._loading.values())
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

        Ids a caller claimed first (:meth:`ensure_loaded`) are skipped, never waited for here;
        a caller that names an id of the loader's chunk waits for that id only. Claiming a chunk
        in one step of the index's lock keeps the lock short (HealthCheck and ListLeases never
        wait behind a load) and lets a listing that follows the loader wait once per chunk, not
        once per lease.
        """
        for start in range(0, len(lease_ids), CHUNK):
            with self._lock:
                claimed = [
                    (lease_id, self._claim(lease_id))
                    for lease_id in lease_ids[start : start + CHUNK]
                    if lease_id in self._pending
                ]
            for n, (lease_id, done) in enumerate(claimed):
                try:
                    self._load_claimed(lease_id, done, load, register)
                except BaseException:
                    self._unclaim(claimed[n + 1 :])
                    raise

    def ensure_loaded(self, lease_id: str, load: Load, register: Register) -> bool:
        """Load ``lease_id`` now (``load``, then ``register``) if it was found at start-up and
        is not loaded yet; True when this call loaded it. Being loaded by another thread (the
        loader's chunk, another call): wait for that load, without a lock held."""
        while True:
            with self._lock:
                running = self._loading.get(lease_id)
                mine = None
                if running is None and lease_id in self._pending:
                    mine = self._claim(lease_id)
            if mine is not None:
                return self._load_claimed(lease_id, mine, load, register)
            if running is None:
                return False
            running.wait()  # then look again: loaded, or given back by a loader that failed

    def _claim(self, lease_id: str) -> threading.Event:
        """Take ``lease_id`` from the pending ones for the caller to load (under ``_lock``)."""
        self._pending.discard(lease_id)
        done = self._loading[lease_id] = threading.Event()
        return done

    def _unclaim(self, claimed: Sequence[tuple[str, threading.Event]]) -> None:
        """Give back ids claimed and not loaded: pending again, their waiters woken."""
        with self._lock:
            for lease_id, done in claimed:
                del self._loading[lease_id]
                self._pending.add(lease_id)
                done.set()

    def _load_claimed(
        self, lease_id: str, done: threading.Event, load: Load, register: Register
    ) -> bool:
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
            done.set()
        return loaded is not None
