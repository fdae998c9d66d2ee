"""File modes and owners as configured; the socket's mode; callers refused by SO_PEERCRED.

The full run (conftest ``full_run``) serves with CF_WRITE_KEYTAB=1 and CF_CCACHE_OWNER/GROUP/MODE
(4501:4600 0640), one lease with its own FileOwnership (4502:4601 0440), the socket group
``nogroup`` and CF_ALLOWED_UIDS=4501; files were rewritten by renewals and after a restart, so
the owners must hold through those too. Another uid is tried in a child process that drops to it
(after importing grpc as root: the interpreter lives under /root).
"""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys

from credfetcher.files import PRIVATE_DIR
from credfetcher.leases import CCACHE_NAME, KEYTAB_NAME
from tests.conftest import REPO
from tests.reliability.conftest import (
    ALLOWED_UID,
    OWNER_GID,
    OWNER_MODE,
    OWNER_UID,
    REFUSED_UID,
    REQUEST_GID,
    REQUEST_MODE,
    REQUEST_UID,
    SOCKET_GROUP,
    FullRun,
)
from tests.reliability.helpers import check_store


def test_ccache_and_keytab_owners_and_modes(full_run: FullRun) -> None:
    krb_dir = full_run.daemon.krb_dir
    check_store(krb_dir, full_run.daemon.dc.realm, allow_temp=False)
    seen = 0
    for lease_id, gmsas in full_run.leases.items():
        want = (
            (REQUEST_UID, REQUEST_GID, REQUEST_MODE)
            if lease_id == full_run.per_request
            else (OWNER_UID, OWNER_GID, OWNER_MODE)
        )
        for gmsa in gmsas:
            for name in (CCACHE_NAME, KEYTAB_NAME):
                st = (krb_dir / lease_id / gmsa / name).lstat()
                assert stat.S_ISREG(st.st_mode)
                got = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
                assert got == want, f"{lease_id}/{gmsa}/{name}: {got} != {want}"
                seen += 1
    assert seen == 2 * sum(len(g) for g in full_run.leases.values())


def test_no_world_writable_directory_and_socket_mode(full_run: FullRun) -> None:
    krb_dir = full_run.daemon.krb_dir
    for path in [krb_dir, *krb_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert not mode & 0o002, f"{path} is world-writable ({mode:o})"
        if path == krb_dir:
            assert mode == 0o755, f"{path}: {mode:o}"
        elif path.name == PRIVATE_DIR:
            assert mode == 0o700, f"{path}: {mode:o}"  # the staging directory: root only
        elif path.is_dir():
            # Containers must traverse to their bind-mounted directory; nobody else writes,
            # and no other user may list which leases and files exist.
            assert mode == 0o711, f"{path}: {mode:o}"
        elif path.name.endswith("_metadata.json"):
            # Domainless user names, DNs, secret ARNs: root's alone.
            assert mode == 0o600, f"{path}: {mode:o}"
    sock = full_run.daemon.socket_path.lstat()
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o660
    assert sock.st_gid == grp.getgrnam(SOCKET_GROUP).gr_gid


# Runs as root until the imports are done, then as uid:gid only.
CALLER = r"""
import json, os, sys
import grpc
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
uid, gid, sock, spec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
out = {"uid": os.getuid()}
with grpc.insecure_channel("unix:" + sock) as ch:
    stub = pb_grpc.CredentialsFetcherServiceStub(ch)
    try:
        lease = stub.AddKerberosLease(pb.CreateKerberosLeaseRequest(credspec_contents=[spec]),
                                      timeout=30).lease_id
        stub.DeleteKerberosLease(pb.DeleteKerberosLeaseRequest(lease_id=lease), timeout=30)
        out["add_delete"] = "OK"
    except grpc.RpcError as exc:
        out["add_delete"] = [exc.code().name, exc.details()]
print(json.dumps(out))
"""


def call_as(uid: int, gid: int, run: FullRun) -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CALLER,
            str(uid),
            str(gid),
            str(run.daemon.socket_path),
            run.daemon.credspec(run.daemon.dc.gmsas[0]),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    assert result["uid"] == uid
    return result


def test_peer_refused_by_so_peercred(full_run: FullRun) -> None:
    """A uid outside CF_ALLOWED_UIDS that can open the socket (its group) is refused."""
    before = sorted(p.name for p in full_run.daemon.krb_dir.iterdir())
    gid = grp.getgrnam(SOCKET_GROUP).gr_gid
    answer = call_as(REFUSED_UID, gid, full_run)["add_delete"]
    assert isinstance(answer, list), answer
    assert answer[0] == "PERMISSION_DENIED", answer
    assert "CF_ALLOWED_UIDS" in answer[1]
    assert sorted(p.name for p in full_run.daemon.krb_dir.iterdir()) == before


def test_allowed_peer_is_served(full_run: FullRun) -> None:
    gid = grp.getgrnam(SOCKET_GROUP).gr_gid
    assert call_as(ALLOWED_UID, gid, full_run)["add_delete"] == "OK"


