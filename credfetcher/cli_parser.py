"""The ``credfetcher`` argument parser: subcommands, shared options and argument types.

Argument types check values before any request is sent, with the daemon's own rules where it
has them: ``--mode`` and ``--uid``/``--gid`` by :func:`credfetcher.values.check_mode` and
:func:`~credfetcher.values.check_id`, lease ids by :class:`~credfetcher.values.LeaseId`.
``--password`` exists only to explain why passwords are never taken from the command line.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from credfetcher import __version__
from credfetcher.cli_commands import (
    cmd_add,
    cmd_add_arn,
    cmd_add_domainless,
    cmd_credspec,
    cmd_delete,
    cmd_health,
    cmd_list,
    cmd_mount_args,
    cmd_renew_arn,
    cmd_renew_domainless,
)
from credfetcher.cli_session import DEFAULT_TARGET, DEFAULT_TIMEOUT, Context, default_socket
from credfetcher.errors import InvalidRequestError
from credfetcher.values import LeaseId, check_id, check_mode

__all__ = ["build_parser"]

_WRAP = 78  # help text width (argparse wraps options itself, not raw descriptions)


def _id_type(value: str) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a numeric id") from None
    try:
        return check_id(number, "id")
    except InvalidRequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _mode_type(value: str) -> int:
    """An octal mode the daemon accepts; world-readable ones are left to its configuration.

    Whether the daemon allows modes readable by every user (0644) is its CF_ALLOW_WORLD_READABLE,
    which this client cannot see: it refuses them with the reason if it does not.
    """
    digits = value[2:] if value[:2].lower() == "0o" else value
    try:
        mode = int(digits, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an octal mode such as 0440 or 0600"
        ) from None
    try:
        return check_mode(mode, allow_world_readable=True)
    except InvalidRequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _lease_id_type(value: str) -> LeaseId:
    try:
        return LeaseId(value)
    except InvalidRequestError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


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
    handler: Callable[[Context], int],
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
    group.add_argument(
        "--mode",
        type=_mode_type,
        metavar="MODE",
        help="octal mode, e.g. 0440; never world-writable, world-readable (0644) only if the "
        "daemon allows it (CF_ALLOW_WORLD_READABLE)",
    )

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
        handler=cmd_add,
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
        handler=cmd_add_domainless,
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
        handler=cmd_renew_domainless,
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
        handler=cmd_add_arn,
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
        handler=cmd_renew_arn,
        description=_AWS_NOTE,
        examples=["credfetcher renew-arn --region us-east-1"],
    )
    delete = _subparser(
        subparsers,
        "delete",
        "Delete a lease and its ticket caches (DeleteKerberosLease)",
        parents=[common],
        handler=cmd_delete,
        description="Prints the files that were removed.",
        examples=["credfetcher delete 0123456789abcdef0123"],
    )
    delete.add_argument(
        "lease_id", type=_lease_id_type, metavar="LEASE_ID", help="the id 'add' printed"
    )
    listing = _subparser(
        subparsers,
        "list",
        "List the leases: state, gMSAs, directories, ticket expiry and last error (ListLeases)",
        parents=[common],
        handler=cmd_list,
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
        handler=cmd_health,
        description="Otherwise prints the status the daemon gave and exits 1.",
        examples=["credfetcher health && echo healthy"],
    )
    mount = _subparser(
        subparsers,
        "mount-args",
        "Print the docker/podman run arguments that bind-mount a lease's gMSA directory "
        "read-only and set KRB5CCNAME",
        parents=[common],
        handler=cmd_mount_args,
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
    mount.add_argument(
        "lease_id", type=_lease_id_type, metavar="LEASE_ID", help="the lease to mount"
    )
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
        handler=cmd_credspec,
        examples=["credfetcher credspec --gmsa WebApp01 --domain contoso.com > webapp01.json"],
    )
    credspec.add_argument("--gmsa", required=True, metavar="NAME", help="the gMSA's name")
    credspec.add_argument("--domain", required=True, metavar="DOMAIN", help="AD domain (DNS name)")
    credspec.add_argument(
        "--netbios", metavar="NB", help="NetBIOS domain name (default: the first DNS label)"
    )
    return parser
