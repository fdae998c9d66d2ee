"""ListLeases at scale (issue 18): an old client's request against 40,000 leases fits gRPC's
default 4 MiB receive limit, and following the pages returns every lease exactly once while
leases are added and deleted.

The 40,000 leases are written straight into krbdir by the fixture, in the daemon's own metadata
format (:func:`credfetcher.leases.encode_metadata`), as domainless leases whose credentials were
lost at a restart: the daemon recovers and lists them without asking the DC 40,000 times.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024  # what every gRPC client has unless raised


def write_leases(krb_dir: Path, dc: TestDC, count: int) -> list[str]:
    ids = [f"{n:020x}" for n in range(1, count + 1)]
    gmsa = dc.gmsas[0]
    credspec = make_credspec(gmsa, dc.domain, dc.netbios)
    for lease_id in ids:
        lease_dir = krb_dir / lease_id
        (lease_dir / gmsa).mkdir(parents=True)
        record = LeaseRecord(
            lease_id=lease_id,
            entries=(
                GmsaEntry(
                    gmsa_name=gmsa,
                    domain=dc.domain,
                    distinguished_name=f"CN={gmsa},CN=Managed Service Accounts,{dc.base_dn}",
                    credspec=credspec,
                ),
            ),
            domainless_user=f"{dc.user}@{dc.domain}",
            kind="domainless",
            created_at=1.0,
        )
        (lease_dir / f"{lease_id}_metadata.json").write_bytes(encode_metadata(record, lease_dir))
    return ids


@pytest.fixture(scope="module")
def crowded(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("crowded")
    write_leases(root / "krbdir", samba_dc, LEASES)
    daemon = Daemon(samba_dc, root, daemon_env(samba_dc, root, CF_LOG_LEVEL="INFO"))
    daemon.start(timeout=180)  # recovery reads 40,000 metadata files before serving
    try:
        yield daemon
    finally:
        daemon.stop(timeout=60)


def old_client_channel(daemon: Daemon) -> grpc.Channel:
    # No options: the 4 MiB default receive limit of a client that never heard of paging.
    return grpc.insecure_channel(f"unix:{daemon.socket_path}")


def test_an_old_clients_request_gets_a_bounded_first_page(crowded: Daemon) -> None:
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
    crowded: Daemon,
) -> None:
    deleted: list[str] = []
    added: list[str] = []
    stop = threading.Event()

    def churn() -> None:
        # Deletes fixture leases from the far end and adds real ones while the pages are read.
        with crowded.client() as stub:
            n = LEASES
            while not stop.is_set() and len(added) < 20:
                lease_id = f"{n:020x}"
                stub.DeleteKerberosLease(
                    pb.DeleteKerberosLeaseRequest(lease_id=lease_id), timeout=30
                )
                deleted.append(lease_id)
                n -= 1
                added.append(crowded.add(crowded.dc.gmsas[1]).lease_id)

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
    throughout = {f"{n:020x}" for n in range(1, LEASES + 1)} - set(deleted)
    assert throughout <= set(seen)
    assert pages >= LEASES // 1000 - 1


def test_filters_and_bad_tokens(crowded: Daemon) -> None:
    with crowded.client() as stub:
        lease = crowded.add(crowded.dc.gmsas[2])
        only = stub.ListLeases(pb.ListLeasesRequest(gmsa=crowded.dc.gmsas[2].upper()), timeout=60)
        assert lease.lease_id in [le.lease_id for le in only.leases]
        assert {t.service_account_name for le in only.leases for t in le.tickets} == {
            crowded.dc.gmsas[2]
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
