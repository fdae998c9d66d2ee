"""RenewNonDomainJoinedKerberosLease verifies new credentials before any lease moves (issue 15).

A wrong password must change nothing: the call answers UNAUTHENTICATED naming the user, the
lease keeps renewing with the credentials it had, and the DC sees no failed pre-authentication
after the refused call (each one would count towards AD's account lockout).

The shared test DC counts bad passwords only for accounts under a lockout policy, and its
domain policy has none (threshold 0). So this module makes an account of its own, once:
``cflockout`` under a fine-grained password policy (PSO) with a lockout threshold too high to
ever lock it (1000), and a gMSA ``cflock01`` only it may read. Nothing shared is changed. Its
password is set to a fresh random value per session, handed to Samba on stdin (never argv).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.credspec import make_credspec
from credfetcher.tickets import read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon

LOCKOUT_USER = "cflockout"
LOCKOUT_PSO = "cflockout-pso"
LOCKOUT_GMSA = "cflock01"

# Runs under the system Python, where Samba's own modules live; the password comes on stdin.
SET_PASSWORD = r"""
import sys
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
db.setpassword("(sAMAccountName=%s)" % sys.argv[2], sys.stdin.read(),
               force_change_at_next_login=False, username=sys.argv[2])
"""


@dataclass(frozen=True)
class LockoutAccount:
    user: str
    password: str = field(repr=False)
    gmsa: str


def _samba_tool(dc: TestDC, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["samba-tool", *args, "-s", str(dc.state / "etc" / "smb.conf")],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@pytest.fixture(scope="module")
def lockout_account(samba_dc: TestDC) -> LockoutAccount:
    if _samba_tool(samba_dc, "user", "show", LOCKOUT_USER, check=False).returncode != 0:
        _samba_tool(samba_dc, "user", "add", LOCKOUT_USER, "--random-password")
    psos = _samba_tool(samba_dc, "domain", "passwordsettings", "pso", "list").stdout
    if LOCKOUT_PSO not in psos:
        _samba_tool(
            samba_dc, "domain", "passwordsettings", "pso", "create", LOCKOUT_PSO, "10",
            "--account-lockout-threshold=1000", "--reset-account-lockout-after=30",
            "--account-lockout-duration=30",
        )
    applied = _samba_tool(
        samba_dc, "domain", "passwordsettings", "pso", "show-user", LOCKOUT_USER
    ).stdout
    if LOCKOUT_PSO not in applied:
        _samba_tool(
            samba_dc, "domain", "passwordsettings", "pso", "apply", LOCKOUT_PSO, LOCKOUT_USER
        )
    view = _samba_tool(samba_dc, "service-account", "view", f"--name={LOCKOUT_GMSA}$", check=False)
    if view.returncode != 0:
        _samba_tool(
            samba_dc, "service-account", "create", f"--name={LOCKOUT_GMSA}",
            f"--dns-host-name={LOCKOUT_GMSA}.{samba_dc.domain}",
        )
        _samba_tool(
            samba_dc, "service-account", "group-msa-membership", "add",
            f"--name={LOCKOUT_GMSA}$", f"--principal={LOCKOUT_USER}",
        )
        _samba_tool(samba_dc, "user", "enable", f"{LOCKOUT_GMSA}$")
    password = f"Cf-{secrets.token_urlsafe(18)}-9a"
    subprocess.run(
        ["/usr/bin/python3", "-c", SET_PASSWORD, str(samba_dc.state / "etc" / "smb.conf"),
         LOCKOUT_USER],
        input=password,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return LockoutAccount(LOCKOUT_USER, password, LOCKOUT_GMSA)


def bad_password_state(dc: TestDC, user: str) -> tuple[int, int]:
    """(badPwdCount, badPasswordTime) as the DC's database holds them."""
    text = _samba_tool(
        dc, "user", "show", user, "--attributes=badPwdCount,badPasswordTime"
    ).stdout
    values = dict(
        line.split(": ", 1) for line in text.splitlines() if line.startswith("badP")
    )
    return int(values.get("badPwdCount", "0")), int(values.get("badPasswordTime", "0"))


def ccache_end(path: Path) -> int:
    info = read_ticket_info(path)
    assert info is not None, f"{path} is missing or unreadable"
    return info.endtime


@pytest.fixture
def daemon(samba_dc: TestDC, tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(
        samba_dc, tmp_path / "d", CF_TICKET_LIFETIME="20", CF_RENEW_LIFETIME="3600"
    ) as d:
        yield d


def test_wrong_password_changes_nothing_and_is_not_retried(
    samba_dc: TestDC, lockout_account: LockoutAccount, daemon: Daemon
) -> None:
    acct = lockout_account
    with daemon.client() as stub:
        created = stub.AddNonDomainJoinedKerberosLease(
            pb.CreateNonDomainJoinedKerberosLeaseRequest(
                credspec_contents=[make_credspec(acct.gmsa, samba_dc.domain, samba_dc.netbios)],
                username=acct.user,
                password=acct.password,
                domain=samba_dc.domain,
            ),
            timeout=60,
        )
        ccache = Path(created.created_kerberos_file_paths[0]) / "krb5cc"
        with pytest.raises(grpc.RpcError) as refused:
            stub.RenewNonDomainJoinedKerberosLease(
                pb.RenewNonDomainJoinedKerberosLeaseRequest(
                    username=acct.user, password="Wrong-Password-1", domain=samba_dc.domain
                ),
                timeout=60,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
        assert acct.user in (refused.value.details() or "")
        after_call = bad_password_state(samba_dc, acct.user)
        assert after_call[1] != 0, "the refused call itself was not seen by the DC"
        end_after_call = ccache_end(ccache)

        # 20 s tickets renew about every 10 s; the old code retried the bad password at 2, 4, 8 s.
        time.sleep(25)
        assert bad_password_state(samba_dc, acct.user)[1] == after_call[1], (
            "failed pre-authentications after the refused call (badPasswordTime moved)"
        )
        assert ccache_end(ccache) > end_after_call, "the lease stopped renewing"
        (view,) = stub.ListLeases(pb.ListLeasesRequest(), timeout=10).leases
        assert view.state == "active", view
        # The right password still works afterwards, and it is verified, not just accepted.
        renewed = stub.RenewNonDomainJoinedKerberosLease(
            pb.RenewNonDomainJoinedKerberosLeaseRequest(
                username=acct.user, password=acct.password, domain=samba_dc.domain
            ),
            timeout=60,
        )
        assert [Path(p) for p in renewed.renewed_kerberos_file_paths] == [ccache]
    assert bad_password_state(samba_dc, acct.user)[1] == after_call[1]
