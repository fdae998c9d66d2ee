"""The start-up loader and the calls that name a lease while it runs (issue 18).

The loader claims its leases a chunk at a time (:data:`credfetcher.lease_index.CHUNK`); a call
naming a lease the loader has claimed waits for that lease only, one naming a lease nobody has
claimed loads it itself. Each lease is loaded exactly once, a lease deleted meanwhile stays
deleted, and the index's lock is never held while a lease loads.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from credfetcher.lease_index import CHUNK, LeaseIndex
from credfetcher.leases import GmsaEntry, LeaseRecord, LoadedLease

IDS = [f"{n:020x}" for n in range(1, 3 * CHUNK + 1)]
WAIT = 10.0


class Disk:
    """Leases "on disk": ``load`` counts its calls and can be held at one id."""

    def __init__(self, ids: list[str]) -> None:
        self.present = set(ids)
        self.loads: Counter[str] = Counter()
        self.registered: list[str] = []
        self.hold_at: str | None = None
        self.holding = threading.Event()
        self.release = threading.Event()
        self.fail_at: str | None = None
        self._lock = threading.Lock()

    def load(self, lease_id: str) -> LoadedLease | None:
        with self._lock:
            self.loads[lease_id] += 1
        if lease_id == self.hold_at:
            self.holding.set()
            assert self.release.wait(WAIT)
        if lease_id == self.fail_at:
            raise RuntimeError("a load that fails")
        if lease_id not in self.present:
            return None
        record = LeaseRecord(lease_id=lease_id, entries=(GmsaEntry("webapp01", "d", "", "{}"),))
        return LoadedLease(record, {"webapp01": None})

    def register(self, loaded: LoadedLease) -> None:
        with self._lock:
            self.registered.append(loaded.record.lease_id)


@contextmanager
def running(target: object, *args: object) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    try:
        yield thread
    finally:
        thread.join(WAIT)
        assert not thread.is_alive()


def loader(index: LeaseIndex, disk: Disk) -> None:
    """What LeaseService.recover does."""
    try:
        index.load_all(IDS, disk.load, disk.register)
    finally:
        index.end_loading()


def ensure(index: LeaseIndex, disk: Disk, lease_id: str) -> bool:
    return index.ensure_loaded(lease_id, disk.load, disk.register)


@pytest.fixture
def index() -> LeaseIndex:
    index = LeaseIndex()
    index.begin_loading(IDS)
    return index


def test_the_loader_loads_every_lease_once(index: LeaseIndex) -> None:
    disk = Disk(IDS)
    loader(index, disk)
    assert set(disk.loads) == set(IDS)
    assert max(disk.loads.values()) == 1
    assert sorted(disk.registered) == IDS
    assert list(index.ids_after("")) == IDS
    index.wait_loaded()


def test_a_call_naming_a_lease_in_the_loaders_chunk_waits_for_it(index: LeaseIndex) -> None:
    disk = Disk(IDS)
    disk.hold_at = IDS[CHUNK + 3]  # the loader is inside its second chunk
    wanted = IDS[CHUNK + 40]  # claimed by the loader, not loaded yet
    answers: list[bool] = []
    with running(loader, index, disk):
        assert disk.holding.wait(WAIT)
        assert index.get(wanted) is None
        with running(lambda: answers.append(ensure(index, disk, wanted))) as caller:
            caller.join(0.2)
            assert caller.is_alive()  # waiting for the loader's load of that lease
            disk.release.set()
    assert answers == [False]  # the loader loaded it, not the call
    assert index.get(wanted) is not None
    assert max(disk.loads.values()) == 1


def test_a_call_naming_a_lease_past_the_loader_loads_it_itself(index: LeaseIndex) -> None:
    disk = Disk(IDS)
    disk.hold_at = IDS[3]
    ahead = IDS[2 * CHUNK + 5]  # in no chunk claimed yet
    with running(loader, index, disk):
        assert disk.holding.wait(WAIT)
        assert ensure(index, disk, ahead)  # at once, while the loader is held
        assert index.get(ahead) is not None
        assert not ensure(index, disk, ahead)  # loaded: nothing more to do
        disk.release.set()
    assert disk.loads[ahead] == 1  # the loader skipped it
    assert set(disk.loads) == set(IDS)
    assert max(disk.loads.values()) == 1


def test_a_lease_deleted_while_loading_stays_deleted(index: LeaseIndex) -> None:
    """DeleteKerberosLease: ensure_loaded, the directory removed, then pop (as the service)."""
    disk = Disk(IDS)
    disk.hold_at = IDS[1]
    in_chunk, ahead = IDS[20], IDS[2 * CHUNK + 1]
    with running(loader, index, disk):
        assert disk.holding.wait(WAIT)
        for doomed in (in_chunk, ahead):
            done = threading.Event()

            def delete(lease_id: str = doomed, done: threading.Event = done) -> None:
                ensure(index, disk, lease_id)
                disk.present.discard(lease_id)
                index.pop(lease_id)
                done.set()

            with running(delete):
                if doomed == in_chunk:
                    assert not done.wait(0.2)  # waits for the loader's load of it
                    disk.release.set()
    index.wait_loaded()
    for doomed in (in_chunk, ahead):
        assert index.get(doomed) is None
        assert doomed not in list(index.ids_after(""))
        assert disk.loads[doomed] == 1  # never loaded again after the delete


def test_a_lease_gone_from_disk_before_its_turn_is_not_listed(index: LeaseIndex) -> None:
    disk = Disk(IDS)
    disk.present.discard(IDS[7])
    loader(index, disk)
    assert IDS[7] not in list(index.ids_after(""))
    assert not ensure(index, disk, IDS[7])


def test_the_index_answers_while_a_lease_loads(index: LeaseIndex) -> None:
    """HealthCheck and ListLeases read the index under its lock: never held across a load."""
    disk = Disk(IDS)
    disk.hold_at = IDS[CHUNK]
    answers: list[object] = []
    with running(loader, index, disk):
        assert disk.holding.wait(WAIT)

        def read() -> None:
            answers.extend([index.count(IDS), len(index.records()), IDS[0] in index])
            answers.append(next(index.ids_after(""), None))

        with running(read) as reader:
            reader.join(1.0)
            assert not reader.is_alive()
        disk.release.set()
    assert answers == [CHUNK, CHUNK, True, IDS[0]]


def test_wait_loaded_waits_for_a_call_still_loading(index: LeaseIndex) -> None:
    disk = Disk(IDS)
    disk.hold_at = IDS[-1]
    called = threading.Thread(target=ensure, args=(index, disk, IDS[-1]), daemon=True)
    called.start()
    assert disk.holding.wait(WAIT)  # a call is loading the last lease
    with running(loader, index, disk) as loading, running(index.wait_loaded) as waiting:
        loading.join(0.2)
        assert loading.is_alive()  # end_loading waits for that load
        assert waiting.is_alive()
        disk.release.set()
    called.join(WAIT)
    index.wait_loaded()
    assert index.get(IDS[-1]) is not None
    assert max(disk.loads.values()) == 1


def test_a_failing_load_gives_back_the_rest_of_its_chunk(index: LeaseIndex) -> None:
    disk = Disk(IDS)
    disk.fail_at = IDS[2]
    with pytest.raises(RuntimeError):
        index.load_all(IDS, disk.load, disk.register)
    # The chunk's other leases are pending again: a call naming one loads it.
    assert ensure(index, disk, IDS[5])
    assert index.get(IDS[5]) is not None
    index.end_loading()
    index.wait_loaded()
    assert index.get(IDS[2]) is None
    assert IDS[2] not in list(index.ids_after(""))
