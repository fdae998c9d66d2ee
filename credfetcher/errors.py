"""The error tree: one root, a few subclasses that mean something to the caller.

Library errors (ldap3, gssapi, krb5, OSError) are translated at the module boundary that meets
them, with ``raise ... from exc`` so the native error stays reachable as ``__cause__``. Nothing
here knows about gRPC: :mod:`credfetcher.server` maps each class to a status in one table, so the
pure modules (the blob decoder, key derivation, credspec parsing) load no RPC library.
Context (gMSA, DC, identity, path) travels as attributes so messages and structured logs can both
use it. No error message ever contains a secret.
"""

from __future__ import annotations


class CredfetcherError(Exception):
    """Root of every error credfetcher raises on purpose."""


    def __init__(self, message: str, *, gmsa: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.gmsa = gmsa


class ConfigError(CredfetcherError):
    """A configuration setting is invalid; ``setting`` names it."""


    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class InvalidRequestError(CredfetcherError):
    """A request field is malformed or missing (credspec, lease id, user name...)."""



class CredspecError(InvalidRequestError):
    """A credential spec is not valid JSON or lacks a needed field; ``field`` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BlobError(CredfetcherError):
    """An msDS-ManagedPassword blob violates MS-ADTS 2.2.19."""



class KerberosError(CredfetcherError):
    """The KDC refused or could not be asked; ``principal`` is the client, ``code`` krb5's."""


    def __init__(
        self,
        message: str,
        *,
        principal: str | None = None,
        code: int | None = None,
        gmsa: str | None = None,
    ) -> None:
        super().__init__(message, gmsa=gmsa)
        self.principal = principal
        self.code = code


class KeyRejectedError(KerberosError):
    """The KDC rejected the key we derived: the password changed (rotated early) or is wrong."""



class DirectoryError(CredfetcherError):
    """An LDAP failure; ``dc`` is the domain controller it happened on, when known."""


    def __init__(self, message: str, *, dc: str | None = None, gmsa: str | None = None) -> None:
        super().__init__(message, gmsa=gmsa)
        self.dc = dc


class DCUnavailableError(DirectoryError):
    """No domain controller answered; ``attempts`` holds (dc, reason) for each one tried."""

    def __init__(self, message: str, *, attempts: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.attempts = attempts


class BindError(DirectoryError):
    """The identity could not authenticate to the DC (bad keytab, wrong password, clock skew)."""

    def __init__(self, message: str, *, identity: str, dc: str | None = None) -> None:
        super().__init__(message, dc=dc)
        self.identity = identity


class GmsaNotFoundError(DirectoryError):
    """No account with that sAMAccountName under the search base."""



class PasswordAccessDeniedError(DirectoryError):
    """The identity may not read the gMSA's msDS-ManagedPassword."""


    def __init__(self, message: str, *, identity: str, gmsa: str, dc: str | None = None) -> None:
        super().__init__(message, dc=dc, gmsa=gmsa)
        self.identity = identity


class LeaseNotFoundError(CredfetcherError):
    """No lease with that id."""



class StorageError(CredfetcherError):
    """Writing or removing a file under krbdir failed; ``path`` names it."""


    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedError(CredfetcherError):
    """A feature needs an optional extra that is not installed."""



class AwsError(CredfetcherError):
    """An AWS call failed (endpoint unreachable, throttled, 5xx); ``resource`` names the target."""


    def __init__(self, message: str, *, resource: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource


class AwsAccessDeniedError(AwsError):
    """AWS refused: no permission, or the S3 bucket is not owned by the caller's account."""



class AwsNotFoundError(AwsError):
    """The S3 object or the Secrets Manager secret does not exist."""



class AwsCredentialsError(AwsError):
    """The AWS credentials are missing, invalid or expired."""



class AwsSecretError(AwsError):
    """A secret exists but holds no usable identity (keys username, password, domainName)."""

