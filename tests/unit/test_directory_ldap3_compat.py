"""An ldap3 without GSSAPI sealing (2.9.1, what distributions ship) is caught at start-up, and
LDAPS does not depend on sealing.

``credfetcher.ldapchannel.LDAP3_CAN_SEAL`` is patched to False, and ldap3's ``ENCRYPT`` removed, to
stand for that release; ``_Connection`` is replaced by one that, like 2.9.1's, rejects the
``session_security`` argument, to show that the LDAPS path never passes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ldap3
import pytest

from credfetcher import daemon, errors, ldapchannel
from credfetcher.directory import (
    DirectoryClient,
    DirectoryConfig,
    Transport,
    check_ldap_transport,
)
from credfetcher.discovery import parse_dc_list
from credfetcher.identity import HostIdentity


@pytest.fixture
def old_ldap3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldapchannel, "LDAP3_CAN_SEAL", False)
    monkeypatch.delattr(ldap3, "ENCRYPT", raising=False)


def test_the_pinned_ldap3_can_seal() -> None:
    assert ldapchannel.LDAP3_CAN_SEAL


@pytest.mark.usefixtures("old_ldap3")
@pytest.mark.parametrize(
    ("transport", "dcs"),
    [
        (Transport.LDAP_SEAL, ""),
        (Transport.LDAP_SEAL, "dc1.example.com"),
        (Transport.AUTO, "ldap://dc1.example.com"),
        (Transport.LDAPS, "ldap://dc1.example.com"),
        (Transport.AUTO, "dc1.example.com:3268"),
    ],
)
def test_settings_that_need_sealing_are_refused(transport: Transport, dcs: str) -> None:
    with pytest.raises(errors.ConfigError, match=r"session_security=ENCRYPT") as info:
        check_ldap_transport(transport, parse_dc_list(dcs))
    assert info.value.setting == "ldap_transport"
    assert "ldaps" in info.value.message


@pytest.mark.usefixtures("old_ldap3")
@pytest.mark.parametrize(
    ("transport", "dcs"),
    [
        (Transport.AUTO, ""),
        (Transport.AUTO, "dc1.example.com,dc2.example.com:636"),
        (Transport.LDAPS, "dc1.example.com:3269"),
        (Transport.AUTO, "ldaps://dc1.example.com"),
    ],
)
def test_ldaps_settings_pass(transport: Transport, dcs: str) -> None:
    check_ldap_transport(transport, parse_dc_list(dcs))


@pytest.mark.usefixtures("old_ldap3")
def test_auto_uses_ldaps_only(caplog: pytest.LogCaptureFixture) -> None:
    config = DirectoryConfig(domain="example.com",
                             domain_controllers=parse_dc_list("dc1.example.com"))
    client = DirectoryClient(config)
    (dc,) = config.domain_controllers
    assert [e.transport for e in client._endpoints(dc)] == [Transport.LDAPS]
    assert "reading gMSA passwords over LDAPS only" in caplog.text


@pytest.mark.usefixtures("old_ldap3")
def test_client_refuses_sealing_settings() -> None:
    config = DirectoryConfig(domain="example.com", transport=Transport.LDAP_SEAL)
    with pytest.raises(errors.ConfigError):
        DirectoryClient(config)


@pytest.mark.usefixtures("old_ldap3")
def test_daemon_says_so_at_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("CF_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CF_LDAP_TRANSPORT", "ldap-seal")
    assert daemon.main(["--check-config"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert "session_security=ENCRYPT" in err


class _Ldap391Connection(ldapchannel._Connection):
    """ldap3 2.9.1's signature: no session_security (its Connection raises TypeError)."""

    seen: list[dict[str, Any]] = []  # noqa: RUF012 - per-test, reset by the test

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "session_security" in kwargs:
            raise TypeError("__init__() got an unexpected keyword argument 'session_security'")
        type(self).seen.append(kwargs)
        super().__init__(*args, **kwargs)


@pytest.mark.usefixtures("old_ldap3")
def test_ldaps_never_passes_session_security(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ldapchannel, "_Connection", _Ldap391Connection)
    _Ldap391Connection.seen = []
    config = DirectoryConfig(domain="example.com",
                             domain_controllers=parse_dc_list("ldaps://127.0.0.1:9"), timeout=1)
    client = DirectoryClient(config)

    class Creds:
        def acquire(self, identity: object) -> None:
            return None

    client._creds = Creds()  # type: ignore[assignment]
    identity = HostIdentity(principal="HOST$@EXAMPLE.COM", keytab=Path("/nonexistent"))
    # Nothing listens on port 9: the attempt gets as far as connecting, past the constructor.
    with pytest.raises(errors.DCUnavailableError, match=r"ldaps://127\.0\.0\.1:9: connect"):
        client.fetch_managed_password("webapp01", identity)
    assert _Ldap391Connection.seen
    assert all(kw.get("authentication") == ldap3.SASL for kw in _Ldap391Connection.seen)
