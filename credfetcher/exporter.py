"""The Prometheus endpoint behind ``CF_METRICS_ADDRESS``: counters, leases by state, ticket ends.

Off by default. When set, ``credfetcherd`` serves Prometheus' text exposition format (version
0.0.4) on ``/metrics`` of a loopback TCP address (``127.0.0.1:9464``, ``[::1]:9464``,
``localhost:9464``) or a Unix socket (``unix:/run/credfetcher/metrics.sock``, mode 0660 with the
gRPC socket's group). Any other address is refused when the configuration is loaded: the numbers
name gMSAs, DCs and principals, which is nothing a network should see unasked; a node exporter
or a local agent scrapes and forwards them.

Built on ``prometheus_client`` (the field's standard client library): its registry, metric
families, exposition handler and process collector. What it does not do is serve HTTP on a Unix
socket; that is :class:`_UnixMetricsServer`, ``socketserver``'s Unix server with the library's
own request handler. The values are read at scrape time from :mod:`credfetcher.metrics` (the
counters every module already keeps) and from a ``live`` callback the daemon gives (leases by
state, each account's earliest ticket end), so serving metrics adds nothing to the hot paths.
"""

from __future__ import annotations

import logging
import os
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from credfetcher import metrics
from credfetcher.config import MetricsAddress
from credfetcher.errors import StorageError

log = logging.getLogger(__name__)

__all__ = ["LiveState", "MetricsServer"]

# Counter name in credfetcher.metrics -> (exported name, help, label name of its label).
_COUNTERS: dict[str, tuple[str, str, str]] = {
    metrics.AS_EXCHANGES: (
        "credfetcher_as_exchanges",
        "Kerberos AS exchanges made (RFC 4120 section 3.1), by client principal.",
        "principal",
    ),
    metrics.TGS_RENEWALS: (
        "credfetcher_tgs_renewals",
        "TGS exchanges with the RENEW option, by client principal.",
        "principal",
    ),
    metrics.LDAP_BINDS: (
        "credfetcher_ldap_binds",
        "LDAP binds made, by domain controller.",
        "dc",
    ),
    metrics.LDAP_SEARCHES: (
        "credfetcher_ldap_searches",
        "LDAP searches for a managed password, by domain controller.",
        "dc",
    ),
    metrics.RENEWALS: (
        "credfetcher_renewals",
        "Successful renewals of an account's TGT (one per account and cycle), by gMSA.",
        "gmsa",
    ),
    metrics.RENEWAL_FAILURES: (
        "credfetcher_renewal_failures",
        "Failed renewal attempts, by gMSA.",
        "gmsa",
    ),
}


@dataclass(frozen=True)
class LiveState:
    """What the daemon knows right now, read at each scrape."""

    leases_by_state: Mapping[str, int] = field(default_factory=dict)
    """Lease count per state (``active``, ``failing``, ``waiting-for-credentials``, ...)."""
    ticket_ends: Mapping[str, float] = field(default_factory=dict)
    """Per account principal: when (epoch seconds) the earliest ticket of its leases ends."""
    now: float = 0.0


class _Collector(Collector):
    """A ``prometheus_client`` collector over :mod:`credfetcher.metrics` and ``live``."""

    def __init__(self, live: Callable[[], LiveState]) -> None:
        self._live = live

    def collect(self) -> Iterable[Metric]:
        counts = metrics.snapshot()
        for name, (exported, help_text, label) in _COUNTERS.items():
            family = CounterMetricFamily(exported, help_text, labels=[label])
            for (counter, value_label), value in sorted(counts.items()):
                if counter == name:
                    family.add_metric([value_label], value)
            yield family

        for name, hist in metrics.histograms().items():
            if name != metrics.RENEWAL_SECONDS:
                continue
            cumulative, buckets = 0, []
            for bound, count in zip(hist.bounds, hist.counts, strict=False):
                cumulative += count
                buckets.append((_bound(bound), float(cumulative)))
            buckets.append(("+Inf", float(hist.total)))
            yield HistogramMetricFamily(
                "credfetcher_renewal_duration_seconds",
                "Time one account's renewal took: the AS exchange and writing every lease's files.",
                buckets=buckets,
                sum_value=hist.sum,
            )

        state = self._live()
        leases = GaugeMetricFamily(
            "credfetcher_leases", "Leases the daemon holds, by state.", labels=["state"]
        )
        for name in sorted({"active", "failing", *state.leases_by_state}):
            leases.add_metric([name], float(state.leases_by_state.get(name, 0)))
        yield leases
        remaining = GaugeMetricFamily(
            "credfetcher_ticket_remaining_seconds",
            "Seconds until the earliest ticket an account's leases hold ends (negative: ended).",
            labels=["principal"],
        )
        for principal, end in sorted(state.ticket_ends.items()):
            remaining.add_metric([principal], end - state.now)
        yield remaining


def _bound(value: float) -> str:
    return repr(float(value))


class _UnixMetricsServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class MetricsServer:
    """Serves ``/metrics`` at ``address`` on a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        address: MetricsAddress,
        live: Callable[[], LiveState],
        *,
        socket_gid: int | None = None,
    ) -> None:
        self.address = address
        self._live = live
        self._socket_gid = socket_gid
        self._server: socketserver.BaseServer | None = None
        self._thread: threading.Thread | None = None

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self._live))
        ProcessCollector(namespace="credfetcher", registry=registry)
        return registry

    def start(self) -> None:
        registry = self.registry()
        try:
            if self.address.path is None:
                server, thread = start_http_server(
                    self.address.port, addr=self.address.host, registry=registry
                )
                self._server, self._thread = server, thread
            else:
                self._server = self._start_unix(MetricsHandler.factory(registry))
        except OSError as exc:
            raise StorageError(
                f"cannot serve metrics on {self.address}: {exc.strerror or exc}",
                path=str(self.address),
            ) from exc
        log.info("serving Prometheus metrics on %s", self.address)

    def _start_unix(self, handler: Any) -> socketserver.BaseServer:
        path = self.address.path
        if path is None:
            raise ValueError("not a Unix socket address")
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()

        class _Handler(handler):  # type: ignore[misc]
            def address_string(self) -> str:  # a Unix peer has no address
                return "unix"

            def log_message(self, format: str, *args: object) -> None:
                pass

        old_umask = os.umask(0o117)  # the socket is never world-reachable, not even briefly
        try:
            server = _UnixMetricsServer(str(path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o660)
        if self._socket_gid is not None:
            os.chown(path, -1, self._socket_gid)
        self._thread = threading.Thread(
            target=server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()
        return server

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._server = None
        if self.address.path is not None:
            try:
                if self.address.path.is_socket():
                    self.address.path.unlink()
            except OSError:
                pass

