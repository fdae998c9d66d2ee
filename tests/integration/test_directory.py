"""credfetcher.directory against the real Samba AD DC: transports, identities, failover, pooling."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import krb5
import pytest

from credfetcher import errors, metrics
from credfetcher.blob import parse_managed_password, password_for_authentication
from credfetcher.directory import DirectoryClient, DirectoryConfig, GmsaRecord, Transport
from credfetcher.discovery import DomainController, discover_dcs, parse_dc_list
from credfetcher.identity import HostIdentity, Identity, UserIdentity
from credfetcher.keys import derive_keys
from tests.conftest import TestDC

TIMEOUT = 1.0  # for the tests about timeouts: dead, silent and closed DCs
# Everything else uses the daemon's default: a busy Samba once needed over 1 s for a search
# (timeLimitExceeded), which is the DC being slow, not what those tests are about.
DEFAULT_TIMEOUT = 5.0
# Scheduling, Kerberos (AS + TGS) and Python overhead on top of the timeouts themselves.
SLACK = 1.5

MakeClient = Callable[..., DirectoryClient]


@pytest.fixture
def make_client(samba_dc: TestDC, krb5_config: Path) -> Iterator[MakeClient]:
    """Build DirectoryClients for the test DC and close them all afterwards."""
    clients: list[DirectoryClient] = []

    def make(dcs: str | None = None, **overrides: object) -> DirectoryClient:
        settings: dict[str, object] = {
            "domain": samba_dc.domain,
            "domain_controllers": parse_dc_list(dcs if dcs is not None else samba_dc.dc_fqdn),
            "ca_file": samba_dc.ca_file,
            "timeout": DEFAULT_TIMEOUT,
        }
        settings.update(overrides)
        client = DirectoryClient(DirectoryConfig(**settings))  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def host(samba_dc: TestDC) -> HostIdentity:
    return HostIdentity(samba_dc.host_principal, samba_dc.host_keytab)


@pytest.fixture
def user(samba_dc: TestDC) -> UserIdentity:
    return UserIdentity.parse(samba_dc.user, samba_dc.user_password, samba_dc.domain)


@pytest.fixture
def other(samba_dc: TestDC) -> HostIdentity:
    return HostIdentity(samba_dc.other_principal, samba_dc.other_keytab)


@pytest.fixture(scope="session")
def samba_keys(
    samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[int, bytes]]:
    """Samba's own keys for a gMSA (enctype -> key), from `samba-tool domain exportkeytab`."""
    cache: dict[str, dict[int, bytes]] = {}

    def keys(sam: str) -> dict[int, bytes]:
        if sam not in cache:
            path = samba_dc.export_keytab(sam, tmp_path_factory.mktemp("kt") / "gmsa.keytab")
            ctx = krb5.init_context()
            keytab = krb5.kt_resolve(ctx, f"FILE:{path}".encode())
            principal = krb5.parse_name_flags(ctx, f"{sam}@{samba_dc.realm}".encode())
            cache[sam] = {
                enctype: bytes(krb5.kt_get_entry(ctx, keytab, principal, 0, enctype).key.data)
                for enctype in (17, 18)
            }
        return cache[sam]

    return keys


@pytest.fixture
def silent_port(samba_dc: TestDC) -> Iterator[int]:
    """A port on the DC's address that completes the TCP handshake and then never answers.

    listen() without accept(): the kernel accepts connections into the backlog, so connect()
    succeeds, and nothing is ever read or written.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((samba_dc.ip, 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def closed_port(samba_dc: TestDC) -> int:
    """A port on the DC's address where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((samba_dc.ip, 0))
        return int(sock.getsockname()[1])


def _assert_keys_match_samba(
    record: GmsaRecord, samba_dc: TestDC, samba_keys: Callable[[str], dict[int, bytes]]
) -> None:
    password = password_for_authentication(parse_managed_password(record.blob))
    assert record.kvno is not None
    derived = {
        key.enctype: key.contents
        for key in derive_keys(password, samba_dc.realm, record.sam_account_name, record.kvno)
    }
    assert derived == samba_keys(record.sam_account_name)


@pytest.mark.parametrize(
    "case",
    [(t, who) for t in (Transport.LDAPS, Transport.LDAP_SEAL) for who in ("host", "user")],
    ids=lambda case: f"{case[0].value}-{case[1]}",
)
def test_fetch_keys_equal_samba(
    make_client: MakeClient,
    samba_dc: TestDC,
    samba_keys: Callable[[str], dict[int, bytes]],
    request: pytest.FixtureRequest,
    case: tuple[Transport, str],
) -> None:
    transport, who = case
    identity: Identity = request.getfixturevalue(who)
    client = make_client(transport=transport)
    gmsa = samba_dc.gmsas[0]
    record = client.fetch_managed_password(gmsa, identity)
    assert record.sam_account_name.lower() == f"{gmsa}$"
    assert record.dc == samba_dc.dc_fqdn
    assert record.dn.lower().endswith(samba_dc.base_dn.lower())
    _assert_keys_match_samba(record, samba_dc, samba_keys)
    assert client.bind_count == 1


def test_auto_prefers_sealed_ldap(make_client: MakeClient, host: HostIdentity) -> None:
    client = make_client(transport=Transport.AUTO)
    record = client.fetch_managed_password("webapp02$", host)
    assert record.blob
    used = [endpoint.transport for endpoint, _ in client._slots]
    assert used == [Transport.LDAP_SEAL]


def test_identity_without_rights_is_denied(
    make_client: MakeClient, samba_dc: TestDC, other: HostIdentity
) -> None:
    client = make_client()
    gmsa = samba_dc.gmsas[0]
    with pytest.raises(errors.PasswordAccessDeniedError) as info:
        client.fetch_managed_password(gmsa, other)
    err = info.value
    assert err.gmsa == f"{gmsa}$"
    assert err.identity == samba_dc.other_principal
    assert samba_dc.other_principal in err.message
    assert f"{gmsa}$" in err.message
    assert "PrincipalsAllowedToRetrieveManagedPassword" in err.message
    assert "msDS-GroupMSAMembership" in err.message


def test_wrong_user_password_is_a_bind_error(make_client: MakeClient, samba_dc: TestDC) -> None:
    wrong = UserIdentity(samba_dc.user, samba_dc.domain, "not-" + samba_dc.user_password)
    with pytest.raises(errors.BindError) as info:
        make_client().fetch_managed_password(samba_dc.gmsas[0], wrong)
    assert info.value.identity == wrong.principal
    assert samba_dc.user_password not in info.value.message


def test_failover_past_closed_port(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity, closed_port: int
) -> None:
    client = make_client(f"ldap://{samba_dc.dc_fqdn}:{closed_port}, {samba_dc.dc_fqdn}")
    start = time.monotonic()
    record = client.fetch_managed_password(samba_dc.gmsas[1], host)
    # A refused port costs no timeout: the whole failover fits within one.
    assert time.monotonic() - start < DEFAULT_TIMEOUT
    assert record.blob
    # The working DC is now preferred: the next fetch goes straight there on the same connection.
    client.fetch_managed_password(samba_dc.gmsas[2], host)
    assert client.bind_count == 1


def test_all_dead_fails_in_bounded_time_naming_each_dc(
    make_client: MakeClient,
    samba_dc: TestDC,
    host: HostIdentity,
    closed_port: int,
    silent_port: int,
) -> None:
    dcs = (f"ldap://{samba_dc.dc_fqdn}:{closed_port} "
           f"ldap://{samba_dc.dc_fqdn}:{silent_port} "
           f"ldaps://{samba_dc.dc_fqdn}:{silent_port}")
    client = make_client(dcs, timeout=TIMEOUT)
    start = time.monotonic()
    with pytest.raises(errors.DCUnavailableError) as info:
        client.fetch_managed_password(samba_dc.gmsas[0], host)
    elapsed = time.monotonic() - start
    assert elapsed < 3 * TIMEOUT + SLACK
    where = [dc for dc, _ in info.value.attempts]
    assert where == [
        f"ldap://{samba_dc.dc_fqdn}:{closed_port} (sealed)",
        f"ldap://{samba_dc.dc_fqdn}:{silent_port} (sealed)",
        f"ldaps://{samba_dc.dc_fqdn}:{silent_port}",
    ]
    for dc in where:
        assert dc in info.value.message
    reasons = [reason for _, reason in info.value.attempts]
    assert "refused" in reasons[0].lower()
    assert reasons[1:] == ["timed out", "timed out"]


@pytest.mark.parametrize("scheme", ["ldap", "ldaps"])
def test_silent_listener_abandoned_after_timeout(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity, silent_port: int, scheme: str
) -> None:
    client = make_client(f"{scheme}://{samba_dc.dc_fqdn}:{silent_port}", timeout=TIMEOUT)
    start = time.monotonic()
    with pytest.raises(errors.DCUnavailableError) as info:
        client.fetch_managed_password(samba_dc.gmsas[0], host)
    elapsed = time.monotonic() - start
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
    assert info.value.attempts[0][1] == "timed out"


def test_custom_ou_found_without_config(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity
) -> None:
    record = make_client().fetch_managed_password(samba_dc.ou_gmsa, host)
    assert record.dn.lower().endswith(samba_dc.ou_dn.lower())


def test_custom_ou_with_search_base(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity
) -> None:
    client = make_client(search_base=samba_dc.ou_dn)
    record = client.fetch_managed_password(f"{samba_dc.ou_gmsa}$", host)
    assert record.dn.lower().endswith(samba_dc.ou_dn.lower())
    # A gMSA outside that base is not found, and the error names the base.
    with pytest.raises(errors.GmsaNotFoundError) as info:
        client.fetch_managed_password(samba_dc.gmsas[0], host)
    assert samba_dc.ou_dn in info.value.message
    assert info.value.gmsa == f"{samba_dc.gmsas[0]}$"


def test_unknown_gmsa_and_hostile_name(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity
) -> None:
    client = make_client()
    for name in ("nosuchgmsa", "*", "webapp0*", "x)(sAMAccountName=*"):
        with pytest.raises(errors.GmsaNotFoundError) as info:
            client.fetch_managed_password(name, host)
        assert samba_dc.base_dn in info.value.message


def test_dn_is_cached(make_client: MakeClient, samba_dc: TestDC, host: HostIdentity) -> None:
    client = make_client()
    first = client.fetch_managed_password(samba_dc.ou_gmsa, host)
    second = client.fetch_managed_password(samba_dc.ou_gmsa, host)
    assert first.dn == second.dn
    # Same password; only the blob's "query again in" interval moved on (MS-ADTS 2.2.19).
    current = parse_managed_password(first.blob).current
    assert parse_managed_password(second.blob).current == current
    assert client.search_count == 2  # the second read is a base-scope search of the cached DN
    assert client._dn_cache == {(samba_dc.base_dn.lower(), f"{samba_dc.ou_gmsa}$"): first.dn}


def test_fifty_concurrent_fetches_reuse_connections(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity, user: UserIdentity
) -> None:
    client = make_client(timeout=5.0)
    names = [*samba_dc.gmsas, samba_dc.ou_gmsa]
    identities: list[Identity] = [host, user]
    before = metrics.get(metrics.LDAP_BINDS, samba_dc.dc_fqdn)
    barrier = threading.Barrier(50)

    def fetch(i: int) -> GmsaRecord:
        barrier.wait()
        return client.fetch_managed_password(names[i % len(names)], identities[i % 2])

    with ThreadPoolExecutor(max_workers=50) as pool:
        records = list(pool.map(fetch, range(50)))
    assert len(records) == 50
    assert all(r.blob and r.sam_account_name.rstrip("$") in names for r in records)
    # One (DC, identity) connection per identity: two binds for fifty reads.
    assert client.bind_count == 2
    assert metrics.get(metrics.LDAP_BINDS, samba_dc.dc_fqdn) - before == 2
    assert client.search_count >= 50


def test_warm_binds_ahead_and_the_first_read_reuses_it(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity, closed_port: int
) -> None:
    # The first DC refuses connections: warm moves on and pools the one that binds.
    client = make_client(f"ldap://{samba_dc.dc_fqdn}:{closed_port}, {samba_dc.dc_fqdn}")
    assert client.warm(host)
    assert (client.bind_count, client.search_count) == (1, 0)
    assert client.warm(host)  # already bound: nothing more
    assert client.fetch_managed_password(samba_dc.gmsas[0], host).blob
    assert client.bind_count == 1


def test_warm_never_raises(make_client: MakeClient, samba_dc: TestDC, closed_port: int) -> None:
    missing = HostIdentity(samba_dc.host_principal, Path("/nonexistent/krb5.keytab"))
    assert not make_client().warm(missing)
    assert not make_client(f"ldap://{samba_dc.dc_fqdn}:{closed_port}").warm(
        HostIdentity(samba_dc.host_principal, samba_dc.host_keytab)
    )


def test_broken_pooled_connection_is_reestablished(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity
) -> None:
    client = make_client()
    client.fetch_managed_password(samba_dc.gmsas[0], host)
    (slot,) = client._slots.values()
    slot.conn.socket.shutdown(socket.SHUT_RDWR)  # as if the DC dropped an idle connection
    record = client.fetch_managed_password(samba_dc.gmsas[0], host)
    assert record.blob
    assert client.bind_count == 2


def test_dns_discovery_finds_dc(samba_dc: TestDC) -> None:
    dcs = discover_dcs(samba_dc.domain, nameservers=[samba_dc.ip], timeout=2.0)
    assert dcs == [DomainController(samba_dc.dc_fqdn)]


def test_fetch_through_dns_discovery(
    make_client: MakeClient, samba_dc: TestDC, host: HostIdentity
) -> None:
    client = make_client("", dns_nameservers=(samba_dc.ip,))
    assert client.fetch_managed_password(samba_dc.gmsas[0], host).dc == samba_dc.dc_fqdn
