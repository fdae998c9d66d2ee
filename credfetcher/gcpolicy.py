"""How the daemon's garbage collector runs, so a full collection never stalls a HealthCheck.

Every lease keeps ~8 objects the cyclic collector tracks; at 20,000 leases a full collection
took 75-274 ms under the GIL, and every HealthCheck stall over 50 ms the scale benchmark saw
(issue 18) overlapped one. CPython's collector (https://docs.python.org/3/library/gc.html and
"Garbage collector design" in CPython's InternalDocs) is generational; this module:

- freezes (:func:`gc.freeze`) what exists once the daemon serves, and again once the leases on
  disk are loaded: frozen objects are never scanned again. The daemon's modules and the
  recovered leases are long-lived and hold no cycles to reclaim (a frozen object is still freed
  by reference counting; only a cycle among frozen objects would outlive its use);
- raises the young generation's threshold to :data:`YOUNG_THRESHOLD` allocations (700 by
  default): a lease created allocates thousands of short-lived objects, and one young
  collection per 10,000 is cheap and rare;
- leaves full collections to one thread, every :data:`FULL_EVERY` seconds: the automatic ones
  (a full collection per :data:`OLD_THRESHOLD` middle ones) become rare enough not to follow
  lease creation. Cycles in long-lived objects are reclaimed within the hour.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 10_000
MIDDLE_THRESHOLD = 10
OLD_THRESHOLD = 1_000  # CPython's default is 10: a full collection every 100 middle ones
FULL_EVERY = 3600.0

__all__ = ["FULL_EVERY", "YOUNG_THRESHOLD", "apply", "start"]


def apply() -> None:
    """Set the thresholds, and freeze what exists now (call once the daemon serves)."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    gc.freeze()


def start(
    stop: threading.Event,
    *,
    loaded: Callable[[], object] | None = None,
    every: float = FULL_EVERY,
) -> threading.Thread:
    """:func:`apply`, then a thread that freezes again once ``loaded()`` returns (the leases on
    disk are loaded) and runs a full collection every ``every`` seconds until ``stop`` is set.

    The thread wakes once per ``every``: an idle daemon pays nothing for it.
    """
    apply()
    thread = threading.Thread(target=_run, args=(stop, loaded, every), name="gc", daemon=True)
    thread.start()
    return thread


def _run(stop: threading.Event, loaded: Callable[[], object] | None, every: float) -> None:
    if loaded is not None:
        loaded()
        if stop.is_set():
            return
        gc.freeze()
        log.debug("%d objects frozen after recovery", gc.get_freeze_count())
    while not stop.wait(every):
        started = time.monotonic()
        found = gc.collect()
        log.debug(
            "full collection: %d unreachable, %.0f ms", found, (time.monotonic() - started) * 1000
        )
