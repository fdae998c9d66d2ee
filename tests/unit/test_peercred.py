"""PeerGate in-process: relaying, the caps, the idle timeout, accept errors, log rate limits.

The peer's uid comes from a fake ``credentials`` function (the test runs as one uid); the two
upstreams are tiny echo servers that prefix what they echo with their name.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from credfetcher.peercred import AllowList, GateLimits, PeerGate

ALLOWED_UID, REFUSED_UID = 1000, 2000


class Echo:
    """A Unix-socket server answering each received chunk with ``name + chunk``."""

    def __init__(self, path: Path, name: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self.name = name
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(self.name + data)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class Gate:
    def __init__(self, tmp: Path, limits: GateLimits) -> None:
        self.uids: deque[int] = deque()
        self.clients: list[socket.socket] = []
        self.allowed = Echo(tmp / "allowed.sock", b"A:")
        self.denied = Echo(tmp / "denied.sock", b"D:")
        self.public = tmp / "public.sock"
        self.gate = PeerGate(
            self.public,
            tmp / "allowed.sock",
            tmp / "denied.sock",
            AllowList([ALLOWED_UID], []),
            limits=limits,
            credentials=lambda conn: (1, self.uids.popleft(), 1),
        )
        self.gate.start(0o600, None)

    def connect(self, uid: int) -> socket.socket:
        self.uids.append(uid)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.clients.append(sock)
        sock.settimeout(2)
        sock.connect(str(self.public))
        return sock

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        self.gate.stop()
        self.allowed.close()
        self.denied.close()


MakeGate = Callable[..., Gate]


@pytest.fixture
def make_gate(tmp_path: Path) -> Iterator[MakeGate]:
    gates: list[Gate] = []

    def make(**limits: Any) -> Gate:
        gate = Gate(tmp_path, GateLimits(**limits))
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        gate.close()


def echo(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    return sock.recv(100)


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_allowed_and_refused_peers_reach_their_servers(make_gate: MakeGate) -> None:
    gate = make_gate()
    assert echo(gate.connect(ALLOWED_UID)) == b"A:ping"
    assert echo(gate.connect(0)) == b"A:ping"  # root always
    assert echo(gate.connect(REFUSED_UID)) == b"D:ping"
    # A large message goes through whole (one chunk per direction at a time).
    sock = gate.connect(ALLOWED_UID)
    sock.sendall(b"x" * 60000)
    got = b""
    while got.count(b"x") < 60000:
        got += sock.recv(1 << 20)
    assert got.startswith(b"A:")


def test_caps_close_extra_connections_at_once_without_threads(make_gate: MakeGate) -> None:
    gate = make_gate(max_per_uid=3, max_refused=2, max_connections=5)
    threads = threading.active_count()
    mine = [gate.connect(ALLOWED_UID) for _ in range(3)]
    extra = gate.connect(ALLOWED_UID)
    assert closed_by_peer(extra)  # over its uid's cap
    refused = [gate.connect(REFUSED_UID) for _ in range(2)]
    over_refused = gate.connect(REFUSED_UID)
    assert closed_by_peer(over_refused)
    assert [echo(s) for s in mine] == [b"A:ping"] * 3
    assert [echo(s) for s in refused] == [b"D:ping"] * 2
    assert closed_by_peer(gate.connect(3000))  # over the total cap (5 relayed)
    assert echo(gate.connect(0)) == b"A:ping"  # root is never capped
    # No thread per connection: only the echo servers' own threads were added.
    assert threading.active_count() - threads == 3 + 2 + 1
    for s in mine:
        s.close()
    deadline = time.monotonic() + 2
    while gate.gate.connection_count() > 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert echo(gate.connect(ALLOWED_UID)) == b"A:ping"  # room again


def test_idle_and_refused_connections_are_closed(make_gate: MakeGate) -> None:
    gate = make_gate(idle_timeout=0.3, refused_lifetime=0.3)
    allowed = gate.connect(ALLOWED_UID)
    refused = gate.connect(REFUSED_UID)
    assert echo(allowed) == b"A:ping"
    assert echo(refused) == b"D:ping"
    started = time.monotonic()
    assert closed_by_peer(allowed)
    assert closed_by_peer(refused)
    assert time.monotonic() - started < 1.9
    assert gate.gate.connection_count() == 0


class FailingListener:
    """Stands in for the listening socket: accept() fails with EMFILE, counted."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.calls = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self.real.close()


def test_out_of_descriptors_backs_off_and_logs_rarely(
    make_gate: MakeGate, caplog: pytest.LogCaptureFixture
) -> None:
    gate = make_gate()
    listener = gate.gate._listener
    assert listener is not None
    failing = FailingListener(listener)
    gate.gate._listener = failing  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="credfetcher.peercred")
    pending = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    gate.clients.extend(pending)
    for s in pending:
        s.connect(str(gate.public))  # queued: the listener stays readable
    time.sleep(1.5)
    # Spinning would be tens of thousands of calls; the pauses grow 0.05, 0.1, 0.2, 0.4 ...
    assert 2 <= failing.calls <= 12, failing.calls
    assert len([r for r in caplog.records if "not accepting" in r.getMessage()]) == 1


def test_refused_callers_are_logged_once_per_uid_and_period(
    make_gate: MakeGate, caplog: pytest.LogCaptureFixture
) -> None:
    gate = make_gate(max_refused=100)
    caplog.set_level(logging.WARNING, logger="credfetcher.peercred")
    socks = [gate.connect(REFUSED_UID) for _ in range(30)]
    assert echo(socks[-1]) == b"D:ping"
    refused = [r for r in caplog.records if "refused a caller" in r.getMessage()]
    assert len(refused) == 1


def test_stop_refuses_new_connections_and_lets_open_ones_finish(make_gate: MakeGate) -> None:
    gate = make_gate()
    sock = gate.connect(ALLOWED_UID)
    assert echo(sock) == b"A:ping"
    gate.gate.stop(drain=5)
    assert not gate.public.exists()
    with pytest.raises(FileNotFoundError):
        gate.connect(ALLOWED_UID)
    assert echo(sock, b"still") == b"A:still"  # a call in flight finishes
    sock.close()
    thread = gate.gate._thread
    assert thread is not None
    thread.join(2)
    assert not thread.is_alive()
