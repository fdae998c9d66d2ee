"""credfetcher.credentials: the start-up warm-up binds in the right realm, whatever form
CF_MACHINE_PRINCIPAL takes; one shared GmsaAccount per (domain, gMSA, identity), found by its key
before anything is made, and registered by proved_account only once the identity's read worked.
No DC: the directories are fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from credfetcher import credentials as credentials_module
from credfetcher.accounts import GmsaAccount, account_key
from credfetcher.config import Config
from credfetcher.credentials import Credentials
from credfetcher.directory import DirectoryConfig
from credfetcher.errors import BindError
from credfetcher.identity import HostIdentity, UserIdentity
from credfetcher.service import LeaseService

DOMAIN = "example.test"
READER = UserIdentity("reader", DOMAIN, "Reader-Password-1")


class FakeDirectory:
    def __init__(self, config: DirectoryConfig, warmed: list[tuple[str, str]]) -> None:
        self.config = config
        self.warmed = warmed

    def warm(self, identity: HostIdentity) -> bool:
        self.warmed.append((self.config.domain, identity.principal))
        return True

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("configured", "domain", "principal"),
    [
        # No realm in the setting: krb5.conf's default realm, not "LINUXHOST01$".
        ("linuxhost01$", "corp.example.com", "linuxhost01$@CORP.EXAMPLE.COM"),
        ("linuxhost01$@OTHER.EXAMPLE.COM", "other.example.com", "linuxhost01$@OTHER.EXAMPLE.COM"),
    ],
)
def test_warm_up_binds_in_the_right_realm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    configured: str,
    domain: str,
    principal: str,
) -> None:
    krb5_conf = tmp_path / "krb5.conf"
    krb5_conf.write_text("[libdefaults]\n default_realm = CORP.EXAMPLE.COM\n")
    monkeypatch.setenv("KRB5_CONFIG", str(krb5_conf))
    warmed: list[tuple[str, str]] = []

    def factory(config: DirectoryConfig) -> Any:
        return FakeDirectory(config, warmed)

    config = Config(krb_dir=tmp_path / "krbdir", machine_principal=configured)
    LeaseService(config, directory_factory=factory).credentials.warm_up()
    assert warmed == [(domain, principal)]


class RefusingDirectory:
    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config

    def fetch_managed_password(self, gmsa: str, identity: Any) -> Any:
        raise BindError(
            f"cannot authenticate as {identity.label}: wrong password", identity=identity.label
        )

    def close(self) -> None:
        pass


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[GmsaAccount]:
    """Every GmsaAccount Credentials constructs."""
    accounts: list[GmsaAccount] = []

    class Counted(GmsaAccount):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            accounts.append(self)

    monkeypatch.setattr(credentials_module, "GmsaAccount", Counted)
    return accounts


def credentials(tmp_path: Path) -> Credentials:
    return Credentials(Config(krb_dir=tmp_path), directory_factory=RefusingDirectory)  # type: ignore[arg-type]


def test_a_known_account_is_found_by_key_and_nothing_new_is_made(
    tmp_path: Path, made: list[GmsaAccount]
) -> None:
    creds = credentials(tmp_path)
    host = creds.host_identity(DOMAIN)
    first = creds.account(DOMAIN, "webapp01", host)
    assert made == [first]
    # The gMSA's name is matched case-insensitively, as AD does.
    assert creds.account(DOMAIN, "WebApp01", creds.host_identity(DOMAIN)) is first
    assert made == [first]
    assert first.key == account_key(DOMAIN, "WEBAPP01", host)


def test_each_gmsa_and_identity_has_an_account_of_its_own(
    tmp_path: Path, made: list[GmsaAccount]
) -> None:
    creds = credentials(tmp_path)
    host = creds.host_identity(DOMAIN)
    a = creds.account(DOMAIN, "webapp01", host)
    b = creds.account(DOMAIN, "webapp02", host)
    c = creds.account(DOMAIN, "webapp01", READER)
    assert len({id(a), id(b), id(c)}) == 3
    assert made == [a, b, c]
    assert creds.account(DOMAIN, "webapp01", READER) is c


def test_a_refused_identity_leaves_no_account_behind(
    tmp_path: Path, made: list[GmsaAccount]
) -> None:
    creds = credentials(tmp_path)
    with pytest.raises(BindError, match="wrong password"):
        creds.proved_account(DOMAIN, "webapp01", READER)
    assert len(made) == 1
    # Not registered: the next caller gets an account of its own, not the refused one.
    assert creds.account(DOMAIN, "webapp01", READER) is not made[0]
    assert len(made) == 2
