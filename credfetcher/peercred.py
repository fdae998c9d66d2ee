"""Who may call: an SO_PEERCRED check in front of the gRPC socket (unix(7), SO_PEERCRED).

grpcio has no way to see a Unix-socket peer's credentials (the auth context of a UDS call is
empty, grpc/grpc#15511) and no Python API to hand it an accepted file descriptor, so the check
is done by hand: when an allow-list is configured, credfetcherd owns the public socket itself,
reads each connecting process's uid and gid from the kernel, and relays the connection's bytes
to one of two gRPC servers on private sockets (in a 0700 directory only root can enter): the
real service for an allowed peer, or a small server that answers every call
PERMISSION_DENIED for a refused one, so the refused client gets a proper gRPC status, not a
dropped connection. uid 0 is always allowed (root could bypass any check anyway). Without an
allow-list none of this runs: the socket's mode (0660) and group are the only gate.

The gate must hold when a caller it refuses floods it, so it spends nothing per connection but
two file descriptors and a few hundred bytes: one thread relays every connection with a
selector (non-blocking sockets, one chunk of buffer per direction), and :class:`GateLimits`
caps what a flood can take: relayed connections in all and per uid, refused peers being
answered at once (each is closed after a few seconds), an idle timeout for allowed ones.
A connection over a cap is closed as soon as it is accepted, without a word. uid 0 is exempt
from the caps (the daemon's own start-up check and systemd health probes run as root, and
root can stop the daemon anyway). Out of descriptors (EMFILE), accepting pauses with a growing
delay instead of spinning; warnings about refused callers are rate-limited per uid.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
# Bytes read from one side before its peer must take them: also the buffer bound per direction.
_CHUNK = 64 * 1024
# Connections accepted per wake-up: enough to drain a flood quickly, few enough that relaying
# never waits long behind it (an accept and close costs tens of microseconds).
_ACCEPT_BATCH = 256
# The kernel caps it at net.core.somaxconn (4096 on current kernels). A full backlog makes every
# new connect() fail with EAGAIN, root's too: a deep one absorbs what a flood queues meanwhile.
_BACKLOG = 4096
# Accept errors that mean "out of a resource" (accept(2)): retried after a growing pause.
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE_MIN = 0.05
_ACCEPT_PAUSE_MAX = 2.0
# One line per kind of event and uid at most this often (seconds); the rest are counted.
_LOG_EVERY = 10.0


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


class AllowList:
    """uids and gids allowed to call; uid 0 always is."""

    def __init__(self, uids: Iterable[int], gids: Iterable[int]) -> None:
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)

    def __bool__(self) -> bool:
        return bool(self.uids or self.gids)

    def allows(self, uid: int, gid: int) -> bool:
        return uid == 0 or uid in self.uids or gid in self.gids


class _DenyAll(grpc.GenericRpcHandler):
    """Answers every method of every service PERMISSION_DENIED."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method

        def deny(_requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method}: this process's uid and gid are not allowed to call credfetcherd "
                "(CF_ALLOWED_UIDS / CF_ALLOWED_GIDS)",
            )

        return grpc.stream_stream_rpc_method_handler(deny)


def deny_server(address: str) -> grpc.Server:
    """A gRPC server on ``address`` that refuses every call."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="deny"))
    server.add_generic_rpc_handlers((_DenyAll(),))
    server.add_insecure_port(address)
    return server


@dataclass(frozen=True)
class GateLimits:
    """What a flood of connections can take from the gate (see the module docstring)."""

    max_connections: int = 256
    """Relayed connections at once, allowed and refused together (uid 0 not counted)."""
    max_per_uid: int = 64
    """Relayed connections at once from one uid."""
    max_refused: int = 8
    """Refused peers being answered PERMISSION_DENIED at once; more are closed unanswered."""
    idle_timeout: float = 600.0
    """An allowed connection with no byte either way for this long is closed (gRPC reconnects)."""
    refused_lifetime: float = 5.0
    """A refused peer's connection is closed this long after it was accepted."""


class _RateLimitedLog:
    """``warning`` at most once per key and :data:`_LOG_EVERY` seconds; says how many it held."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: dict[object, float] = {}
        self._held: Counter[object] = Counter()

    def warning(self, key: object, msg: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < _LOG_EVERY:
            self._held[key] += 1
            return
        if len(self._last) > 1024:  # many uids: forget the oldest state rather than grow
            self._last.clear()
            self._held.clear()
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, held, now - last if last is not None else _LOG_EVERY)
        log.warning(msg, *args, exc_info=exc_info)


class _Relay:
    """One accepted connection and its upstream, with a pending chunk per direction."""

    __slots__ = ("client", "deadline", "events", "last_active", "pending", "refused", "uid",
                 "upstream")

    def __init__(
        self, client: socket.socket, upstream: socket.socket, uid: int, refused: bool, now: float
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.uid = uid
        self.refused = refused
        self.last_active = now
        self.deadline = 0.0
        # Bytes waiting to be written to each socket, and the events each is registered for.
        self.pending: dict[socket.socket, bytes] = {client: b"", upstream: b""}
        self.events: dict[socket.socket, int] = {client: 0, upstream: 0}

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


class PeerGate:
    """Accepts on ``public`` and relays each connection to ``allowed`` or ``denied``."""

    def __init__(
        self,
        public: Path,
        allowed: Path,
        denied: Path,
        allow_list: AllowList,
        *,
        limits: GateLimits | None = None,
        on_refused: Callable[[int, int, int], None] | None = None,
        credentials: Callable[[socket.socket], tuple[int, int, int]] = peer_credentials,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.public = public
        self.allowed = allowed
        self.denied = denied
        self.allow_list = allow_list
        self.limits = limits or GateLimits()
        self.on_refused = on_refused
        self._credentials = credentials
        self._clock = clock
        self._log = _RateLimitedLog(clock)
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sel: selectors.BaseSelector | None = None
        self._relays: set[_Relay] = set()
        self._per_uid: Counter[int] = Counter()
        self._counted = 0  # relays that count towards max_connections (uid != 0)
        self._refused = 0
        self._accept_paused_until = 0.0
        self._accept_pause = _ACCEPT_PAUSE_MIN
        self._drain_until = 0.0
        self._listener_closed = threading.Event()

    # -- life cycle ------------------------------------------------------------------------

    def start(self, mode: int, gid: int | None) -> None:
        if self.public.is_socket() or self.public.is_symlink():
            self.public.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o117)  # born 0660, never briefly world-writable
        try:
            listener.bind(str(self.public))
        finally:
            os.umask(old_umask)
        os.chmod(self.public, mode)
        if gid is not None:
            os.chown(self.public, -1, gid)
        listener.listen(_BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="peer-gate", daemon=True)
        self._thread.start()

    def stop(self, drain: float = 15.0) -> None:
        """Stop accepting now; keep relaying open connections until they close or ``drain``
        seconds pass, so calls in flight finish within the gRPC server's own grace."""
        self._drain_until = self._clock() + drain
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._listener_closed.wait(2)
        elif self._listener is not None:
            self._listener.close()
        self.public.unlink(missing_ok=True)

    def connection_count(self) -> int:
        """Relayed connections open now (for tests and diagnostics)."""
        return len(self._relays)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None  # noqa: S101 - start() made it
        next_sweep = 0.0
        try:
            while True:
                if self._stop.is_set():
                    self._close_listener()
                    if not self._relays or self._clock() >= self._drain_until:
                        return
                try:
                    events = sel.select(timeout=0.5)
                except OSError:
                    log.exception("the peer gate's selector failed")
                    time.sleep(0.5)
                    continue
                for key, mask in events:
                    self._dispatch(key, mask)
                self._housekeeping(sel, next_sweep)
                now = self._clock()
                if now >= next_sweep:
                    next_sweep = now + 0.5
        finally:
            self._close_listener()
            for relay in list(self._relays):
                self._close(relay)
            sel.close()

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        try:
            if key.data is None:
                self._accept_batch()
            else:
                self._service(key.data, key.fileobj, mask)  # type: ignore[arg-type]
        except Exception:
            # A bug met by one connection must not end the gate for every caller.
            self._log.warning(("bug",), "the peer gate failed on one connection", exc_info=True)
            if key.data is not None:
                self._close(key.data)

    def _housekeeping(self, sel: selectors.BaseSelector, next_sweep: float) -> None:
        """Resume accepting after a pause; close idle and expired connections twice a second."""
        now = self._clock()
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            if self._listener is not None and not self._stop.is_set():
                sel.register(self._listener, selectors.EVENT_READ, None)
        if now >= next_sweep:
            self._sweep(now)

    def _close_listener(self) -> None:
        if self._listener_closed.is_set():
            return
        listener = self._listener
        if listener is not None:
            if self._sel is not None and not self._accept_paused_until:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(listener)
            listener.close()
        self._listener_closed.set()

    def _accept_batch(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self._stop.is_set():
                    return
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    self._pause_accepting(exc)
                    return
                self._log.warning(
                    ("accept", exc.errno), "accept on %s failed: %s", self.public, exc
                )
                continue
            self._accept_pause = _ACCEPT_PAUSE_MIN
            self._admit(conn)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors or memory: stop accepting for a while instead of spinning."""
        pause = self._accept_pause
        self._accept_pause = min(pause * 2, _ACCEPT_PAUSE_MAX)
        self._accept_paused_until = self._clock() + pause
        if self._sel is not None and self._listener is not None:
            self._sel.unregister(self._listener)
        self._log.warning(
            ("accept-pause",),
            "accept on %s failed (%s); not accepting for %.2f s (%d connections open)",
            self.public,
            exc.strerror,
            pause,
            len(self._relays),
        )

    def _admit(self, conn: socket.socket) -> None:
        try:
            pid, uid, gid = self._credentials(conn)
        except OSError:
            conn.close()
            return
        allowed = self.allow_list.allows(uid, gid)
        if not allowed:
            self._log.warning(
                ("refused", uid),
                "refused a caller: pid %d uid %d gid %d is not in the allow-list",
                pid,
                uid,
                gid,
            )
            if self.on_refused is not None:
                self.on_refused(pid, uid, gid)
        limits = self.limits
        if uid != 0:
            over = (
                "connections in all"
                if self._counted >= limits.max_connections
                else "connections of this uid"
                if self._per_uid[uid] >= limits.max_per_uid
                else "refused callers being answered"
                if not allowed and self._refused >= limits.max_refused
                else None
            )
            if over is not None:
                conn.close()
                self._log.warning(
                    ("over", uid, over),
                    "closed a connection from uid %d at once: too many %s "
                    "(CF_PEER_MAX_CONNECTIONS / CF_PEER_MAX_PER_UID)",
                    uid,
                    over,
                )
                return
        upstream = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            # A Unix socket connects at once or fails (EAGAIN: its backlog is full); never waits.
            upstream.connect(str(self.allowed if allowed else self.denied))
            conn.setblocking(False)
        except OSError as exc:
            upstream.close()
            conn.close()
            self._log.warning(("upstream",), "cannot relay a connection from %s: %s",
                              self.public, exc)
            return
        now = self._clock()
        relay = _Relay(conn, upstream, uid, not allowed, now)
        if not allowed:
            relay.deadline = now + limits.refused_lifetime
            self._refused += 1
        if uid != 0:
            self._counted += 1
            self._per_uid[uid] += 1
        self._relays.add(relay)
        self._update(relay)

    # -- relaying --------------------------------------------------------------------------

    def _service(self, relay: _Relay, sock: socket.socket, mask: int) -> None:
        if relay not in self._relays:
            return  # closed earlier in this batch of events
        try:
            if mask & selectors.EVENT_WRITE:
                self._flush(relay, sock)
            if mask & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if not data:
                    self._close(relay)
                    return
                relay.last_active = self._clock()
                peer = relay.peer(sock)
                relay.pending[peer] = data
                self._flush(relay, peer)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(relay)
            return
        self._update(relay)

    @staticmethod
    def _flush(relay: _Relay, sock: socket.socket) -> None:
        data = relay.pending[sock]
        if data:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            relay.pending[sock] = data[sent:]

    def _update(self, relay: _Relay) -> None:
        """Register each side for what it can do now: write what waits for it; read only while
        its peer has nothing pending (one chunk per direction at most)."""
        sel = self._sel
        if sel is None:
            return
        for sock in (relay.client, relay.upstream):
            want = 0
            if relay.pending[sock]:
                want |= selectors.EVENT_WRITE
            if not relay.pending[relay.peer(sock)]:
                want |= selectors.EVENT_READ
            have = relay.events[sock]
            if want == have:
                continue
            if not have:
                sel.register(sock, want, relay)
            elif not want:
                sel.unregister(sock)
            else:
                sel.modify(sock, want, relay)
            relay.events[sock] = want

    def _sweep(self, now: float) -> None:
        idle = self.limits.idle_timeout
        for relay in list(self._relays):
            if (relay.deadline and now >= relay.deadline) or now - relay.last_active >= idle:
                self._close(relay)

    def _close(self, relay: _Relay) -> None:
        if relay not in self._relays:
            return
        self._relays.discard(relay)
        if relay.refused:
            self._refused -= 1
        if relay.uid != 0:
            self._counted -= 1
            self._per_uid[relay.uid] -= 1
            if self._per_uid[relay.uid] <= 0:
                del self._per_uid[relay.uid]
        for sock in (relay.client, relay.upstream):
            if relay.events[sock] and self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(sock)
            sock.close()
