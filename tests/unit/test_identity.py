"""Identity parsing, principals, pooling keys and secret hygiene (no KDC needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from credfetcher import errors
from credfetcher.identity import (
    CredentialCache,
    HostIdentity,
    UserIdentity,
    default_machine_principal,
)
from credfetcher.names import machine_principal, principal_realm


@pytest.mark.parametrize(
    ("hostname", "realm", "expected"),
    [
        ("web01", "example.com", "WEB01$@EXAMPLE.COM"),
        ("web01.corp.example.com", "EXAMPLE.COM", "WEB01$@EXAMPLE.COM"),
        ("averyveryverylonghostname.example.com", "example.com", "AVERYVERYVERYLO$@EXAMPLE.COM"),
        ("ip-10-0-0-1", "example.com", "IP-10-0-0-1$@EXAMPLE.COM"),
    ],
)
def test_default_machine_principal(hostname: str, realm: str, expected: str) -> None:
    assert default_machine_principal(hostname, realm) == expected
    assert len(expected.split("$", maxsplit=1)[0]) <= 15


def test_default_machine_principal_needs_names() -> None:
    with pytest.raises(errors.ConfigError):
        default_machine_principal("", "example.com")
    with pytest.raises(errors.ConfigError):
        default_machine_principal("web01", " ")


def test_host_identity() -> None:
    host = HostIdentity.for_host("example.com", hostname="web01.example.com",
                                 keytab=Path("/k.keytab"))
    assert host.principal == "WEB01$@EXAMPLE.COM"
    assert host.label == "WEB01$@EXAMPLE.COM"
    assert host.key == ("host", "WEB01$@EXAMPLE.COM", "/k.keytab")
    assert HostIdentity("WEB01$@EXAMPLE.COM").keytab == Path("/etc/krb5.keytab")
    with pytest.raises(errors.ConfigError):
        HostIdentity("WEB01$")


@pytest.mark.parametrize(
    ("username", "domain", "user", "dom"),
    [
        ("cfreader", "credfetcher.test", "cfreader", "credfetcher.test"),
        ("cfreader@credfetcher.test", "", "cfreader", "credfetcher.test"),
        ("cfreader@credfetcher.test", "other.test", "cfreader", "credfetcher.test"),
        ("CREDFETCH\\cfreader", "credfetcher.test", "cfreader", "credfetcher.test"),
        ("credfetcher.test\\cfreader", "", "cfreader", "credfetcher.test"),
        ("CREDFETCH\\cfreader", "", "cfreader", "CREDFETCH"),
    ],
)
def test_user_identity_forms(username: str, domain: str, user: str, dom: str) -> None:
    ident = UserIdentity.parse(username, "pw", domain)
    assert (ident.username, ident.domain) == (user, dom)
    assert ident.principal == f"{user}@{dom.upper()}"


@pytest.mark.parametrize(("username", "domain"), [("", "x.test"), ("bob", ""), ("a/b", "x.test")])
def test_user_identity_rejects(username: str, domain: str) -> None:
    with pytest.raises(errors.InvalidRequestError):
        UserIdentity.parse(username, "pw", domain)


def test_user_identity_hides_password() -> None:
    secret = "Sup3r-Secret-Passw0rd"
    ident = UserIdentity("bob", "example.com", secret)
    assert secret not in repr(ident)
    assert secret not in repr(ident.key)
    assert secret not in ident.label
    same = UserIdentity("BOB", "EXAMPLE.COM", secret)
    assert same.key == ident.key
    assert UserIdentity("bob", "example.com", secret + "!").key != ident.key
    hash(ident.key)


def test_missing_keytab_is_a_bind_error(tmp_path: Path) -> None:
    host = HostIdentity("WEB01$@EXAMPLE.COM", tmp_path / "nope.keytab")
    with pytest.raises(errors.BindError) as info:
        CredentialCache().acquire(host)
    assert info.value.identity == "WEB01$@EXAMPLE.COM"
    assert "nope.keytab" in info.value.message


@pytest.mark.parametrize(
    ("configured", "realm"),
    [
        ("linuxhost01$@CORP.EXAMPLE.COM", "CORP.EXAMPLE.COM"),
        ("linuxhost01$", None),  # no realm: krb5.conf's default realm is used for the warm-up
        (None, None),
        ("x@", None),
    ],
)
def test_principal_realm(configured: str | None, realm: str | None) -> None:
    assert principal_realm(configured) == realm


def test_one_machine_principal_rule_for_config_and_identity() -> None:
    assert machine_principal("linuxhost01$", "corp.example.com", "ignored") == (
        "linuxhost01$@CORP.EXAMPLE.COM"
    )
    assert machine_principal(None, "corp.example.com", "web01.corp.example.com") == (
        default_machine_principal("web01.corp.example.com", "corp.example.com")
    )
