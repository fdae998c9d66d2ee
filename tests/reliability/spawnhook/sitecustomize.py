"""Loaded into the daemon under test (PYTHONPATH): records every attempt to start a process.

A Python audit hook (PEP 578) sees ``subprocess.Popen``, ``os.exec*``, ``os.posix_spawn``,
``os.spawn*``, ``os.system`` and ``os.fork`` before they happen, so even a child that exits at
once is recorded, with its command line, in the file named by ``CREDFETCHER_TEST_SPAWN_LOG``.
"""

import ctypes
import json
import os
import resource
import sys
import threading
import time

_LOG = os.environ.get("CREDFETCHER_TEST_SPAWN_LOG")
_EVENTS = {
    "subprocess.Popen",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "os.fork",
    "os.forkpty",
    "pty.spawn",
}


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event in _EVENTS and _LOG:
        with open(_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": event, "args": repr(args)}) + "\n")


if _LOG:
    sys.addaudithook(_hook)


# CREDFETCHER_TEST_DUMPABLE_FILE: a thread writes this process's prctl(PR_GET_DUMPABLE) and
# soft RLIMIT_CORE there ("dumpable core-limit"), every 0.1 s, for as long as the process lives:
# what the daemon made of itself, read from inside it (no outside view shows it for a root
# process). Only when the variable is set.
_DUMPABLE_FILE = os.environ.get("CREDFETCHER_TEST_DUMPABLE_FILE")


def _report_dumpable(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    while True:
        dumpable = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
        core = resource.getrlimit(resource.RLIMIT_CORE)[0]
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(f"{dumpable} {core}\n")
        os.replace(path + ".tmp", path)
        time.sleep(0.1)


if _DUMPABLE_FILE:
    threading.Thread(
        target=_report_dumpable, args=(_DUMPABLE_FILE,), name="test-dumpable", daemon=True
    ).start()
