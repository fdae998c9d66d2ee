"""The SO_PEERCRED gate holds under a flood of refused connections (issue 15).

uid ``nobody`` (socket group ``nogroup``, not in CF_ALLOWED_UIDS) opens 2,000 connections to
the daemon's socket, each sending the HTTP/2 preface, and holds them. Meanwhile the daemon's
descriptors and threads stay bounded (``/proc/<pid>/fd``, ``/proc/<pid>/task``) and root's
HealthCheck, on a new connection through the gate each time, answers within 100 ms throughout.
The daemon runs with systemd's default soft ``LimitNOFILE`` (1024), set on the running process
with prlimit(1). The attacker raises its own limit to hold 2,000 sockets and stops by itself.

On the old gate (a thread and three descriptors per connection, no cap) the daemon ran out of
descriptors after ~340 connections, logged a traceback per failed accept in a tight loop, and
HealthCheck stopped answering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.reliability.helpers import fd_count

FLOOD = 2000
HOLD_SECONDS = 12.0
BUDGET = 0.100
MAX_REFUSED = 8

# Stdlib only, run by the system Python as nobody (the test's interpreter is under /root).
ATTACKER = r"""
import json, socket, sys, time
path, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
held, failed = [], 0
stop_at = time.monotonic() + 40  # never outlives the test
while len(held) < count and time.monotonic() < stop_at:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        s.sendall(preface)
    except OSError:
        failed += 1
        s.close()
        continue
    held.append(s)
print(json.dumps({"held": len(held), "failed": failed}), flush=True)
time.sleep(max(0.0, min(hold, stop_at - time.monotonic())))
"""


@pytest.fixture
def gated(samba_dc: TestDC) -> Iterator[Daemon]:
    public = Path(tempfile.mkdtemp(prefix="cf-flood-", dir="/var/tmp"))
    public.chmod(0o755)
    try:
        with running_daemon(
            samba_dc,
            public / "d",
            CF_SOCKET_GROUP="nogroup",
            CF_ALLOWED_UIDS="4501",
            CF_PEER_MAX_REFUSED=str(MAX_REFUSED),
            CF_LOG_LEVEL="INFO",
        ) as daemon:
            (public / "d").chmod(0o755)
            assert daemon.proc is not None
            subprocess.run(
                ["prlimit", f"--pid={daemon.proc.pid}", "--nofile=1024:1024"], check=True
            )
            yield daemon
    finally:
        shutil.rmtree(public, ignore_errors=True)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def health_latency(daemon: Daemon) -> float:
    """Seconds for one HealthCheck on a new connection (through accept and the gate)."""
    started = time.monotonic()
    with grpc.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        pb_grpc.CredentialsFetcherServiceStub(channel).HealthCheck(
            pb.HealthCheckRequest(), timeout=2
        )
    return time.monotonic() - started


def test_refused_flood_leaves_root_served(gated: Daemon) -> None:
    assert gated.proc is not None
    pid = gated.proc.pid
    for _ in range(3):
        health_latency(gated)  # warm: the first channel of a process loads more
    base_fds, base_threads = fd_count(pid), thread_count(pid)

    attacker = subprocess.Popen(
        [
            "prlimit", f"--nofile={FLOOD + 200}:{FLOOD + 200}", "--",
            "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "/usr/bin/python3", "-c", ATTACKER, str(gated.socket_path), str(FLOOD),
            str(HOLD_SECONDS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    latencies: list[tuple[float, float]] = []  # (latency, latency of the repeat or 0)
    fds: list[int] = []
    threads: list[int] = []
    failures: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while attacker.poll() is None and time.monotonic() < deadline:
            try:
                took = health_latency(gated)
                latencies.append((took, health_latency(gated) if took > BUDGET else 0.0))
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
            fds.append(fd_count(pid))
            threads.append(thread_count(pid))
            time.sleep(0.05)
    finally:
        if attacker.poll() is None:
            attacker.kill()
        out, err = attacker.communicate(timeout=30)
    report = json.loads(out.strip().splitlines()[0]) if out.strip() else {}
    assert report.get("held") == FLOOD, (report, err[-2000:])
    assert gated.proc.poll() is None, gated.log()[-3000:]

    assert not failures, (failures[:5], gated.log()[-3000:])
    assert len(latencies) >= 50, len(latencies)
    # A probe over budget is repeated at once: a shared 2-core test host sometimes deschedules
    # the test process itself that long. Two in a row, or more than 2 %, is the daemon.
    slow = [round(t * 1000) for t, again in latencies if t > BUDGET]
    twice = [(round(t * 1000), round(again * 1000)) for t, again in latencies if again > BUDGET]
    assert not twice, f"HealthCheck over {BUDGET * 1000:.0f} ms twice in a row: {twice}"
    assert len(slow) <= len(latencies) // 50, f"HealthCheck over budget: {slow}"
    # Two descriptors per refused peer being answered, a few for the deny server's side.
    assert max(fds) <= base_fds + 2 * MAX_REFUSED + 24, (base_fds, max(fds))
    assert max(threads) <= base_threads + 4, (base_threads, max(threads))

    # The log says what happened, once in a while, not once per connection.
    log = gated.log()
    assert "refused a caller" in log
    assert log.count("refused a caller") < 20, log.count("refused a caller")
    assert "Traceback" not in log
    # And afterwards the gate is back to its resting state.
    time.sleep(1)
    assert fd_count(pid) <= base_fds + 4
    assert health_latency(gated) < BUDGET
