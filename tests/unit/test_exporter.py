"""The Prometheus endpoint: address rules, what a scrape shows, and serving on a Unix socket."""

from __future__ import annotations

import http.client
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from credfetcher import metrics
from credfetcher.config import MetricsAddress, parse_metrics_address
from credfetcher.exporter import LiveState, MetricsServer


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", MetricsAddress(host="127.0.0.1", port=9464)),
        ("127.5.6.7:1", MetricsAddress(host="127.5.6.7", port=1)),
        ("[::1]:9464", MetricsAddress(host="::1", port=9464)),
        ("localhost:80", MetricsAddress(host="localhost", port=80)),
        ("unix:/run/cf/metrics.sock", MetricsAddress(path=Path("/run/cf/metrics.sock"))),
    ],
)
def test_loopback_and_unix_addresses_are_accepted(text: str, expected: MetricsAddress) -> None:
    assert parse_metrics_address(text) == expected
    assert parse_metrics_address(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0.0.0.0:9464", "loopback"),
        ("10.1.2.3:9464", "loopback"),
        ("[::]:9464", "loopback"),
        ("metrics.example.com:9464", "loopback"),
        ("127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:0", "HOST:PORT"),
        ("127.0.0.1:70000", "HOST:PORT"),
        ("unix:relative.sock", "absolute"),
    ],
)
def test_other_addresses_are_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_metrics_address(text)


def _live() -> LiveState:
    return LiveState(
        leases_by_state={"active": 3, "waiting-for-credentials": 1},
        ticket_ends={"webapp01$@EXAMPLE.COM": 1_000.0 + 3_600.0},
        now=1_000.0,
    )


def _scrape_families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def tcp_server() -> Iterator[MetricsServer]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = MetricsServer(MetricsAddress(host="127.0.0.1", port=port), _live)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _get(server: MetricsServer) -> str:
    url = f"http://{server.address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def test_a_scrape_shows_counters_states_ticket_ends_and_latency(
    tcp_server: MetricsServer,
) -> None:
    metrics.inc(metrics.AS_EXCHANGES, "webapp01$@EXAMPLE.COM", 2)
    metrics.inc(metrics.LDAP_SEARCHES, "dc1.example.com")
    metrics.inc(metrics.RENEWALS, "webapp01")
    for seconds in (0.02, 0.03, 4.0, 99.0):
        metrics.observe(metrics.RENEWAL_SECONDS, seconds)

    got = _scrape_families(_get(tcp_server))

    assert got["credfetcher_as_exchanges_total"] == {(("principal", "webapp01$@EXAMPLE.COM"),): 2}
    assert got["credfetcher_ldap_searches_total"] == {(("dc", "dc1.example.com"),): 1}
    assert got["credfetcher_renewals_total"] == {(("gmsa", "webapp01"),): 1}
    assert got.get("credfetcher_renewal_failures_total", {}) == {}
    assert got["credfetcher_leases"] == {
        (("state", "active"),): 3,
        (("state", "failing"),): 0,
        (("state", "waiting-for-credentials"),): 1,
    }
    assert got["credfetcher_ticket_remaining_seconds"] == {
        (("principal", "webapp01$@EXAMPLE.COM"),): 3600.0
    }
    buckets = got["credfetcher_renewal_duration_seconds_bucket"]
    assert buckets[(("le", "0.025"),)] == 1
    assert buckets[(("le", "0.05"),)] == 2
    assert buckets[(("le", "5.0"),)] == 3
    assert buckets[(("le", "30.0"),)] == 3
    assert buckets[(("le", "+Inf"),)] == 4
    assert got["credfetcher_renewal_duration_seconds_count"] == {(): 4}
    assert got["credfetcher_renewal_duration_seconds_sum"] == {(): pytest.approx(103.05)}
    # The process collector: what an operator needs to see a leak.
    assert "credfetcher_process_open_fds" in got


def test_counters_move_between_scrapes(tcp_server: MetricsServer) -> None:
    before = _scrape_families(_get(tcp_server))
    metrics.inc(metrics.RENEWAL_FAILURES, "webapp02")
    after = _scrape_families(_get(tcp_server))
    assert before.get("credfetcher_renewal_failures_total", {}) == {}
    assert after["credfetcher_renewal_failures_total"] == {(("gmsa", "webapp02"),): 1}


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self._path))
        self.sock = sock


def test_unix_socket_serves_the_same_text_with_mode_0660(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.sock"
    server = MetricsServer(MetricsAddress(path=path), _live)
    server.start()
    try:
        assert path.is_socket()
        assert path.stat().st_mode & 0o777 == 0o660
        conn = _UnixHTTPConnection(path)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        got = _scrape_families(resp.read().decode())
        conn.close()
        assert got["credfetcher_leases"][(("state", "active"),)] == 3
    finally:
        server.stop()
    assert not path.exists()


def test_a_port_in_use_is_a_clear_start_up_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(MetricsAddress(host="127.0.0.1", port=port), _live)
        with pytest.raises(Exception, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            server.start()
