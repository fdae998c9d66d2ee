"""CF_METRICS_ADDRESS against the real daemon and DC: the counters move as leases are made and
renewed, and prometheus_client's own parser accepts every scrape."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from credfetcher._proto import credentialsfetcher_pb2 as pb
from tests.conftest import TestDC
from tests.integration.daemon import daemon_env, running_daemon

TICKET_LIFETIME = 20  # renewed after about half of it (the default margin does not fit)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(got: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str) -> float:
    return sum(got.get(name, {}).values())


def test_metrics_follow_leases_made_renewed_and_deleted(samba_dc: TestDC, tmp_path: Path) -> None:
    port = _free_port()
    gmsa = samba_dc.gmsas[0]
    principal = f"{gmsa}$@{samba_dc.realm}"
    with running_daemon(
        samba_dc,
        tmp_path / "d",
        CF_METRICS_ADDRESS=f"127.0.0.1:{port}",
        CF_TICKET_LIFETIME=str(TICKET_LIFETIME),
        CF_RENEW_LIFETIME="3600",
    ) as daemon:
        first = scrape(port)
        assert first["credfetcher_leases"][(("state", "active"),)] == 0

        lease = daemon.add(gmsa)
        made = scrape(port)
        assert made["credfetcher_leases"][(("state", "active"),)] == 1
        assert total(made, "credfetcher_as_exchanges_total") > total(
            first, "credfetcher_as_exchanges_total"
        )
        assert total(made, "credfetcher_ldap_searches_total") >= 1
        remaining = made["credfetcher_ticket_remaining_seconds"][(("principal", principal),)]
        assert 0 < remaining <= TICKET_LIFETIME

        deadline = time.monotonic() + 3 * TICKET_LIFETIME
        renewed = made
        while time.monotonic() < deadline:
            renewed = scrape(port)
            if renewed.get("credfetcher_renewals_total", {}).get((("gmsa", gmsa),), 0) >= 1:
                break
            time.sleep(1)
        assert renewed["credfetcher_renewals_total"][(("gmsa", gmsa),)] >= 1, daemon.log()
        assert renewed["credfetcher_renewal_duration_seconds_count"][()] >= 1

        with daemon.client() as stub:
            stub.DeleteKerberosLease(pb.DeleteKerberosLeaseRequest(lease_id=lease.lease_id))
        gone = scrape(port)
        assert gone["credfetcher_leases"][(("state", "active"),)] == 0
        assert "serving Prometheus metrics on 127.0.0.1:" in daemon.log()


def test_a_public_metrics_address_stops_the_start(samba_dc: TestDC, tmp_path: Path) -> None:
    env = daemon_env(samba_dc, tmp_path, CF_METRICS_ADDRESS="0.0.0.0:9464")
    proc = subprocess.run(
        [sys.executable, "-m", "credfetcher.daemon"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "CF_METRICS_ADDRESS" in proc.stderr
    assert "loopback" in proc.stderr
