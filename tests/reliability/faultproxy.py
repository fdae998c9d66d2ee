"""A TCP proxy on loopback that passes, delays, swallows or resets traffic to the test DC.

The shared Samba DC is used by other tests at the same time, so it is never stopped: faults are
injected between the daemon and the DC instead. Each accepted connection gets its own upstream
connection and two pump threads; every chunk consults the proxy's *current* mode, so a mode change
also hits connections that are already open (the daemon pools its LDAP connections):

* ``PASS``: forward;
* ``DELAY``: sleep ``delay`` seconds, then forward (a slow DC);
* ``BLACKHOLE``: read and drop; the connection stays open and nothing ever comes back (a DC that
  hangs, or a firewall that drops packets) — new connections are still accepted;
* ``RESET``: the first chunk seen in either direction closes both sides with an RST (SO_LINGER 0):
  a DC killed mid-request.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["FaultProxy", "Mode"]

_POLL = 0.1


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One proxied connection: client side, upstream side, closed together."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def close(self, *, reset: bool = False) -> None:
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client, self.upstream):
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()


class FaultProxy:
    """Listens on ``(listen_host, <free port>)`` and forwards to ``target``."""

    def __init__(self, listen_host: str, target: tuple[str, int]) -> None:
        self.target = target
        self._mode = Mode.PASS
        self._delay = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.resets = 0
        self.dropped_bytes = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(64)
        self._listener.settimeout(_POLL)
        self.host, self.port = self._listener.getsockname()[:2]

    # -- control ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    def set(self, mode: Mode, delay: float = 0.0) -> None:
        with self._lock:
            self._mode = mode
            self._delay = delay

    def reset_open_connections(self) -> int:
        """RST every open connection (a DC that comes back after a reboot has none of them)."""
        with self._lock:
            links = [lk for lk in self._links if not lk.closed.is_set()]
            self._links = []
        for link in links:
            link.close(reset=True)
        return len(links)

    def _current(self) -> tuple[Mode, float]:
        with self._lock:
            return self._mode, self._delay

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the work --------------------------------------------------------------------------

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            link = _Link(client, upstream)
            with self._lock:
                self.accepted += 1
                self._links = [lk for lk in self._links if not lk.closed.is_set()]
                self._links.append(link)
            for sock in (client, upstream):
                sock.settimeout(_POLL)
            self._spawn(self._pump, "proxy-up", link, client, upstream)
            self._spawn(self._pump, "proxy-down", link, upstream, client)

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        while not link.closed.is_set() and not self._stop.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                link.close()
                return
            if not data:
                link.close()
                return
            mode, delay = self._current()
            if mode is Mode.RESET:
                with self._lock:
                    self.resets += 1
                link.close(reset=True)
                return
            if mode is Mode.BLACKHOLE:
                with self._lock:
                    self.dropped_bytes += len(data)
                continue
            if mode is Mode.DELAY and delay > 0:
                time.sleep(delay)
            try:
                dst.sendall(data)
            except OSError:
                link.close()
                return
