"""Pure parts of credfetcher.directory: filters, names, config, channel bindings (no DC)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from credfetcher import errors
from credfetcher.directory import (
    DirectoryClient,
    DirectoryConfig,
    GmsaRecord,
    Transport,
    base_dn_for_domain,
    gmsa_filter,
    normalize_gmsa_name,
    tls_server_end_point,
)
from credfetcher.discovery import parse_dc_list
from credfetcher.identity import HostIdentity
from credfetcher.ldapchannel import AttemptFailed


def test_filter_escapes_rfc4515_specials() -> None:
    assert gmsa_filter("webapp01$") == (
        "(&(objectClass=msDS-GroupManagedServiceAccount)(sAMAccountName=webapp01$))"
    )
    evil = normalize_gmsa_name("x*)(objectClass=*")
    assert gmsa_filter(evil) == (
        "(&(objectClass=msDS-GroupManagedServiceAccount)"
        "(sAMAccountName=x\\2a\\29\\28objectClass=\\2a$))"
    )
    assert "\\5c" in gmsa_filter("a\\b$")
    assert "\\00" in gmsa_filter("a\x00b$")


@pytest.mark.parametrize(("name", "sam"), [("webapp01", "webapp01$"), ("webapp01$", "webapp01$"),
                                           (" WebApp01$ ", "WebApp01$")])
def test_normalize_gmsa_name(name: str, sam: str) -> None:
    assert normalize_gmsa_name(name) == sam


@pytest.mark.parametrize("name", ["", "$", " ", "we\nb"])
def test_normalize_gmsa_name_rejects(name: str) -> None:
    with pytest.raises(errors.InvalidRequestError):
        normalize_gmsa_name(name)


def test_base_dn() -> None:
    assert base_dn_for_domain("Credfetcher.Test.") == "DC=Credfetcher,DC=Test"
    config = DirectoryConfig("credfetcher.test")
    assert config.base_dn == "DC=credfetcher,DC=test"
    ou = "OU=Apps,DC=credfetcher,DC=test"
    assert DirectoryConfig("credfetcher.test", search_base=ou).base_dn == ou


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_config_rejects_bad_timeout(timeout: float) -> None:
    with pytest.raises(errors.ConfigError) as info:
        DirectoryConfig("example.com", timeout=timeout)
    assert info.value.setting == "timeout"


def test_config_rejects_missing_ca_and_domain(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError):
        DirectoryConfig("example.com", ca_file=tmp_path / "none.pem")
    with pytest.raises(errors.ConfigError):
        DirectoryConfig("..")


def test_record_repr_hides_blob() -> None:
    record = GmsaRecord("g$", "CN=g", b"\x01secret", 1, "dc1")
    assert "secret" not in repr(record)


def test_tls_verify_off_warns(caplog: pytest.LogCaptureFixture) -> None:
    with DirectoryClient(DirectoryConfig("example.com", tls_verify=False)):
        pass
    assert "verification" in caplog.text
    assert caplog.records[0].levelname == "WARNING"


def test_endpoints_per_transport() -> None:
    dcs = parse_dc_list("dc1.example.com ldaps://dc2.example.com ldap://dc3.example.com:1389 "
                        "dc4.example.com:636")

    def labels(transport: Transport) -> list[list[str]]:
        client = DirectoryClient(DirectoryConfig("example.com", dcs, transport=transport))
        return [[e.label for e in client._endpoints(dc)] for dc in dcs]

    assert labels(Transport.AUTO) == [
        ["ldap://dc1.example.com:389 (sealed)", "ldaps://dc1.example.com:636"],
        ["ldaps://dc2.example.com:636"],
        ["ldap://dc3.example.com:1389 (sealed)"],
        ["ldaps://dc4.example.com:636"],
    ]
    assert labels(Transport.LDAPS)[0] == ["ldaps://dc1.example.com:636"]
    assert labels(Transport.LDAP_SEAL)[0] == ["ldap://dc1.example.com:389 (sealed)"]


def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _cert(algorithm: bytes) -> bytes:
    tbs = _der(0x30, b"\x02\x01\x01" + b"\x05\x00" * 100)  # long enough for a 2-byte length
    return _der(0x30, tbs + algorithm + _der(0x03, b"\x00sig"))


@pytest.mark.parametrize(
    ("oid", "digest"),
    [
        ("1.2.840.113549.1.1.11", "sha256"),
        ("1.2.840.113549.1.1.12", "sha384"),
        ("1.2.840.113549.1.1.13", "sha512"),
        ("1.2.840.113549.1.1.5", "sha256"),  # SHA-1 is upgraded (RFC 5929 4.1)
        ("1.2.840.113549.1.1.4", "sha256"),  # and so is MD5
        ("1.2.840.10045.4.3.3", "sha384"),
        ("1.3.101.112", "sha256"),  # Ed25519: undefined by the RFC, SHA-256 like Windows
    ],
)
def test_channel_binding_hash_follows_signature(oid: str, digest: str) -> None:
    cert = _cert(_der(0x30, _oid(oid) + b"\x05\x00"))
    assert tls_server_end_point(cert) == (
        b"tls-server-end-point:" + hashlib.new(digest, cert).digest()
    )


def test_channel_binding_rsassa_pss_uses_params_hash() -> None:
    params = _der(0x30, _der(0xA0, _der(0x30, _oid("2.16.840.1.101.3.4.2.3") + b"\x05\x00")))
    cert = _cert(_der(0x30, _oid("1.2.840.113549.1.1.10") + params))
    assert tls_server_end_point(cert).endswith(hashlib.sha512(cert).digest())


def test_channel_binding_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="certificate"):
        tls_server_end_point(b"\x30\x05\x01")


def _client_failing_with(
    monkeypatch: pytest.MonkeyPatch, failures: dict[str, AttemptFailed]
) -> DirectoryClient:
    dcs = parse_dc_list(" ".join(f"ldaps://{host}" for host in failures))
    client = DirectoryClient(DirectoryConfig("example.com", dcs, timeout=2))

    def fail(endpoint: object, identity: object, sam: str) -> GmsaRecord:
        raise failures[endpoint.host]  # type: ignore[attr-defined]

    monkeypatch.setattr(client, "_fetch_on", fail)
    return client


HOST = HostIdentity("HOST$@EXAMPLE.COM", Path("/nonexistent/krb5.keytab"))


def test_a_dc_that_refuses_is_not_called_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client_failing_with(monkeypatch, {
        "dc1.example.com": AttemptFailed(
            "refused the search: operationsError (LDAP result 1)", refused=True),
        "dc2.example.com": AttemptFailed(
            "refused the search: insufficientAccessRights (LDAP result 50)", refused=True),
    })
    with pytest.raises(errors.DCUnavailableError) as info:
        client.fetch_managed_password("webapp01", HOST)
    message = info.value.message
    assert message.startswith("every domain controller for example.com that was tried refused")
    assert "operationsError" in message
    assert "insufficientAccessRights" in message
    assert "its own log says why" in message
    assert "reachability" not in message
    assert "DNS" not in message
    assert [where for where, _ in info.value.attempts] == [
        "ldaps://dc1.example.com:636", "ldaps://dc2.example.com:636"]


def test_refusals_and_unreachable_dcs_are_named_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client_failing_with(monkeypatch, {
        "dc1.example.com": AttemptFailed("timed out", timed_out=True),
        "dc2.example.com": AttemptFailed(
            "refused the search: busy (LDAP result 51)", refused=True),
    })
    with pytest.raises(errors.DCUnavailableError) as info:
        client.fetch_managed_password("webapp01", HOST)
    message = info.value.message
    assert "refused by ldaps://dc2.example.com:636: refused the search: busy" in message
    assert "unreachable: ldaps://dc1.example.com:636: timed out" in message
    assert "reachability of ports 389/636" in message


def test_unreachable_dcs_keep_the_network_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client_failing_with(monkeypatch, {
        "dc1.example.com": AttemptFailed("connect failed: [Errno 111] Connection refused",
                                          unreachable=True),
    })
    with pytest.raises(errors.DCUnavailableError) as info:
        client.fetch_managed_password("webapp01", HOST)
    assert info.value.message.startswith("no domain controller for example.com answered (")
    assert "reachability of ports 389/636" in info.value.message
