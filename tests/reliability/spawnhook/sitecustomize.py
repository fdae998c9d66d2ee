"""Loaded into the daemon under test (PYTHONPATH): records every attempt to start a process.

A Python audit hook (PEP 578) sees ``subprocess.Popen``, ``os.exec*``, ``os.posix_spawn``,
``os.spawn*``, ``os.system`` and ``os.fork`` before they happen, so even a child that exits at
once is recorded, with its command line, in the file named by ``CREDFETCHER_TEST_SPAWN_LOG``.
"""

import json
import os
import sys

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
