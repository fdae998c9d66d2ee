"""Two replicating Samba DCs, found through DNS SRV; one of them stopped, killed, brought back.

The private rotation domain (:mod:`tests.integration.rotation_domain`) has dc1 and dc2, both in
``_ldap._tcp.dc._msdcs`` and in krb5.conf. The daemon is given no DC list, only the two DNS
servers, and must find both. With leases renewing (the fake clock jumps past their renewal
time), dc1 is frozen with SIGSTOP (a DC that accepts connections and never answers), then
killed: no lease and no renewal may be lost, new leases must work through dc2 (LDAP and KDC),
HealthCheck must stay OK (the daemon is not affected), a password change that happens meanwhile
is read from dc2, and once dc1 is back it serves the daemon again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.discovery import discover_dcs
from tests.integration.daemon import Daemon
from tests.integration.rotation_domain import (
    Judge,
    RotationDomain,
    keytab_versions,
    start_daemon,
    wait_for_keytab,
    wait_for_log,
)

LDAP_TIMEOUT = 3
# MIT libkrb5 (sendto_kdc) waits up to 10 s for an answer on a TCP connection it could open
# before it asks the next KDC: a frozen DC's kernel still completes the handshake, so each
# Kerberos exchange that meets it first costs 10 s (a dead DC costs nothing: refused at once).
MIT_TCP_WAIT = 10
# A new lease that meets the frozen dc1 first: LDAP timeouts on dc1, then the service ticket for
# ldap/dc2 and the gMSA's AS exchange, each after MIT's wait on dc1; plus slack for two cores.
FAILOVER_BUDGET = 3 * LDAP_TIMEOUT + 2 * MIT_TCP_WAIT + 10
# Past the renewal time of every 1-hour ticket (due 10 min before its end, jitter included), not
# past its end: a renewal, not a new start.
RENEW_JUMP = 3300


def endtime(domain: RotationDomain, ccache: Path) -> str:
    """The TGT's "Expires" column of ``klist`` (what a renewal changes)."""
    out = subprocess.run(["klist", "-c", f"FILE:{ccache}"], env=domain.krb5_env(),
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():
        if "krbtgt/" in line:
            return " ".join(line.split()[2:4])
    raise AssertionError(f"no TGT in {ccache}: {out}")


def wait_until_renewed(domain: RotationDomain, ccaches: list[Path], before: dict[Path, str],
                       daemon: Daemon, timeout: float = FAILOVER_BUDGET + 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(endtime(domain, c) != before[c] for c in ccaches):
            return
        time.sleep(0.5)
    stale = [str(c) for c in ccaches if endtime(domain, c) == before[c]]
    probe = subprocess.run(
        ["kinit", "-k", "-t", str(domain.dc.host_keytab), domain.dc.host_principal],
        env=domain.krb5_env(f"FILE:{ccaches[0].parent.parent / 'probe.cc'}") | {
            "KRB5_TRACE": "/dev/stderr"},
        capture_output=True, text=True, timeout=60, check=False)
    raise AssertionError(f"not renewed: {stale}\nkinit as the host now: {probe.returncode} "
                         f"{probe.stderr[-3000:]}\n{daemon.log()[-4000:]}")


def health(daemon: Daemon) -> str:
    with daemon.client() as stub:
        return str(stub.HealthCheck(pb.HealthCheckRequest(), timeout=30).status)


@contextmanager
def dc_signalled(domain: RotationDomain, which: int, sig: signal.Signals) -> Iterator[None]:
    """Send ``sig`` to a DC's whole process group; on leaving, make sure it runs again."""
    os.killpg(domain.pid(which), sig)
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(domain.pid(which), signal.SIGCONT)
        domain.up()


def test_both_dcs_are_in_dns_srv_and_krb5_conf(rotation_domain: RotationDomain) -> None:
    domain = rotation_domain
    for server in (domain.dc.ip, domain.dc2_ip):
        found = discover_dcs(domain.dc.domain, nameservers=[server], timeout=5)
        assert {dc.host.rstrip(".") for dc in found} == {domain.dc.dc_fqdn, domain.dc2_fqdn}
    kdcs = re.findall(r"^\s*kdc = (\S+)$", domain.dc.krb5_config.read_text(), re.MULTILINE)
    assert kdcs == [domain.dc.ip, domain.dc2_ip]


def test_dc1_stopped_then_killed_then_back(
    rotation_domain: RotationDomain, tmp_path: Path
) -> None:
    domain, clock = rotation_domain, rotation_domain.clock
    gmsas = domain.new_gmsas("foa", "fob", "foc", "fod")  # replicated to dc2 at creation
    change = domain.change_ahead(gmsas[0], 7300)
    clock.jump_to(change - 7200)
    daemon = start_daemon(
        domain, tmp_path / "d",
        CF_DOMAIN_CONTROLLERS="",
        CF_DNS_NAMESERVERS=f"{domain.dc.ip},{domain.dc2_ip}",
        CF_LDAP_TIMEOUT=str(LDAP_TIMEOUT),
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        first = Path(daemon.add(gmsas[0]).created_kerberos_file_paths[0])
        ccaches = [first / "krb5cc"]
        judge = Judge(domain, gmsas[0], first, scratch)
        judge.check()
        kvno = keytab_versions(judge.keytab)[0]

        # dc1 frozen: it accepts TCP connections and never answers.
        with dc_signalled(domain, 1, signal.SIGSTOP):
            before = {c: endtime(domain, c) for c in ccaches}
            clock.jump_to(clock.now() + RENEW_JUMP)
            wait_until_renewed(domain, ccaches, before, daemon)
            started = time.monotonic()
            second = Path(daemon.add(gmsas[1], timeout=FAILOVER_BUDGET + 30)
                          .created_kerberos_file_paths[0])
            took = time.monotonic() - started
            assert took < FAILOVER_BUDGET, f"{took:.1f} s\n{daemon.log()[-6000:]}"
            ccaches.append(second / "krb5cc")
            Judge(domain, gmsas[1], second, scratch).check()
            assert health(daemon) == "OK"

            # dc1 dead: the same, and the password change is read from dc2.
            os.killpg(domain.pid(1), signal.SIGKILL)
            before = {c: endtime(domain, c) for c in ccaches}
            clock.jump_to(change - 600)
            wait_until_renewed(domain, ccaches, before, daemon)
            versions = keytab_versions(judge.keytab)
            window_reads = daemon.log().count("next password known")
            clock.jump_to(change - 290)
            wait_for_log(daemon, "next password known", window_reads + 1)
            assert keytab_versions(judge.keytab) == versions  # the next one joins at the change
            clock.jump_to(change + 15)
            wait_for_keytab(judge.keytab, [kvno + 1, kvno], daemon)
            assert domain.kvno(gmsas[0], dc=2) == kvno + 1
            assert (f"changed on {domain.dc2_fqdn}: kvno {kvno} -> {kvno + 1}"
                    in daemon.log())
            judge.check()
            third = Path(daemon.add(gmsas[2], timeout=FAILOVER_BUDGET + 30)
                         .created_kerberos_file_paths[0])
            Judge(domain, gmsas[2], third, scratch).check()
            assert health(daemon) == "OK"
        # dc1 is back (samba-ad.sh up); now dc2 goes away and dc1 alone must serve.
        # (A new lease needs LDAP and the KDC; renewals meeting a frozen DC were shown above.)
        with dc_signalled(domain, 2, signal.SIGSTOP):
            started = time.monotonic()
            lease = daemon.add(gmsas[3], timeout=FAILOVER_BUDGET + 30)
            took = time.monotonic() - started
            assert took < FAILOVER_BUDGET, f"{took:.1f} s\n{daemon.log()[-6000:]}"
            assert lease.created_kerberos_file_paths
            assert health(daemon) == "OK"
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None:
            daemon.kill()


@pytest.fixture(autouse=True)
def _dcs_running(rotation_domain: RotationDomain) -> Iterator[None]:
    """Whatever a test did to a DC, the next one finds both running."""
    yield
    for which in (1, 2):
        with suppress(ProcessLookupError, FileNotFoundError):
            os.killpg(rotation_domain.pid(which), signal.SIGCONT)
    rotation_domain.up()
