"""sd_notify with the real daemon: READY only once calls succeed, a live watchdog, clean stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from tests.conftest import TestDC
from tests.integration.daemon import daemon_env


def receive(sock: socket.socket, timeout: float) -> list[str]:
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return []
    return data.decode().split("\n")


def test_ready_watchdog_and_stopping(samba_dc: TestDC, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    env = daemon_env(samba_dc, tmp_path)
    with (tmp_path / "daemon.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "credfetcher.daemon"],
            env={**env, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    env_socket = Path(env["CF_UNIX_DOMAIN_SOCKET_DIR"]) / "credentials_fetcher.sock"
    try:
        ready_at = None
        deadline = time.monotonic() + 30
        while ready_at is None and time.monotonic() < deadline:
            for line in receive(sock, 1.0):
                if line == "READY=1":
                    ready_at = time.monotonic()
        assert ready_at is not None, (tmp_path / "daemon.log").read_text()
        # At READY the socket must already accept calls: one succeeds at once.
        with grpc.insecure_channel(f"unix:{env_socket}") as ch:
            status = pb_grpc.CredentialsFetcherServiceStub(ch).HealthCheck(
                pb.HealthCheckRequest(), timeout=2
            )
        assert status.status == "OK"

        pings = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            pings += [line for line in receive(sock, 1.0) if line == "WATCHDOG=1"]
        assert len(pings) >= 3  # every WATCHDOG_USEC/2 = 1 s, so about 6 in 6 s

        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        seen: list[str] = []
        while "STOPPING=1" not in seen and time.monotonic() - stopped < 10:
            seen += receive(sock, 1.0)
        assert "STOPPING=1" in seen
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - stopped < 10
        assert not env_socket.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
