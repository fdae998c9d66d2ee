"""credfetcher.aws without AWS: ARN parsing, secret parsing, error translation, missing extra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from credfetcher import aws
from credfetcher.errors import (
    AwsAccessDeniedError,
    AwsCredentialsError,
    AwsError,
    AwsNotFoundError,
    AwsSecretError,
    InvalidRequestError,
    UnsupportedError,
)
from credfetcher.leases import GmsaEntry, LeaseRecord, decode_metadata, encode_metadata
from credfetcher.server import status_code

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:gmsa-user-AbCdEf"


@pytest.mark.parametrize(
    ("text", "bucket", "key", "lease_id", "directory"),
    [
        (
            "arn:aws:s3:::credspecs/webapp01.json#task-1/webapp01",
            "credspecs",
            "webapp01.json",
            "task-1",
            "webapp01",
        ),
        (
            "arn:aws:s3:::my.bucket-01/a/b/c spec.json#0123456789abcdef0123/app_container",
            "my.bucket-01",
            "a/b/c spec.json",
            "0123456789abcdef0123",
            "app_container",
        ),
        ("arn:aws-cn:s3:::cn-bucket/k#L/D", "cn-bucket", "k", "L", "D"),
        ("arn:aws-us-gov:s3:::gov-bucket/k#L/D", "gov-bucket", "k", "L", "D"),
    ],
)
def test_parse_valid_arns(text: str, bucket: str, key: str, lease_id: str, directory: str) -> None:
    ref = aws.parse_credspec_arn(text)
    assert (ref.bucket, ref.key, ref.lease_id, ref.directory) == (bucket, key, lease_id, directory)
    assert ref.arn == text.split("#", maxsplit=1)[0]
    assert ref.location == f"s3://{bucket}/{key}"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("arn:aws:s3:::credspecs/webapp01.json", "exactly one '#'"),
        ("arn:aws:s3:::credspecs/a.json#L/D#x", "exactly one '#'"),
        ("arn:aws:s3:::credspecs/a.json#L", "two parts"),
        ("arn:aws:s3:::credspecs/a.json#L/D/E", "two parts"),
        ("arn:aws:s3:::credspecs/a.json#../D", "not a lease id"),
        ("arn:aws:s3:::credspecs/a.json#L/..", "directory name"),
        ("arn:aws:s3:::credspecs/a.json#/D", "not a lease id"),
        ("arn:aws:s3:::credspecs/a.json#L/", "directory name"),
        ("arn:aws:s3:::credspecs/a.json#L/a.b", "directory name"),
        ("arn:aws:s3:::credspecs/a.json#L/" + "d" * 129, "directory name"),
        ("arn:aws:s3:::credspecs/a.json#" + "l" * 65 + "/D", "not a lease id"),
        ("arn:aws:s3:::credspecs/a.json#L;rm/D", "not a lease id"),
        ("arn:aws:s3:::credspecs/a.json#L/D x", "directory name"),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/spec#L/D", "not an S3 object ARN"),
        ("arn:aws:s3:::credspecs#L/D", "not an S3 object ARN"),
        ("arn:aws:s3:::credspecs/#L/D", "not an S3 object ARN"),
        ("arn:aws:s3:us-east-1::credspecs/k#L/D", "not an S3 object ARN"),
        ("s3://credspecs/k#L/D", "not an S3 object ARN"),
        ("arn:aws:s3:::Bad_Bucket/k#L/D", "not an S3 bucket name"),
        ("arn:aws:s3:::ab/k#L/D", "not an S3 bucket name"),
        ("arn:aws:s3:::a..b/k#L/D", "not an S3 bucket name"),
        ("arn:aws:s3:::credspecs/k\n#L/D", "control characters"),
        ("arn:aws:s3:::credspecs/" + "k" * 1025 + "#L/D", "longer than 1024"),
        ("arn:aws:s3:::credspecs/" + "k" * 2100 + "#L/D", "longer than 2048"),
    ],
)
def test_parse_invalid_arns(text: str, why: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        aws.parse_credspec_arn(text)
    assert why in info.value.message
    assert status_code(info.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_identity_secret_shapes() -> None:
    good = {"username": "svc-gmsa", "password": "p\n@ss", "domainName": "corp.example.com"}
    ident = aws.parse_identity_secret(SECRET_ARN, json.dumps(good))
    assert ident.user.principal == "svc-gmsa@CORP.EXAMPLE.COM"
    assert ident.user.password == "p\n@ss"
    assert ident.distinguished_name is None
    assert "p\n@ss" not in repr(ident)
    with_dn = dict(good, distinguishedName="CN=svc-gmsa,CN=Users,DC=corp,DC=example,DC=com")
    assert aws.parse_identity_secret(SECRET_ARN, json.dumps(with_dn)).distinguished_name


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"username": "u", "password": "p"}', "no 'domainName'"),
        ('{"username": "", "password": "p", "domainName": "d.com"}', "no 'username'"),
        ('{"username": "u", "password": 5, "domainName": "d.com"}', "no 'password'"),
        (
            '{"username": "u", "password": "p", "domainName": "d.com", "distinguishedName": 1}',
            "distinguishedName",
        ),
        ('{"username": "a/b", "password": "p", "domainName": "d.com"}', "plain account"),
    ],
)
def test_identity_secret_errors(text: str, why: str) -> None:
    with pytest.raises(AwsSecretError) as info:
        aws.parse_identity_secret(SECRET_ARN, text)
    assert why in info.value.message
    assert SECRET_ARN in info.value.message
    assert status_code(info.value) == grpc.StatusCode.FAILED_PRECONDITION


def test_request_credentials_checked_and_hidden() -> None:
    creds = aws.AwsCredentials.from_request("AKIDEXAMPLE", "s3cr3t", "tok3n", "us-east-1")
    assert "s3cr3t" not in repr(creds)
    assert "tok3n" not in repr(creds)
    assert "AKIDEXAMPLE" not in repr(creds)
    with pytest.raises(InvalidRequestError, match="secret_access_key"):
        aws.AwsCredentials.from_request("AKID", "", "t", "us-east-1")
    with pytest.raises(InvalidRequestError, match="not an AWS region"):
        aws.AwsCredentials.from_request("AKID", "s", "t", "../etc")
    # Long-term keys have no session token; that is allowed.
    assert aws.AwsCredentials.from_request("AKID", "s", "", "eu-west-3").session_token == ""


def _client_error(code: str, message: str = "", operation: str = "GetObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


@pytest.mark.parametrize(
    ("exc", "cls", "status"),
    [
        # What S3 answers when ExpectedBucketOwner does not match the bucket's owner.
        (_client_error("AccessDenied", "Access Denied"), AwsAccessDeniedError,
         grpc.StatusCode.PERMISSION_DENIED),
        (_client_error("403", "Forbidden", "HeadObject"), AwsAccessDeniedError,
         grpc.StatusCode.PERMISSION_DENIED),
        (_client_error("NoSuchKey"), AwsNotFoundError, grpc.StatusCode.NOT_FOUND),
        (_client_error("404", "Not Found", "HeadObject"), AwsNotFoundError,
         grpc.StatusCode.NOT_FOUND),
        (_client_error("ResourceNotFoundException", "", "GetSecretValue"), AwsNotFoundError,
         grpc.StatusCode.NOT_FOUND),
        (_client_error("ExpiredToken"), AwsCredentialsError, grpc.StatusCode.UNAUTHENTICATED),
        (_client_error("SlowDown"), AwsError, grpc.StatusCode.UNAVAILABLE),
        (EndpointConnectionError(endpoint_url="https://s3.invalid"), AwsError,
         grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_botocore_errors_translated(exc: Exception, cls: type[AwsError],
                                    status: grpc.StatusCode) -> None:
    def boom() -> None:
        raise exc

    with pytest.raises(cls) as info:
        aws._call("S3 GetObject", "s3://credspecs/k", boom)
    assert type(info.value) is cls
    assert status_code(info.value) == status
    assert "s3://credspecs/k" in info.value.message
    assert info.value.__cause__ is exc


def test_missing_extra_is_unimplemented(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if boto3/botocore were absent.
    for name in ("botocore", "botocore.config", "botocore.session"):
        monkeypatch.setitem(sys.modules, name, None)
    creds = aws.AwsCredentials.from_request("AKID", "s", "t", "us-east-1")
    with pytest.raises(UnsupportedError) as info:
        aws.caller_account(creds, None)
    assert "credfetcher[aws]" in info.value.message
    assert status_code(info.value) == grpc.StatusCode.UNIMPLEMENTED


def test_metadata_keeps_the_callers_directory(tmp_path: Path) -> None:
    record = LeaseRecord(
        lease_id="task-1",
        entries=(
            GmsaEntry("webapp01", "corp.example.com", "CN=webapp01", "{}", SECRET_ARN, "app"),
            GmsaEntry("webapp02", "corp.example.com", "CN=webapp02", "{}", SECRET_ARN),
        ),
        domainless_user="aws-secrets-manager",
        kind="arn",
    )
    data = encode_metadata(record, tmp_path / "task-1")
    info = json.loads(data)["krb_ticket_info"]
    assert info[0]["krb_file_path"].endswith("/task-1/app/krb5cc")
    assert info[1]["krb_file_path"].endswith("/task-1/webapp02/krb5cc")
    back = decode_metadata(data)
    assert [e.directory for e in back.entries] == ["app", None]
    assert back.kind == "arn"
    # Metadata naming a directory outside the rules is refused (recovery moves it aside).
    info[0]["krb_file_path"] = "/k/task-1/../krb5cc"
    doc = json.loads(data)
    doc["krb_ticket_info"] = info
    with pytest.raises(InvalidRequestError):
        decode_metadata(json.dumps(doc).encode())


def test_aws_region_is_honoured_as_the_sdks_honour_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore reads only AWS_DEFAULT_REGION; AWS_REGION is what ECS and the other SDKs set."""
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert aws._client("secretsmanager", None, None, None).meta.region_name == "eu-west-3"
    # A region from the secret's ARN wins.
    assert aws._client("secretsmanager", None, None, "us-east-2").meta.region_name == "us-east-2"
