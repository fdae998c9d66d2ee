"""Secrets stay in the ccache and keytab files: not in logs, not in command lines, not in files.

After the full run (tests/reliability/conftest.py ``full_run``: domain-joined, per-request-owned
and domainless leases, renewals by the scheduler and by RenewNonDomainJoined, a restart), the gMSA
passwords are read here independently (credfetcher.directory in-process, as the host) and searched
in every form they could leak in: raw UTF-16LE, the UTF-8 conversion, base64, hex and Python's
bytes repr (what ``log.debug("%s", pw)`` prints) of each password and of the whole
msDS-ManagedPassword blob, and the domainless user's password. Heads and tails of each form are
searched too, so a truncated leak is found. Places: the daemon's stderr/stdout log (the stderr
format carries every structured field the journal would get), its environment and command line,
every process it started (there must be none: watched through /proc and through an audit hook
loaded into the daemon), and every file under krbdir — where krb5cc and krb5.keytab may hold keys
and tickets but no password form either.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from credfetcher.blob import parse_managed_password
from credfetcher.directory import DirectoryClient, DirectoryConfig
from credfetcher.discovery import parse_dc_list
from credfetcher.identity import HostIdentity
from credfetcher.keys import password_to_utf8
from credfetcher.leases import CCACHE_NAME, KEYTAB_NAME
from tests.conftest import TestDC
from tests.reliability.conftest import FullRun

CHUNK = 16


def forms(name: str, secret: bytes) -> dict[str, bytes]:
    """The ways ``secret`` can appear in text or bytes, each also as head and tail chunks."""
    whole = {
        f"{name} raw": secret,
        f"{name} base64": base64.b64encode(secret),
        f"{name} hex": secret.hex().encode(),
        f"{name} HEX": secret.hex().upper().encode(),
        f"{name} repr": repr(secret)[2:-1].encode(),
    }
    out = dict(whole)
    for label, value in whole.items():
        if len(value) >= 3 * CHUNK:
            out[f"{label} head"] = value[:CHUNK * 2]
            out[f"{label} tail"] = value[-CHUNK * 2 :]
    return out


@pytest.fixture(scope="module")
def secrets(full_run: FullRun, samba_dc: TestDC, krb5_config: Path) -> dict[str, bytes]:
    del krb5_config  # KRB5_CONFIG set for the in-process directory client
    client = DirectoryClient(
        DirectoryConfig(
            domain=samba_dc.domain,
            domain_controllers=parse_dc_list(samba_dc.dc_fqdn),
            ca_file=samba_dc.ca_file,
        )
    )
    host = HostIdentity(samba_dc.host_principal, samba_dc.host_keytab)
    found: dict[str, bytes] = {}
    gmsas = sorted({g for gs in full_run.leases.values() for g in gs})
    try:
        for gmsa in gmsas:
            blob = client.fetch_managed_password(gmsa, host).blob
            mp = parse_managed_password(blob)
            found |= forms(f"{gmsa} blob", blob)
            for which, pw16 in (("current", mp.current), ("previous", mp.previous)):
                if pw16 is None:
                    continue
                found |= forms(f"{gmsa} {which} password UTF-16LE", pw16)
                found |= forms(f"{gmsa} {which} password UTF-8", password_to_utf8(pw16))
    finally:
        client.close()
    found |= forms("user password", samba_dc.user_password.encode())
    return found


def leaks(data: bytes, secrets: dict[str, bytes], *, only: str = "") -> list[str]:
    return [label for label, value in secrets.items() if only in label and value in data]


def test_scanner_finds_what_it_looks_for(secrets: dict[str, bytes]) -> None:
    """A positive control: each form is really searchable (e.g. a logged bytes repr)."""
    utf8 = next(v for k, v in secrets.items() if k.endswith("current password UTF-8 raw"))
    logged = f"DEBUG x: {utf8!r} and {base64.b64encode(utf8).decode()}".encode()
    assert any("UTF-8 repr" in label for label in leaks(logged, secrets))
    assert any("UTF-8 base64" in label for label in leaks(logged, secrets))
    assert len(secrets) > 50


def test_no_secret_in_logs_environment_or_command_lines(
    full_run: FullRun, secrets: dict[str, bytes]
) -> None:
    daemon = full_run.daemon
    assert daemon.proc is not None
    pid = daemon.proc.pid
    log = daemon.log_path.read_bytes()
    assert b"created lease" in log
    assert b"DEBUG" in log
    assert leaks(log, secrets) == [], "secret in the daemon's log"
    for what in ("environ", "cmdline"):
        data = Path(f"/proc/{pid}/{what}").read_bytes()
        assert leaks(data, secrets) == [], f"secret in the daemon's {what}"


def test_daemon_starts_no_process(full_run: FullRun) -> None:
    assert full_run.renewals_seen == len(full_run.leases), "the scheduler did not renew"
    assert full_run.children_seen == [], "credfetcherd had child processes"
    # The audit hook really ran inside the daemon (it writes the file only on a spawn, so check
    # the hook path was in the daemon's environment) and recorded nothing.
    assert full_run.daemon.proc is not None
    env = Path(f"/proc/{full_run.daemon.proc.pid}/environ").read_bytes()
    assert b"CREDFETCHER_TEST_SPAWN_LOG=" in env
    assert b"spawnhook" in env
    spawned = full_run.spawn_log.read_text() if full_run.spawn_log.exists() else ""
    assert spawned == "", f"credfetcherd started processes: {spawned}"


def test_no_secret_in_krbdir_files(full_run: FullRun, secrets: dict[str, bytes]) -> None:
    files = [p for p in full_run.daemon.krb_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert CCACHE_NAME in names
    assert KEYTAB_NAME in names
    for path in files:
        data = path.read_bytes()
        if path.name in (CCACHE_NAME, KEYTAB_NAME):
            # Keys and tickets are what these hold; no form of any password.
            assert leaks(data, secrets, only="password") == [], path
        else:
            assert leaks(data, secrets) == [], path
