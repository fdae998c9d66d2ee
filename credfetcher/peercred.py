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
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_CHUNK = 256 * 1024


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


class PeerGate:
    """Accepts on ``public`` and relays each connection to ``allowed`` or ``denied``."""

    def __init__(
        self,
        public: Path,
        allowed: Path,
        denied: Path,
        allow_list: AllowList,
        *,
        on_refused: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.public = public
        self.allowed = allowed
        self.denied = denied
        self.allow_list = allow_list
        self.on_refused = on_refused
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, mode: int, gid: int | None) -> None:
        if self.public.is_socket() or self.public.is_symlink():
            self.public.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # born 0660, never briefly world-writable
        try:
            listener.bind(str(self.public))
        finally:
            os.umask(old_umask)
        os.chmod(self.public, mode)
        if gid is not None:
            os.chown(self.public, -1, gid)
        listener.listen(128)
        listener.settimeout(0.5)  # lets the accept loop notice stop()
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="peer-gate", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._listener is not None:
            self._listener.close()
        self.public.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        listener = self._listener
        if listener is None:
            return
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("accept on %s failed", self.public)
                continue
            try:
                pid, uid, gid = peer_credentials(conn)
                allowed = self.allow_list.allows(uid, gid)
                if not allowed:
                    log.warning(
                        "refused a caller: pid %d uid %d gid %d is not in the allow-list",
                        pid,
                        uid,
                        gid,
                    )
                    if self.on_refused is not None:
                        self.on_refused(pid, uid, gid)
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(str(self.allowed if allowed else self.denied))
            except OSError:
                log.exception("cannot relay a connection from %s", self.public)
                conn.close()
                continue
            threading.Thread(
                target=_relay, args=(conn, upstream), name="peer-relay", daemon=True
            ).start()


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                data = src.recv(_CHUNK)
                if not data:
                    return
                dst.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        a.close()
        b.close()
