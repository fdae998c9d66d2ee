"""The CLI's session with credfetcherd: socket, deadline, one RPC at a time, and local input.

:class:`Context` is what every command gets: the parsed arguments, a lazily opened gRPC channel
to the daemon's Unix socket (``protos/credentialsfetcher.proto``), and the secrets this run read,
which are scrubbed from any error detail the daemon sends back. A failed call becomes a
:class:`Failure` carrying the exit status: UNAVAILABLE from a socket nothing listens on means
the daemon is unreachable (exit 3), any other status is the daemon's refusal (exit 2).

Local input: credspec files (``-`` is standard input, read once) and passwords, which come from
the first line of a non-terminal standard input or a no-echo prompt, never argv or the
environment (both readable by other users through ``/proc``).
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import posixpath
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_SOCKET_DIR",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNHEALTHY",
    "EXIT_UNREACHABLE",
    "SOCKET_NAME",
    "Context",
    "Failure",
    "default_socket",
    "parse_socket_target",
    "read_credspecs",
    "read_password",
]

SOCKET_NAME = "credentials_fetcher.sock"
DEFAULT_SOCKET_DIR = "/var/credentials-fetcher/socket"
DEFAULT_SOCKET = f"{DEFAULT_SOCKET_DIR}/{SOCKET_NAME}"
DEFAULT_TARGET = "/var/credentials-fetcher/krbdir"
DEFAULT_TIMEOUT = 60.0

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_ERROR = 2
EXIT_UNREACHABLE = 3

# A 4-byte secret could be a common substring of an error message; scrubbing it would mangle the
# message without protecting much. Longer ones are replaced wherever they appear.
_MIN_SCRUB_LEN = 4

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class Failure(Exception):
    """Ends the command: ``message`` goes to stderr after ``credfetcher: ``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    """The daemon's socket: ``$CF_UNIX_DOMAIN_SOCKET_DIR/credentials_fetcher.sock`` or the default.

    The same variable (and file name) credentials-fetcher and credfetcherd use, so a client run
    with the daemon's environment finds it.
    """
    env = os.environ if environ is None else environ
    return posixpath.join(env.get("CF_UNIX_DOMAIN_SOCKET_DIR") or DEFAULT_SOCKET_DIR, SOCKET_NAME)


def parse_socket_target(value: str) -> str:
    """Accept a plain path or a gRPC target (``unix:PATH``, ``unix:///PATH``); return the path."""
    if value.startswith("unix://"):
        return value[len("unix://") :]
    if value.startswith("unix:"):
        return value[len("unix:") :]
    return value


@dataclass
class Context:
    """What every command gets: the parsed arguments and a lazily opened channel."""

    args: argparse.Namespace
    socket_path: str
    timeout: float
    json: bool
    exits: ExitStack
    secrets: list[str] = field(default_factory=list, repr=False)
    _stub: pb_grpc.CredentialsFetcherServiceStub | None = None

    def stub(self) -> pb_grpc.CredentialsFetcherServiceStub:
        if self._stub is None:
            channel = grpc.insecure_channel(f"unix:{self.socket_path}")
            self.exits.callback(channel.close)
            self._stub = pb_grpc.CredentialsFetcherServiceStub(channel)
        return self._stub

    def call(self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        """One RPC with the deadline; a gRPC error becomes a :class:`Failure`."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_failure(exc) from exc

    def _rpc_failure(self, exc: grpc.RpcError) -> Failure:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            # UNAVAILABLE is also what the daemon says when no DC answers; only a socket we cannot
            # connect to means the daemon itself is unreachable.
            reason = _probe(self.socket_path)
            if reason is not None:
                return Failure(_unreachable_message(self.socket_path, reason), EXIT_UNREACHABLE)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            details = f"{details} (no answer within {self.timeout:g} s; see --timeout)"
        for secret in self.secrets:
            if len(secret) >= _MIN_SCRUB_LEN:
                details = details.replace(secret, "***")
        name = code.name if code is not None else "UNKNOWN"
        return Failure(f"{name}: {details}" if details else name)

    def emit(self, data: object, text: Iterable[str]) -> None:
        """Print ``data`` as JSON with ``--json``, else the human-readable ``text`` lines."""
        if self.json:
            print(json.dumps(data, indent=2))
        else:
            for line in text:
                print(line)


def _probe(path: str) -> OSError | None:
    """Try a plain connect to the socket: the error when it fails, None when something listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(path)
        except OSError as exc:
            return exc
    return None


def _unreachable_message(path: str, reason: OSError) -> str:
    if reason.errno in (errno.EACCES, errno.EPERM):
        return (
            f"cannot reach the daemon at {path}: permission denied on the socket "
            "(run as root or as a member of the socket's group)"
        )
    why = reason.strerror or str(reason)
    return f"cannot reach the daemon at {path}: is credfetcherd running? ({why})"


# --------------------------------------------------------------------------- local input


def read_credspecs(paths: Sequence[str], *, stdin_is_password: bool = False) -> list[str]:
    """The text of each credspec file, ``-`` meaning standard input (once)."""
    contents: list[str] = []
    stdin_read = False
    for path in paths:
        if path == "-":
            if stdin_is_password:
                raise Failure(
                    "--credspec -: standard input carries the password for this command; "
                    "give the credspec as a file"
                )
            if stdin_read:
                raise Failure("--credspec - given more than once (standard input is read once)")
            if sys.stdin is None:
                raise Failure("--credspec -: there is no standard input")
            stdin_read = True
            text = sys.stdin.read()
            where = "(standard input)"
        else:
            where = path
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise Failure(f"cannot read credspec {path}: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise Failure(f"cannot read credspec {path}: not UTF-8 text") from exc
        if not text.strip():
            raise Failure(f"credspec {where} is empty")
        contents.append(text)
    return contents


def read_password(ctx: Context, username: str, domain: str) -> str:
    """First line of a non-terminal stdin, else a no-echo prompt on the terminal."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        try:
            password = getpass.getpass(f"Password for {username}@{domain}: ")
        except EOFError as exc:
            raise Failure("no password given") from exc
    else:
        line = stdin.readline() if stdin is not None else ""
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise Failure(
                "no password on standard input: pipe it as the first line, or run from a "
                "terminal to be prompted"
            )
    if not password:
        raise Failure("the password is empty")
    ctx.secrets.append(password)
    return password

