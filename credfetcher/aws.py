"""AWS: credspecs in S3 and domainless identities in Secrets Manager (ECS / Fargate "ARN mode").

Needs the optional extra ``credfetcher[aws]`` (boto3). boto3 is imported on first use, so the
daemon runs without it; an ARN request then fails with :class:`UnsupportedError` (UNIMPLEMENTED)
naming the extra.

ARN form, as credentials-fetcher accepts it (``AddKerberosArnLease``)::

    arn:aws:s3:::<bucket>/<key>#<lease_id>/<dir>

The part before ``#`` is the S3 object holding the credspec. credentials-fetcher splits the
fragment on ``/`` into exactly two parts, uses the first as the lease id and creates the ccache
in ``<krbdir>/<lease_id>/<dir>/krb5cc``: ``<dir>`` is the name of the directory the caller
bind-mounts, chosen by the caller, and need not be the gMSA's name. credfetcher does the same,
and validates both parts as path components (see :func:`parse_credspec_arn`).

Reads, per ARN: STS ``GetCallerIdentity`` (the caller's account), S3 ``HeadObject`` (size at most
:data:`MAX_S3_CREDSPEC_BYTES`, as credentials-fetcher), S3 ``GetObject`` — both with
``ExpectedBucketOwner`` set to that account, so a credspec planted in somebody else's bucket of
the same name is refused by S3 (403) — then Secrets Manager ``GetSecretValue`` on the credspec's
``HostAccountConfig.PluginInput.CredentialArn``: a JSON object with ``username``, ``password``,
``domainName`` and optionally ``distinguishedName``.

Request credentials are used for the one call they came with: a fresh botocore session and
clients per call, nothing cached, never logged (botocore's own loggers are held at WARNING
because at DEBUG they print signed headers and response bodies, which carry the session token
and the secret). botocore errors are translated here, at the boundary, into
:mod:`credfetcher.errors` with ``raise ... from``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from credfetcher.errors import (
    AwsAccessDeniedError,
    AwsCredentialsError,
    AwsError,
    AwsNotFoundError,
    AwsSecretError,
    CredfetcherError,
    InvalidRequestError,
    UnsupportedError,
)
from credfetcher.identity import UserIdentity
from credfetcher.leases import validate_dir_name, validate_lease_id

if TYPE_CHECKING:  # pragma: no cover
    from botocore.client import BaseClient

__all__ = [
    "MAX_S3_CREDSPEC_BYTES",
    "AwsCredentials",
    "CredspecArn",
    "SecretIdentity",
    "fetch_credspec",
    "parse_credspec_arn",
    "parse_identity_secret",
    "read_identity_secret",
]

log = logging.getLogger(__name__)

# credentials-fetcher's limit for a credspec read from S3.
MAX_S3_CREDSPEC_BYTES = 4000
MAX_ARN_LENGTH = 2048
MAX_SECRET_BYTES = 64 * 1024

_S3_ARN = re.compile(r"^arn:(aws|aws-cn|aws-us-gov):s3:::([^/]+)/(.+)$")
# S3 bucket naming rules: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# S3 / STS / Secrets Manager error codes, grouped by what they mean to the caller.
_DENIED = {"AccessDenied", "AccessDeniedException", "403", "Forbidden", "AllAccessDisabled"}
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "ResourceNotFoundException"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "InvalidToken",
}

_CONNECT_TIMEOUT = 5.0
_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class CredspecArn:
    """One entry of ``KerberosArnLeaseRequest.credspec_arns``, parsed."""

    arn: str
    """The S3 object's ARN (without the ``#`` fragment): what the response names."""
    bucket: str
    key: str
    lease_id: str
    directory: str
    """The directory under the lease that holds this gMSA's ``krb5cc``."""

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class AwsCredentials:
    """Credentials handed in with one request; held in memory for that call only."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    region: str

    @classmethod
    def from_request(
        cls, access_key_id: str, secret_access_key: str, session_token: str, region: str
    ) -> AwsCredentials:
        missing = [
            name
            for name, value in (
                ("access_key_id", access_key_id),
                ("secret_access_key", secret_access_key),
                ("region", region),
            )
            if not value
        ]
        if missing:
            raise InvalidRequestError(f"AWS credentials incomplete: {', '.join(missing)} empty")
        if not re.match(r"^[a-z]{2}(-[a-z0-9]+)+-\d$", region):
            raise InvalidRequestError(f"region {region[:40]!r} is not an AWS region name")
        if len(access_key_id) > 128 or len(secret_access_key) > 256 or len(session_token) > 8192:
            raise InvalidRequestError("AWS credentials are too long")
        return cls(access_key_id, secret_access_key, session_token, region)


@dataclass(frozen=True)
class SecretIdentity:
    """The identity a Secrets Manager secret holds."""

    secret_arn: str
    user: UserIdentity
    distinguished_name: str | None = None


def parse_credspec_arn(text: str) -> CredspecArn:
    """Parse ``arn:aws:s3:::bucket/key#<lease_id>/<dir>``; raise InvalidRequestError saying why.

    Like credentials-fetcher: exactly one ``#``, and a fragment of exactly two ``/``-separated
    parts. Unlike it, both parts must be valid path components (the lease id by
    :func:`credfetcher.leases.validate_lease_id`, the directory by
    :func:`credfetcher.leases.validate_dir_name`), so no request can name ``..`` or a separator.
    """
    shown = text[:120].encode("unicode_escape").decode("ascii")
    if not text:
        raise InvalidRequestError("credspec ARN is empty")
    if len(text) > MAX_ARN_LENGTH:
        raise InvalidRequestError(f"credspec ARN {shown!r}... is longer than {MAX_ARN_LENGTH}")
    if _CONTROL.search(text):
        raise InvalidRequestError(f"credspec ARN {shown!r} contains control characters")
    parts = text.split("#")
    if len(parts) != 2:
        raise InvalidRequestError(
            f"credspec ARN {shown!r} must have the form arn:aws:s3:::bucket/key#<lease_id>/<dir> "
            f"(exactly one '#', found {len(parts) - 1})"
        )
    arn, fragment = parts
    path = fragment.split("/")
    if len(path) != 2:
        raise InvalidRequestError(
            f"credspec ARN {shown!r}: the part after '#' must be <lease_id>/<dir> "
            f"(two parts, found {len(path)})"
        )
    try:
        lease_id = validate_lease_id(path[0])
        directory = validate_dir_name(path[1])
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"credspec ARN {shown!r}: {exc.message}") from exc
    match = _S3_ARN.match(arn)
    if match is None:
        raise InvalidRequestError(
            f"credspec ARN {shown!r} is not an S3 object ARN (arn:aws:s3:::bucket/key)"
        )
    bucket, key = match.group(2), match.group(3)
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidRequestError(f"credspec ARN {shown!r}: {bucket!r} is not an S3 bucket name")
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise InvalidRequestError(f"credspec ARN {shown!r}: S3 key longer than 1024 bytes")
    return CredspecArn(arn=arn, bucket=bucket, key=key, lease_id=lease_id, directory=directory)


def parse_identity_secret(secret_arn: str, text: str) -> SecretIdentity:
    """The identity in a secret's JSON (keys ``username``, ``password``, ``domainName``)."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise AwsSecretError(
            f"secret {secret_arn} is not JSON (expected username, password, domainName)",
            resource=secret_arn,
        ) from exc
    if not isinstance(doc, dict):
        raise AwsSecretError(f"secret {secret_arn} is not a JSON object", resource=secret_arn)
    values: dict[str, str] = {}
    for name in ("username", "password", "domainName"):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise AwsSecretError(
                f"secret {secret_arn} has no {name!r} (expected keys username, password, "
                "domainName, optionally distinguishedName)",
                resource=secret_arn,
            )
        values[name] = value
    dn = doc.get("distinguishedName")
    if dn is not None and not isinstance(dn, str):
        raise AwsSecretError(
            f"secret {secret_arn}: distinguishedName must be a string", resource=secret_arn
        )
    if len(values["username"]) > 256 or len(values["password"]) > 1024:
        raise AwsSecretError(
            f"secret {secret_arn}: username or password too long", resource=secret_arn
        )
    try:
        user = UserIdentity.parse(values["username"], values["password"], values["domainName"])
    except CredfetcherError as exc:
        raise AwsSecretError(f"secret {secret_arn}: {exc.message}", resource=secret_arn) from exc
    return SecretIdentity(secret_arn=secret_arn, user=user, distinguished_name=dn or None)


# -- boto3 -----------------------------------------------------------------------------------


def _botocore() -> Any:
    try:
        import botocore.config  # noqa: PLC0415 - optional extra, imported on first use
        import botocore.session  # noqa: PLC0415
    except ImportError as exc:
        raise UnsupportedError(
            "AWS support (ARN leases, CF_AWS_SM_SECRET_NAME) needs boto3: install "
            "credfetcher[aws]"
        ) from exc
    # At DEBUG botocore logs signed request headers (the session token) and response bodies
    # (the secret's password). Never let those reach the journal, whatever CF_LOG_LEVEL says.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return botocore


def _client(
    service: str, credentials: AwsCredentials | None, endpoint_url: str | None, region: str | None
) -> BaseClient:
    """A client for this call only: explicit credentials, or the default chain when None."""
    botocore = _botocore()
    session = botocore.session.Session()
    config = botocore.config.Config(
        connect_timeout=_CONNECT_TIMEOUT,
        read_timeout=_READ_TIMEOUT,
        retries={"max_attempts": 3, "mode": "standard"},
        user_agent_extra="credfetcher",
    )
    kwargs: dict[str, Any] = {"config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if credentials is not None:
        kwargs.update(
            region_name=credentials.region,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token or None,
        )
    elif region := region or _env_region():
        kwargs["region_name"] = region
    return session.create_client(service, **kwargs)


def _env_region() -> str | None:
    # AWS_REGION as the AWS SDKs, the AWS CLI and ECS set it; botocore itself reads only
    # AWS_DEFAULT_REGION and the profile's region.
    return os.environ.get("AWS_REGION") or None


def default_credentials(region: str | None = None) -> AwsCredentials:
    """This process's own AWS credentials, from botocore's default chain (environment,
    ``~/.aws``, the instance or task role), for clients that send them as the ECS agent sends
    its task's. ``region`` overrides the configured region.
    """
    session = _botocore().session.get_session()
    found = session.get_credentials()
    if found is None:
        raise AwsCredentialsError(
            "no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "~/.aws/credentials, or an instance or task role)"
        )
    frozen = found.get_frozen_credentials()
    region = region or _env_region() or session.get_config_variable("region")
    if not region:
        raise InvalidRequestError(
            "no AWS region: pass --region, or set AWS_REGION or a region in ~/.aws/config"
        )
    return AwsCredentials.from_request(
        frozen.access_key, frozen.secret_key, frozen.token or "", str(region)
    )


def _translate(  # noqa: PLR0911 - one return per kind of failure reads best
    exc: Exception, action: str, resource: str
) -> CredfetcherError:
    """A botocore error as one of ours; the message names the action and the resource."""
    botocore = _botocore()
    exceptions = botocore.exceptions
    if isinstance(exc, exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = str(error.get("Message", "") or code)
        if code in _BAD_CREDENTIALS:
            return AwsCredentialsError(
                f"{action} {resource}: the AWS credentials were refused ({code})",
                resource=resource,
            )
        if code in _DENIED:
            return AwsAccessDeniedError(
                f"{action} {resource}: access denied ({text})", resource=resource
            )
        if code in _NOT_FOUND:
            return AwsNotFoundError(f"{action} {resource}: not found", resource=resource)
        return AwsError(f"{action} {resource}: {code}: {text}", resource=resource)
    if isinstance(exc, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
        return AwsCredentialsError(
            f"{action} {resource}: no AWS credentials found (instance role, environment or "
            "~/.aws/credentials)",
            resource=resource,
        )
    if isinstance(exc, exceptions.NoRegionError):
        return AwsError(
            f"{action} {resource}: no AWS region configured (set AWS_REGION or use a full "
            "secret ARN)",
            resource=resource,
        )
    if isinstance(exc, exceptions.ParamValidationError):
        return InvalidRequestError(f"{action} {resource}: {exc}")
    if isinstance(exc, exceptions.EndpointConnectionError | exceptions.ConnectTimeoutError):
        return AwsError(f"{action} {resource}: AWS endpoint unreachable ({exc})", resource=resource)
    return AwsError(f"{action} {resource}: {type(exc).__name__}: {exc}", resource=resource)


def _call(action: str, resource: str, fn: Any, **kwargs: Any) -> Any:
    botocore = _botocore()
    try:
        return fn(**kwargs)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, action, resource) from exc


def caller_account(credentials: AwsCredentials, endpoint_url: str | None) -> str:
    """The account the credentials belong to (STS GetCallerIdentity)."""
    sts = _client("sts", credentials, endpoint_url, None)
    identity = _call("STS GetCallerIdentity for", "the request's credentials",
                     sts.get_caller_identity)
    return str(identity["Account"])


def _s3_call(action: str, ref: CredspecArn, account: str, fn: Any) -> Any:
    """One S3 object call under the bucket-owner condition, its refusal explained."""
    try:
        return _call(action, ref.location, fn,
                     Bucket=ref.bucket, Key=ref.key, ExpectedBucketOwner=account)
    except AwsAccessDeniedError as exc:
        # S3 gives the same bare 403 for "not the owner" and "no permission"; say both.
        raise AwsAccessDeniedError(
            f"{exc}: the bucket must be owned by account {account} (the account of the "
            "request's credentials) and they must allow s3:GetObject",
            resource=ref.location,
        ) from exc


def fetch_credspec(
    ref: CredspecArn,
    credentials: AwsCredentials,
    *,
    endpoint_url: str | None = None,
    account: str | None = None,
) -> str:
    """The credspec text at ``ref``: size-checked, from a bucket owned by the caller's account."""
    account = account or caller_account(credentials, endpoint_url)
    s3 = _client("s3", credentials, endpoint_url, None)
    where = ref.location
    head = _s3_call("S3 HeadObject", ref, account, s3.head_object)
    size = int(head.get("ContentLength", 0))
    if size > MAX_S3_CREDSPEC_BYTES:
        raise InvalidRequestError(
            f"credspec {where} is {size} bytes; at most {MAX_S3_CREDSPEC_BYTES} are accepted"
        )
    obj = _s3_call("S3 GetObject", ref, account, s3.get_object)
    body = obj["Body"]
    try:
        # The object may have been replaced since HeadObject: never read more than the limit.
        data = _call("S3 GetObject", where, body.read, amt=MAX_S3_CREDSPEC_BYTES + 1)
    finally:
        body.close()
    if len(data) > MAX_S3_CREDSPEC_BYTES:
        raise InvalidRequestError(
            f"credspec {where} is more than {MAX_S3_CREDSPEC_BYTES} bytes (it changed after "
            "HeadObject)"
        )
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"credspec {where} is not UTF-8 text") from exc


def read_identity_secret(
    secret_id: str,
    credentials: AwsCredentials | None,
    *,
    endpoint_url: str | None = None,
) -> SecretIdentity:
    """The identity in secret ``secret_id`` (ARN or name), read with ``credentials``.

    ``credentials=None`` uses boto3's default chain (the daemon's own role); the region then
    comes from a full secret ARN, else from the environment or ``~/.aws/config``.
    """
    region = None
    arn_parts = secret_id.split(":")
    if secret_id.startswith("arn:") and len(arn_parts) >= 7:
        region = arn_parts[3] or None
    sm = _client("secretsmanager", credentials, endpoint_url, region)
    resource = f"secret {secret_id}"
    value = _call("Secrets Manager GetSecretValue", resource, sm.get_secret_value,
                  SecretId=secret_id)
    text = value.get("SecretString")
    if not isinstance(text, str):
        raise AwsSecretError(f"{resource} holds binary data, not a JSON string",
                             resource=secret_id)
    if len(text) > MAX_SECRET_BYTES:
        raise AwsSecretError(f"{resource} is too large", resource=secret_id)
    return parse_identity_secret(str(value.get("ARN") or secret_id), text)
