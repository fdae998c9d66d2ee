"""Start-up warm-up: which domain it binds to, whatever form CF_MACHINE_PRINCIPAL takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from credfetcher.config import Config
from credfetcher.directory import DirectoryConfig
from credfetcher.identity import HostIdentity
from credfetcher.service import LeaseService


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
