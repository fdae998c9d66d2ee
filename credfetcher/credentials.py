"""Whose credentials read a gMSA's password, and the one registry of directories and accounts.

A lease's gMSAs are read as one of four identities (:class:`CredentialSource`): the host's
keytab (AddKerberosLease), a domain user sent with the request (AddNonDomainJoinedKerberosLease),
the daemon-wide user of CF_AWS_SM_SECRET_NAME (:mod:`credfetcher.secret_source`), or per gMSA
the user in its credspec's CredentialArn secret (AddKerberosArnLease). :class:`Credentials` is
the only place that builds a :class:`GmsaAccount`: one per (gMSA, identity), shared by every
lease that reads it that way, so one AS exchange serves them all.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import krb5

from credfetcher import aws
from credfetcher.accounts import AccountKey, GmsaAccount, Identity, account_key
from credfetcher.config import Config
from credfetcher.credspec import Credspec, parse_credspec
from credfetcher.directory import DirectoryClient, DirectoryConfig
from credfetcher.errors import CredfetcherError, InvalidRequestError
from credfetcher.identity import HostIdentity, UserIdentity
from credfetcher.names import principal_realm

if TYPE_CHECKING:  # pragma: no cover
    from credfetcher.aws import AwsCredentials, CredspecArn, SecretIdentity

log = logging.getLogger(__name__)

MAX_GMSAS_PER_LEASE = 64
# ARN leases: what their metadata says in "domainless_user" (each gMSA's identity comes from its
# own credspec's secret and is re-read at every RenewKerberosArnLease; none is kept on disk).
ARN_LEASE_USER = "aws-secrets-manager"


class Credentials:
    """Directory clients per domain and gMSA accounts per (gMSA, identity), made once each."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        directory_factory: Callable[[DirectoryConfig], DirectoryClient] = DirectoryClient,
    ) -> None:
        self.config = config
        self.clock = clock
        self._directory_factory = directory_factory
        self._lock = threading.Lock()
        self._directories: dict[str, DirectoryClient] = {}
        self._accounts: dict[AccountKey, GmsaAccount] = {}

    def directory(self, domain: str) -> DirectoryClient:
        with self._lock:
            client = self._directories.get(domain)
            if client is None:
                client = self._directory_factory(
                    DirectoryConfig(
                        domain=domain,
                        domain_controllers=self.config.domain_controllers,
                        transport=self.config.ldap_transport,
                        ca_file=self.config.ldap_ca_file,
                        tls_verify=self.config.ldap_tls_verify,
                        timeout=self.config.ldap_timeout,
                        search_base=self.config.gmsa_ou,
                        dns_nameservers=self.config.dns_nameservers,
                    )
                )
                self._directories[domain] = client
            return client

    def host_identity(self, domain: str) -> HostIdentity:
        return HostIdentity(
            principal=self.config.machine_principal_for(domain),
            keytab=self.config.machine_keytab,
        )

    def _new_account(self, domain: str, gmsa: str, identity: Identity) -> GmsaAccount:
        return GmsaAccount(
            gmsa,
            domain,
            identity,
            self.directory(domain),
            lifetime=self.config.ticket_lifetime,
            renew_lifetime=self.config.renew_lifetime,
            clock=self.clock,
        )

    def account(self, domain: str, gmsa: str, identity: Identity) -> GmsaAccount:
        """The shared account reading ``gmsa`` as ``identity``, registered if new."""
        key = account_key(domain, gmsa, identity)
        with self._lock:
            account = self._accounts.get(key)
        if account is not None:  # every lease after a gMSA's first, and every recovered one
            return account
        candidate = self._new_account(domain, gmsa, identity)  # outside: directory() locks
        with self._lock:
            return self._accounts.setdefault(key, candidate)

    def proved_account(self, domain: str, gmsa: str, identity: Identity) -> GmsaAccount:
        """:meth:`account`, registered only once ``identity`` has read the gMSA's password.

        Proof is the read itself: the LDAP bind needs the identity's own TGT (one AS exchange
        with a user's password), the read needs the right to the password. A refused password
        raises and leaves no account behind; an account already known for these exact
        credentials has proved them before and is asked again (it caches what it read).
        """
        key = account_key(domain, gmsa, identity)
        with self._lock:
            account = self._accounts.get(key)
        if account is None:
            account = self._new_account(domain, gmsa, identity)
        account.material()
        with self._lock:
            return self._accounts.setdefault(key, account)

    def warm_up(self) -> None:
        """Get the host's TGT and bind to a DC now, so the first lease doesn't wait for them.

        The domain is the machine principal's realm, else krb5.conf's default realm. Best effort:
        a failure is only logged; the first request tries again and reports it.
        """
        try:
            # CF_MACHINE_PRINCIPAL may name no realm (``linuxhost01$``): krb5.conf's then.
            realm = principal_realm(self.config.machine_principal)
            if not realm:
                realm = krb5.get_default_realm(krb5.init_context()).decode()
            domain = realm.lower()
            self.directory(domain).warm(self.host_identity(domain))
        except Exception as exc:  # never fatal: nothing depends on the warm-up
            log.info("start-up bind skipped: %s", exc)

    def close(self) -> None:
        with self._lock:
            for client in self._directories.values():
                client.close()


# -- the four sources ------------------------------------------------------------------------


class CredentialSource(Protocol):
    """Whose identity reads a new lease's gMSA passwords, and what the lease records of it."""

    @property
    def kind(self) -> str:
        """The lease's kind in its metadata: domain-joined, domainless, aws-secret or arn."""
        ...

    @property
    def label(self) -> str | None:
        """The metadata's "domainless_user" (None for the host's own identity)."""
        ...

    def identity(self, domain: str, credential_arn: str | None) -> Identity:
        """The identity for one gMSA of ``domain`` (its credspec's CredentialArn, if any)."""
        ...


class HostKeytab:
    """The machine account's keytab (CF_MACHINE_KEYTAB), the domain-joined default."""

    kind = "domain-joined"
    label = None

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def identity(self, domain: str, credential_arn: str | None) -> Identity:
        return self._credentials.host_identity(domain)


class DomainUser:
    """One domain user for every gMSA: a request's own, or CF_AWS_SM_SECRET_NAME's."""

    def __init__(self, user: UserIdentity, *, kind: str = "domainless") -> None:
        self.user = user
        self.kind = kind
        self.label: str | None = user.label

    def identity(self, domain: str, credential_arn: str | None) -> Identity:
        return self.user


class ArnSecrets:
    """Per gMSA, the user in the Secrets Manager secret its credspec's CredentialArn names,
    read with one request's AWS ``credentials`` and each secret ARN once."""

    kind = "arn"
    label = ARN_LEASE_USER

    def __init__(self, credentials: AwsCredentials, endpoint_url: str | None) -> None:
        self.credentials = credentials
        self.endpoint_url = endpoint_url
        self._read: Callable[[str], SecretIdentity] = functools.cache(
            lambda arn: aws.read_identity_secret(arn, credentials, endpoint_url=endpoint_url)
        )

    def identity(self, domain: str, credential_arn: str | None) -> UserIdentity:
        if credential_arn is None:
            raise InvalidRequestError("no CredentialArn names the identity for this gMSA")
        return self._read(credential_arn).user


# -- requests ----------------------------------------------------------------------------------


def parse_credspecs(texts: Sequence[str]) -> list[Credspec]:
    """AddKerberosLease's credspec_contents, each gMSA once, or InvalidRequestError."""
    if not texts:
        raise InvalidRequestError("credspec_contents is empty: send at least one credspec")
    specs: dict[tuple[str, str], Credspec] = {}
    for i, text in enumerate(texts):
        try:
            spec = parse_credspec(text)
        except CredfetcherError as exc:
            raise type(exc)(f"credspec_contents[{i}]: {exc.message}") from exc
        # The same gMSA twice in one request (e.g. with both Scope forms) is one account.
        specs.setdefault((spec.domain, spec.gmsa_name.lower()), spec)
    if len(specs) > MAX_GMSAS_PER_LEASE:
        raise InvalidRequestError(f"at most {MAX_GMSAS_PER_LEASE} gMSAs per lease")
    return list(specs.values())


def parse_arns(arns: Sequence[str]) -> tuple[str, list[CredspecArn]]:
    """AddKerberosArnLease's credspec_arns: the lease id they share and each parsed ARN."""
    if not arns:
        raise InvalidRequestError("credspec_arns is empty: send at least one ARN")
    if len(arns) > MAX_GMSAS_PER_LEASE:
        raise InvalidRequestError(f"at most {MAX_GMSAS_PER_LEASE} credspec ARNs per lease")
    refs = [aws.parse_credspec_arn(text) for text in arns]
    lease_ids = sorted({ref.lease_id for ref in refs})
    if len(lease_ids) != 1:
        raise InvalidRequestError(
            "all credspec ARNs of one request must name the same lease id after '#' "
            f"(found {', '.join(lease_ids)})"
        )
    dirs = [ref.directory for ref in refs]
    if len(set(dirs)) != len(dirs):
        raise InvalidRequestError(f"two credspec ARNs name the same directory: {dirs}")
    return lease_ids[0], refs


def fetch_arn_credspecs(
    lease_id: str, refs: Sequence[CredspecArn], source: ArnSecrets
) -> list[tuple[CredspecArn, Credspec, Identity]]:
    """Each ARN's credspec from S3 and the identity its secret holds, in request order."""
    endpoint = source.endpoint_url
    account = aws.caller_account(source.credentials, endpoint)
    items: list[tuple[CredspecArn, Credspec, Identity]] = []
    seen: dict[tuple[str, str], str] = {}
    for ref in refs:
        text = aws.fetch_credspec(ref, source.credentials, endpoint_url=endpoint, account=account)
        try:
            spec = parse_credspec(text)
        except CredfetcherError as exc:
            raise type(exc)(f"credspec {ref.location}: {exc.message}") from exc
        if spec.credential_arn is None:
            raise InvalidRequestError(
                f"credspec {ref.location} has no ActiveDirectoryConfig.HostAccountConfig."
                "PluginInput.CredentialArn (the secret holding the identity that may read "
                "the gMSA's password)"
            )
        # The scheduler knows a lease's gMSA by name: one directory per gMSA and lease.
        other = seen.setdefault((spec.domain, spec.gmsa_name.lower()), ref.directory)
        if other != ref.directory:
            raise InvalidRequestError(
                f"gMSA {spec.gmsa_name} is named twice in lease {lease_id} "
                f"(directories {other} and {ref.directory})"
            )
        items.append((ref, spec, source.identity(spec.domain, spec.credential_arn)))
    return items
