"""credfetcher.sortedids: pages give every lease exactly once while leases come and go."""

from __future__ import annotations

import random
import threading

import pytest

from credfetcher.sortedids import CHUNK, SortedIds


def lease_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def test_add_remove_and_membership_keep_one_sorted_copy() -> None:
    index = SortedIds(["c", "a", "b", "a"])
    assert index.page("", 10) == ["a", "b", "c"]
    index.add("b")
    index.add("0")
    index.remove("c")
    index.remove("missing")
    assert index.page("", 10) == ["0", "a", "b"]
    assert "a" in index
    assert "c" not in index
    assert len(index) == 3
    assert index.page("a", 10) == ["b"]
    assert index.page("zz", 10) == []
    index.load(["x", "y"])
    assert index.page("", 1) == ["x"]


@pytest.mark.parametrize("seed", range(5))
def test_paging_returns_every_lease_exactly_once_under_adds_and_deletes(seed: int) -> None:
    """What ListLeases does across calls: the page token is the last id of the last page."""
    rng = random.Random(seed)
    index = SortedIds()
    live = {lease_id(rng) for _ in range(3000)}
    index.load(live)
    throughout = set(live)  # present from the first page to the last
    deleted: set[str] = set()
    seen: list[str] = []
    after = ""
    while True:
        page = index.page(after, rng.choice([1, 7, 100, 1000]))
        seen += page
        if not page:
            break
        after = page[-1]
        for _ in range(rng.randrange(50)):  # leases come and go between two pages
            new = lease_id(rng)
            index.add(new)
            live.add(new)
        for gone in rng.sample(sorted(live), k=min(len(live), rng.randrange(40))):
            index.remove(gone)
            live.discard(gone)
            throughout.discard(gone)
            deleted.add(gone)
    assert seen == sorted(set(seen))  # in order, none twice
    assert throughout <= set(seen)  # every lease that stayed was listed
    assert set(seen) <= throughout | deleted | live  # nothing never added
    assert index.page("", len(live) + 1) == sorted(live)


def test_walk_gives_every_lease_once_while_another_thread_adds_and_deletes() -> None:
    rng = random.Random(7)
    lock = threading.Lock()
    stable = sorted({lease_id(rng) for _ in range(10 * CHUNK)})
    index = SortedIds(stable)
    stop = threading.Event()

    def churn() -> None:
        local = random.Random(8)
        while not stop.is_set():
            extra = "x" + lease_id(local)  # never one of the stable ids
            with lock:
                index.add(extra)
            with lock:
                index.remove(extra)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        seen = list(index.walk("", lock))
    finally:
        stop.set()
        thread.join()
    assert seen == sorted(set(seen))
    assert [i for i in seen if not i.startswith("x")] == stable
    assert list(index.walk(stable[CHUNK], lock)) == stable[CHUNK + 1 :]
