"""ARN leases and CF_AWS_SM_SECRET_NAME: boto3 against moto's server, Kerberos against the real DC.

moto runs in server mode (a real HTTP endpoint on 127.0.0.1) for S3, STS and Secrets Manager; the
daemon reaches it through CF_AWS_ENDPOINT_URL. moto (5.2.5) ignores S3's ExpectedBucketOwner, so
tests/integration/s3_endpoint.py puts S3's bucket-owner condition in front of it: a request naming
an account that does not own the bucket gets S3's 403, as it would from AWS. The bucket here is
owned by moto's default account; credentials of an assumed role in another account read it as a
"sniped" bucket would be read, and must be refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from botocore.exceptions import ClientError

from credfetcher import aws
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.credspec import make_credspec
from credfetcher.errors import AwsAccessDeniedError, InvalidRequestError
from credfetcher.tickets import read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.integration.s3_endpoint import S3Endpoint
from tests.integration.test_daemon import assert_valid_ccache, tree_digest

BUCKET = "credspecs"
REGION = "us-east-1"
# moto's default account: what STS GetCallerIdentity returns for any plain access key.
OWNER_ACCOUNT = "123456789012"
# Another account: moto's STS gives an assumed role there keys that belong to it.
OTHER_ACCOUNT = "111111111111"
KEYS = {"aws_access_key_id": "AKIDMOTOTEST", "aws_secret_access_key": "moto-secret-key"}
SESSION_TOKEN = "moto-session-token"


@dataclass(frozen=True)
class Moto:
    url: str
    secret_arn: str
    missing_secret_arn: str
    endpoint: S3Endpoint

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **KEYS)

    def arn(self, key: str, lease_id: str, directory: str) -> str:
        return f"arn:aws:s3:::{BUCKET}/{key}#{lease_id}/{directory}"

    def request(self, *arns: str) -> pb.KerberosArnLeaseRequest:
        return pb.KerberosArnLeaseRequest(
            credspec_arns=list(arns),
            access_key_id=KEYS["aws_access_key_id"],
            secret_access_key=KEYS["aws_secret_access_key"],
            session_token=SESSION_TOKEN,
            region=REGION,
        )

    def other_account_keys(self) -> dict[str, str]:
        """Temporary keys of a role in OTHER_ACCOUNT, as an ECS task in that account has."""
        role = self.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/task-execution",
            RoleSessionName="cf-test",
        )["Credentials"]
        return {
            "access_key_id": role["AccessKeyId"],
            "secret_access_key": role["SecretAccessKey"],
            "session_token": role["SessionToken"],
        }

    def renew_request(self) -> pb.RenewKerberosArnLeaseRequest:
        return pb.RenewKerberosArnLeaseRequest(
            access_key_id=KEYS["aws_access_key_id"],
            secret_access_key=KEYS["aws_secret_access_key"],
            session_token=SESSION_TOKEN,
            region=REGION,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def domainless_credspec(dc: TestDC, gmsa: str, secret_arn: str) -> str:
    doc = json.loads(make_credspec(gmsa, dc.domain, dc.netbios))
    doc["ActiveDirectoryConfig"]["HostAccountConfig"] = {
        "PortableCcgVersion": "1",
        "PluginGUID": "{859E1386-BDB4-49E8-85C7-3070B13920E1}",
        "PluginInput": {"CredentialArn": secret_arn},
    }
    return json.dumps(doc)


@pytest.fixture(scope="module")
def moto(samba_dc: TestDC) -> Iterator[Moto]:
    # werkzeug logs every request moto serves at INFO; keep the test output readable.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = S3Endpoint(_free_port())
    server.start()
    try:
        url = server.url
        sm = boto3.client("secretsmanager", endpoint_url=url, region_name=REGION, **KEYS)
        secret_arn = sm.create_secret(
            Name="gmsa-reader",
            SecretString=json.dumps(
                {
                    "username": samba_dc.user,
                    "password": samba_dc.user_password,
                    "domainName": samba_dc.domain,
                }
            ),
        )["ARN"]
        missing = f"arn:aws:secretsmanager:{REGION}:{OWNER_ACCOUNT}:secret:no-such-secret-AbCdEf"
        s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, **KEYS)
        s3.create_bucket(Bucket=BUCKET)
        for gmsa in samba_dc.gmsas:
            s3.put_object(
                Bucket=BUCKET,
                Key=f"{gmsa}.json",
                Body=domainless_credspec(samba_dc, gmsa, secret_arn).encode(),
            )
        big = json.loads(domainless_credspec(samba_dc, samba_dc.gmsas[0], secret_arn))
        big["Padding"] = "x" * 4200
        s3.put_object(Bucket=BUCKET, Key="oversized.json", Body=json.dumps(big).encode())
        s3.put_object(
            Bucket=BUCKET,
            Key="missing-secret.json",
            Body=domainless_credspec(samba_dc, samba_dc.gmsas[0], missing).encode(),
        )
        s3.put_object(
            Bucket=BUCKET,
            Key="no-secret.json",
            Body=make_credspec(samba_dc.gmsas[0], samba_dc.domain).encode(),
        )
        yield Moto(url=url, secret_arn=secret_arn, missing_secret_arn=missing, endpoint=server)
    finally:
        server.stop()


@pytest.fixture
def daemon(samba_dc: TestDC, moto: Moto, tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(samba_dc, tmp_path / "d", CF_AWS_ENDPOINT_URL=moto.url) as d:
        yield d


def test_arn_lease_for_two_gmsas_renew_and_restart(daemon: Daemon, moto: Moto) -> None:
    dc = daemon.dc
    g1, g2 = dc.gmsas[:2]
    # The second directory is the caller's own name, not the gMSA's (credentials-fetcher's rule).
    arns = [moto.arn(f"{g1}.json", "task-0001", g1), moto.arn(f"{g2}.json", "task-0001", "app")]
    with daemon.client() as stub:
        resp = stub.AddKerberosArnLease(moto.request(*arns), timeout=60)
    lease = daemon.krb_dir / "task-0001"
    assert resp.lease_id == "task-0001"
    mapping = resp.krb_ticket_response_map
    assert [(m.credspec_arns, m.created_kerberos_file_paths) for m in mapping] == [
        (f"arn:aws:s3:::{BUCKET}/{g1}.json", str(lease / g1)),
        (f"arn:aws:s3:::{BUCKET}/{g2}.json", str(lease / "app")),
    ]
    ccaches = [lease / g1 / "krb5cc", lease / "app" / "krb5cc"]
    for gmsa, ccache in zip((g1, g2), ccaches, strict=True):
        assert_valid_ccache(daemon, ccache, gmsa)
    meta = json.loads((lease / "task-0001_metadata.json").read_text())
    assert [i["credential_arn"] for i in meta["krb_ticket_info"]] == [moto.secret_arn] * 2
    assert meta["credfetcher"]["kind"] == "arn"

    def snapshot() -> list[tuple[int, int]]:
        out = []
        for c in ccaches:
            info = read_ticket_info(c)
            assert info is not None
            out.append((c.stat().st_ino, info.endtime))
        return out

    before = snapshot()
    time.sleep(1.5)  # ticket times have one-second resolution
    with daemon.client() as stub:
        renewed = stub.RenewKerberosArnLease(moto.renew_request(), timeout=60)
    assert renewed.status == "successful"
    after = snapshot()
    for (_, end0), (_, end1) in zip(before, after, strict=True):
        assert end1 > end0  # a new ticket (the file is replaced by rename: inodes get reused)
    for gmsa, ccache in zip((g1, g2), ccaches, strict=True):
        assert_valid_ccache(daemon, ccache, gmsa)

    # After a restart the secrets are gone from memory: the lease waits for the next renewal.
    daemon.stop()
    daemon.start()
    with daemon.client() as stub:
        listed = stub.ListLeases(pb.ListLeasesRequest())
        [view] = [v for v in listed.leases if v.lease_id == "task-0001"]
        assert sorted(t.krb_file_path for t in view.tickets) == sorted(
            str(c.parent) for c in ccaches
        )
        before = snapshot()
        time.sleep(1.5)
        assert stub.RenewKerberosArnLease(moto.renew_request(), timeout=60).status == "successful"
        listed = stub.ListLeases(pb.ListLeasesRequest())
    [view] = [v for v in listed.leases if v.lease_id == "task-0001"]
    assert view.state == "active"
    assert all(a[1] > b[1] for a, b in zip(snapshot(), before, strict=True))

    # Nothing secret in what the daemon writes.
    assert dc.user_password not in daemon.log()
    assert KEYS["aws_secret_access_key"] not in daemon.log()
    assert SESSION_TOKEN not in daemon.log()
    assert dc.user_password not in (lease / "task-0001_metadata.json").read_text()


FAILURES = {
    "no lease part": (["{bucket}/{g}.json"], grpc.StatusCode.INVALID_ARGUMENT, "exactly one '#'"),
    "lease id is ..": (
        ["{bucket}/{g}.json#../x"], grpc.StatusCode.INVALID_ARGUMENT, "not a lease id"
    ),
    "two lease ids": (
        ["{bucket}/{g}.json#lease-a/a", "{bucket}/{g2}.json#lease-b/b"],
        grpc.StatusCode.INVALID_ARGUMENT,
        "same lease id",
    ),
    "oversized credspec": (
        ["{bucket}/oversized.json#lease-c/a"],
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 4000 are accepted",
    ),
    "missing secret": (
        ["{bucket}/{g2}.json#lease-d/a", "{bucket}/missing-secret.json#lease-d/b"],
        grpc.StatusCode.NOT_FOUND,
        "no-such-secret-AbCdEf",
    ),
    "credspec without CredentialArn": (
        ["{bucket}/no-secret.json#lease-e/a"],
        grpc.StatusCode.INVALID_ARGUMENT,
        "CredentialArn",
    ),
    "missing object": (
        ["{bucket}/nothing-here.json#lease-f/a"],
        grpc.StatusCode.NOT_FOUND,
        "s3://credspecs/nothing-here.json",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_arn_failures_are_clear_and_leave_nothing(daemon: Daemon, moto: Moto, case: str) -> None:
    templates, code, text = FAILURES[case]
    dc = daemon.dc
    arns = [
        "arn:aws:s3:::"
        + t.format(bucket=BUCKET, g=dc.gmsas[0], g2=dc.gmsas[1])
        for t in templates
    ]
    daemon.add(dc.gmsas[2])  # an existing lease, which must stay byte-identical
    before = tree_digest(daemon.krb_dir)
    with daemon.client() as stub, pytest.raises(grpc.RpcError) as info:
        stub.AddKerberosArnLease(moto.request(*arns), timeout=60)
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or "")
    assert tree_digest(daemon.krb_dir) == before


def test_renew_arn_needs_credentials(daemon: Daemon) -> None:
    with daemon.client() as stub, pytest.raises(grpc.RpcError) as info:
        stub.RenewKerberosArnLease(pb.RenewKerberosArnLeaseRequest(region=REGION), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "access_key_id" in (info.value.details() or "")


def test_the_endpoint_enforces_the_bucket_owner_condition(moto: Moto) -> None:
    """The S3 the tests use refuses a wrong owner, and serves anyone who names none.

    The second half is why the header matters: without it, another account's keys read the object
    (as anyone may read a bucket an attacker re-created after its owner deleted it).
    """
    s3 = moto.client("s3")
    key = "no-secret.json"
    assert s3.get_object(Bucket=BUCKET, Key=key, ExpectedBucketOwner=OWNER_ACCOUNT)["Body"].read()
    for owner, status, code in ((OTHER_ACCOUNT, 403, "AccessDenied"),
                                ("12345", 400, "InvalidBucketOwnerAWSAccountID")):
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=BUCKET, Key=key, ExpectedBucketOwner=owner)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert info.value.response["Error"]["Code"] == code
    other = boto3.client(
        "s3", endpoint_url=moto.url, region_name=REGION,
        **{f"aws_{k}": v for k, v in moto.other_account_keys().items()},
    )
    assert other.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _spy_s3_owner_headers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    seen: list[tuple[str, str | None]] = []
    make_client = aws._client

    def spying_client(*args: Any, **kwargs: Any) -> Any:
        client = make_client(*args, **kwargs)

        def record(request: Any, **_: Any) -> None:
            owner = request.headers.get("x-amz-expected-bucket-owner")
            seen.append((request.method, owner.decode() if isinstance(owner, bytes) else owner))

        client.meta.events.register("before-send.s3", record)
        return client

    monkeypatch.setattr(aws, "_client", spying_client)
    return seen


def test_expected_bucket_owner_is_the_callers_account(moto: Moto, samba_dc: TestDC,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Both S3 calls name the account STS reports for the caller as the bucket owner."""
    seen = _spy_s3_owner_headers(monkeypatch)
    creds = aws.AwsCredentials.from_request(
        KEYS["aws_access_key_id"], KEYS["aws_secret_access_key"], SESSION_TOKEN, REGION
    )
    ref = aws.parse_credspec_arn(moto.arn(f"{samba_dc.gmsas[0]}.json", "lease-x", "x"))
    assert samba_dc.gmsas[0] in aws.fetch_credspec(ref, creds, endpoint_url=moto.url)
    assert seen == [("HEAD", OWNER_ACCOUNT), ("GET", OWNER_ACCOUNT)]
    with pytest.raises(InvalidRequestError, match="4000"):
        aws.fetch_credspec(
            aws.parse_credspec_arn(moto.arn("oversized.json", "lease-x", "x")),
            creds,
            endpoint_url=moto.url,
        )

    seen.clear()
    keys = moto.other_account_keys()
    other = aws.AwsCredentials.from_request(
        keys["access_key_id"], keys["secret_access_key"], keys["session_token"], REGION
    )
    with pytest.raises(AwsAccessDeniedError, match=OTHER_ACCOUNT):
        aws.fetch_credspec(ref, other, endpoint_url=moto.url)
    assert seen == [("HEAD", OTHER_ACCOUNT)]  # refused before a byte of the object was read


def test_wrong_bucket_owner_is_refused_and_leaves_nothing(daemon: Daemon, moto: Moto) -> None:
    """A task in another account asks for a credspec in a bucket it does not own."""
    dc = daemon.dc
    daemon.add(dc.gmsas[2])  # an existing lease, which must stay byte-identical
    before = tree_digest(daemon.krb_dir)
    refused = moto.endpoint.condition.refused
    request = moto.request(moto.arn(f"{dc.gmsas[0]}.json", "task-0002", dc.gmsas[0]))
    keys = moto.other_account_keys()
    request.access_key_id = keys["access_key_id"]
    request.secret_access_key = keys["secret_access_key"]
    request.session_token = keys["session_token"]
    with daemon.client() as stub, pytest.raises(grpc.RpcError) as info:
        stub.AddKerberosArnLease(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    details = info.value.details() or ""
    assert f"s3://{BUCKET}/{dc.gmsas[0]}.json" in details
    assert OTHER_ACCOUNT in details
    assert "owned by account" in details
    assert moto.endpoint.condition.refused == refused + 1
    assert tree_digest(daemon.krb_dir) == before
    assert keys["secret_access_key"] not in daemon.log()


def secret_daemon_env(moto: Moto, tmp_path: Path, secret_name: str) -> dict[str, str]:
    """A daemon whose domainless identity is CF_AWS_SM_SECRET_NAME, read with its own keys."""
    return {
        "CF_AWS_ENDPOINT_URL": moto.url,
        "CF_AWS_SM_SECRET_NAME": secret_name,
        "AWS_ACCESS_KEY_ID": KEYS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }


def test_daemon_wide_secret_identity(samba_dc: TestDC, moto: Moto, tmp_path: Path) -> None:
    """CF_AWS_SM_SECRET_NAME: AddKerberosLease reads gMSAs as the secret's user, also after a
    restart (the daemon re-reads the secret with its own AWS credentials)."""
    env = secret_daemon_env(moto, tmp_path, "gmsa-reader")
    with running_daemon(samba_dc, tmp_path / "d", **env) as daemon:
        resp = daemon.add(samba_dc.gmsas[0])
        ccache = Path(resp.created_kerberos_file_paths[0]) / "krb5cc"
        assert_valid_ccache(daemon, ccache, samba_dc.gmsas[0])
        meta_path = daemon.krb_dir / resp.lease_id / f"{resp.lease_id}_metadata.json"
        meta = json.loads(meta_path.read_text())
        assert meta["credfetcher"]["kind"] == "aws-secret"
        assert meta["krb_ticket_info"][0]["domainless_user"].lower() == (
            f"{samba_dc.user}@{samba_dc.realm}".lower()
        )
        daemon.stop()
        daemon.start()
        with daemon.client() as stub:
            listed = stub.ListLeases(pb.ListLeasesRequest())
        [view] = [v for v in listed.leases if v.lease_id == resp.lease_id]
        assert view.state == "active", view
        assert samba_dc.user_password not in daemon.log()


def test_arn_lease_meeting_a_dead_dc_shows_in_health(
    samba_dc: TestDC, moto: Moto, tmp_path: Path
) -> None:
    """An ARN lease that finds no DC answering fails UNAVAILABLE, and HealthCheck says why,
    as it does for AddKerberosLease."""
    closed = _free_port()  # nothing listens on it
    with running_daemon(
        samba_dc, tmp_path / "d", CF_AWS_ENDPOINT_URL=moto.url, CF_LDAP_TIMEOUT="2",
        CF_DOMAIN_CONTROLLERS=f"ldap://{samba_dc.dc_fqdn}:{closed}",
    ) as daemon:
        gmsa = samba_dc.gmsas[1]
        with daemon.client() as stub:
            with pytest.raises(grpc.RpcError) as info:
                stub.AddKerberosArnLease(
                    moto.request(moto.arn(f"{gmsa}.json", "task-dead-dc", gmsa)), timeout=60
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert gmsa in (info.value.details() or "")
            status = stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status
        assert status.startswith("domain controller unreachable"), status
        assert str(closed) in status
        assert not any(daemon.krb_dir.glob("task-dead-dc*"))


def _lease_user(daemon: Daemon, lease_id: str) -> str:
    meta = json.loads((daemon.krb_dir / lease_id / f"{lease_id}_metadata.json").read_text())
    user: str = meta["krb_ticket_info"][0]["domainless_user"]
    return user.lower()


def test_daemon_wide_identity_follows_a_rotated_secret(
    samba_dc: TestDC, moto: Moto, tmp_path: Path
) -> None:
    """The secret behind CF_AWS_SM_SECRET_NAME now names another user: within the refresh
    interval its leases are renewed as that user and say so, and new leases use it."""
    name = "gmsa-reader-rotating"
    sm = moto.client("secretsmanager")
    first = {"username": samba_dc.user, "password": samba_dc.user_password,
             "domainName": samba_dc.domain}
    sm.create_secret(Name=name, SecretString=json.dumps(first))
    env = secret_daemon_env(moto, tmp_path, name)
    with running_daemon(samba_dc, tmp_path / "d", CF_AWS_SM_REFRESH="1", **env) as daemon:
        gmsa = samba_dc.gmsas[0]
        lease = daemon.add(gmsa).lease_id
        ccache = daemon.krb_dir / lease / gmsa / "krb5cc"
        assert _lease_user(daemon, lease) == f"{samba_dc.user}@{samba_dc.realm}".lower()
        inode = ccache.stat().st_ino

        second = {"username": samba_dc.user2, "password": samba_dc.user2_password,
                  "domainName": samba_dc.domain}
        sm.put_secret_value(SecretId=name, SecretString=json.dumps(second))
        rotated = f"{samba_dc.user2}@{samba_dc.realm}".lower()
        deadline = time.monotonic() + 30
        while _lease_user(daemon, lease) != rotated:
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.2)
        # Renewed at once as the new user (its tickets were hours from due): a new file.
        while ccache.stat().st_ino == inode:
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.2)
        assert_valid_ccache(daemon, ccache, gmsa)

        other = daemon.add(samba_dc.gmsas[1]).lease_id
        assert _lease_user(daemon, other) == rotated
        assert samba_dc.user2_password not in daemon.log()
        assert samba_dc.user_password not in daemon.log()


def _cli_aws_env(tmp_path: Path, **keys: str) -> dict[str, str]:
    """The CLI's environment: only the AWS keys given; no ~/.aws, no instance metadata."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        **keys,
    )
    return env


def test_cli_add_arn_and_renew_arn(daemon: Daemon, moto: Moto, tmp_path: Path) -> None:
    """``credfetcher add-arn`` / ``renew-arn`` send the caller's own AWS keys (botocore's chain)."""
    dc = daemon.dc
    g1, g2 = dc.gmsas[:2]
    arns = [moto.arn(f"{g1}.json", "task-cli", g1), moto.arn(f"{g2}.json", "task-cli", "app")]
    env = _cli_aws_env(
        tmp_path,
        AWS_ACCESS_KEY_ID=KEYS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=KEYS["aws_secret_access_key"],
        AWS_SESSION_TOKEN=SESSION_TOKEN,
    )
    added = daemon.cli("--json", "add-arn", "--region", REGION, *arns, env=env)
    assert added.returncode == 0, added.stderr
    out = json.loads(added.stdout)
    assert out["lease_id"] == "task-cli"
    paths = {m["credspec_arns"]: Path(m["created_kerberos_file_paths"])
             for m in out["krb_ticket_response_map"]}
    assert paths == {
        a.split("#")[0]: daemon.krb_dir / "task-cli" / d
        for a, d in zip(arns, (g1, "app"), strict=True)
    }
    for arn, gmsa in zip(arns, (g1, g2), strict=True):
        assert_valid_ccache(daemon, paths[arn.split("#")[0]] / "krb5cc", gmsa)

    renewed = daemon.cli("renew-arn", "--region", REGION, env=env)
    assert renewed.returncode == 0, renewed.stderr
    assert "successful" in renewed.stdout

    # Another account's keys: the daemon's refusal is shown; their secret key is never printed.
    other = moto.other_account_keys()
    refused = daemon.cli(
        "add-arn", "--region", REGION, moto.arn(f"{g1}.json", "task-cli2", g1),
        env=_cli_aws_env(
            tmp_path,
            AWS_ACCESS_KEY_ID=other["access_key_id"],
            AWS_SECRET_ACCESS_KEY=other["secret_access_key"],
            AWS_SESSION_TOKEN=other["session_token"],
        ),
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("credfetcher: PERMISSION_DENIED:"), refused.stderr
    assert OTHER_ACCOUNT in refused.stderr
    assert other["secret_access_key"] not in refused.stdout + refused.stderr
    assert not (daemon.krb_dir / "task-cli2").exists()
    nothing = daemon.cli("add-arn", arns[0].replace("task-cli", "task-cli3"),
                         env=_cli_aws_env(tmp_path))
    assert nothing.returncode == 2
    assert "no AWS credentials found" in nothing.stderr
    assert not (daemon.krb_dir / "task-cli3").exists()


def test_an_unreadable_daemon_wide_secret_shows_in_health_until_it_appears(
    samba_dc: TestDC, moto: Moto, tmp_path: Path
) -> None:
    """CF_AWS_SM_SECRET_NAME names a secret that does not exist yet: every Add would fail, so
    HealthCheck says why; once the secret is created the daemon reads it and is healthy."""
    name = "gmsa-reader-later"
    env = secret_daemon_env(moto, tmp_path, name)
    with running_daemon(samba_dc, tmp_path / "d", CF_AWS_SM_REFRESH="1", **env) as daemon:
        with daemon.client() as stub:
            status = stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status
            assert status.startswith("cannot read CF_AWS_SM_SECRET_NAME"), status
            assert name in status
            with pytest.raises(grpc.RpcError) as info:
                daemon.add(samba_dc.gmsas[0])
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
            assert name in (info.value.details() or "")

            moto.client("secretsmanager").create_secret(
                Name=name,
                SecretString=json.dumps({"username": samba_dc.user,
                                         "password": samba_dc.user_password,
                                         "domainName": samba_dc.domain}),
            )
            deadline = time.monotonic() + 30
            while (status := stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status) != "OK":
                assert time.monotonic() < deadline, status
                time.sleep(0.2)
        lease = daemon.add(samba_dc.gmsas[0]).lease_id
        assert _lease_user(daemon, lease) == f"{samba_dc.user}@{samba_dc.realm}".lower()


def test_a_secret_with_a_wrong_password_breaks_no_lease(
    samba_dc: TestDC, moto: Moto, tmp_path: Path
) -> None:
    """The secret behind CF_AWS_SM_SECRET_NAME is changed to a wrong password: its leases keep
    the identity that works (proved first, issue 15), and once the secret is fixed they move."""
    name = "gmsa-reader-mistyped"
    sm = moto.client("secretsmanager")
    good = {"username": samba_dc.user, "password": samba_dc.user_password,
            "domainName": samba_dc.domain}
    sm.create_secret(Name=name, SecretString=json.dumps(good))
    env = secret_daemon_env(moto, tmp_path, name)
    with running_daemon(
        samba_dc, tmp_path / "d", CF_AWS_SM_REFRESH="1", CF_TICKET_LIFETIME="20",
        CF_RENEW_LIFETIME="3600", **env,
    ) as daemon:
        gmsa = samba_dc.gmsas[2]
        lease = daemon.add(gmsa).lease_id
        ccache = daemon.krb_dir / lease / gmsa / "krb5cc"

        wrong = dict(good, password="Not-The-Password-1")
        sm.put_secret_value(SecretId=name, SecretString=json.dumps(wrong))
        deadline = time.monotonic() + 30
        while "cannot be used" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.2)
        before = read_ticket_info(ccache)
        assert before is not None
        time.sleep(15)  # 20 s tickets: at least one renewal, with the identity that works
        after = read_ticket_info(ccache)
        assert after is not None
        assert after.endtime > before.endtime, daemon.log()[-2000:]
        with daemon.client() as stub:
            [view] = stub.ListLeases(pb.ListLeasesRequest(), timeout=10).leases
        assert view.state == "active", view

        fixed = {"username": samba_dc.user2, "password": samba_dc.user2_password,
                 "domainName": samba_dc.domain}
        sm.put_secret_value(SecretId=name, SecretString=json.dumps(fixed))
        rotated = f"{samba_dc.user2}@{samba_dc.realm}".lower()
        deadline = time.monotonic() + 30
        while _lease_user(daemon, lease) != rotated:
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            time.sleep(0.2)
        assert "Not-The-Password-1" not in daemon.log()
