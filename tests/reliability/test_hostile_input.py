"""Hostile input through the real daemon's gRPC socket, and the blob decoder: nothing unhandled.

Every rejection must be a gRPC status that says what was wrong — never UNKNOWN or INTERNAL (an
exception nobody translated), never a hang — and nothing outside the daemon's own lease
directories may change. Strings cover traversal, NUL, over-long values, odd Unicode (RTL
override, combining marks, zero-width and full-width characters, lone surrogates through JSON
``\\ud800`` escapes: protobuf strings cannot carry them, a credspec's JSON can) and LDAP filter
metacharacters ``*()\\`` in gMSA names and user names. Example counts are modest so the suite
stays within CI's budget; ``database=None`` keeps hypothesis from writing into the work tree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.blob import parse_managed_password
from credfetcher.errors import BlobError
from credfetcher.files import PRIVATE_DIR
from credfetcher.keys import derive_keys
from credfetcher.keytab import keys_for_keytab
from credfetcher.server import status_code
from tests.conftest import REPO, TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.reliability.helpers import fd_count

BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}
SURROGATE = "\x00SURROGATE\x00"  # replaced by a JSON \ud800 escape after json.dumps

NASTY = [
    "",
    " ",
    ".",
    "..",
    "../..",
    "../../etc",
    "/etc/passwd",
    "..\\..\\windows",
    "a/b",
    "a\x00b",
    "\x00",
    "x" * 5000,
    "webapp01" + "\u202e",
    "\u202ewebapp01",
    "web\u0301app01",
    "e\u0301\u0302\u0303\u0304",
    "\u200bwebapp01",
    "\ufeffwebapp01",
    "\uff57\uff45\uff42\uff41\uff50\uff50\uff10\uff11",  # full-width "webapp01"
    "webapp01\n",
    "\t",
    "*",
    "webapp0*",
    "*)(objectClass=*",
    "webapp01)(|(cn=*",
    "(",
    ")",
    "\\",
    "\\2a",
    "web(app)",
    "\U0001f4a5",
    "credspec",
    "0123456789abcdef0123",
    "0123456789ABCDEF0123",
    "-x",
    "CON",
    SURROGATE,
    "web" + SURROGATE + "app",
]
hostile = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=20)),
)


def plain(text: str) -> str:
    """Protobuf strings cannot hold lone surrogates: the marker becomes U+FFFD there."""
    return text.replace(SURROGATE, "\ufffd")


@pytest.fixture(scope="module")
def daemon(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "outside.txt").write_text("must survive")
    with running_daemon(samba_dc, root / "d") as d:
        d.root.joinpath("sentinel").write_text("must survive")
        yield d


class Target:
    """The daemon under test, its stub and DC; its repr is short and holds no secret (hypothesis
    prints every argument of a failing example, and TestDC carries the user's password)."""

    def __init__(self, daemon: Daemon, stub: pb_grpc.CredentialsFetcherServiceStub) -> None:
        self.daemon = daemon
        self.stub = stub
        self.dc = daemon.dc

    def __repr__(self) -> str:
        return "<credfetcherd under test>"


@pytest.fixture(scope="module")
def target(daemon: Daemon) -> Iterator[Target]:
    with daemon.client() as stub:
        yield Target(daemon, stub)


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    try:
        return grpc.StatusCode.OK, "", call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", None


def assert_handled(code: grpc.StatusCode, details: str, what: object) -> None:
    assert code not in BAD, f"{what!r}: {code.name}: {details}"
    if code != grpc.StatusCode.OK:
        assert len(details) >= 10, f"{what!r}: {code.name} without a useful message: {details!r}"


HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- credspecs --------------------------------------------------------------------------------


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile)
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(hostile, inner, max_size=4)
        ),
        max_leaves=12,
    )


@st.composite
def credspecs(draw: st.DrawFn) -> str:
    domain = draw(st.one_of(st.just("credfetcher.test"), hostile, json_values()))
    name = draw(st.one_of(st.sampled_from(["webapp01", "webapp02$", "ouapp01"]), hostile))
    plugin = draw(
        st.one_of(
            st.none(),
            json_values(),
            st.builds(lambda arn: {"CredentialArn": arn}, json_values()),
            st.builds(lambda arn: json.dumps({"CredentialArn": arn}), hostile),
        )
    )
    doc: Any = {
        "CmsPlugins": ["ActiveDirectory"],
        "DomainJoinConfig": {"DnsName": domain, "NetBiosName": draw(hostile)},
        "ActiveDirectoryConfig": {
            "GroupManagedServiceAccounts": [{"Name": name, "Scope": draw(hostile)}],
            "HostAccountConfig": {"PluginInput": plugin},
        },
    }
    shape = draw(st.sampled_from(["spec", "spec", "spec", "random", "text", "deep"]))
    if shape == "random":
        doc = draw(json_values())
    elif shape == "deep":
        depth = draw(st.integers(900, 20000))
        return '{"DomainJoinConfig": ' + "[" * depth + "]" * depth + "}"
    if shape == "text":
        return draw(st.text(max_size=200))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    return text.replace(json.dumps(SURROGATE)[1:-1], "\\ud800")


@HYPOTHESIS
@given(spec=credspecs())
@example(spec='{"DomainJoinConfig": {"DnsName": "credfetcher.test"}, "ActiveDirectoryConfig": '
         '{"GroupManagedServiceAccounts": [{"Name": "web\\ud800app"}]}}')
@example(spec='{"DomainJoinConfig": {"DnsName": "credfetcher.test"}, "ActiveDirectoryConfig": '
         '{"GroupManagedServiceAccounts": [{"Name": "webapp01)(cn=*"}]}}')
@example(spec='{"DomainJoinConfig": {"DnsName": "cred\\ud800fetcher.test"}, '
         '"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "webapp01"}]}}')
def test_credspecs(spec: str, target: Target) -> None:
    stub, daemon = target.stub, target.daemon
    code, details, resp = outcome(
        lambda: stub.AddKerberosLease(
            pb.CreateKerberosLeaseRequest(credspec_contents=[spec]), timeout=30
        )
    )
    assert_handled(code, details, spec[:300])
    if code == grpc.StatusCode.OK:
        # Only a real gMSA name can make a lease: metacharacters never widen the LDAP search.
        (path,) = resp.created_kerberos_file_paths
        assert Path(path).parent.parent == daemon.krb_dir
        assert Path(path).name.lower().rstrip("$") in {"webapp01", "webapp02", "ouapp01"}
        stub.DeleteKerberosLease(pb.DeleteKerberosLeaseRequest(lease_id=resp.lease_id))


# -- every other request field ----------------------------------------------------------------


@HYPOTHESIS
@given(lease_id=hostile)
def test_lease_ids(lease_id: str, target: Target) -> None:
    stub = target.stub
    code, details, _ = outcome(
        lambda: stub.DeleteKerberosLease(
            pb.DeleteKerberosLeaseRequest(lease_id=plain(lease_id)), timeout=30
        )
    )
    assert code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, (code, details)
    assert_handled(code, details, lease_id)
    assert "lease" in details


@HYPOTHESIS
@given(username=hostile, password=hostile, domain=hostile, renew=st.booleans())
@example(username="*", password="x", domain="credfetcher.test", renew=False)
@example(username="nosuchuser", password="x", domain="example.invalid", renew=False)
@example(username="cf*)(cn=*", password="x", domain="credfetcher.test", renew=False)
@example(username="CREDFETCH\\*", password="x", domain="", renew=False)
@example(username="a\x00b", password="p\x00w", domain="credfetcher.test\x00", renew=True)
@example(username="x" * 5000, password="x" * 5000, domain="x" * 5000, renew=False)
def test_domainless_fields(
    username: str,
    password: str,
    domain: str,
    renew: bool,
    target: Target,
) -> None:
    stub, samba_dc = target.stub, target.dc
    # Never the real user with a wrong password: the shared DC must not lock it out.
    assume_not_real = username.strip().lower().split("@")[0].split("\\")[-1] != samba_dc.user
    if not assume_not_real:
        return
    user, pw, dom = plain(username), plain(password), plain(domain)
    if renew:
        code, details, _ = outcome(
            lambda: stub.RenewNonDomainJoinedKerberosLease(
                pb.RenewNonDomainJoinedKerberosLeaseRequest(username=user, password=pw, domain=dom),
                timeout=30,
            )
        )
    else:
        spec = json.dumps(
            {
                "DomainJoinConfig": {"DnsName": samba_dc.domain},
                "ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": "webapp01"}]},
            }
        )
        code, details, _ = outcome(
            lambda: stub.AddNonDomainJoinedKerberosLease(
                pb.CreateNonDomainJoinedKerberosLeaseRequest(
                    credspec_contents=[spec], username=user, password=pw, domain=dom
                ),
                timeout=30,
            )
        )
        assert code != grpc.StatusCode.OK, "a lease for a user who does not exist"
    assert_handled(code, details, (username, domain))
    if len(pw) >= 4 and pw not in user and pw not in dom and pw not in "credfetcher.test":
        assert pw not in details, "the password is echoed back"


@HYPOTHESIS
@given(
    uid=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    gid=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    mode=st.one_of(st.integers(0, 0o7777), st.integers(0, 2**32 - 1)),
)
def test_ownership_fields(
    uid: int | None,
    gid: int | None,
    mode: int,
    target: Target,
) -> None:
    stub, daemon = target.stub, target.daemon
    own = pb.FileOwnership(mode=mode)
    if uid is not None:
        own.uid = uid
    if gid is not None:
        own.gid = gid
    code, details, resp = outcome(
        lambda: stub.AddKerberosLease(
            pb.CreateKerberosLeaseRequest(
                credspec_contents=[daemon.credspec("webapp01")], ownership=own
            ),
            timeout=30,
        )
    )
    assert_handled(code, details, (uid, gid, oct(mode)))
    if code == grpc.StatusCode.OK:
        st_ = (Path(resp.created_kerberos_file_paths[0]) / "krb5cc").stat()
        assert st_.st_mode & 0o002 == 0, oct(st_.st_mode)
        assert st_.st_mode & 0o7777 == (mode or 0o600), (oct(mode), oct(st_.st_mode))
        assert uid is None or st_.st_uid == uid
        stub.DeleteKerberosLease(pb.DeleteKerberosLeaseRequest(lease_id=resp.lease_id))
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


@settings(HYPOTHESIS, max_examples=10)
@given(a=hostile, b=hostile, c=hostile, d=hostile)
def test_health_and_arn_fields(a: str, b: str, c: str, d: str, target: Target) -> None:
    stub = target.stub
    a, b, c, d = plain(a), plain(b), plain(c), plain(d)
    code, details, _resp = outcome(
        lambda: stub.HealthCheck(pb.HealthCheckRequest(service=a), timeout=10)
    )
    assert code == grpc.StatusCode.OK, details
    for call in (
        lambda: stub.AddKerberosArnLease(
            pb.KerberosArnLeaseRequest(
                credspec_arns=[a, b], access_key_id=b, secret_access_key=c, session_token=d,
                region=a,
            ),
            timeout=20,
        ),
        lambda: stub.RenewKerberosArnLease(
            pb.RenewKerberosArnLeaseRequest(
                access_key_id=a, secret_access_key=b, session_token=c, region=d
            ),
            timeout=20,
        ),
    ):
        code, details, _ = outcome(call)
        assert_handled(code, details, (a, b, c, d))


def test_invalid_utf8_on_the_wire(daemon: Daemon) -> None:
    """A string field that is not UTF-8 (proto3 forbids it) is refused as a bad argument."""
    # DeleteKerberosLeaseRequest{lease_id (1): b"\xff\xfe.."}, serialised by hand.
    raw = b"\x0a\x04\xff\xfe.."
    with daemon.channel() as ch:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = ch.unary_unary(
            "/credentialsfetcher.CredentialsFetcherService/DeleteKerberosLease",
            request_serializer=None,
            response_deserializer=None,
        )
        code, details, _ = outcome(lambda: call(raw, timeout=10))
    assert_handled(code, details, raw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "UTF-8" in details, details


def test_a_callers_unknown_realm_is_no_dc_outage(target: Target) -> None:
    """A caller naming a realm this host has no KDC for is the caller's problem: the request
    fails, but HealthCheck must not start reporting the domain controller unreachable (any
    caller could flip the host's health, and operators would chase a healthy DC)."""
    stub = target.stub
    assert stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status == "OK"
    code, details, _ = outcome(
        lambda: stub.AddNonDomainJoinedKerberosLease(
            pb.CreateNonDomainJoinedKerberosLeaseRequest(
                credspec_contents=[target.daemon.credspec("webapp01")],
                username="someone",
                password="not-a-real-password",
                domain="example.invalid",
            ),
            timeout=30,
        )
    )
    assert code not in BAD | {grpc.StatusCode.OK}, (code, details)
    assert "EXAMPLE.INVALID" in details
    status = stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status
    assert status == "OK", status


def test_nothing_outside_krbdir_changed_and_still_serving(target: Target) -> None:
    daemon, stub, samba_dc = target.daemon, target.stub, target.dc
    """Runs after the fuzzing above (file order): the tree around krbdir is as it was."""
    assert (daemon.root / "sentinel").read_text() == "must survive"
    assert (daemon.root.parent / "outside.txt").read_text() == "must survive"
    assert sorted(p.name for p in daemon.root.iterdir()) == sorted(
        ["krbdir", "socket", "daemon.log", "sentinel"]
    )
    # Nothing but the daemon's private staging directory, and that empty: no lease, no leftover.
    left = [p.name for p in daemon.krb_dir.iterdir()]
    assert left in ([], [PRIVATE_DIR]), f"a fuzzed request left something behind: {left}"
    assert not list((daemon.krb_dir / PRIVATE_DIR).glob("*")), "a staged file was left behind"
    assert daemon.proc is not None
    assert fd_count(daemon.proc.pid) < 200
    lease = daemon.add(samba_dc.gmsas[0])
    stub.DeleteKerberosLease(pb.DeleteKerberosLeaseRequest(lease_id=lease.lease_id))
    assert "Traceback" not in daemon.log(), daemon.log()[-3000:]
    # A caller's bad request is not a DC failure: HealthCheck still tells the truth.
    status = stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status
    assert status == "OK", status


# -- the blob decoder -------------------------------------------------------------------------

SAMBA_BLOB = base64.b64decode((REPO / "tests" / "data" / "samba-webapp01.blob.b64").read_text())


@st.composite
def mutated_blobs(draw: st.DrawFn) -> bytes:
    blob = bytearray(SAMBA_BLOB)
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "header", "truncate", "extend"]))
        if action == "flip" and blob:
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
        elif action == "header" and len(blob) >= 16:
            pos = draw(st.integers(0, 7)) * 2
            blob[pos : pos + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
        elif action == "truncate":
            del blob[draw(st.integers(0, len(blob))) :]
        else:
            blob += draw(st.binary(max_size=64))
        if draw(st.booleans()) and len(blob) >= 8:  # keep Length consistent half the time
            blob[4:8] = len(blob).to_bytes(4, "little")
    return bytes(blob)


@settings(max_examples=600, deadline=None, database=None)
@given(blob=st.one_of(mutated_blobs(), st.binary(max_size=400)))
def test_blob_decoder(blob: bytes) -> None:
    """Decoding, then deriving keys from what decoded: BlobError or values, nothing else."""
    error: BlobError | None = None
    try:
        mp = parse_managed_password(blob)
    except BlobError as exc:
        error = exc
    if error is not None:
        assert error.message.startswith("managed password blob")
        assert status_code(error) == grpc.StatusCode.DATA_LOSS
        return
    assert len(mp.current) % 2 == 0
    assert mp.current
    derive_keys(mp.current, "CREDFETCHER.TEST", "webapp01", 1)
    keys_for_keytab(mp, "CREDFETCHER.TEST", "webapp01", 2, rc4=False)


