"""Every lease id the daemon knows, in order, so a ListLeases page costs the page, not the host.

ListLeases pages by lease id (the page token is the last id of the previous page,
:func:`credfetcher.server.list_page`). Sorting every id for every page cost 107 ms per first
page at 20,000 leases; kept sorted as leases come and go (:mod:`bisect`, O(log N) to find,
a memmove of N pointers to insert or remove: microseconds at 20,000), a page is a slice.

Not thread-safe by itself: :class:`credfetcher.lease_index.LeaseIndex` changes and reads it under
its own lock, together with the lease table it indexes.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

CHUNK = 256

__all__ = ["SortedIds"]


class SortedIds:
    """A sorted set of lease ids: add, remove, and the ids that follow one."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = sorted(set(ids))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, lease_id: object) -> bool:
        if not isinstance(lease_id, str):
            return False
        at = bisect_left(self._ids, lease_id)
        return at < len(self._ids) and self._ids[at] == lease_id

    def load(self, ids: Iterable[str]) -> None:
        """Replace every id (start-up: the lease directories found on disk)."""
        self._ids = sorted(set(ids))

    def add(self, lease_id: str) -> None:
        """Add ``lease_id``; one already there stays once."""
        at = bisect_left(self._ids, lease_id)
        if at == len(self._ids) or self._ids[at] != lease_id:
            self._ids.insert(at, lease_id)

    def remove(self, lease_id: str) -> None:
        """Remove ``lease_id`` if it is there."""
        at = bisect_left(self._ids, lease_id)
        if at < len(self._ids) and self._ids[at] == lease_id:
            del self._ids[at]

    def page(self, after: str, limit: int) -> list[str]:
        """At most ``limit`` ids greater than ``after``, in order ("" : from the first)."""
        start = bisect_right(self._ids, after)
        return self._ids[start : start + limit]

    def walk(self, after: str, lock: AbstractContextManager[Any]) -> Iterator[str]:
        """Every id greater than ``after``, in order, read :data:`CHUNK` at a time under
        ``lock`` (released between chunks, so a long listing never holds up adds and deletes).

        An id removed before the walk reaches it is not given; one added past the position
        reached is; none is given twice (each chunk starts after the last id given).
        """
        while True:
            with lock:
                ids = self.page(after, CHUNK)
            yield from ids
            if len(ids) < CHUNK:
                return
            after = ids[-1]
