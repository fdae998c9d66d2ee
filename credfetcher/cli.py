"""``credfetcher``: the command-line client of credfetcherd.

Each subcommand is one RPC of ``protos/credentialsfetcher.proto`` over the daemon's Unix socket,
with a deadline (``--timeout``) on every call, plus two helpers that need no daemon RPC of their
own: ``mount-args`` (built from ListLeases) and ``credspec`` (offline).

Passwords for the domainless commands come from standard input when it is not a terminal (its
first line) or from a no-echo prompt, never from argv or the environment: both are readable by
other users through ``/proc`` and end up in shell history. They are never printed, and are
scrubbed from error details the daemon sends back. ``add-arn`` and ``renew-arn`` send this
process's own AWS credentials, found by botocore's default chain as the ECS agent finds its
task's; they are not accepted as arguments, and are scrubbed from errors the same way.

Exit status: 0 success; 1 ``health`` found the daemon unhealthy; 2 the daemon refused the request
(its gRPC status and details are printed), bad local input or a usage error; 3 the daemon cannot be
reached on its socket.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack

from credfetcher.cli_parser import build_parser
from credfetcher.cli_session import (
    DEFAULT_SOCKET,
    DEFAULT_TARGET,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    SOCKET_NAME,
    Context,
    Failure,
    default_socket,
    parse_socket_target,
)

# The parser, the session and the commands live in cli_parser, cli_session and cli_commands;
# these names stay importable from here, where scripts and tests have always found them.
__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TARGET",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNHEALTHY",
    "EXIT_UNREACHABLE",
    "SOCKET_NAME",
    "build_parser",
    "default_socket",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``credfetcher`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    with ExitStack() as exits:
        ctx = Context(
            args=args,
            socket_path=parse_socket_target(args.socket),
            timeout=args.timeout,
            json=args.json,
            exits=exits,
        )
        handler: Callable[[Context], int] = args.handler
        try:
            return handler(ctx)
        except Failure as failure:
            print(f"credfetcher: {failure.message}", file=sys.stderr)
            return failure.exit_code
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
