"""SIGTERM stops credfetcherd's main loop whenever it arrives.

The daemon once set a threading.Event from a Python SIGTERM handler while its main thread waited
on that Event: a signal landing inside Event.wait's critical section re-entered the Event's
(non-reentrant) lock and hung the daemon for good (seen in CI; the same pattern hung 6 of 200
children in a by-hand run of this test's loop). The daemon now takes the signal synchronously;
this drives that mechanism in forked children, each signalled at a random moment of a tight loop.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from credfetcher import daemon

TRIALS = 100


def _child(ready_w: int) -> None:
    try:
        daemon.block_stop_signals()
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()  # a worker waiting on `stop`
        os.write(ready_w, b"r")
        while daemon.wait_for_stop_signal(0.0005) is None:
            pass
        stop.set()
    finally:
        os._exit(0)


def _exited_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return True
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def test_sigterm_at_any_moment_stops_the_main_loop() -> None:
    rng = random.Random(1)
    hangs = 0
    for _ in range(TRIALS):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            _child(ready_w)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"r"
        os.close(ready_r)
        time.sleep(rng.random() * 0.005)
        os.kill(pid, signal.SIGTERM)
        hangs += not _exited_within(pid, 2.0)
    assert hangs == 0


def test_a_stop_signal_is_returned_not_delivered() -> None:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    try:
        daemon.block_stop_signals()
        assert daemon.wait_for_stop_signal(0.01) is None
        # Aimed at this thread: pytest's other threads (gRPC's, from earlier tests) do not block
        # it, and a process-wide SIGINT could be delivered to one of them. The daemon blocks the
        # signals before it starts any thread, so all of its threads inherit the mask.
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # pending: no KeyboardInterrupt
        assert daemon.wait_for_stop_signal(1.0) == signal.SIGINT
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
