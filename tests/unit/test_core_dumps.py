"""The daemon's start-up makes the process non-dumpable and its core limit 0 (issue 15).

Run in a child interpreter: the change is one-way for the process that makes it.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

from credfetcher import daemon

CHILD = r"""
import ctypes, resource
from credfetcher.daemon import PR_GET_DUMPABLE, disable_core_dumps
libc = ctypes.CDLL(None, use_errno=True)
before = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, resource.getrlimit(resource.RLIMIT_CORE)[1]))
ok = disable_core_dumps()
after = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
print(before, ok, after, resource.getrlimit(resource.RLIMIT_CORE)[0])
"""


def test_disable_core_dumps_in_a_child() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.split() == ["1", "True", "0", "0"], proc.stdout + proc.stderr


def test_the_daemon_calls_it_at_start() -> None:
    source = inspect.getsource(daemon.main)
    assert source.index("disable_core_dumps()") < source.index("run(config, notifier)")
