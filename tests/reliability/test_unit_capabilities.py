"""The daemon works with exactly the capabilities the shipped unit grants (issue 15).

``systemd/credfetcher.service`` keeps root but bounds it to ``CapabilityBoundingSet=``
(``CAP_CHOWN`` today): no CAP_DAC_OVERRIDE, so root cannot write a file it does not own. The
daemon runs here under ``setpriv --bounding-set -all,+<each cap of the unit>``, and a keytab and
ccache for a non-root owner (mode 0440, no write bit even for the owner) must be made, renewed
and deleted. Before the private staging directory the keytab's temp file was chowned to the
owner before root wrote into it: EACCES.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import krb5
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.leases import CCACHE_NAME, KEYTAB_NAME
from credfetcher.tickets import read_ticket_info
from tests.conftest import REPO, TestDC
from tests.integration.daemon import Daemon, daemon_env

pytestmark = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv"
)

OWNER, GROUP, MODE = 4511, 4611, 0o440
UNIT = REPO / "systemd" / "credfetcher.service"


def unit_capabilities() -> list[str]:
    """The unit's CapabilityBoundingSet=, as setpriv names them (``chown``)."""
    caps: list[str] = []
    for line in UNIT.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            caps += [c.lower().removeprefix("cap_") for c in line.split("=", 1)[1].split()]
    assert caps, f"no CapabilityBoundingSet= in {UNIT}"
    return caps


@pytest.fixture
def bounded_daemon(samba_dc: TestDC, tmp_path: Path) -> Iterator[Daemon]:
    bounding = ",".join(["-all", *(f"+{c}" for c in unit_capabilities())])
    root = tmp_path / "bounded"
    root.mkdir()
    daemon = Daemon(
        samba_dc,
        root,
        daemon_env(
            samba_dc,
            root,
            CF_WRITE_KEYTAB="1",
            CF_CCACHE_OWNER=str(OWNER),
            CF_CCACHE_GROUP=str(GROUP),
            CF_CCACHE_MODE=f"0{MODE:o}",
            CF_TICKET_LIFETIME="150",
            CF_RENEW_MARGIN="135",
        ),
        argv_prefix=["setpriv", f"--bounding-set={bounding}", "--"],
    )
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None:
            daemon.stop()


def effective_capabilities(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def keytab_principals(path: Path) -> set[str]:
    ctx = krb5.init_context()
    keytab = krb5.kt_resolve(ctx, b"FILE:" + bytes(path))
    return {krb5.unparse_name_flags(ctx, e.principal).decode() for e in keytab}


def test_keytab_for_a_non_root_owner_with_the_units_capabilities(
    bounded_daemon: Daemon, samba_dc: TestDC
) -> None:
    proc = bounded_daemon.proc
    assert proc is not None
    assert effective_capabilities(proc.pid) == 1 << 0  # CAP_CHOWN (0) and nothing else

    gmsa = samba_dc.gmsas[0]
    lease_id = bounded_daemon.add(gmsa).lease_id  # today's main: INTERNAL, EACCES
    directory = bounded_daemon.krb_dir / lease_id / gmsa
    for name in (CCACHE_NAME, KEYTAB_NAME):
        st = (directory / name).lstat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OWNER, GROUP, MODE), name
    assert keytab_principals(directory / KEYTAB_NAME) == {f"{gmsa}$@{samba_dc.realm}"}
    first = read_ticket_info(directory / CCACHE_NAME)
    assert first is not None

    # A renewal rewrites both, as the same owner (<= 15 s with these tickets).
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        info = read_ticket_info(directory / CCACHE_NAME)
        if info is not None and info.endtime > first.endtime:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not renewed: {bounded_daemon.log()[-3000:]}")
    with bounded_daemon.client() as stub:
        lease = next(
            item
            for item in stub.ListLeases(pb.ListLeasesRequest(), timeout=10).leases
            if item.lease_id == lease_id
        )
        assert lease.state == "active", lease
        stub.DeleteKerberosLease(pb.DeleteKerberosLeaseRequest(lease_id=lease_id), timeout=30)
    assert not (bounded_daemon.krb_dir / lease_id).exists()
