"""The running daemon is non-dumpable with a core limit of 0 (issue 15): read from inside the
real ``credfetcherd`` by the test hook in ``spawnhook/sitecustomize.py`` (for a root process no
outside view shows it: /proc/<pid>/ stays root's either way, and root may ptrace anyway).

On the old code the hook reported "1 <inherited limit>": dumpable, and cores as large as the
shell allowed, while the watchdog kills with SIGABRT.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from tests.conftest import TestDC
from tests.integration.daemon import running_daemon
from tests.reliability.helpers import SPAWN_HOOK_DIR


def test_daemon_is_not_dumpable(samba_dc: TestDC, tmp_path: Path) -> None:
    report = tmp_path / "dumpable"
    pythonpath = os.pathsep.join(
        p for p in (str(SPAWN_HOOK_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    # Start it the way a shell with cores enabled would: the daemon must lower the limit itself.
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        with running_daemon(
            samba_dc,
            tmp_path / "d",
            PYTHONPATH=pythonpath,
            CREDFETCHER_TEST_DUMPABLE_FILE=str(report),
        ) as daemon:
            time.sleep(0.3)  # the hook writes every 0.1 s; the daemon is serving already
            assert report.read_text().split() == ["0", "0"], daemon.log()[-2000:]
            assert "non-dumpable" not in daemon.log()  # no warning: it worked
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
