"""Load: add/delete cycles from 8 concurrent clients, the daemon restarted (SIGTERM, start) on a
fixed period; clients retry only on UNAVAILABLE (the restart window) and must see nothing else.

Scale (stated, and why): issue 8 asks for 2,000 cycles with a restart every 30 s. On CI's 2-CPU
machines 8 clients do ~100-250 cycles/s (each: an AS exchange with the DC, ccache written with
fsync, metadata, rename; then the delete), so 2,000 cycles take 8-20 s — less than one 30 s
period. The cycle count is kept and the period is counted in cycles, not seconds: the daemon is
restarted after each ``PER_INCARNATION`` cycles (a quarter of them), so the run spans 3
restarts however fast the host is (a period of 4 s saw only 1 restart on a fast one).

Bounds, measured on each daemon incarnation between its warm-up (``WARMUP`` cycles after
start) and its SIGTERM: open file descriptors may grow by ``FD_SLACK`` (gRPC and LDAP pools
settle), resident memory by ``RSS_SLACK_KIB`` (allocator arenas of 8+ threads); a leak of one fd
or a few KiB per cycle breaks either over hundreds of cycles.

Restart windows (issue 8: "no error outside the restart windows"). grpcio's graceful stop lets
calls in progress finish, but a call that reached the server and was not yet picked up by a
worker when shutdown began is answered CANCELLED by grpc-core (seen ~1 in 3 restarts under this
load; never executed: a plain grpcio server under the same churn executed exactly as many calls
as its clients got OK for). So a CANCELLED is retried only when it comes inside a restart window
(SIGTERM sent .. new daemon serving, + 1 s); anywhere else it is an error. A CANCELLED call that
*had* run would show as a lease left behind, which the end check catches.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.credspec import make_credspec
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.reliability.helpers import call_with_retry, check_store, fd_count, rss_kib

CLIENTS = 8
CYCLES = int(os.environ.get("CF_TEST_LOAD_CYCLES", "2000"))
WARMUP = 80
PER_INCARNATION = max(CYCLES // 4, 2 * WARMUP)
FD_SLACK = 12
RSS_SLACK_KIB = 24 * 1024
CALL_DEADLINE = 60.0  # one call, retries included: covers a restart (~1 s) many times over


@dataclass
class Stats:
    windows: list[list[float]] = field(default_factory=list)  # [SIGTERM sent, serving again]
    cancelled_in_window: int = 0
    done: int = 0
    retries: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def in_restart_window(stats: Stats, code: grpc.StatusCode) -> bool:
    if code != grpc.StatusCode.CANCELLED:
        return False
    now = time.monotonic()
    with stats.lock:
        inside = any(start <= now <= end + 1.0 for start, end in stats.windows)
        stats.cancelled_in_window += inside
    return inside


def client(daemon: Daemon, index: int, quota: int, stats: Stats) -> None:
    dc = daemon.dc
    def retry(code: grpc.StatusCode) -> bool:
        return in_restart_window(stats, code)

    spec = make_credspec(dc.gmsas[index % len(dc.gmsas)], dc.domain, dc.netbios)
    channel = daemon.channel()
    stub = pb_grpc.CredentialsFetcherServiceStub(channel)
    try:
        for _ in range(quota):
            try:
                lease = call_with_retry(
                    lambda: stub.AddKerberosLease(
                        pb.CreateKerberosLeaseRequest(credspec_contents=[spec]), timeout=20
                    ),
                    deadline=CALL_DEADLINE,
                    retries=stats.retries,
                    also_retry=retry,
                ).lease_id
                delete = pb.DeleteKerberosLeaseRequest(lease_id=lease)
                call_with_retry(
                    lambda: stub.DeleteKerberosLease(delete, timeout=20),  # noqa: B023
                    deadline=CALL_DEADLINE,
                    retries=stats.retries,
                    also_retry=retry,
                )
            except grpc.RpcError as exc:
                with stats.lock:
                    stats.errors.append(f"{exc.code()}: {exc.details()}")
                continue
            with stats.lock:
                stats.done += 1
    finally:
        channel.close()


def test_add_delete_cycles_across_restarts(samba_dc: TestDC, tmp_path: Path) -> None:
    stats = Stats()
    samples: list[tuple[int, int, int, int]] = []  # (fd warm, fd end, rss warm, rss end)
    with running_daemon(samba_dc, tmp_path / "d") as daemon:
        quota = CYCLES // CLIENTS
        workers = [
            threading.Thread(target=client, args=(daemon, i, quota, stats), name=f"client-{i}")
            for i in range(CLIENTS)
        ]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        restarts = 0
        while any(w.is_alive() for w in workers):
            # One incarnation: warm up, sample, serve until the period ends, sample, SIGTERM.
            assert daemon.proc is not None
            pid = daemon.proc.pid
            base = stats.done
            while stats.done - base < WARMUP and any(w.is_alive() for w in workers):
                time.sleep(0.05)
            warm = (fd_count(pid), rss_kib(pid), stats.done)
            while stats.done - base < PER_INCARNATION and any(w.is_alive() for w in workers):
                time.sleep(0.05)
            end = (fd_count(pid), rss_kib(pid), stats.done)
            if end[2] - warm[2] >= WARMUP:  # enough cycles in between to judge growth
                samples.append((warm[0], end[0], warm[1], end[1]))
            if not any(w.is_alive() for w in workers):
                break
            window = [time.monotonic(), float("inf")]
            with stats.lock:
                stats.windows.append(window)
            daemon.stop()
            daemon.start()
            window[1] = time.monotonic()
            restarts += 1
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - started
        leftovers = check_store(daemon.krb_dir, samba_dc.realm, allow_temp=False)
    assert stats.errors == [], stats.errors[:10]
    assert stats.done == quota * CLIENTS
    assert leftovers == {}, f"leases left after every cycle deleted its own: {sorted(leftovers)}"
    assert restarts >= 2, f"only {restarts} restart(s) in {elapsed:.0f} s"
    assert stats.retries, "no client ever met a restart: the test did not test retries"
    assert samples, "no incarnation lived long enough to measure"
    for fd_warm, fd_end, rss_warm, rss_end in samples:
        assert fd_end - fd_warm <= FD_SLACK, f"fds {fd_warm} -> {fd_end}: {samples}"
        assert rss_end - rss_warm <= RSS_SLACK_KIB, f"RSS {rss_warm} -> {rss_end} KiB: {samples}"
    print(f"{stats.done} cycles in {elapsed:.1f} s, {restarts} restarts, "
          f"{len(stats.retries)} retries, {stats.cancelled_in_window} CANCELLED in restart "
          f"windows; fd/RSS samples {samples}")
