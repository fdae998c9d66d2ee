"""The ``credfetcher`` client against an in-process fake daemon on a Unix socket.

The fake servicer records what the client sends and answers with canned responses: these tests
pin the client's request building, output and exit codes, not the daemon's behaviour (the
integration suite drives the real daemon).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from credfetcher import cli
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.credspec import make_credspec, parse_credspec

LEASE = "0123456789abcdef0123"
PASSWORD = "Tr0ub4dor&3-not-in-output"


class FakeService(pb_grpc.CredentialsFetcherServiceServicer):
    """Records every request; answers from its attributes, or aborts with ``abort``."""

    def __init__(self, krbdir: Path) -> None:
        self.krbdir = krbdir
        self.requests: list[Message] = []
        self.abort: tuple[grpc.StatusCode, str] | None = None
        self.health = "OK"
        self.leases: list[pb.LeaseInfo] = []
        self.page = 0  # leases per ListLeases page; 0: all in one
        self.block = threading.Event()
        self.block_for = 0.0

    def _record(self, request: Message, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        if self.block_for:
            self.block.wait(self.block_for)
        if self.abort is not None:
            context.abort(*self.abort)

    def _dirs(self, contents: list[str]) -> list[str]:
        return [str(self.krbdir / LEASE / parse_credspec(c).gmsa_name) for c in contents]

    def AddKerberosLease(
        self, request: pb.CreateKerberosLeaseRequest, context: grpc.ServicerContext
    ) -> pb.CreateKerberosLeaseResponse:
        self._record(request, context)
        return pb.CreateKerberosLeaseResponse(
            lease_id=LEASE,
            created_kerberos_file_paths=self._dirs(list(request.credspec_contents)),
        )

    def AddNonDomainJoinedKerberosLease(
        self,
        request: pb.CreateNonDomainJoinedKerberosLeaseRequest,
        context: grpc.ServicerContext,
    ) -> pb.CreateNonDomainJoinedKerberosLeaseResponse:
        self._record(request, context)
        return pb.CreateNonDomainJoinedKerberosLeaseResponse(
            lease_id=LEASE,
            created_kerberos_file_paths=self._dirs(list(request.credspec_contents)),
        )

    def RenewNonDomainJoinedKerberosLease(
        self,
        request: pb.RenewNonDomainJoinedKerberosLeaseRequest,
        context: grpc.ServicerContext,
    ) -> pb.RenewNonDomainJoinedKerberosLeaseResponse:
        self._record(request, context)
        return pb.RenewNonDomainJoinedKerberosLeaseResponse(
            renewed_kerberos_file_paths=[str(self.krbdir / LEASE / "WebApp01" / "krb5cc")]
        )

    def DeleteKerberosLease(
        self, request: pb.DeleteKerberosLeaseRequest, context: grpc.ServicerContext
    ) -> pb.DeleteKerberosLeaseResponse:
        self._record(request, context)
        return pb.DeleteKerberosLeaseResponse(
            lease_id=request.lease_id,
            deleted_kerberos_file_paths=[
                str(self.krbdir / request.lease_id / "WebApp01" / "krb5cc")
            ],
        )

    def HealthCheck(
        self, request: pb.HealthCheckRequest, context: grpc.ServicerContext
    ) -> pb.HealthCheckResponse:
        self._record(request, context)
        return pb.HealthCheckResponse(status=self.health)

    def AddKerberosArnLease(
        self, request: pb.KerberosArnLeaseRequest, context: grpc.ServicerContext
    ) -> pb.CreateKerberosArnLeaseResponse:
        self._record(request, context)
        return pb.CreateKerberosArnLeaseResponse(
            lease_id="task-1",
            krb_ticket_response_map=[
                pb.KerberosTicketArnResponse(
                    credspec_arns=arn.split("#")[0],
                    created_kerberos_file_paths=str(self.krbdir / "task-1" / arn.split("/")[-1]),
                )
                for arn in request.credspec_arns
            ],
        )

    def RenewKerberosArnLease(
        self, request: pb.RenewKerberosArnLeaseRequest, context: grpc.ServicerContext
    ) -> pb.RenewKerberosArnLeaseResponse:
        self._record(request, context)
        return pb.RenewKerberosArnLeaseResponse(status="successful")

    def ListLeases(
        self, request: pb.ListLeasesRequest, context: grpc.ServicerContext
    ) -> pb.ListLeasesResponse:
        self._record(request, context)
        if not self.page:
            return pb.ListLeasesResponse(leases=self.leases)
        start = int(request.page_token or 0)
        end = start + self.page
        more = str(end) if end < len(self.leases) else ""
        return pb.ListLeasesResponse(leases=self.leases[start:end], next_page_token=more)


@dataclass
class Daemon:
    socket: str
    service: FakeService
    krbdir: Path
    sock_dir: Path


@dataclass
class Result:
    code: int
    out: str
    err: str
    requests: list[Message] = field(default_factory=list)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    sock_dir = tmp_path / "socket"
    sock_dir.mkdir()
    path = sock_dir / cli.SOCKET_NAME
    service = FakeService(tmp_path / "krbdir")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CredentialsFetcherServiceServicer_to_server(service, server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    try:
        yield Daemon(str(path), service, tmp_path / "krbdir", sock_dir)
    finally:
        service.block.set()
        server.stop(None).wait()


@pytest.fixture(autouse=True)
def _no_socket_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CF_UNIX_DOMAIN_SOCKET_DIR", raising=False)


def run(
    capsys: pytest.CaptureFixture[str],
    daemon: Daemon | None,
    *args: str,
    stdin: str | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> Result:
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    argv = ["--socket", daemon.socket, *args] if daemon is not None else list(args)
    code = cli.main(argv)
    captured = capsys.readouterr()
    requests = list(daemon.service.requests) if daemon is not None else []
    return Result(code, captured.out, captured.err, requests)


def write_credspec(tmp_path: Path, gmsa: str) -> Path:
    path = tmp_path / f"{gmsa}.json"
    path.write_text(make_credspec(gmsa, "contoso.com"))
    return path


# --------------------------------------------------------------------------- add


def test_add_sends_each_credspec_and_prints_lease_and_directories(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = write_credspec(tmp_path, "WebApp01"), write_credspec(tmp_path, "WebApp02")

    result = run(capsys, daemon, "add", "--credspec", str(one), str(two))

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.CreateKerberosLeaseRequest)
    assert list(request.credspec_contents) == [one.read_text(), two.read_text()]
    assert not request.HasField("ownership")  # old daemons and defaults: nothing extra sent
    assert result.out.splitlines() == [
        f"lease {LEASE}",
        f"  {daemon.krbdir / LEASE / 'WebApp01'}",
        f"  {daemon.krbdir / LEASE / 'WebApp02'}",
    ]
    assert result.err == ""


def test_add_reads_a_credspec_from_stdin(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = make_credspec("WebApp03", "contoso.com")

    result = run(capsys, daemon, "add", "--credspec", "-", stdin=text, monkeypatch=monkeypatch)

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.CreateKerberosLeaseRequest)
    assert list(request.credspec_contents) == [text]


def test_add_json_output(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")

    result = run(capsys, daemon, "--json", "add", "--credspec", str(spec))

    assert result.code == 0, result.err
    assert json.loads(result.out) == {
        "lease_id": LEASE,
        "created_kerberos_file_paths": [str(daemon.krbdir / LEASE / "WebApp01")],
    }


def test_global_options_are_accepted_after_the_subcommand(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")

    code = cli.main(["add", "--credspec", str(spec), "--json", "--socket", daemon.socket])

    assert code == 0
    assert json.loads(capsys.readouterr().out)["lease_id"] == LEASE


def test_add_sets_the_ownership_field(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")

    result = run(
        capsys,
        daemon,
        "add",
        "--credspec",
        str(spec),
        "--uid",
        "1000",
        "--gid",
        "0",
        "--mode",
        "0440",
    )

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.CreateKerberosLeaseRequest)
    assert request.HasField("ownership")
    assert request.ownership.HasField("uid")
    assert request.ownership.uid == 1000
    assert request.ownership.HasField("gid")  # gid 0 is sent, not confused with "unset"
    assert request.ownership.gid == 0
    assert request.ownership.mode == 0o440


def test_add_with_gid_only_leaves_uid_and_mode_unset(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")

    result = run(capsys, daemon, "add", "--credspec", str(spec), "--gid", "2000")

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.CreateKerberosLeaseRequest)
    assert not request.ownership.HasField("uid")
    assert request.ownership.gid == 2000
    assert request.ownership.mode == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [("--mode", "0999"), ("--mode", "01777"), ("--mode", "0"), ("--uid", "-1"), ("--uid", "x")],
)
def test_bad_ownership_values_are_usage_errors(
    daemon: Daemon,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")

    result = run(capsys, daemon, "add", "--credspec", str(spec), option, value)

    assert result.code == 2
    assert option in result.err
    assert result.requests == []


def test_unreadable_credspec_names_the_path_and_sends_nothing(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-credspec.json"

    result = run(capsys, daemon, "add", "--credspec", str(missing))

    assert result.code == 2
    assert str(missing) in result.err
    assert result.err.startswith("credfetcher: ")
    assert result.requests == []


def test_empty_credspec_is_refused_locally(
    daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("\n")

    result = run(capsys, daemon, "add", "--credspec", str(empty))

    assert result.code == 2
    assert str(empty) in result.err
    assert result.requests == []


# --------------------------------------------------------------------------- domainless


def test_add_domainless_takes_the_password_from_stdin_and_never_prints_it(
    daemon: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")

    result = run(
        capsys,
        daemon,
        "add-domainless",
        "--username",
        "svc-gmsa",
        "--domain",
        "contoso.com",
        "--credspec",
        str(spec),
        "--uid",
        "1000",
        stdin=f"{PASSWORD}\nsecond line is ignored\n",
        monkeypatch=monkeypatch,
    )

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.CreateNonDomainJoinedKerberosLeaseRequest)
    assert request.password == PASSWORD
    assert request.username == "svc-gmsa"
    assert request.domain == "contoso.com"
    assert list(request.credspec_contents) == [spec.read_text()]
    assert request.ownership.uid == 1000
    assert f"lease {LEASE}" in result.out
    assert PASSWORD not in result.out
    assert PASSWORD not in result.err


def test_password_line_keeps_inner_spaces_and_drops_crlf(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(
        capsys,
        daemon,
        "renew-domainless",
        "--username",
        "svc",
        "--domain",
        "contoso.com",
        stdin=" pass word \r\n",
        monkeypatch=monkeypatch,
    )

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.RenewNonDomainJoinedKerberosLeaseRequest)
    assert request.password == " pass word "


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_is_prompted_for_on_a_terminal(
    daemon: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = write_credspec(tmp_path, "WebApp01")
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", fake_getpass)

    result = run(
        capsys,
        daemon,
        "add-domainless",
        "--username",
        "svc-gmsa",
        "--domain",
        "contoso.com",
        "--credspec",
        str(spec),
    )

    assert result.code == 0, result.err
    assert prompts == ["Password for svc-gmsa@contoso.com: "]
    (request,) = result.requests
    assert isinstance(request, pb.CreateNonDomainJoinedKerberosLeaseRequest)
    assert request.password == PASSWORD
    assert PASSWORD not in result.out + result.err


@pytest.mark.parametrize("form", [["--password", PASSWORD], [f"--password={PASSWORD}"]])
def test_password_on_the_command_line_is_refused_without_echoing_it(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], form: list[str]
) -> None:
    result = run(
        capsys,
        daemon,
        "renew-domainless",
        "--username",
        "svc",
        "--domain",
        "contoso.com",
        *form,
    )

    assert result.code == 2
    assert "never taken from the command line" in result.err
    assert PASSWORD not in result.out + result.err
    assert result.requests == []


def test_password_is_not_read_from_the_environment(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("PASSWORD", "CF_PASSWORD", "CREDFETCHER_PASSWORD"):
        monkeypatch.setenv(name, PASSWORD)

    result = run(
        capsys,
        daemon,
        "renew-domainless",
        "--username",
        "svc",
        "--domain",
        "contoso.com",
        stdin="",
        monkeypatch=monkeypatch,
    )

    assert result.code == 2
    assert "no password on standard input" in result.err
    assert result.requests == []


def test_credspec_on_stdin_conflicts_with_the_password(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(
        capsys,
        daemon,
        "add-domainless",
        "--username",
        "svc",
        "--domain",
        "contoso.com",
        "--credspec",
        "-",
        stdin=f"{PASSWORD}\n",
        monkeypatch=monkeypatch,
    )

    assert result.code == 2
    assert "standard input carries the password" in result.err
    assert result.requests == []


def test_renew_domainless_prints_the_renewed_paths(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(
        capsys,
        daemon,
        "renew-domainless",
        "--username",
        "svc",
        "--domain",
        "contoso.com",
        stdin=f"{PASSWORD}\n",
        monkeypatch=monkeypatch,
    )

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.RenewNonDomainJoinedKerberosLeaseRequest)
    assert (request.username, request.password, request.domain) == ("svc", PASSWORD, "contoso.com")
    assert str(daemon.krbdir / LEASE / "WebApp01" / "krb5cc") in result.out
    assert PASSWORD not in result.out + result.err


def test_a_password_echoed_in_error_details_is_scrubbed(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.abort = (
        grpc.StatusCode.UNAUTHENTICATED,
        f"bind as svc failed with password {PASSWORD}",
    )

    result = run(
        capsys,
        daemon,
        "renew-domainless",
        "--username",
        "svc",
        "--domain",
        "contoso.com",
        stdin=f"{PASSWORD}\n",
        monkeypatch=monkeypatch,
    )

    assert result.code == 2
    assert result.err.startswith("credfetcher: UNAUTHENTICATED: bind as svc failed")
    assert PASSWORD not in result.out + result.err


# --------------------------------------------------------------------------- delete, errors


def test_delete_prints_the_deleted_paths(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, daemon, "delete", LEASE)

    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.DeleteKerberosLeaseRequest)
    assert request.lease_id == LEASE
    assert result.out.splitlines() == [
        f"deleted lease {LEASE}",
        f"  {daemon.krbdir / LEASE / 'WebApp01' / 'krb5cc'}",
    ]


def test_a_grpc_error_prints_status_and_details_and_exits_2(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.abort = (grpc.StatusCode.NOT_FOUND, f"no lease {LEASE}")

    result = run(capsys, daemon, "delete", LEASE)

    assert result.code == 2
    assert result.err == f"credfetcher: NOT_FOUND: no lease {LEASE}\n"
    assert result.out == ""


def test_a_daemon_that_says_unavailable_is_not_reported_as_unreachable(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.abort = (grpc.StatusCode.UNAVAILABLE, "no domain controller answered")

    result = run(capsys, daemon, "health")

    assert result.code == 2
    assert result.err == "credfetcher: UNAVAILABLE: no domain controller answered\n"


def test_missing_socket_is_reported_as_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nothing-here.sock"

    code = cli.main(["--socket", str(path), "--timeout", "5", "list"])

    err = capsys.readouterr().err
    assert code == 3
    assert f"cannot reach the daemon at {path}: is credfetcherd running?" in err


def test_stale_socket_is_reported_as_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # bound but never listening: what a crashed daemon leaves

        code = cli.main(["--socket", f"unix:{path}", "--timeout", "5", "health"])

    err = capsys.readouterr().err
    assert code == 3
    assert f"cannot reach the daemon at {path}: is credfetcherd running?" in err


def test_every_call_has_a_deadline(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.service.block_for = 5.0  # released at teardown

    result = run(capsys, daemon, "--timeout", "0.3", "health")

    assert result.code == 2
    assert result.err.startswith("credfetcher: DEADLINE_EXCEEDED")
    assert "--timeout" in result.err


def test_socket_defaults_to_the_daemon_environment(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CF_UNIX_DOMAIN_SOCKET_DIR", str(daemon.sock_dir))

    code = cli.main(["health"])

    assert code == 0
    assert capsys.readouterr().out == "OK\n"


def test_default_socket() -> None:
    assert cli.default_socket({}) == "/var/credentials-fetcher/socket/credentials_fetcher.sock"
    assert cli.default_socket({"CF_UNIX_DOMAIN_SOCKET_DIR": "/run/cf"}) == (
        "/run/cf/credentials_fetcher.sock"
    )


# --------------------------------------------------------------------------- health


def test_health_ok_exits_0(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, daemon, "health")

    assert (result.code, result.out) == (0, "OK\n")
    (request,) = result.requests
    assert isinstance(request, pb.HealthCheckRequest)


@pytest.mark.parametrize("status", ["renewal loop stalled", "no DC answered for 10 min", ""])
def test_health_not_ok_prints_the_status_and_exits_1(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    daemon.service.health = status

    result = run(capsys, daemon, "health")

    assert result.code == 1
    if status:
        assert result.out == f"{status}\n"
    else:
        assert "empty status" in result.out


def test_health_json(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.service.health = "renewal loop stalled"

    result = run(capsys, daemon, "--json", "health")

    assert result.code == 1
    assert json.loads(result.out) == {"status": "renewal loop stalled"}


# --------------------------------------------------------------------------- list, mount-args

EXPIRES = 1_900_000_000


def ticket(daemon: Daemon, gmsa: str, *, lease: str = LEASE, error: str = "") -> pb.GmsaTicket:
    return pb.GmsaTicket(
        service_account_name=gmsa,
        domain_name="contoso.com",
        krb_file_path=str(daemon.krbdir / lease / gmsa),
        expires_at=EXPIRES,
        renew_until=EXPIRES + 86400,
        last_error=error,
        next_renewal_at=EXPIRES - 3600,
    )


def test_list_prints_a_table_with_local_iso_expiry(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "fedcba9876543210fedc"
    daemon.service.leases = [
        pb.LeaseInfo(
            lease_id=LEASE,
            state="active",
            tickets=[ticket(daemon, "WebApp01"), ticket(daemon, "WebApp02")],
        ),
        pb.LeaseInfo(
            lease_id=other,
            state="failing",
            domainless=True,
            tickets=[
                pb.GmsaTicket(
                    service_account_name="Db01",
                    krb_file_path=str(daemon.krbdir / other / "Db01"),
                    last_error="KDC unreachable:\nconnection refused",
                )
            ],
        ),
    ]

    result = run(capsys, daemon, "list")

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "LEASE",
        "ID",
        "STATE",
        "GMSA",
        "DIRECTORY",
        "EXPIRES",
        "LAST",
        "ERROR",
    ]
    expiry = dt.datetime.fromtimestamp(EXPIRES).astimezone().isoformat(timespec="seconds")
    assert lines[1].split() == [
        LEASE,
        "active",
        "WebApp01",
        str(daemon.krbdir / LEASE / "WebApp01"),
        expiry,
        "-",
    ]
    assert lines[2].split()[2] == "WebApp02"
    assert lines[3].split()[:6] == [
        other,
        "failing",
        "(domainless)",
        "Db01",
        str(daemon.krbdir / other / "Db01"),
        "-",
    ]
    assert lines[3].endswith("KDC unreachable: connection refused")
    # columns line up: every row has the directory at the header's offset
    offset = lines[0].index("DIRECTORY")
    assert all(line[offset:].startswith(str(daemon.krbdir)) for line in lines[1:])


def test_list_json_keeps_unix_seconds(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(lease_id=LEASE, state="active", tickets=[ticket(daemon, "WebApp01")])
    ]

    result = run(capsys, daemon, "--json", "list")

    assert result.code == 0, result.err
    data = json.loads(result.out)
    (lease,) = data["leases"]
    assert lease["lease_id"] == LEASE
    assert lease["state"] == "active"
    assert lease["domainless"] is False
    (tk,) = lease["tickets"]
    assert tk["expires_at"] == EXPIRES
    assert tk["krb_file_path"] == str(daemon.krbdir / LEASE / "WebApp01")


def test_list_follows_every_page_and_passes_the_filters(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.page = 2
    ids = [f"{n:020x}" for n in range(5)]
    daemon.service.leases = [
        pb.LeaseInfo(lease_id=i, state="failing", tickets=[ticket(daemon, "WebApp01")])
        for i in ids
    ]

    result = run(capsys, daemon, "--json", "list", "--state", "failing", "--gmsa", "webapp01")

    assert result.code == 0, result.err
    assert [lease["lease_id"] for lease in json.loads(result.out)["leases"]] == ids
    assert len(result.requests) == 3
    assert [r.page_token for r in result.requests] == ["", "2", "4"]  # type: ignore[attr-defined]
    assert {(r.state, r.gmsa) for r in result.requests} == {  # type: ignore[attr-defined]
        ("failing", "webapp01")
    }


def test_mount_args_finds_a_lease_on_a_later_page(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.page = 1
    daemon.service.leases = [
        pb.LeaseInfo(
            lease_id=f"{n:020x}",
            state="active",
            tickets=[ticket(daemon, "WebApp01", lease=f"{n:020x}")],
        )
        for n in range(3)
    ]

    result = run(capsys, daemon, "mount-args", f"{2:020x}")

    assert result.code == 0, result.err
    assert f"source={daemon.krbdir / f'{2:020x}' / 'WebApp01'}" in result.out


def test_list_with_no_leases(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, daemon, "list")

    assert (result.code, result.out) == (0, "no leases\n")


def test_mount_args_uses_the_only_gmsa_of_the_lease(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(lease_id=LEASE, state="active", tickets=[ticket(daemon, "WebApp01")])
    ]

    result = run(capsys, daemon, "mount-args", LEASE)

    assert result.code == 0, result.err
    source = daemon.krbdir / LEASE / "WebApp01"
    target = "/var/credentials-fetcher/krbdir"
    assert result.out == (
        f"--mount type=bind,source={source},target={target},readonly "
        f"-e KRB5CCNAME=FILE:{target}/krb5cc\n"
    )
    assert result.err == ""
    (request,) = result.requests
    assert isinstance(request, pb.ListLeasesRequest)


def test_mount_args_picks_the_named_gmsa_case_insensitively_in_json(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(
            lease_id=LEASE,
            state="active",
            tickets=[ticket(daemon, "WebApp01"), ticket(daemon, "WebApp02")],
        )
    ]

    result = run(
        capsys, daemon, "mount-args", LEASE, "webapp02$", "--target", "/krb/", "--format", "json"
    )

    assert result.code == 0, result.err
    assert json.loads(result.out) == {
        "source": str(daemon.krbdir / LEASE / "WebApp02"),
        "target": "/krb",
        "readonly": True,
        "env": {"KRB5CCNAME": "FILE:/krb/krb5cc"},
    }


def test_mount_args_needs_a_gmsa_when_the_lease_has_several(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(
            lease_id=LEASE,
            state="active",
            tickets=[ticket(daemon, "WebApp01"), ticket(daemon, "WebApp02")],
        )
    ]

    result = run(capsys, daemon, "mount-args", LEASE)

    assert result.code == 2
    assert "WebApp01, WebApp02" in result.err
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fedcba9876543210fedc"], "no lease fedcba9876543210fedc"),
        ([LEASE, "Nope01"], "has no gMSA 'Nope01'"),
        ([LEASE, "--target", "relative/dir"], "must be an absolute path"),
    ],
)
def test_mount_args_errors(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(lease_id=LEASE, state="active", tickets=[ticket(daemon, "WebApp01")])
    ]

    result = run(capsys, daemon, "mount-args", *args)

    assert result.code == 2
    assert message in result.err
    assert result.out == ""


def test_mount_args_warns_on_stderr_about_a_failing_lease(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(
            lease_id=LEASE,
            state="failing",
            tickets=[ticket(daemon, "WebApp01", error="KDC unreachable")],
        )
    ]

    result = run(capsys, daemon, "mount-args", LEASE)

    assert result.code == 0
    assert result.out.startswith("--mount type=bind,")
    assert "failing" in result.err
    assert "KDC unreachable" in result.err


def test_mount_args_quotes_awkward_paths(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.leases = [
        pb.LeaseInfo(
            lease_id=LEASE,
            state="active",
            tickets=[pb.GmsaTicket(service_account_name="W", krb_file_path="/k dir,x/W")],
        )
    ]

    result = run(capsys, daemon, "mount-args", LEASE)

    assert result.code == 0, result.err
    assert result.out == (
        '--mount \'type=bind,"source=/k dir,x/W",target=/var/credentials-fetcher/krbdir,'
        "readonly' -e KRB5CCNAME=FILE:/var/credentials-fetcher/krbdir/krb5cc\n"
    )


# --------------------------------------------------------------------------- credspec, help


def test_credspec_prints_a_credspec_the_daemon_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = cli.main(
        ["credspec", "--gmsa", "WebApp01", "--domain", "Contoso.com", "--netbios", "CT"]
    )

    out = capsys.readouterr().out
    assert code == 0
    spec = parse_credspec(out)
    assert (spec.gmsa_name, spec.domain, spec.netbios_name) == ("WebApp01", "contoso.com", "CT")


@pytest.mark.parametrize(
    ("gmsa", "domain"), [("../etc", "contoso.com"), ("WebApp01", "bad_domain!")]
)
def test_credspec_refuses_invalid_names(
    capsys: pytest.CaptureFixture[str], gmsa: str, domain: str
) -> None:
    code = cli.main(["credspec", "--gmsa", gmsa, "--domain", domain])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("credfetcher: invalid credspec:")
    assert captured.out == ""


SUBCOMMANDS = {
    "add": "AddKerberosLease",
    "add-domainless": "AddNonDomainJoinedKerberosLease",
    "renew-domainless": "RenewNonDomainJoinedKerberosLease",
    "delete": "DeleteKerberosLease",
    "list": "ListLeases",
    "health": "HealthCheck",
    "mount-args": "KRB5CCNAME",
    "credspec": "credential spec",
    "add-arn": "AddKerberosArnLease",
    "renew-arn": "RenewKerberosArnLease",
}


@pytest.mark.parametrize(("command", "purpose"), sorted(SUBCOMMANDS.items()))
def test_subcommand_help_exits_0_and_says_what_it_does(
    capsys: pytest.CaptureFixture[str], command: str, purpose: str
) -> None:
    code = cli.main([command, "--help"])

    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"usage: credfetcher {command}")
    assert purpose in out
    assert "examples:" in out


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--help"])

    out = capsys.readouterr().out
    assert code == 0
    for command in SUBCOMMANDS:
        assert f"\n    {command}" in out
    assert "examples:" in out
    assert "CF_UNIX_DOMAIN_SOCKET_DIR" in out


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage:" in capsys.readouterr().err


# --------------------------------------------------------------------------- add-arn, renew-arn

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS keys in the environment only: no ~/.aws, no instance metadata."""
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)


@pytest.mark.usefixtures("aws_env")
def test_add_arn_sends_the_callers_aws_keys(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-1")
    arns = ["arn:aws:s3:::b/w1.json#task-1/w1", "arn:aws:s3:::b/w2.json#task-1/app"]
    result = run(capsys, daemon, "add-arn", "--region", "eu-west-1", *arns)
    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.KerberosArnLeaseRequest)
    assert list(request.credspec_arns) == arns
    assert (request.access_key_id, request.secret_access_key) == ("AKIDEXAMPLE", AWS_SECRET)
    assert (request.session_token, request.region) == ("token-1", "eu-west-1")
    assert result.out.splitlines() == [
        "lease task-1",
        f"  {daemon.krbdir / 'task-1' / 'w1'}  (arn:aws:s3:::b/w1.json)",
        f"  {daemon.krbdir / 'task-1' / 'app'}  (arn:aws:s3:::b/w2.json)",
    ]
    assert AWS_SECRET not in result.out + result.err


@pytest.mark.usefixtures("aws_env")
def test_renew_arn_takes_the_region_from_the_environment(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    result = run(capsys, daemon, "--json", "renew-arn")
    assert result.code == 0, result.err
    (request,) = result.requests
    assert isinstance(request, pb.RenewKerberosArnLeaseRequest)
    assert (request.region, request.session_token) == ("us-west-2", "")
    assert json.loads(result.out) == {"status": "successful"}


@pytest.mark.usefixtures("aws_env")
def test_arn_commands_need_credentials_and_a_region(
    daemon: Daemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_region = run(capsys, daemon, "renew-arn")
    assert no_region.code == cli.EXIT_ERROR
    assert "no AWS region" in no_region.err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    no_keys = run(capsys, daemon, "add-arn", "--region", "us-east-1", "arn:aws:s3:::b/k#l/d")
    assert no_keys.code == cli.EXIT_ERROR
    assert "no AWS credentials found" in no_keys.err
    assert no_keys.requests == []  # nothing was sent


@pytest.mark.usefixtures("aws_env")
def test_arn_errors_never_echo_the_secret_key(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.service.abort = (grpc.StatusCode.PERMISSION_DENIED, f"refused key {AWS_SECRET}")
    result = run(capsys, daemon, "renew-arn", "--region", "us-east-1")
    assert result.code == cli.EXIT_ERROR
    assert result.err.strip() == "credfetcher: PERMISSION_DENIED: refused key ***"
