"""The SO_PEERCRED allow-list: a refused uid gets PERMISSION_DENIED, an allowed one is served."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from tests.conftest import TestDC
from tests.integration.daemon import running_daemon

# A child process that drops to ``uid``/``gid`` and calls HealthCheck and ListLeases.
CALLER = r"""
import json, os, sys
import grpc
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
uid, gid, sock = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
out = {}
with grpc.insecure_channel("unix:" + sock) as ch:
    stub = pb_grpc.CredentialsFetcherServiceStub(ch)
    for name, call, req in (("health", stub.HealthCheck, pb.HealthCheckRequest()),
                            ("list", stub.ListLeases, pb.ListLeasesRequest())):
        try:
            call(req, timeout=10)
            out[name] = "OK"
        except grpc.RpcError as exc:
            out[name] = [exc.code().name, exc.details()]
print(json.dumps(out))
"""


def call_as(uid: int, gid: int, socket_path: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CALLER, str(uid), str(gid), str(socket_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="cf-peercred-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_allow_list_by_uid_and_gid(samba_dc: TestDC, public_dir: Path) -> None:
    with running_daemon(
        samba_dc, public_dir / "d", CF_ALLOWED_UIDS="4501", CF_ALLOWED_GIDS="4600"
    ) as daemon:
        # The socket's mode is the first gate; open it so only the allow-list decides.
        daemon.socket_path.chmod(0o666)
        (public_dir / "d").chmod(0o755)
        assert call_as(4501, 4501, daemon.socket_path) == {"health": "OK", "list": "OK"}
        assert call_as(4502, 4600, daemon.socket_path) == {"health": "OK", "list": "OK"}
        refused = call_as(4502, 4502, daemon.socket_path)
        for name in ("health", "list"):
            answer = refused[name]
            assert isinstance(answer, list)
            assert answer[0] == "PERMISSION_DENIED"
            assert "CF_ALLOWED_UIDS" in answer[1]
        # root (the daemon's own checks and the test itself) is always allowed.
        with daemon.client() as stub:
            assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status == "OK"
        assert daemon.add(samba_dc.gmsas[0]).lease_id
        assert "refused a caller: pid" in daemon.log()
        assert "uid 4502 gid 4502" in daemon.log()
