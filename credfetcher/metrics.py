"""Process-wide counters: AS exchanges, LDAP binds and searches, renewals, failures.

The renewal tests and the benchmark read them to prove how much load credfetcher puts on the DC;
the optional Prometheus endpoint exposes them. A plain lock-protected dict is all this needs: the
counts are small and updates are rare compared with the network calls they count.
"""

from __future__ import annotations

import threading
from collections import Counter

AS_EXCHANGES = "as_exchanges"
TGS_RENEWALS = "tgs_renewals"
LDAP_BINDS = "ldap_binds"
LDAP_SEARCHES = "ldap_searches"
RENEWALS = "renewals"
RENEWAL_FAILURES = "renewal_failures"

_lock = threading.Lock()
_counts: Counter[tuple[str, str]] = Counter()


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


def snapshot() -> dict[tuple[str, str], int]:
    """A copy of every counter, for metrics export and before/after comparisons in tests."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Forget every count (tests only)."""
    with _lock:
        _counts.clear()
