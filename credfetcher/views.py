"""Read-only views of the leases: ListLeases, HealthCheck and the metrics endpoint.

Nothing here changes a lease: what a view says comes from the index (which leases, their
gMSAs) and the renewal scheduler (each ticket's times and last error), never from the lease files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from credfetcher.exporter import LiveState
from credfetcher.lease_index import LeaseIndex
from credfetcher.leases import LeaseRecord, LeaseStore
from credfetcher.renewal import RenewalScheduler

# ListLeases' states, the worst of a lease's gMSAs first.
STATES = ("waiting-for-credentials", "failing", "unknown", "active")
WAITING_MESSAGE = (
    "waiting for RenewNonDomainJoinedKerberosLease (credentials are kept in memory only and "
    "were lost at restart)"
)


@dataclass(frozen=True)
class TicketView:
    gmsa: str
    domain: str
    directory: str
    expires_at: float
    renew_until: float
    last_error: str
    next_renewal_at: float


@dataclass(frozen=True)
class LeaseView:
    lease_id: str
    domainless: bool
    state: str
    tickets: tuple[TicketView, ...]


def lease_view(record: LeaseRecord, scheduler: RenewalScheduler, store: LeaseStore) -> LeaseView:
    """``record`` as ListLeases shows it: each gMSA's ticket and the lease's worst state."""
    tviews = []
    states = set()
    # A string join, not LeaseStore.entry_dir: a page of 1,000 leases spent a third of its time
    # in pathlib and re-validating names. A record's id and directory names were validated when
    # it was made or loaded, and records are frozen.
    top = f"{store.krb_dir}/{record.lease_id}/"
    for entry in record.entries:
        directory = top + entry.dir_name
        status = scheduler.status(record.lease_id, entry.gmsa_name)
        if status is None:
            states.add("unknown")
            tviews.append(TicketView(entry.gmsa_name, entry.domain, directory, 0, 0, "", 0))
            continue
        if status.waiting_for_credentials:
            states.add("waiting-for-credentials")
        elif status.last_error:
            states.add("failing")
        tviews.append(
            TicketView(
                gmsa=entry.gmsa_name,
                domain=entry.domain,
                directory=directory,
                expires_at=status.endtime,
                renew_until=status.renew_till,
                last_error=status.last_error
                or (WAITING_MESSAGE if status.waiting_for_credentials else ""),
                next_renewal_at=status.next_attempt,
            )
        )
    state = next((s for s in STATES if s in states), "active")
    return LeaseView(record.lease_id, record.domainless_user is not None, state, tuple(tviews))


def iter_leases(
    index: LeaseIndex,
    scheduler: RenewalScheduler,
    store: LeaseStore,
    ensure_loaded: Callable[[str], object],
    *,
    after: str = "",
    gmsa: str = "",
    state: str = "",
) -> Iterator[LeaseView]:
    """Leases in lease-id order, from the first id greater than ``after``, made lazily.

    ``gmsa`` (case-insensitive) and ``state`` filter; empty means all. The ids are taken when
    iteration starts: a lease deleted meanwhile is skipped, one added is not seen. A lease found
    at start-up and not loaded yet is loaded first (``ensure_loaded``).
    """
    wanted = gmsa.lower()
    for lease_id in index.ids_after(after):
        ensure_loaded(lease_id)
        record = index.get(lease_id)
        if record is None:
            continue
        if wanted and all(e.gmsa_name.lower() != wanted for e in record.entries):
            continue
        view = lease_view(record, scheduler, store)
        if not state or view.state == state:
            yield view


def metrics_state(scheduler: RenewalScheduler, now: float) -> LiveState:
    """Leases by state and each account's earliest ticket end, for the metrics endpoint."""
    counts, ends = scheduler.live_counts()
    return LiveState(leases_by_state=counts, ticket_ends=ends, now=now)


def health(scheduler: RenewalScheduler, secret_problem: str = "") -> tuple[bool, str]:
    """ "OK" only when the renewal loop is alive, the last DC/KDC exchange succeeded and,
    with CF_AWS_SM_SECRET_NAME, its identity could be read (else ``secret_problem``)."""
    problems = []
    if not scheduler.alive(max_age=60.0):
        problems.append("renewal loop is not running")
    failing = scheduler.failing_groups()
    if failing:
        principal, error = failing[0]
        more = f" (+{len(failing) - 1} more)" if len(failing) > 1 else ""
        problems.append(f"renewal failing for {principal}{more}: {error}")
    elif scheduler.last_dc_error:
        problems.append(f"domain controller unreachable: {scheduler.last_dc_error}")
    # One lease's files failing (a full disk would fail them all; a tampered directory only its
    # own) is shown by ListLeases; HealthCheck only when no lease can be written.
    write_error = scheduler.all_writes_failing()
    if write_error:
        problems.append(f"no lease's files can be written: {write_error}")
    if secret_problem:
        problems.append(secret_problem)
    if problems:
        return False, "; ".join(problems)
    return True, "OK"
