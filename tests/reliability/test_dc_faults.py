"""DC faults without touching the shared DC: slow, black-holed and reset through a TCP proxy.

How the daemon is pointed at the proxy, keeping Kerberos names right (no product change needed):

* LDAP: the DC's SPN is ``ldap/dc1.credfetcher.test``, so the daemon must connect by that name.
  ``/etc/hosts`` maps it to 127.0.0.10, the DC's loopback alias; the DC listens there only on its
  own ports, so the proxies bind *other* (ephemeral) ports on 127.0.0.10 and the daemon gets
  ``CF_DOMAIN_CONTROLLERS=ldap://dc1.credfetcher.test:<p1>,ldaps://dc1.credfetcher.test:<p2>``: two
  DC entries (sealed 389 and LDAPS 636 behind them), so failover is exercised too. The SPN comes
  from the host name, the TLS check from the name as well; the port is free to change.
* Kerberos: a copy of the test krb5.conf with ``kdc = 127.0.0.1:<p3>`` and
  ``udp_preference_limit = 1`` so libkrb5 speaks TCP, through the third proxy.

Deadlines. LDAP: every network step is bounded by ``CF_LDAP_TIMEOUT`` (1 s here); a DC that
hangs costs one timeout, plus one more when a pooled connection was in use (one fresh retry), so
a call that needs LDAP answers within ``timeout x 2 x DCs + slack``. Kerberos: MIT krb5 1.20 has
no request timeout setting (``request_timeout`` arrived in 1.22); a TCP KDC that accepts and
never answers makes one exchange give up after ~25 s (measured: kinit took 25.0 s), so a call
that needs the KDC while it is black-holed has ``KDC_GIVE_UP`` more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.tickets import read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.reliability.faultproxy import FaultProxy, Mode

LDAP_TIMEOUT = 1.0
DCS = 2
LDAP_DEADLINE = LDAP_TIMEOUT * 2 * DCS + 3.0
KDC_GIVE_UP = 30.0  # MIT 1.20 over TCP: 25 s measured, plus margin
TICKET_LIFETIME = 20  # renewals every ~10 s, so a black hole soon meets a renewal


@pytest.fixture
def proxied(samba_dc: TestDC, tmp_path: Path) -> Iterator[tuple[Daemon, dict[str, FaultProxy]]]:
    proxies = {
        "ldap": FaultProxy(samba_dc.ip, (samba_dc.ip, 389)),
        "ldaps": FaultProxy(samba_dc.ip, (samba_dc.ip, 636)),
        "kdc": FaultProxy("127.0.0.1", (samba_dc.ip, 88)),
    }
    for proxy in proxies.values():
        proxy.start()
    conf = samba_dc.krb5_config.read_text()
    assert f"kdc = {samba_dc.ip}\n" in conf
    conf = conf.replace(f"kdc = {samba_dc.ip}\n", f"kdc = 127.0.0.1:{proxies['kdc'].port}\n")
    conf = conf.replace("[libdefaults]\n", "[libdefaults]\n    udp_preference_limit = 1\n")
    krb5_conf = tmp_path / "krb5-proxied.conf"
    krb5_conf.write_text(conf)
    fqdn = samba_dc.dc_fqdn
    try:
        with running_daemon(
            samba_dc,
            tmp_path / "d",
            KRB5_CONFIG=str(krb5_conf),
            CF_DOMAIN_CONTROLLERS=(
                f"ldap://{fqdn}:{proxies['ldap'].port},ldaps://{fqdn}:{proxies['ldaps'].port}"
            ),
            CF_LDAP_TIMEOUT=str(LDAP_TIMEOUT),
            CF_TICKET_LIFETIME=str(TICKET_LIFETIME),
            CF_RENEW_LIFETIME="3600",
        ) as daemon:
            yield daemon, proxies
    finally:
        for proxy in proxies.values():
            proxy.close()


def timed_add(daemon: Daemon, gmsa: str) -> tuple[float, grpc.StatusCode, str, str]:
    """(seconds, status, details, lease id) of one AddKerberosLease; the client waits 120 s."""
    started = time.monotonic()
    try:
        resp = daemon.add(gmsa, timeout=120)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return time.monotonic() - started, code, exc.details() or "", ""
    return time.monotonic() - started, grpc.StatusCode.OK, "", resp.lease_id


def health(daemon: Daemon) -> tuple[str, float]:
    started = time.monotonic()
    with daemon.client() as stub:
        status = stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status
    return status, time.monotonic() - started


def set_ldap(proxies: dict[str, FaultProxy], mode: Mode, delay: float = 0.0) -> None:
    proxies["ldap"].set(mode, delay)
    proxies["ldaps"].set(mode, delay)


def test_slow_black_holed_and_reset_dc(
    proxied: tuple[Daemon, dict[str, FaultProxy]], samba_dc: TestDC
) -> None:
    daemon, proxies = proxied
    g1, g2, g3 = samba_dc.gmsas

    # Pass: the daemon really goes through the proxies.
    took, code, details, first = timed_add(daemon, g1)
    assert code == grpc.StatusCode.OK, details
    assert proxies["ldap"].accepted >= 1
    assert proxies["kdc"].accepted >= 1
    assert health(daemon)[0] == "OK"

    # Slow but within the timeout: served, just later.
    set_ldap(proxies, Mode.DELAY, 0.2)
    took, code, details, _ = timed_add(daemon, g2)
    assert code == grpc.StatusCode.OK, details
    assert took < 15, took

    # Black hole, too slow, reset mid-request: each answered UNAVAILABLE in time, with the reason;
    # HealthCheck keeps answering at once while a call hangs on the DC and then reports it.
    for mode, delay, reason in (
        (Mode.BLACKHOLE, 0.0, "timed out"),
        (Mode.DELAY, 3 * LDAP_TIMEOUT, "timed out"),
        (Mode.RESET, 0.0, "no domain controller"),
    ):
        set_ldap(proxies, mode, delay)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(timed_add, daemon, g3)
            latencies = []
            while not pending.done():
                latencies.append(health(daemon)[1])
                time.sleep(0.1)
            took, code, details, _ = pending.result()
        assert code == grpc.StatusCode.UNAVAILABLE, (mode, code, details)
        assert took <= LDAP_DEADLINE, f"{mode}: answered after {took:.1f} s: {details}"
        assert reason in details, (mode, details)
        assert max(latencies, default=0.0) < 1.0, (mode, latencies)
        status, _ = health(daemon)
        assert "domain controller" in status, (mode, status)
        # A gMSA whose keys are cached needs no LDAP: still served during the LDAP fault.
        took, code, details, _ = timed_add(daemon, g1)
        assert code == grpc.StatusCode.OK, (mode, details)
    assert proxies["ldap"].resets + proxies["ldaps"].resets >= 1
    assert proxies["ldap"].dropped_bytes > 0

    # The DC is back: served again, and HealthCheck says so.
    set_ldap(proxies, Mode.PASS)
    took, code, details, _ = timed_add(daemon, g3)
    assert code == grpc.StatusCode.OK, details
    assert health(daemon)[0] == "OK"

    # The whole DC black-holed (LDAP and KDC): renewals fail and HealthCheck says so for as long
    # as it lasts; an Add answers UNAVAILABLE once the Kerberos library gives up.
    ccache = daemon.krb_dir / first / g1 / "krb5cc"
    before = read_ticket_info(ccache)
    assert before is not None
    set_ldap(proxies, Mode.BLACKHOLE)
    proxies["kdc"].set(Mode.BLACKHOLE)
    blackholed_at = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(timed_add, daemon, g2)
        status = "OK"
        while time.monotonic() - blackholed_at < TICKET_LIFETIME + KDC_GIVE_UP + 10:
            status, latency = health(daemon)
            assert latency < 1.0
            if status != "OK" and "renewal failing" in status:
                break
            time.sleep(0.5)
        assert "renewal failing" in status, f"HealthCheck still says {status!r}"
        for _ in range(6):  # and keeps saying so while the DC stays away
            time.sleep(0.5)
            assert health(daemon)[0] != "OK"
        with daemon.client() as stub:
            states = {lease.state for lease in stub.ListLeases(pb.ListLeasesRequest()).leases}
        assert "failing" in states, states
        took, code, details, _ = pending.result()
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert took <= KDC_GIVE_UP + LDAP_DEADLINE, took

    # Back: a rebooted DC resets the old connections; renewals resume, HealthCheck is OK again.
    for proxy in proxies.values():
        proxy.set(Mode.PASS)
        proxy.reset_open_connections()
    back_at = time.monotonic()
    status = ""
    while time.monotonic() - back_at < 45:
        status, _ = health(daemon)
        after = read_ticket_info(ccache)
        if status == "OK" and after is not None and after.endtime > before.endtime:
            break
        time.sleep(0.5)
    assert status == "OK", status
    after = read_ticket_info(ccache)
    assert after is not None
    assert after.endtime > before.endtime
    took, code, details, _ = timed_add(daemon, g2)
    assert code == grpc.StatusCode.OK, details


