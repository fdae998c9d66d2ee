"""Process-wide counters (AS exchanges, LDAP binds and searches, renewals, failures) and one
latency histogram (renewals).

The renewal tests and the benchmark read them to prove how much load credfetcher puts on the DC;
the Prometheus endpoint (:mod:`credfetcher.exporter`, ``CF_METRICS_ADDRESS``) exposes them.
A plain lock-protected dict is all this needs: the counts are small and updates are rare
compared with the network calls they count.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field

AS_EXCHANGES = "as_exchanges"
TGS_RENEWALS = "tgs_renewals"
LDAP_BINDS = "ldap_binds"
LDAP_SEARCHES = "ldap_searches"
RENEWALS = "renewals"
RENEWAL_FAILURES = "renewal_failures"
RENEWAL_SECONDS = "renewal_seconds"

# Upper bounds (seconds) of the histogram buckets: an AS exchange takes ~20 ms on a LAN, writing
# a thousand leases' files a second or two, and a black-holed KDC costs libkrb5's ~25 s timeout.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    """Counts per bucket (not cumulative; index i counts values <= bounds[i] and > bounds[i-1]),
    plus the values beyond the last bound in ``total`` only."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: int = 0
    sum: float = 0.0


_lock = threading.Lock()
_counts: Counter[tuple[str, str]] = Counter()
_histograms: dict[str, Histogram] = {}


def inc(name: str, label: str = "", amount: int = 1) -> None:
    """Add ``amount`` to counter ``name`` for ``label`` (a gMSA or DC name; "" for none)."""
    with _lock:
        _counts[(name, label)] += amount


def get(name: str, label: str | None = None) -> int:
    """The count for one label, or the sum over all labels when ``label`` is None."""
    with _lock:
        if label is not None:
            return _counts[(name, label)]
        return sum(v for (n, _), v in _counts.items() if n == name)


def observe(name: str, value: float) -> None:
    """Record one observation (seconds) in histogram ``name``."""
    with _lock:
        hist = _histograms.setdefault(name, Histogram())
        i = bisect.bisect_left(hist.bounds, value)
        if i < len(hist.counts):
            hist.counts[i] += 1
        hist.total += 1
        hist.sum += value


def histograms() -> dict[str, Histogram]:
    """A copy of every histogram."""
    with _lock:
        return {
            name: Histogram(h.bounds, list(h.counts), h.total, h.sum)
            for name, h in _histograms.items()
        }


def snapshot() -> dict[tuple[str, str], int]:
    """A copy of every counter, for metrics export and before/after comparisons in tests."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Forget every count (tests only)."""
    with _lock:
        _counts.clear()
        _histograms.clear()
