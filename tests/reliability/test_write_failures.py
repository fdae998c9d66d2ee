"""A full filesystem under krbdir during renewals (issue 17): a failed write is not a renewal.

krbdir is a small size-limited tmpfs. Once it is filled, the next renewal cannot write the
leases' ccaches: each lease must show as failing in ListLeases with the reason while its file
still holds the old ticket, be retried on its own backoff, and be fresh again -- before the old
ticket ends -- as soon as there is room. Tickets are short (150 s, renewed 135 s before their end).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.tickets import read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "cf-krbdir-test", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem has no room left."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def leases(daemon: Daemon) -> dict[str, pb.LeaseInfo]:
    with daemon.client() as stub:
        response = stub.ListLeases(pb.ListLeasesRequest(), timeout=10)
    return {lease.lease_id: lease for lease in response.leases}


@pytest.fixture
def daemon(samba_dc: TestDC, tmp_path: Path) -> Iterator[Daemon]:
    with small_tmpfs(tmp_path / "root" / "krbdir", "512k"), running_daemon(
        samba_dc,
        tmp_path / "root",
        CF_TICKET_LIFETIME="150",
        CF_RENEW_MARGIN="135",
    ) as started:
        yield started


def test_a_lease_that_cannot_be_written_is_failing_retried_and_then_fresh(
    daemon: Daemon, samba_dc: TestDC
) -> None:
    lease_id = daemon.add(samba_dc.gmsas[0]).lease_id
    other = daemon.add(samba_dc.gmsas[1]).lease_id
    ccache = daemon.krb_dir / lease_id / samba_dc.gmsas[0] / "krb5cc"
    filler = fill(daemon.krb_dir)

    # The next renewal (<= 15 s) cannot write: failing, with the reason, old ticket in place.
    deadline = time.monotonic() + 40
    seen: list[pb.LeaseInfo] = []
    while time.monotonic() < deadline:
        lease = leases(daemon)[lease_id]
        seen.append(lease)
        if lease.state == "failing":
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"never failing: {seen[-3:]}\n{daemon.log()[-3000:]}")
    ticket = lease.tickets[0]
    assert "No space left on device" in ticket.last_error, ticket
    old_end = ticket.expires_at
    on_disk = read_ticket_info(ccache)
    assert on_disk is not None
    assert on_disk.endtime == old_end  # ListLeases tells the ticket the file really holds
    # Retried on its own backoff, planned well before that ticket ends.
    assert ticket.next_renewal_at < old_end - 60, ticket
    time.sleep(3)  # stays failing while the disk is full, retried meanwhile
    assert leases(daemon)[lease_id].state == "failing"
    # Both leases share the full filesystem: once every lease fails, HealthCheck says so.
    deadline = time.monotonic() + 40
    while leases(daemon)[other].state != "failing" and time.monotonic() < deadline:
        time.sleep(0.2)
    with daemon.client() as stub:
        health = stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status
    assert "No space left on device" in health, health

    filler.unlink()
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        lease = leases(daemon)[lease_id]
        if lease.state == "active" and lease.tickets[0].expires_at > old_end:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"never fresh again: {lease}\n{daemon.log()[-3000:]}")
    assert time.time() < old_end, "the retry came only after the old ticket ended"
    assert lease.tickets[0].last_error == ""
    fresh = read_ticket_info(ccache)
    assert fresh is not None
    assert fresh.endtime == lease.tickets[0].expires_at
    with daemon.client() as stub:
        assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status == "OK"
