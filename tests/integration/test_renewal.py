"""Renewal against the real DC: tickets move on their own, one AS exchange per gMSA, DC outages.

Issue 6's "Done when", proved with the real ``credfetcherd`` (a) and (c) and with the lease
service in-process under a fake clock (b), where the metrics counters are readable.

The outage test stops the shared test DC (SIGSTOP of samba's process group: a black-holed DC, the
worst kind) and always resumes it: in ``finally``, and through a detached watchdog process in
case this test process dies first. ``CF_TEST_DC_OUTAGE`` sets the minimum outage in seconds:
120 by default, as issue 6 asks; the outage also lasts until a failed renewal, a backed-off retry,
the ticket expiring in place and HealthCheck reporting it have all been seen.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from credfetcher import metrics
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.credspec import make_credspec
from credfetcher.service import LeaseService
from credfetcher.testing import FakeClock
from credfetcher.tickets import read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.usefixtures("krb5_config")

SAMBA_PID_FILE = Path("/var/tmp/credfetcher-samba-ad/samba.pid")


def ccaches(response_dirs: list[str]) -> list[Path]:
    return [Path(d) / "krb5cc" for d in response_dirs]


def endtime(path: Path) -> int:
    info = read_ticket_info(path)
    assert info is not None, f"{path} is missing or unparseable"
    return info.endtime


def health(daemon: Daemon) -> str:
    with daemon.client() as stub:
        return str(stub.HealthCheck(pb.HealthCheckRequest(), timeout=10).status)


# -- (a) a short ticket is renewed again and again, with no client calls ------------------------


def test_short_tickets_move_forward_without_client_calls(samba_dc: TestDC, tmp_path: Path) -> None:
    with running_daemon(
        samba_dc, tmp_path / "d", CF_TICKET_LIFETIME="60", CF_RENEW_LIFETIME="3600"
    ) as daemon:
        (ccache,) = ccaches(list(daemon.add(samba_dc.gmsas[0]).created_kerberos_file_paths))
        first = read_ticket_info(ccache)
        assert first is not None
        assert first.endtime - first.starttime <= 60, "the KDC did not honour the 60 s lifetime"

        seen = [first.endtime]
        deadline = time.monotonic() + 180
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
            info = read_ticket_info(ccache)
            assert info is not None, "the ccache vanished or was unreadable between renewals"
            assert info.endtime >= seen[-1], "a renewal moved the expiry backwards"
            if info.endtime > seen[-1]:
                # Renewed before it ran out, not after.
                assert time.time() < seen[-1], f"renewed only after expiry: {daemon.log()[-3000:]}"
                seen.append(info.endtime)
        assert len(seen) >= 3, f"expiry moved {len(seen) - 1} time(s) in 3 min: {seen}"


# -- (b) 100 leases over 4 gMSAs: one cycle, at most 4 AS exchanges and 4 LDAP searches -----------


@pytest.fixture
def service(samba_dc: TestDC, tmp_path: Path) -> Iterator[tuple[LeaseService, FakeClock]]:
    clock = FakeClock(time.time())  # stands still from now on: the test moves it
    config = samba_dc.service_config(
        tmp_path, ticket_lifetime=600, renew_lifetime=3600, renew_margin=120
    )
    svc = LeaseService(config, clock=clock)
    yield svc, clock
    svc.stop()


def wait_for_next_second() -> None:
    """KDC times have 1 s resolution: a renewal must be able to end later than the last ticket."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)


def test_one_cycle_for_100_leases_costs_one_as_exchange_per_gmsa(
    samba_dc: TestDC, service: tuple[LeaseService, FakeClock]
) -> None:
    svc, clock = service
    gmsas = [*samba_dc.gmsas[:3], samba_dc.ou_gmsa]
    assert len(set(gmsas)) == 4
    paths: list[Path] = []
    for n in range(100):
        spec = make_credspec(gmsas[n % 4], samba_dc.domain, samba_dc.netbios)
        result = svc.add_lease([spec])
        paths.extend(d / "krb5cc" for d in result.directories)
    assert len(paths) == 100
    assert metrics.get(metrics.LDAP_SEARCHES) >= 4  # sanity: the counters count

    def cycle(now: float) -> tuple[int, int, int]:
        before = {p: endtime(p) for p in paths}
        wait_for_next_second()
        as0, ldap0 = metrics.get(metrics.AS_EXCHANGES), metrics.get(metrics.LDAP_SEARCHES)
        clock.now = now
        attempted = svc.scheduler.run_due()
        as_n = metrics.get(metrics.AS_EXCHANGES) - as0
        ldap_n = metrics.get(metrics.LDAP_SEARCHES) - ldap0
        assert svc.scheduler.failing_groups() == []
        # Every lease's own file got the group's new ticket.
        stale = [p for p in paths if endtime(p) <= before[p]]
        assert stale == [], f"{len(stale)} ccache(s) not renewed"
        return attempted, as_n, ldap_n

    # Past every ticket's margin: all four groups are due; the key cache is still good.
    attempted, as_n, ldap_n = cycle(time.time() + 600 - 60)
    assert attempted == 4
    assert as_n <= 4
    assert ldap_n <= 4
    assert (as_n, ldap_n) == (4, 0)  # what we expect exactly, today

    # Far enough ahead that every key cache has expired too: the passwords are read again.
    attempted, as_n, ldap_n = cycle(time.time() + 90 * 86_400)
    assert attempted == 4
    assert as_n <= 4
    assert ldap_n <= 4
    assert (as_n, ldap_n) == (4, 4)


# -- (c) the DC stops, then returns --------------------------------------------------------------


def samba_pgid() -> int:
    pid = int(SAMBA_PID_FILE.read_text().strip())
    pgid = os.getpgid(pid)
    # samba-ad.sh starts samba with setsid: it leads its own group (samba + its forks).
    assert pgid == pid, f"samba {pid} is not its group's leader ({pgid}); refusing to signal it"
    return pgid


@contextmanager
def dc_stopped(max_seconds: float) -> Iterator[float]:
    """SIGSTOP the DC's process group; SIGCONT when the block ends, or after ``max_seconds``.

    The watchdog is a separate session, so even a SIGKILLed pytest leaves the shared DC running.
    """
    pgid = samba_pgid()
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys, time; time.sleep(float(sys.argv[2])); "
            "os.killpg(int(sys.argv[1]), signal.SIGCONT)",
            str(pgid),
            str(max_seconds),
        ],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        os.killpg(pgid, signal.SIGSTOP)
        yield time.time()
    finally:
        os.killpg(pgid, signal.SIGCONT)
        watchdog.kill()
        watchdog.wait()


def failures_logged(daemon: Daemon) -> int:
    return len(re.findall(r"renewal of \S+ failed \(attempt \d+", daemon.log()))


# It stops the DC that concurrent integration runs share: `-m "not reliability"` skips it.
@pytest.mark.reliability
def test_dc_outage_keeps_ccaches_and_is_reported(samba_dc: TestDC, tmp_path: Path) -> None:
    min_outage = float(os.environ.get("CF_TEST_DC_OUTAGE", "120"))
    with running_daemon(
        samba_dc, tmp_path / "d", CF_TICKET_LIFETIME="60", CF_RENEW_LIFETIME="3600"
    ) as daemon:
        response = daemon.add(samba_dc.gmsas[0], samba_dc.gmsas[1])
        paths = ccaches(list(response.created_kerberos_file_paths))
        assert len(paths) == 2
        assert health(daemon) == "OK"
        failures_before = failures_logged(daemon)

        statuses: list[str] = []
        errors_listed: set[str] = set()
        with dc_stopped(max_seconds=min_outage + 240) as stopped_at:
            deadline = stopped_at + max(min_outage, 0) + 150
            while True:
                # Never deleted, never truncated: every cache parses, expired or not.
                for path in paths:
                    assert path.stat().st_size > 0, f"{path} was truncated"
                    assert read_ticket_info(path) is not None, f"{path} no longer parses"
                statuses.append(health(daemon))
                with daemon.client() as stub:
                    listed = stub.ListLeases(pb.ListLeasesRequest(), timeout=10)
                errors_listed.update(
                    t.last_error for lease in listed.leases for t in lease.tickets if t.last_error
                )
                expired = all(endtime(p) < time.time() for p in paths)
                reported = statuses[-1] != "OK"
                retried = failures_logged(daemon) - failures_before >= 2
                long_enough = time.time() - stopped_at >= min_outage
                if expired and reported and retried and long_enough:
                    break
                assert time.time() < deadline, (
                    f"outage not observed: expired={expired} reported={reported} "
                    f"retried={retried}; health={statuses[-1]!r}\n{daemon.log()[-4000:]}"
                )
                time.sleep(1)
            outage = time.time() - stopped_at
        resumed_at = time.time()

        problem = next(s for s in statuses if s != "OK")
        assert "renewal failing" in problem or "unreachable" in problem, problem
        assert samba_dc.gmsas[0] in problem.lower() or samba_dc.gmsas[1] in problem.lower()
        assert errors_listed, "ListLeases never showed the renewal error"

        # Back within a minute of the DC's return: fresh tickets in every file, health OK.
        deadline = resumed_at + 60
        while True:
            fresh = all(endtime(p) > resumed_at for p in paths)
            if fresh and health(daemon) == "OK":
                break
            assert time.time() < deadline, (
                f"not renewed within 60 s of the DC's return (outage {outage:.0f} s): "
                f"{health(daemon)!r}\n{daemon.log()[-4000:]}"
            )
            time.sleep(1)
        recovered = time.time() - resumed_at
        failures = failures_logged(daemon) - failures_before
        print(
            f"\noutage {outage:.0f} s, {failures} failed renewal(s), recovered {recovered:.1f} s "
            f"after the DC returned; HealthCheck said: {sorted(set(statuses))}"
        )
