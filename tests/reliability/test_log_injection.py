"""Callers' and DCs' text cannot forge a line in the daemon's stderr log (issue 15); a failed DC
attempt is logged with its DC and reason (issue 17).

User names and domains with newlines and terminal escapes go through
AddNonDomainJoinedKerberosLease and RenewNonDomainJoinedKerberosLease; the daemon's errors quote
them back in its log. Every line of the log must then either start a record (its timestamp) or
continue one (indented), and hold no raw control character. The only DC in the daemon's list
listens nowhere, so a lease fails on it, and the stderr line says which DC and why.

On the old code the user name's newline started a line of its own reading like a record
("... CRITICAL credfetcher: forged"), and the failed attempt's line had no DC and no reason.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from tests.conftest import TestDC
from tests.integration.daemon import running_daemon

FORGED = "2026-11-28 10:00:00,000 CRITICAL credfetcher: forged"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_hostile_names_forge_no_line_and_dc_failures_say_where(
    samba_dc: TestDC, tmp_path: Path
) -> None:
    dead = f"ldap://{samba_dc.dc_fqdn}:{_closed_port()}"
    with running_daemon(
        samba_dc,
        tmp_path / "d",
        CF_DOMAIN_CONTROLLERS=dead,
        CF_LDAP_TIMEOUT="2",
    ) as daemon, daemon.client() as stub:
        credspec = daemon.credspec(samba_dc.gmsas[0])
        for username, domain in (
            (f"evil\n{FORGED}\x1b[31m\r", samba_dc.domain),
            ("nobody-here", f"{samba_dc.domain}\n{FORGED}"),
            (f"evil\u2028{FORGED}", samba_dc.domain),
        ):
            with pytest.raises(grpc.RpcError):
                stub.AddNonDomainJoinedKerberosLease(
                    pb.CreateNonDomainJoinedKerberosLeaseRequest(
                        credspec_contents=[credspec],
                        username=username,
                        password="Wrong-Password-1",
                        domain=domain,
                    ),
                    timeout=60,
                )
            with contextlib.suppress(grpc.RpcError):
                stub.RenewNonDomainJoinedKerberosLease(
                    pb.RenewNonDomainJoinedKerberosLeaseRequest(
                        username=username, password="Wrong-Password-1", domain=domain
                    ),
                    timeout=60,
                )
        # The only DC listens nowhere: the failed attempt is logged, the call UNAVAILABLE.
        with pytest.raises(grpc.RpcError) as info:
            daemon.add(samba_dc.gmsas[0])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    text = daemon.log()
    lines = text.split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert not line.startswith(FORGED[:30]), f"forged line: {line!r}"
        assert RECORD_START.match(line) or line.startswith(" "), f"stray line: {line!r}"
        assert not CONTROLS.search(line), f"raw control character: {line!r}"
    assert "evil\\n2026-11-28 10:00:00,000 CRITICAL" in text  # quoted back, escaped
    attempts = [line for line in lines if "domain controller attempt failed" in line]
    assert attempts, text[-3000:]
    assert f"DC=\"{dead} (sealed)\"" in attempts[0], attempts[0]
    assert "REASON=\"connect failed: [Errno 111] Connection refused\"" in attempts[0]
