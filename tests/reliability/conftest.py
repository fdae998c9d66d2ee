"""Reliability and security suite (issue 8): every test here is marked ``reliability``.

They run against the real Samba DC (tests/conftest.py ``samba_dc``) and the real ``credfetcherd``
(tests/integration/daemon.py); the DC itself is never stopped or paused, because other tests use
it at the same time: DC faults go through :mod:`tests.reliability.faultproxy`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.tickets import read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.reliability.helpers import SPAWN_HOOK_DIR, child_pids


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


# -- one full run of the daemon, inspected by test_secrets.py and test_permissions.py ---------

# Who owns what in the full run (uids/gids need no passwd entry).
OWNER_UID, OWNER_GID, OWNER_MODE = 4501, 4600, 0o640  # daemon-wide CF_CCACHE_*
REQUEST_UID, REQUEST_GID, REQUEST_MODE = 4502, 4601, 0o440  # one lease's FileOwnership
SOCKET_GROUP = "nogroup"
ALLOWED_UID, REFUSED_UID = 4501, 4502  # both in SOCKET_GROUP for the peer-credential tests


@dataclass
class FullRun:
    """A daemon that served domain-joined and domainless leases, renewed them and restarted."""

    daemon: Daemon
    public: Path
    leases: dict[str, tuple[str, ...]]
    domainless: str
    per_request: str
    spawn_log: Path
    children_seen: list[int] = field(default_factory=list)
    renewals_seen: int = 0


def _watch_children(run: FullRun, stop: threading.Event) -> None:
    while not stop.is_set():
        proc = run.daemon.proc
        if proc is not None:
            with contextlib.suppress(OSError):
                run.children_seen.extend(child_pids(proc.pid))
        stop.wait(0.05)


@pytest.fixture(scope="session")
def full_run(samba_dc: TestDC) -> Iterator[FullRun]:
    # Other uids must reach the socket: pytest's tmp_path is 0700 under root.
    public = Path(tempfile.mkdtemp(prefix="cf-reliability-", dir="/var/tmp"))
    public.chmod(0o755)
    spawn_log = public / "spawn.log"
    pythonpath = os.pathsep.join(
        p for p in (str(SPAWN_HOOK_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    stop = threading.Event()
    try:
        with running_daemon(
            samba_dc,
            public / "d",
            PYTHONPATH=pythonpath,
            CREDFETCHER_TEST_SPAWN_LOG=str(spawn_log),
            CF_WRITE_KEYTAB="1",
            CF_CCACHE_OWNER=str(OWNER_UID),
            CF_CCACHE_GROUP=str(OWNER_GID),
            CF_CCACHE_MODE=f"0{OWNER_MODE:o}",
            CF_SOCKET_GROUP=SOCKET_GROUP,
            CF_ALLOWED_UIDS=str(ALLOWED_UID),
            CF_TICKET_LIFETIME="20",
            CF_RENEW_LIFETIME="3600",
        ) as daemon:
            (public / "d").chmod(0o755)
            g1, g2, g3 = samba_dc.gmsas
            run = FullRun(daemon, public, {}, "", "", spawn_log)
            watcher = threading.Thread(target=_watch_children, args=(run, stop), daemon=True)
            watcher.start()
            run.leases[daemon.add(g1).lease_id] = (g1,)
            run.leases[daemon.add(g2, samba_dc.ou_gmsa).lease_id] = (g2, samba_dc.ou_gmsa)
            user_req = pb.RenewNonDomainJoinedKerberosLeaseRequest(
                username=samba_dc.user, password=samba_dc.user_password, domain=samba_dc.domain
            )
            with daemon.client() as stub:
                own = pb.FileOwnership(uid=REQUEST_UID, gid=REQUEST_GID, mode=REQUEST_MODE)
                resp = stub.AddKerberosLease(
                    pb.CreateKerberosLeaseRequest(
                        credspec_contents=[daemon.credspec(g1)], ownership=own
                    ),
                    timeout=60,
                )
                run.per_request = resp.lease_id
                run.leases[resp.lease_id] = (g1,)
                resp2 = stub.AddNonDomainJoinedKerberosLease(
                    pb.CreateNonDomainJoinedKerberosLeaseRequest(
                        credspec_contents=[daemon.credspec(g3)],
                        username=samba_dc.user,
                        password=samba_dc.user_password,
                        domain=samba_dc.domain,
                    ),
                    timeout=60,
                )
                run.domainless = resp2.lease_id
                run.leases[resp2.lease_id] = (g3,)
                stub.RenewNonDomainJoinedKerberosLease(user_req, timeout=60)
            # Let the scheduler renew every lease at least once (20 s tickets: ~10 s).
            first = {
                lid: read_ticket_info(daemon.krb_dir / lid / gmsas[0] / "krb5cc")
                for lid, gmsas in run.leases.items()
            }
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                renewed = 0
                for lid, gmsas in run.leases.items():
                    now = read_ticket_info(daemon.krb_dir / lid / gmsas[0] / "krb5cc")
                    before = first[lid]
                    if now is not None and before is not None and now.endtime > before.endtime:
                        renewed += 1
                if renewed == len(run.leases):
                    break
                time.sleep(0.5)
            run.renewals_seen = renewed
            # Restart: recovery, then the domainless lease waits for its user's credentials.
            daemon.stop()
            daemon.start()
            with daemon.client() as stub:
                stub.RenewNonDomainJoinedKerberosLease(user_req, timeout=60)
            yield run
    finally:
        stop.set()
        shutil.rmtree(public, ignore_errors=True)

