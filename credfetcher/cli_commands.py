"""The CLI's commands: one function per subcommand, each one RPC (or none) and its output.

Each ``cmd_*`` takes the :class:`~credfetcher.cli_session.Context` and returns the exit status;
output is the human-readable lines, or the response as JSON with ``--json``. ``mount-args``
builds the ``docker run``/``podman run`` arguments from ListLeases; ``credspec`` works offline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import posixpath
import shlex
import sys
from collections.abc import Iterable, Sequence

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.cli_session import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    Context,
    Failure,
    read_credspecs,
    read_password,
)
from credfetcher.credspec import make_credspec, parse_credspec
from credfetcher.errors import CredspecError, InvalidRequestError
from credfetcher.values import GmsaName

__all__ = [
    "cmd_add",
    "cmd_add_arn",
    "cmd_add_domainless",
    "cmd_credspec",
    "cmd_delete",
    "cmd_health",
    "cmd_list",
    "cmd_mount_args",
    "cmd_renew_arn",
    "cmd_renew_domainless",
]


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


def cmd_add(ctx: Context) -> int:
    args = ctx.args
    request = pb.CreateKerberosLeaseRequest(credspec_contents=read_credspecs(args.credspec))
    ownership = _ownership(args)
    if ownership is not None:
        request.ownership.CopyFrom(ownership)
    response = ctx.call(ctx.stub().AddKerberosLease, request)
    _print_created(ctx, response.lease_id, response.created_kerberos_file_paths)
    return EXIT_OK


def cmd_add_domainless(ctx: Context) -> int:
    args = ctx.args
    contents = read_credspecs(args.credspec, stdin_is_password=True)
    request = pb.CreateNonDomainJoinedKerberosLeaseRequest(
        credspec_contents=contents,
        username=args.username,
        domain=args.domain,
        password=read_password(ctx, args.username, args.domain),
    )
    ownership = _ownership(args)
    if ownership is not None:
        request.ownership.CopyFrom(ownership)
    response = ctx.call(ctx.stub().AddNonDomainJoinedKerberosLease, request)
    _print_created(ctx, response.lease_id, response.created_kerberos_file_paths)
    return EXIT_OK


def _print_created(ctx: Context, lease_id: str, paths: Iterable[str]) -> None:
    paths = list(paths)
    ctx.emit(
        {"lease_id": lease_id, "created_kerberos_file_paths": paths},
        [f"lease {lease_id}", *(f"  {path}" for path in paths)],
    )


def cmd_renew_domainless(ctx: Context) -> int:
    args = ctx.args
    request = pb.RenewNonDomainJoinedKerberosLeaseRequest(
        username=args.username,
        domain=args.domain,
        password=read_password(ctx, args.username, args.domain),
    )
    response = ctx.call(ctx.stub().RenewNonDomainJoinedKerberosLease, request)
    paths = list(response.renewed_kerberos_file_paths)
    header = f"renewed {len(paths)} ticket cache{'' if len(paths) == 1 else 's'}"
    ctx.emit(
        {"renewed_kerberos_file_paths": paths},
        [header, *(f"  {path}" for path in paths)],
    )
    return EXIT_OK


def _aws_request_credentials(ctx: Context) -> tuple[str, str, str, str]:
    """(access key id, secret key, session token, region) from botocore's default chain."""
    from credfetcher import aws  # noqa: PLC0415 - needs the aws extra; slow to import
    from credfetcher.errors import CredfetcherError  # noqa: PLC0415

    try:
        creds = aws.default_credentials(ctx.args.region)
    except CredfetcherError as exc:
        raise Failure(exc.message) from exc
    ctx.secrets.extend([creds.secret_access_key, creds.session_token])
    return creds.access_key_id, creds.secret_access_key, creds.session_token, creds.region


def cmd_add_arn(ctx: Context) -> int:
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


def cmd_renew_arn(ctx: Context) -> int:
    key, secret, token, region = _aws_request_credentials(ctx)
    request = pb.RenewKerberosArnLeaseRequest(
        access_key_id=key, secret_access_key=secret, session_token=token, region=region
    )
    response = ctx.call(ctx.stub().RenewKerberosArnLease, request)
    ctx.emit({"status": response.status}, [f"renewed ARN leases: {response.status}"])
    return EXIT_OK


def cmd_delete(ctx: Context) -> int:
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


def _all_leases(ctx: Context, *, gmsa: str = "", state: str = "") -> list[pb.LeaseInfo]:
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


def cmd_list(ctx: Context) -> int:
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


def cmd_health(ctx: Context) -> int:
    response = ctx.call(ctx.stub().HealthCheck, pb.HealthCheckRequest())
    status = response.status
    ctx.emit({"status": status}, [status or "(the daemon sent an empty status)"])
    return EXIT_OK if status == "OK" else EXIT_UNHEALTHY


def _gmsa_key(name: str) -> str | None:
    """AD compares sAMAccountNames case-insensitively; the trailing ``$`` is optional here."""
    try:
        return GmsaName.parse(name).key
    except InvalidRequestError:
        return None


def _csv_field(value: str) -> str:
    """Quote one ``--mount`` field the way Docker's CSV parser expects, when it needs it."""
    if any(ch in value for ch in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _pick_ticket(lease: pb.LeaseInfo, gmsa: str | None) -> pb.GmsaTicket:
    """The lease's ticket of ``gmsa``, or its only one when no gMSA is named."""
    tickets = list(lease.tickets)
    names = ", ".join(t.service_account_name for t in tickets)
    if gmsa is not None:
        wanted = _gmsa_key(gmsa)
        if wanted is None:
            raise Failure(f"{gmsa!r} is not a gMSA account name")
        matches = [t for t in tickets if _gmsa_key(t.service_account_name) == wanted]
        if not matches:
            raise Failure(
                f"lease {lease.lease_id} has no gMSA {gmsa!r}; its gMSAs: {names or 'none'}"
            )
        return matches[0]
    if len(tickets) == 1:
        return tickets[0]
    if not tickets:
        raise Failure(f"lease {lease.lease_id} has no gMSA")
    raise Failure(
        f"lease {lease.lease_id} has {len(tickets)} gMSAs ({names}): name one, e.g. "
        f"credfetcher mount-args {lease.lease_id} {tickets[0].service_account_name}"
    )


def cmd_mount_args(ctx: Context) -> int:
    args = ctx.args
    target = posixpath.normpath(args.target)
    if not posixpath.isabs(target):
        raise Failure(f"--target {args.target!r} must be an absolute path inside the container")
    lease = next((le for le in _all_leases(ctx) if le.lease_id == args.lease_id), None)
    if lease is None:
        raise Failure(f"no lease {args.lease_id} on the daemon ('credfetcher list' shows them)")
    ticket = _pick_ticket(lease, args.gmsa)
    source = ticket.krb_file_path
    if not source:
        raise Failure(
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


def cmd_credspec(ctx: Context) -> int:
    args = ctx.args
    text = make_credspec(args.gmsa, args.domain, args.netbios)
    try:
        parse_credspec(text)
    except CredspecError as exc:
        raise Failure(f"invalid credspec: {exc.message}") from exc
    print(json.dumps(json.loads(text), indent=2))
    return EXIT_OK
