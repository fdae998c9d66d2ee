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

import argparse
import datetime as dt
import errno
import getpass
import json
import os
import posixpath
import shlex
import socket
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc

from credfetcher import __version__
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.credspec import make_credspec, parse_credspec
from credfetcher.errors import CredspecError

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TARGET",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNHEALTHY",
    "EXIT_UNREACHABLE",
    "build_parser",
    "default_socket",
    "main",
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
_WRAP = 78  # help text width (argparse wraps options itself, not raw descriptions)
_MAX_UID = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown(2), so it is no valid owner

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class _Failure(Exception):
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


def _socket_path(value: str) -> str:
    """Accept a plain path or a gRPC target (``unix:PATH``, ``unix:///PATH``); return the path."""
    if value.startswith("unix://"):
        return value[len("unix://") :]
    if value.startswith("unix:"):
        return value[len("unix:") :]
    return value


@dataclass
class _Context:
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
        """One RPC with the deadline; a gRPC error becomes a :class:`_Failure`."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._rpc_failure(exc) from exc

    def _rpc_failure(self, exc: grpc.RpcError) -> _Failure:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            # UNAVAILABLE is also what the daemon says when no DC answers; only a socket we cannot
            # connect to means the daemon itself is unreachable.
            reason = _probe(self.socket_path)
            if reason is not None:
                return _Failure(_unreachable_message(self.socket_path, reason), EXIT_UNREACHABLE)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            details = f"{details} (no answer within {self.timeout:g} s; see --timeout)"
        for secret in self.secrets:
            if len(secret) >= _MIN_SCRUB_LEN:
                details = details.replace(secret, "***")
        name = code.name if code is not None else "UNKNOWN"
        return _Failure(f"{name}: {details}" if details else name)

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


def _read_credspecs(paths: Sequence[str], *, stdin_is_password: bool = False) -> list[str]:
    """The text of each credspec file, ``-`` meaning standard input (once)."""
    contents: list[str] = []
    stdin_read = False
    for path in paths:
        if path == "-":
            if stdin_is_password:
                raise _Failure(
                    "--credspec -: standard input carries the password for this command; "
                    "give the credspec as a file"
                )
            if stdin_read:
                raise _Failure("--credspec - given more than once (standard input is read once)")
            if sys.stdin is None:
                raise _Failure("--credspec -: there is no standard input")
            stdin_read = True
            text = sys.stdin.read()
            where = "(standard input)"
        else:
            where = path
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise _Failure(f"cannot read credspec {path}: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise _Failure(f"cannot read credspec {path}: not UTF-8 text") from exc
        if not text.strip():
            raise _Failure(f"credspec {where} is empty")
        contents.append(text)
    return contents


def _read_password(ctx: _Context, username: str, domain: str) -> str:
    """First line of a non-terminal stdin, else a no-echo prompt on the terminal."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        try:
            password = getpass.getpass(f"Password for {username}@{domain}: ")
        except EOFError as exc:
            raise _Failure("no password given") from exc
    else:
        line = stdin.readline() if stdin is not None else ""
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise _Failure(
                "no password on standard input: pipe it as the first line, or run from a "
                "terminal to be prompted"
            )
    if not password:
        raise _Failure("the password is empty")
    ctx.secrets.append(password)
    return password


def _ownership(args: argparse.Namespace) -> pb.FileOwnership | None:
    """The request's ``ownership`` (field 100) when --uid, --gid or --mode was given."""
    if args.uid is None and args.gid is None and args.mode is None:
        return None
    ownership = pb.FileOwnership(mode=args.mode or 0)
    if args.uid is not None:
        ownership.uid = args.uid
    if args.gid is not None:
        ownership.gid = args.gid
    return ownership


# --------------------------------------------------------------------------- argument types


def _id_type(value: str) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a numeric id") from None
    if not 0 <= number <= _MAX_UID:
        raise argparse.ArgumentTypeError(f"{value} is out of range (0..{_MAX_UID})")
    return number


def _mode_type(value: str) -> int:
    digits = value[2:] if value[:2].lower() == "0o" else value
    try:
        mode = int(digits, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an octal mode such as 0440 or 0600"
        ) from None
    if not 0 < mode <= 0o777:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a permission mode between 0001 and 0777 (such as 0440)"
        )
    return mode


def _timeout_type(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < 10**9:
        raise argparse.ArgumentTypeError("the timeout must be a positive number of seconds")
    return seconds


class _RefusePassword(argparse.Action):
    """A trap for ``--password``: explain the rule without echoing the value back."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        parser.error(
            "passwords are never taken from the command line (other users can read it and "
            "it stays in shell history): pipe it on standard input or type it at the prompt"
        )


# --------------------------------------------------------------------------- commands


def _cmd_add(ctx: _Context) -> int:
    args = ctx.args
    request = pb.CreateKerberosLeaseRequest(credspec_contents=_read_credspecs(args.credspec))
    ownership = _ownership(args)
    if ownership is not None:
        request.ownership.CopyFrom(ownership)
    response = ctx.call(ctx.stub().AddKerberosLease, request)
    _print_created(ctx, response.lease_id, response.created_kerberos_file_paths)
    return EXIT_OK


def _cmd_add_domainless(ctx: _Context) -> int:
    args = ctx.args
    contents = _read_credspecs(args.credspec, stdin_is_password=True)
    request = pb.CreateNonDomainJoinedKerberosLeaseRequest(
        credspec_contents=contents,
        username=args.username,
        domain=args.domain,
        password=_read_password(ctx, args.username, args.domain),
    )
    ownership = _ownership(args)
    if ownership is not None:
        request.ownership.CopyFrom(ownership)
    response = ctx.call(ctx.stub().AddNonDomainJoinedKerberosLease, request)
    _print_created(ctx, response.lease_id, response.created_kerberos_file_paths)
    return EXIT_OK


def _print_created(ctx: _Context, lease_id: str, paths: Iterable[str]) -> None:
    paths = list(paths)
    ctx.emit(
        {"lease_id": lease_id, "created_kerberos_file_paths": paths},
        [f"lease {lease_id}", *(f"  {path}" for path in paths)],
    )


def _cmd_renew_domainless(ctx: _Context) -> int:
    args = ctx.args
    request = pb.RenewNonDomainJoinedKerberosLeaseRequest(
        username=args.username,
        domain=args.domain,
        password=_read_password(ctx, args.username, args.domain),
    )
    response = ctx.call(ctx.stub().RenewNonDomainJoinedKerberosLease, request)
    paths = list(response.renewed_kerberos_file_paths)
    header = f"renewed {len(paths)} ticket cache{'' if len(paths) == 1 else 's'}"
    ctx.emit(
        {"renewed_kerberos_file_paths": paths},
        [header, *(f"  {path}" for path in paths)],
    )
    return EXIT_OK


def _aws_request_credentials(ctx: _Context) -> tuple[str, str, str, str]:
    """(access key id, secret key, session token, region) from botocore's default chain."""
    from credfetcher import aws  # noqa: PLC0415 - needs the aws extra; slow to import
    from credfetcher.errors import CredfetcherError  # noqa: PLC0415

    try:
        creds = aws.default_credentials(ctx.args.region)
    except CredfetcherError as exc:
        raise _Failure(exc.message) from exc
    ctx.secrets.extend([creds.secret_access_key, creds.session_token])
    return creds.access_key_id, creds.secret_access_key, creds.session_token, creds.region


def _cmd_add_arn(ctx: _Context) -> int:
    key, secret, token, region = _aws_request_credentials(ctx)
    request = pb.KerberosArnLeaseRequest(
        credspec_arns=ctx.args.arn,
        access_key_id=key,
        secret_access_key=secret,
        session_token=token,
        region=region,
    )
    response = ctx.call(ctx.stub().AddKerberosArnLease, request)
    pairs = [(r.credspec_arns, r.created_kerberos_file_paths)
             for r in response.krb_ticket_response_map]
    ctx.emit(
        {
            "lease_id": response.lease_id,
            "krb_ticket_response_map": [
                {"credspec_arns": arn, "created_kerberos_file_paths": path}
                for arn, path in pairs
            ],
        },
        [f"lease {response.lease_id}", *(f"  {path}  ({arn})" for arn, path in pairs)],
    )
    return EXIT_OK


def _cmd_renew_arn(ctx: _Context) -> int:
    key, secret, token, region = _aws_request_credentials(ctx)
    request = pb.RenewKerberosArnLeaseRequest(
        access_key_id=key, secret_access_key=secret, session_token=token, region=region
    )
    response = ctx.call(ctx.stub().RenewKerberosArnLease, request)
    ctx.emit({"status": response.status}, [f"renewed ARN leases: {response.status}"])
    return EXIT_OK


def _cmd_delete(ctx: _Context) -> int:
    request = pb.DeleteKerberosLeaseRequest(lease_id=ctx.args.lease_id)
    response = ctx.call(ctx.stub().DeleteKerberosLease, request)
    lease_id = response.lease_id or ctx.args.lease_id
    paths = list(response.deleted_kerberos_file_paths)
    ctx.emit(
        {"lease_id": lease_id, "deleted_kerberos_file_paths": paths},
        [f"deleted lease {lease_id}", *(f"  {path}" for path in paths)],
    )
    return EXIT_OK


def _local_time(unix_seconds: int) -> str:
    """ISO 8601 in the local time zone, or ``-`` for the proto's 0 ("none")."""
    if unix_seconds <= 0:
        return "-"
    return dt.datetime.fromtimestamp(unix_seconds).astimezone().isoformat(timespec="seconds")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "-"


def _lease_dict(lease: pb.LeaseInfo) -> dict[str, object]:
    return {
        "lease_id": lease.lease_id,
        "state": lease.state,
        "domainless": lease.domainless,
        "tickets": [
            {
                "service_account_name": t.service_account_name,
                "domain_name": t.domain_name,
                "krb_file_path": t.krb_file_path,
                "expires_at": t.expires_at,
                "renew_until": t.renew_until,
                "next_renewal_at": t.next_renewal_at,
                "last_error": t.last_error,
            }
            for t in lease.tickets
        ],
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in (headers, *rows)
    ]


def _all_leases(ctx: _Context, *, gmsa: str = "", state: str = "") -> list[pb.LeaseInfo]:
    """Every lease the daemon lists, following ListLeases' pages to the last one."""
    leases: list[pb.LeaseInfo] = []
    token = ""
    while True:
        response = ctx.call(
            ctx.stub().ListLeases,
            pb.ListLeasesRequest(page_token=token, gmsa=gmsa, state=state),
        )
        leases.extend(response.leases)
        token = response.next_page_token
        if not token:
            return leases


def _cmd_list(ctx: _Context) -> int:
    leases = _all_leases(ctx, gmsa=ctx.args.gmsa or "", state=ctx.args.state or "")
    rows: list[list[str]] = []
    for lease in leases:
        state = (lease.state or "-") + (" (domainless)" if lease.domainless else "")
        if not lease.tickets:
            rows.append([lease.lease_id, state, "-", "-", "-", "-"])
        for t in lease.tickets:
            rows.append(
                [
                    lease.lease_id,
                    state,
                    t.service_account_name or "-",
                    t.krb_file_path or "-",
                    _local_time(t.expires_at),
                    _one_line(t.last_error),
                ]
            )
    headers = ["LEASE ID", "STATE", "GMSA", "DIRECTORY", "EXPIRES", "LAST ERROR"]
    text = _table(headers, rows) if rows else ["no leases"]
    ctx.emit({"leases": [_lease_dict(lease) for lease in leases]}, text)
    return EXIT_OK


def _cmd_health(ctx: _Context) -> int:
    response = ctx.call(ctx.stub().HealthCheck, pb.HealthCheckRequest())
    status = response.status
    ctx.emit({"status": status}, [status or "(the daemon sent an empty status)"])
    return EXIT_OK if status == "OK" else EXIT_UNHEALTHY


def _bare_gmsa(name: str) -> str:
    """AD compares sAMAccountNames case-insensitively; the trailing ``$`` is optional here."""
    return name.removesuffix("$").casefold()


def _csv_field(value: str) -> str:
    """Quote one ``--mount`` field the way Docker's CSV parser expects, when it needs it."""
    if any(ch in value for ch in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _cmd_mount_args(ctx: _Context) -> int:
    args = ctx.args
    target = posixpath.normpath(args.target)
    if not posixpath.isabs(target):
        raise _Failure(f"--target {args.target!r} must be an absolute path inside the container")
    lease = next((le for le in _all_leases(ctx) if le.lease_id == args.lease_id), None)
    if lease is None:
        raise _Failure(f"no lease {args.lease_id} on the daemon ('credfetcher list' shows them)")
    tickets = list(lease.tickets)
    names = ", ".join(t.service_account_name for t in tickets)
    if args.gmsa is not None:
        matches = [
            t for t in tickets if _bare_gmsa(t.service_account_name) == _bare_gmsa(args.gmsa)
        ]
        if not matches:
            raise _Failure(
                f"lease {lease.lease_id} has no gMSA {args.gmsa!r}; its gMSAs: {names or 'none'}"
            )
        ticket = matches[0]
    elif len(tickets) == 1:
        ticket = tickets[0]
    elif not tickets:
        raise _Failure(f"lease {lease.lease_id} has no gMSA")
    else:
        raise _Failure(
            f"lease {lease.lease_id} has {len(tickets)} gMSAs ({names}): name one, e.g. "
            f"credfetcher mount-args {lease.lease_id} {tickets[0].service_account_name}"
        )
    source = ticket.krb_file_path
    if not source:
        raise _Failure(
            f"the daemon reported no directory for gMSA {ticket.service_account_name} "
            f"of lease {lease.lease_id}"
        )
    if lease.state and lease.state != "active":
        print(f"credfetcher: warning: lease {lease.lease_id} is {lease.state}", file=sys.stderr)
    if ticket.last_error:
        print(
            f"credfetcher: warning: last renewal of {ticket.service_account_name} failed: "
            f"{_one_line(ticket.last_error)}",
            file=sys.stderr,
        )
    ccname = f"FILE:{posixpath.join(target, 'krb5cc')}"
    if args.format == "json":
        data = {
            "source": source,
            "target": target,
            "readonly": True,
            "env": {"KRB5CCNAME": ccname},
        }
        print(json.dumps(data, indent=2))
    else:
        mount = f"type=bind,{_csv_field('source=' + source)},{_csv_field('target=' + target)}"
        print(shlex.join(["--mount", f"{mount},readonly", "-e", f"KRB5CCNAME={ccname}"]))
    return EXIT_OK


def _cmd_credspec(ctx: _Context) -> int:
    args = ctx.args
    text = make_credspec(args.gmsa, args.domain, args.netbios)
    try:
        parse_credspec(text)
    except CredspecError as exc:
        raise _Failure(f"invalid credspec: {exc.message}") from exc
    print(json.dumps(json.loads(text), indent=2))
    return EXIT_OK


# --------------------------------------------------------------------------- parser

_EPILOG = """\
examples:
  credfetcher credspec --gmsa WebApp01 --domain contoso.com > webapp01.json
  credfetcher add --credspec webapp01.json --uid 1000 --gid 1000 --mode 0440
  credfetcher add-domainless --username svc-gmsa --domain contoso.com \\
      --credspec webapp01.json < /run/secrets/ad-password
  docker run $(credfetcher mount-args 0123456789abcdef0123) myapp:latest
  credfetcher list
  credfetcher --json list
  credfetcher health
  credfetcher delete 0123456789abcdef0123
  credfetcher add-arn 'arn:aws:s3:::my-bucket/webapp01.json#task-0001/webapp01'

exit status:
  0 success, 1 daemon unhealthy (health), 2 the daemon refused the request or bad local
  input or usage, 3 the daemon cannot be reached on its socket

environment:
  CF_UNIX_DOMAIN_SOCKET_DIR  directory of the daemon's socket (credentials_fetcher.sock)
"""

_AWS_NOTE = (
    "The AWS credentials sent to the daemon are this process's own, from botocore's default "
    "chain: the environment, ~/.aws (AWS_PROFILE), or the instance or task role. They are never "
    "accepted as arguments. Needs credfetcher[aws] on this host."
)
_STDIN_NOTE = (
    "The password is read from the first line of standard input when it is not a terminal, "
    "otherwise prompted for without echo. It is never accepted on the command line or from "
    "the environment."
)


def _subparser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    *,
    parents: Sequence[argparse.ArgumentParser],
    handler: Callable[[_Context], int],
    description: str = "",
    examples: Sequence[str] = (),
) -> argparse.ArgumentParser:
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=textwrap.fill(f"{summary}. {description}".strip(), width=_WRAP),
        epilog=epilog,
        parents=list(parents),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool, socket_default: str) -> None:
    # Accepted before and after the subcommand; the subcommand's copy leaves the value alone
    # unless it is given there (SUPPRESS), so `credfetcher list --json` works too.
    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=default(socket_default),
        help=f"the daemon's Unix socket (default: {socket_default})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable JSON output",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout_type,
        default=default(DEFAULT_TIMEOUT),
        help=f"deadline of each call to the daemon (default: {DEFAULT_TIMEOUT:g})",
    )


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``credfetcher`` argument parser (the socket default is read from ``environ``)."""
    socket_default = default_socket(environ)
    parser = argparse.ArgumentParser(
        prog="credfetcher",
        description=textwrap.fill(
            "Client of credfetcherd: create, renew, list and delete gMSA Kerberos leases "
            "and get the arguments to mount one into a container.",
            width=_WRAP,
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True, socket_default=socket_default)

    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, top=False, socket_default=socket_default)

    ownership = argparse.ArgumentParser(add_help=False)
    group = ownership.add_argument_group(
        "ownership of the lease's ticket caches (default: the daemon's CF_CCACHE_* settings)"
    )
    group.add_argument("--uid", type=_id_type, metavar="N", help="owner uid (the app's uid)")
    group.add_argument("--gid", type=_id_type, metavar="N", help="group gid")
    group.add_argument("--mode", type=_mode_type, metavar="MODE", help="octal mode, e.g. 0440")

    user = argparse.ArgumentParser(add_help=False)
    user.add_argument(
        "--username", required=True, metavar="U", help="AD user allowed to read the gMSA passwords"
    )
    user.add_argument(
        "--domain", required=True, metavar="D", help="AD domain (DNS name) of the user"
    )
    user.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)

    credspecs = argparse.ArgumentParser(add_help=False)
    credspecs.add_argument(
        "--credspec",
        required=True,
        nargs="+",
        metavar="FILE",
        help="credential spec JSON file(s), one per gMSA ('-' reads standard input)",
    )

    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _subparser(
        subparsers,
        "add",
        "Create a lease: Kerberos tickets for the gMSAs of the credspecs (AddKerberosLease)",
        parents=[common, credspecs, ownership],
        handler=_cmd_add,
        description="Prints the lease id and the directory of each gMSA, to bind-mount.",
        examples=[
            "credfetcher add --credspec webapp01.json webapp02.json",
            "credfetcher credspec --gmsa WebApp01 --domain contoso.com "
            "| credfetcher add --credspec -",
            "credfetcher add --credspec webapp01.json --uid 1000 --gid 1000 --mode 0440",
        ],
    )
    _subparser(
        subparsers,
        "add-domainless",
        "Create a lease on a host that is not domain-joined, with an AD user's credentials "
        "(AddNonDomainJoinedKerberosLease)",
        parents=[common, user, credspecs, ownership],
        handler=_cmd_add_domainless,
        description=_STDIN_NOTE,
        examples=[
            "credfetcher add-domainless --username svc-gmsa --domain contoso.com "
            "--credspec webapp01.json < /run/secrets/ad-password",
            "credfetcher add-domainless --username svc-gmsa --domain contoso.com "
            "--credspec webapp01.json   # prompts",
        ],
    )
    _subparser(
        subparsers,
        "renew-domainless",
        "Renew the domainless leases of an AD user with its (new) password "
        "(RenewNonDomainJoinedKerberosLease)",
        parents=[common, user],
        handler=_cmd_renew_domainless,
        description="Prints the ticket caches that were renewed. " + _STDIN_NOTE,
        examples=[
            "credfetcher renew-domainless --username svc-gmsa --domain contoso.com "
            "< /run/secrets/ad-password",
        ],
    )
    aws_creds = argparse.ArgumentParser(add_help=False)
    aws_creds.add_argument(
        "--region", metavar="REGION", help="AWS region (default: AWS_REGION or ~/.aws/config)"
    )
    arn = _subparser(
        subparsers,
        "add-arn",
        "Create a lease from credspecs in S3, as the ECS agent does (AddKerberosArnLease)",
        parents=[common, aws_creds],
        handler=_cmd_add_arn,
        description=_AWS_NOTE,
        examples=[
            "credfetcher add-arn 'arn:aws:s3:::my-bucket/webapp01.json#task-0001/webapp01'",
            "AWS_PROFILE=ecs-task credfetcher add-arn --region eu-west-1 "
            "'arn:aws:s3:::b/w1.json#task-7/w1' 'arn:aws:s3:::b/w2.json#task-7/w2'",
        ],
    )
    arn.add_argument(
        "arn",
        nargs="+",
        metavar="ARN",
        help="arn:aws:s3:::BUCKET/KEY#LEASE_ID/DIRECTORY, one per gMSA, all with one lease id",
    )
    _subparser(
        subparsers,
        "renew-arn",
        "Renew every ARN lease with these AWS credentials (RenewKerberosArnLease)",
        parents=[common, aws_creds],
        handler=_cmd_renew_arn,
        description=_AWS_NOTE,
        examples=["credfetcher renew-arn --region us-east-1"],
    )
    delete = _subparser(
        subparsers,
        "delete",
        "Delete a lease and its ticket caches (DeleteKerberosLease)",
        parents=[common],
        handler=_cmd_delete,
        description="Prints the files that were removed.",
        examples=["credfetcher delete 0123456789abcdef0123"],
    )
    delete.add_argument("lease_id", metavar="LEASE_ID", help="the id 'add' printed")
    listing = _subparser(
        subparsers,
        "list",
        "List the leases: state, gMSAs, directories, ticket expiry and last error (ListLeases)",
        parents=[common],
        handler=_cmd_list,
        description="Expiry times are shown in local time; --json gives Unix seconds. Every "
        "page the daemon sends is fetched, so a host with tens of thousands of leases lists "
        "them all.",
        examples=[
            "credfetcher list",
            "credfetcher list --json",
            "credfetcher list --state failing",
            "credfetcher list --gmsa webapp01",
        ],
    )
    listing.add_argument("--gmsa", help="only leases holding this gMSA (case-insensitive)")
    listing.add_argument(
        "--state",
        choices=["active", "failing", "waiting-for-credentials", "unknown"],
        help="only leases in this state",
    )
    _subparser(
        subparsers,
        "health",
        "Check the daemon's health (HealthCheck); exit 0 only when it reports OK",
        parents=[common],
        handler=_cmd_health,
        description="Otherwise prints the status the daemon gave and exits 1.",
        examples=["credfetcher health && echo healthy"],
    )
    mount = _subparser(
        subparsers,
        "mount-args",
        "Print the docker/podman run arguments that bind-mount a lease's gMSA directory "
        "read-only and set KRB5CCNAME",
        parents=[common],
        handler=_cmd_mount_args,
        description=(
            "The directory comes from ListLeases. The output is meant for $(...) expansion; "
            "for paths with spaces use --format json."
        ),
        examples=[
            "docker run $(credfetcher mount-args 0123456789abcdef0123) myapp:latest",
            "podman run $(credfetcher mount-args 0123456789abcdef0123 WebApp01) myapp:latest",
            "credfetcher mount-args 0123456789abcdef0123 --format json",
        ],
    )
    mount.add_argument("lease_id", metavar="LEASE_ID", help="the lease to mount")
    mount.add_argument(
        "gmsa",
        metavar="GMSA",
        nargs="?",
        help="which gMSA of the lease (needed when it has more than one)",
    )
    mount.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help=f"mount point inside the container (default: {DEFAULT_TARGET})",
    )
    mount.add_argument(
        "--format",
        choices=("docker", "json"),
        default="docker",
        help="docker: --mount/-e arguments (also right for podman); json: for tooling",
    )
    credspec = _subparser(
        subparsers,
        "credspec",
        "Print a minimal credential spec JSON for a gMSA (offline; for tests and demos)",
        parents=[common],
        handler=_cmd_credspec,
        examples=["credfetcher credspec --gmsa WebApp01 --domain contoso.com > webapp01.json"],
    )
    credspec.add_argument("--gmsa", required=True, metavar="NAME", help="the gMSA's name")
    credspec.add_argument("--domain", required=True, metavar="DOMAIN", help="AD domain (DNS name)")
    credspec.add_argument(
        "--netbios", metavar="NB", help="NetBIOS domain name (default: the first DNS label)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``credfetcher`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    with ExitStack() as exits:
        ctx = _Context(
            args=args,
            socket_path=_socket_path(args.socket),
            timeout=args.timeout,
            json=args.json,
            exits=exits,
        )
        handler: Callable[[_Context], int] = args.handler
        try:
            return handler(ctx)
        except _Failure as failure:
            print(f"credfetcher: {failure.message}", file=sys.stderr)
            return failure.exit_code
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
