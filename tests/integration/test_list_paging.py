"""40,000 leases (issue 18): the daemon serves before it has loaded them and answers for a lease
it has not loaded yet; an old client's ListLeases fits gRPC's default 4 MiB receive limit; and
following the pages returns every lease exactly once while leases are added and deleted.

The 40,000 leases are written straight into krbdir by the fixture, in the daemon's own metadata
format (:func:`credfetcher.leases.encode_metadata`), as domainless leases whose credentials were
lost at a restart: the daemon recovers and lists them without asking the DC 40,000 times.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.credspec import make_credspec
from credfetcher.leases import GmsaEntry, LeaseRecord, encode_metadata
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, daemon_env

LEASES = 40_000
LAST = f"{LEASES:020x}"
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024  # what every gRPC client has unless raised


def write_leases(krb_dir: Path, dc: TestDC, count: int) -> list[str]:
    """``count`` leases in the daemon's own metadata format: one record encoded, then copied
    with each lease's id (40,000 encodings would cost the test most of its time)."""
    ids = [f"{n:020x}" for n in range(1, count + 1)]
    gmsa = dc.gmsas[0]
    template_id = "f" * 20
    record = LeaseRecord(
        lease_id=template_id,
        entries=(
            GmsaEntry(
                gmsa_name=gmsa,
                domain=dc.domain,
                distinguished_name=f"CN={gmsa},CN=Managed Service Accounts,{dc.base_dn}",
                credspec=make_credspec(gmsa, dc.domain, dc.netbios),
            ),
        ),
        domainless_user=f"{dc.user}@{dc.domain}",
        kind="domainless",
        created_at=1.0,
    )
    template = encode_metadata(record, krb_dir / template_id)
    assert template.count(template_id.encode()) == 2  # the file path and the lease id
    krb_dir.mkdir(parents=True, exist_ok=True)
    for lease_id in ids:
        lease_dir = krb_dir / lease_id
        os.makedirs(lease_dir / gmsa)
        meta = os.open(
            lease_dir / f"{lease_id}_metadata.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        try:
            os.write(meta, template.replace(template_id.encode(), lease_id.encode()))
        finally:
            os.close(meta)
    return ids


@dataclass
class Crowded:
    """The daemon, and what it answered while its background recovery was still running."""

    daemon: Daemon
    log_at_first_answer: str
    early_delete: pb.DeleteKerberosLeaseResponse
    log_after_early_delete: str
    early_listed: list[str]


@pytest.fixture(scope="module")
def crowded(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crowded]:
    root = tmp_path_factory.mktemp("crowded")
    write_leases(root / "krbdir", samba_dc, LEASES)
    daemon = Daemon(samba_dc, root, daemon_env(samba_dc, root, CF_LOG_LEVEL="INFO"))
    daemon.start(timeout=120)  # returns at the first HealthCheck answer
    first_answer = daemon.log()
    with daemon.client() as stub:
        # Recovery loads in lease-id order: the last id is the last it would reach.
        early = stub.DeleteKerberosLease(
            pb.DeleteKerberosLeaseRequest(lease_id=LAST), timeout=60
        )
        after_delete = daemon.log()
        listed: list[str] = []
        token = ""
        while True:
            page = stub.ListLeases(pb.ListLeasesRequest(page_token=token), timeout=60)
            listed.extend(lease.lease_id for lease in page.leases)
            token = page.next_page_token
            if not token:
                break
    try:
        yield Crowded(daemon, first_answer, early, after_delete, listed)
    finally:
        daemon.stop(timeout=60)


def test_serves_before_recovery_and_answers_for_leases_not_loaded_yet(crowded: Crowded) -> None:
    assert "recovered" not in crowded.log_at_first_answer  # HealthCheck before the loader ended
    # The last lease on disk, deleted before the loader could have reached it: found, removed.
    assert "recovered" not in crowded.log_after_early_delete
    assert crowded.early_delete.lease_id == LAST
    assert not (crowded.daemon.krb_dir / LAST).exists()
    # Listed right after the start: every lease on disk, each once, in order.
    assert crowded.early_listed == [f"{n:020x}" for n in range(1, LEASES)]
    assert _recovered(crowded.daemon)


def _recovered(daemon: Daemon) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if "recovered 39999 lease(s)" in daemon.log():
            return True
        time.sleep(0.5)
    return False


def old_client_channel(crowded: Crowded) -> grpc.Channel:
    # No options: the 4 MiB default receive limit of a client that never heard of paging.
    return grpc.insecure_channel(f"unix:{crowded.daemon.socket_path}")


def test_an_old_clients_request_gets_a_bounded_first_page(crowded: Crowded) -> None:
    with old_client_channel(crowded) as channel:
        stub = pb_grpc.CredentialsFetcherServiceStub(channel)
        # b"": what ListLeasesRequest{} of the proto before paging serialises to.
        response = stub.ListLeases(pb.ListLeasesRequest.FromString(b""), timeout=60)
    assert len(response.leases) == 1000
    assert response.ByteSize() < DEFAULT_RECEIVE_LIMIT
    assert response.next_page_token
    ids = [lease.lease_id for lease in response.leases]
    assert ids == sorted(ids)
    assert ids[0] == f"{1:020x}"
    assert all(lease.state == "waiting-for-credentials" for lease in response.leases)


def test_following_pages_returns_every_lease_once_while_leases_come_and_go(
    crowded: Crowded,
) -> None:
    daemon = crowded.daemon
    deleted: list[str] = []
    added: list[str] = []
    stop = threading.Event()

    def churn() -> None:
        # Deletes fixture leases from the far end and adds real ones while the pages are read.
        with daemon.client() as stub:
            n = LEASES - 1  # LAST went at start-up
            while not stop.is_set() and len(added) < 20:
                lease_id = f"{n:020x}"
                stub.DeleteKerberosLease(
                    pb.DeleteKerberosLeaseRequest(lease_id=lease_id), timeout=30
                )
                deleted.append(lease_id)
                n -= 1
                added.append(daemon.add(daemon.dc.gmsas[1]).lease_id)

    worker = threading.Thread(target=churn)
    worker.start()
    seen: list[str] = []
    pages = 0
    try:
        with old_client_channel(crowded) as channel:
            stub = pb_grpc.CredentialsFetcherServiceStub(channel)
            token = ""
            while True:
                response = stub.ListLeases(
                    pb.ListLeasesRequest(page_size=1000, page_token=token), timeout=60
                )
                pages += 1
                seen.extend(lease.lease_id for lease in response.leases)
                token = response.next_page_token
                if not token:
                    break
    finally:
        stop.set()
        worker.join(120)
    assert deleted
    assert added
    assert len(seen) == len(set(seen)), "a lease was listed twice"
    throughout = {f"{n:020x}" for n in range(1, LEASES)} - set(deleted)
    assert throughout <= set(seen)
    assert pages >= LEASES // 1000 - 1


def test_filters_and_bad_tokens(crowded: Crowded) -> None:
    daemon = crowded.daemon
    with daemon.client() as stub:
        lease = daemon.add(daemon.dc.gmsas[2])
        only = stub.ListLeases(pb.ListLeasesRequest(gmsa=daemon.dc.gmsas[2].upper()), timeout=60)
        assert lease.lease_id in [le.lease_id for le in only.leases]
        assert {t.service_account_name for le in only.leases for t in le.tickets} == {
            daemon.dc.gmsas[2]
        }
        active = stub.ListLeases(pb.ListLeasesRequest(state="active"), timeout=60)
        assert lease.lease_id in [le.lease_id for le in active.leases]
        assert all(le.state == "active" for le in active.leases)
        for bad, says in (
            (pb.ListLeasesRequest(page_token="nonsense"), "page_token"),
            (pb.ListLeasesRequest(state="sleepy"), "state 'sleepy'"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListLeases(bad, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (info.value.details() or "")
