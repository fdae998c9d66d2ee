"""credfetcher.views: what ListLeases and HealthCheck say, from a real RenewalScheduler driven by
test_renewal's fake accounts and clock (no DC, no KDC, no sleeping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from credfetcher.errors import KerberosError
from credfetcher.lease_index import LeaseIndex
from credfetcher.leases import GmsaEntry, LeaseRecord, LeaseStore
from credfetcher.testing import FakeAccount, FakeClock, Write
from credfetcher.views import WAITING_MESSAGE, health, iter_leases, lease_view, metrics_state
from tests.unit.test_renewal import make_scheduler, register, target

DOMAIN = "example.test"


def record(lease_id: str, *gmsas: str, user: str | None = None) -> LeaseRecord:
    entries = tuple(GmsaEntry(g, DOMAIN, f"CN={g}", "{}") for g in gmsas)
    return LeaseRecord(lease_id=lease_id, entries=entries, domainless_user=user)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_lease_is_as_bad_as_its_worst_gmsa(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock)
    store = LeaseStore(tmp_path)
    good, bad = FakeAccount("good", clock), FakeAccount("bad", clock)
    register(sched, good, target(tmp_path, "lease1", "good"))
    register(sched, bad, target(tmp_path, "lease1", "bad"))
    rec = record("lease1", "good", "bad", "never")
    view = lease_view(rec, sched, store)
    assert view.state == "unknown"  # "never" is not registered for renewal
    assert [t.gmsa for t in view.tickets] == ["good", "bad", "never"]
    assert view.tickets[2].expires_at == 0
    assert view.tickets[0].expires_at == good.ticket().info.endtime

    bad.fail_with = KerberosError("KDC has no support for encryption type", principal="bad$")
    assert sched.renew_group("bad", asked=True) is not None
    view = lease_view(record("lease1", "good", "bad"), sched, store)
    assert view.state == "failing"
    assert "encryption type" in view.tickets[1].last_error
    assert view.tickets[0].last_error == ""

    waiting_key = ("waiting", "u@example.test", DOMAIN)
    sched.register(waiting_key, None, target(tmp_path, "lease2", "w"), None)
    waiting = lease_view(record("lease2", "w", user="u@example.test"), sched, store)
    assert (waiting.state, waiting.domainless) == ("waiting-for-credentials", True)
    assert waiting.tickets[0].last_error == WAITING_MESSAGE


def test_listing_filters_and_skips_leases_deleted_meanwhile(
    tmp_path: Path, clock: FakeClock
) -> None:
    sched = make_scheduler(clock)
    index = LeaseIndex()
    for n, gmsa in enumerate(["alpha", "beta", "alpha"]):
        index.put(record(f"lease{n}", gmsa))
    loaded: list[str] = []

    def ensure_loaded(lease_id: str) -> None:
        loaded.append(lease_id)
        if lease_id == "lease1":
            index.pop("lease2")  # deleted while the listing runs

    views = iter_leases(index, sched, LeaseStore(tmp_path), ensure_loaded, gmsa="ALPHA")
    assert [v.lease_id for v in views] == ["lease0"]
    assert loaded == ["lease0", "lease1", "lease2"]
    rest = iter_leases(index, sched, LeaseStore(tmp_path), lambda _: None, after="lease0")
    assert [v.lease_id for v in rest] == ["lease1"]


def test_health_names_each_problem(tmp_path: Path, clock: FakeClock) -> None:
    sched = make_scheduler(clock)
    assert health(sched) == (False, "renewal loop is not running")
    sched.start()
    try:
        assert health(sched) == (True, "OK")
        sched.last_dc_error = "no domain controller answered"
        assert health(sched, "cannot read CF_AWS_SM_SECRET_NAME: denied") == (
            False,
            "domain controller unreachable: no domain controller answered; "
            "cannot read CF_AWS_SM_SECRET_NAME: denied",
        )
    finally:
        sched.stop()


def test_metrics_state_counts_leases_by_state(
    tmp_path: Path, clock: FakeClock, writes: list[Write]
) -> None:
    sched = make_scheduler(clock)
    account = FakeAccount("good", clock)
    register(sched, account, target(tmp_path, "lease1", "good"))
    state = metrics_state(sched, clock())
    assert state.now == clock()
    assert sum(state.leases_by_state.values()) == 1


def test_a_tickets_directory_is_the_stores_entry_directory(
    tmp_path: Path, clock: FakeClock
) -> None:
    # The view joins strings rather than building paths: it must still name what the store made.
    sched = make_scheduler(clock)
    store = LeaseStore(tmp_path)
    entries = (
        GmsaEntry("webapp01", DOMAIN, "CN=webapp01", "{}"),
        GmsaEntry("webapp02", DOMAIN, "CN=webapp02", "{}", directory="chosen"),
    )
    rec = LeaseRecord(lease_id="0123abcd", entries=entries)
    view = lease_view(rec, sched, store)
    assert [t.directory for t in view.tickets] == [
        str(store.entry_dir(rec.lease_id, e)) for e in entries
    ]
    assert view.tickets[1].directory.endswith("/0123abcd/chosen")
