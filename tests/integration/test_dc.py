"""The test DC is a real AD DC: MIT's own tools get tickets and sealed LDAP answers from it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SAMBA_AD, TestDC
from tests.integration.mit import kinit_keytab, ldapsearch_account, run


def host_ccache(dc: TestDC, tmp_path: Path, keytab: Path, principal: str) -> dict[str, str]:
    return kinit_keytab(dc, f"FILE:{tmp_path / 'host.cc'}", keytab, principal)


def ldap_gssapi_search(dc: TestDC, env: dict[str, str], gmsa: str) -> str:
    return ldapsearch_account(dc, env, f"{gmsa}$", "msDS-ManagedPassword")


def test_host_gets_tgt_from_its_keytab(samba_dc: TestDC, tmp_path: Path) -> None:
    env = host_ccache(samba_dc, tmp_path, samba_dc.host_keytab, samba_dc.host_principal)
    out = run(["klist"], env).stdout
    assert f"Default principal: {samba_dc.host_principal}" in out
    assert f"krbtgt/{samba_dc.realm}@{samba_dc.realm}" in out


def test_host_reads_every_managed_password_over_sealed_ldap(
    samba_dc: TestDC, tmp_path: Path
) -> None:
    env = host_ccache(samba_dc, tmp_path, samba_dc.host_keytab, samba_dc.host_principal)
    for gmsa in (*samba_dc.gmsas, samba_dc.ou_gmsa):
        out = ldap_gssapi_search(samba_dc, env, gmsa)
        assert "msDS-ManagedPassword:: " in out, gmsa


def test_other_machine_account_gets_no_password(samba_dc: TestDC, tmp_path: Path) -> None:
    env = host_ccache(samba_dc, tmp_path, samba_dc.other_keytab, samba_dc.other_principal)
    out = ldap_gssapi_search(samba_dc, env, samba_dc.gmsas[0])
    assert f"CN={samba_dc.gmsas[0]}," in out  # the account is visible...
    assert "msDS-ManagedPassword" not in out  # ...its password is not


def test_gmsa_is_enabled_and_gets_a_tgt(samba_dc: TestDC, tmp_path: Path) -> None:
    gmsa = samba_dc.gmsas[0]
    keytab = samba_dc.export_keytab(f"{gmsa}$", tmp_path / "gmsa.keytab")
    principal = f"{gmsa}$@{samba_dc.realm}"
    env = kinit_keytab(samba_dc, f"FILE:{tmp_path / 'gmsa.cc'}", keytab, principal)
    assert f"Default principal: {principal}" in run(["klist"], env).stdout


def _pids_using(path: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if path in cmdline:
            found.append(int(entry.name))
    return found


def test_down_leaves_no_process_and_no_state(samba_dc: TestDC, tmp_path: Path) -> None:
    """A second, throwaway DC (own realm, address and state) is brought up and down."""
    state = tmp_path / "dc2"
    env = dict(
        os.environ,
        CF_SAMBA_STATE=str(state),
        CF_SAMBA_IP="127.0.0.11",
        CF_SAMBA_REALM="DOWNTEST.TEST",
        CF_SAMBA_NETBIOS="DOWNTEST",
    )
    up = subprocess.run(
        [str(SAMBA_AD), "up"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert up.returncode == 0, up.stderr
    pid = int((state / "samba.pid").read_text())
    assert _pids_using(str(state)), "the second DC should be running"
    down = subprocess.run(
        [str(SAMBA_AD), "down"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while _pids_using(str(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids_using(str(state)) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not state.exists()
    assert "127.0.0.11" not in Path("/etc/hosts").read_text()
    # The session's own DC is untouched.
    assert subprocess.run([str(SAMBA_AD), "status"], check=False, timeout=30).returncode == 0
