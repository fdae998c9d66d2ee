"""Shared fixtures: the real Samba AD DC (docker/samba-ad/samba-ad.sh), started once per session.

Integration tests skip with the reason when the DC cannot run here (not root, no Samba), except
under ``CI=true``, where such a skip is turned into a failure: CI must really exercise the DC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from credfetcher.config import Config
from credfetcher.discovery import parse_dc_list

# Hypothesis' per-example deadline is a timing assertion: on two cores shared with a DC and other
# test runs it failed examples that were merely slow (test_keys, once). Speed is the benchmark's
# business (bench/); tests judge behaviour.
settings.register_profile("credfetcher", deadline=None)
settings.load_profile("credfetcher")

REPO = Path(__file__).resolve().parent.parent
SAMBA_AD = REPO / "docker" / "samba-ad" / "samba-ad.sh"


@dataclass(frozen=True)
class TestDC:
    """What the provisioning script wrote into its env file."""

    __test__ = False  # not a test class, despite the name

    realm: str
    domain: str
    netbios: str
    ip: str
    dc_name: str
    dc_fqdn: str
    base_dn: str
    state: Path
    krb5_config: Path
    ca_file: Path
    host_principal: str
    host_keytab: Path
    other_principal: str
    other_keytab: Path
    user: str
    user_password: str = field(repr=False)
    user2: str
    """A second user who may read every gMSA password: a rotated secret's new identity."""
    user2_password: str = field(repr=False)
    gmsas: tuple[str, ...]
    ou_gmsa: str
    ou_dn: str

    def samba_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run samba-tool against the DC's local database (no network, no credentials)."""
        return subprocess.run(
            ["samba-tool", *args, "-s", str(self.state / "etc" / "smb.conf")],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def service_config(self, root: Path, **overrides: Any) -> Config:
        """Settings for an in-process LeaseService of this DC, its files under ``root``."""
        settings: dict[str, Any] = {
            "krb_dir": root / "krbdir",
            "socket_dir": root / "socket",
            "domain_controllers": parse_dc_list(self.dc_fqdn),
            "machine_keytab": self.host_keytab,
            "machine_principal": self.host_principal,
            "ldap_ca_file": self.ca_file,
        }
        return Config(**(settings | overrides))

    def export_keytab(self, principal: str, path: Path) -> Path:
        """Samba's own keys for ``principal``: the oracle for key derivation tests."""
        self.samba_tool("domain", "exportkeytab", str(path), f"--principal={principal}")
        return path

    def krb5_env(self, ccache: str | None = None) -> dict[str, str]:
        """An environment for MIT tools pointed at this DC (and at ``ccache`` when given)."""
        env = dict(os.environ, KRB5_CONFIG=str(self.krb5_config))
        env.pop("KRB5CCNAME", None)
        if ccache is not None:
            env["KRB5CCNAME"] = ccache
        return env


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        # Values are single-quoted so the file can be sourced by a shell; none contains a quote.
        values[key] = value.strip("'")
    return values


def load_test_dc(env_file: Path) -> TestDC:
    """The DC described by samba-ad.sh's env file (tests and bench/run.py)."""
    env = read_env_file(env_file)
    return TestDC(
        realm=env["CF_TEST_REALM"],
        domain=env["CF_TEST_DOMAIN"],
        netbios=env["CF_TEST_NETBIOS"],
        ip=env["CF_TEST_DC_IP"],
        dc_name=env["CF_TEST_DC_NAME"],
        dc_fqdn=env["CF_TEST_DC_FQDN"],
        base_dn=env["CF_TEST_BASE_DN"],
        state=Path(env["CF_TEST_STATE"]),
        krb5_config=Path(env["CF_TEST_KRB5_CONFIG"]),
        ca_file=Path(env["CF_TEST_CA_FILE"]),
        host_principal=env["CF_TEST_HOST_PRINCIPAL"],
        host_keytab=Path(env["CF_TEST_HOST_KEYTAB"]),
        other_principal=env["CF_TEST_OTHER_PRINCIPAL"],
        other_keytab=Path(env["CF_TEST_OTHER_KEYTAB"]),
        user=env["CF_TEST_USER"],
        user_password=Path(env["CF_TEST_USER_PASSWORD_FILE"]).read_text(),
        user2=env["CF_TEST_USER2"],
        user2_password=Path(env["CF_TEST_USER2_PASSWORD_FILE"]).read_text(),
        gmsas=tuple(env["CF_TEST_GMSAS"].split()),
        ou_gmsa=env["CF_TEST_OU_GMSA"],
        ou_dn=env["CF_TEST_OU_DN"],
    )


def _dc_unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the test DC is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def samba_dc() -> TestDC:
    """The local Samba AD DC, started (or reused) through docker/samba-ad/samba-ad.sh up."""
    if os.geteuid() != 0:
        _dc_unavailable("the Samba AD DC needs root (it adds a loopback address and binds :88)")
    if shutil.which("samba") is None or shutil.which("samba-tool") is None:
        _dc_unavailable("Samba is not installed (run: docker/samba-ad/samba-ad.sh deps)")
    proc = subprocess.run(
        [str(SAMBA_AD), "up"], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        _dc_unavailable(f"samba-ad.sh up failed: {proc.stderr.strip()[-2000:]}")
    return load_test_dc(Path(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="session")
def krb5_config(samba_dc: TestDC) -> Iterator[Path]:
    """Point this process's Kerberos library at the test DC for the whole session.

    libkrb5 reads KRB5_CONFIG when a context is created; every test process talks to one realm,
    so setting it once (and restoring it afterwards) is what a host's /etc/krb5.conf would do.
    """
    old = os.environ.get("KRB5_CONFIG")
    os.environ["KRB5_CONFIG"] = str(samba_dc.krb5_config)
    yield samba_dc.krb5_config
    if old is None:
        os.environ.pop("KRB5_CONFIG", None)
    else:
        os.environ["KRB5_CONFIG"] = old
