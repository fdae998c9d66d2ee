"""The lease service: what every RPC does, independent of gRPC.

Data flows one way: a request is validated (credspecs, lease ids, identities), the directory
and the KDC are asked through :mod:`credfetcher.credentials` and :mod:`credfetcher.accounts`,
and the result is written by :mod:`credfetcher.publish`. A request either publishes a complete
lease or leaves nothing behind; an error names the gMSA it concerns. This module is the lease
core (add, delete, recover); moving leases to new credentials is :mod:`credfetcher.rebind`,
the list and health views :mod:`credfetcher.views`, the background threads
:mod:`credfetcher.supervisor`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from credfetcher import publish, views
from credfetcher.config import Config
from credfetcher.credentials import (
    ArnSecrets,
    Credentials,
    CredentialSource,
    DomainUser,
    HostKeytab,
    fetch_arn_credspecs,
    parse_arns,
    parse_credspecs,
)
from credfetcher.credspec import Credspec
from credfetcher.directory import DirectoryClient, DirectoryConfig
from credfetcher.errors import InvalidRequestError, LeaseNotFoundError
from credfetcher.exporter import LiveState
from credfetcher.files import Ownership
from credfetcher.identity import UserIdentity
from credfetcher.lease_index import LeaseIndex
from credfetcher.leases import (
    LeaseRecord,
    LeaseStore,
    LoadedLease,
    new_lease_id,
    validate_lease_id,
)
from credfetcher.publish import ArnLeaseResult, LeaseResult
from credfetcher.rebind import Rebinder
from credfetcher.renewal import RenewalScheduler
from credfetcher.secret_source import SecretSource
from credfetcher.supervisor import Supervisor
from credfetcher.views import LeaseView, TicketView

if TYPE_CHECKING:  # pragma: no cover
    from credfetcher.aws import AwsCredentials

__all__ = ["ArnLeaseResult", "LeaseResult", "LeaseService", "LeaseView", "TicketView"]

log = logging.getLogger(__name__)

# Lease creations doing work at once. More gain nothing (the DC and the KDC answer in tens of
# milliseconds) but make every thread, HealthCheck's included, wait longer for the GIL.
CONCURRENT_ADDS = 8


class LeaseService:
    """Creates, renews, lists and deletes leases."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        directory_factory: Callable[[DirectoryConfig], DirectoryClient] = DirectoryClient,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = LeaseStore(config.krb_dir)
        self.index = LeaseIndex()
        self.scheduler = RenewalScheduler(
            margin=config.renew_margin,
            orphan_after=config.orphan_after,
            rc4=config.enable_rc4,
            clock=clock,
            on_orphan=self._remove_orphan,
            rejected_retry=config.rejected_password_retry,
            krb_dir=config.krb_dir,
        )
        self.credentials = Credentials(config, clock=clock, directory_factory=directory_factory)
        self.rebinder = Rebinder(
            index=self.index, store=self.store, scheduler=self.scheduler,
            credentials=self.credentials, clock=clock, endpoint_url=config.aws_endpoint_url,
        )
        rebinder = self.rebinder  # the secret's refresh moves its leases, nothing else does
        self.secrets = SecretSource(
            config, prove=rebinder.prove_for_secret_leases,
            attach=rebinder.attach_secret_leases, failing=rebinder.secret_leases_failing,
        )
        self.supervisor = Supervisor(self)
        self._add_slots = threading.BoundedSemaphore(CONCURRENT_ADDS)
        self._recovery = publish.Recovery(self.credentials)  # shared by the leases loaded
        if config.ccache_mode & 0o004:
            log.warning(
                "CF_CCACHE_MODE 0%o: every lease's ccache and keytab are readable by every user "
                "on this host (allowed by CF_ALLOW_WORLD_READABLE)",
                config.ccache_mode,
            )

    def ownership_for(self, uid: int | None, gid: int | None, mode: int | None) -> Ownership:
        """Per-request ownership, falling back to the daemon-wide settings field by field."""
        return publish.ownership_for(self.config, uid, gid, mode)

    # -- start, recovery, stop -----------------------------------------------------------------

    def start(self, serving: threading.Event | None = None) -> None:
        """Start the background threads (:meth:`credfetcher.supervisor.Supervisor.start`; the
        leases on disk are loaded once ``serving`` is set, at once without it).

        A call that names a lease not loaded yet loads it first (:meth:`_ensure_loaded`), so no
        lease on disk is ever NOT_FOUND; calls that need every lease (domainless, ARN and secret
        renewals) wait for the loader.
        """
        self.supervisor.start(serving)

    def stop(self) -> None:
        self.supervisor.stop()
        self.credentials.close()

    def recover(self, names: Sequence[str]) -> None:
        """Load the leases found at start-up (the recovery thread), then release renewal."""
        try:
            self.index.load_all(names, self.store.load_lease, self._register_recovered)
        except Exception:
            log.exception("recovering the leases in %s failed", self.config.krb_dir)
        finally:
            self.index.end_loading()
            self.scheduler.release()
            self._recovery = publish.Recovery(self.credentials)  # its memos, freed
        # Whoever loaded them (this loop, or a call that named one first), less any deleted.
        loaded = self.index.count(names)
        log.info("recovered %d lease(s) from %s", loaded, self.config.krb_dir)

    def _ensure_loaded(self, lease_id: str) -> bool:
        return self.index.ensure_loaded(
            lease_id, self.store.load_lease, self._register_recovered
        )

    def _register_recovered(self, loaded: LoadedLease) -> None:
        publish.register_recovered(
            self.store, self.scheduler, self._recovery, loaded, now=self.clock()
        )

    # -- adding and deleting -------------------------------------------------------------------

    def add_lease(
        self,
        credspec_texts: Sequence[str],
        *,
        user: UserIdentity | None = None,
        ownership: Ownership | None = None,
        lease_id: str | None = None,
    ) -> LeaseResult:
        """AddKerberosLease / AddNonDomainJoinedKerberosLease: all gMSAs or nothing.

        Without ``user`` and with CF_AWS_SM_SECRET_NAME (credentials-fetcher's
        --aws_sm_secret_name), the secret's user reads the gMSAs. No other lease moves.
        """
        specs = parse_credspecs(credspec_texts)
        source: CredentialSource = HostKeytab(self.credentials)
        if user is not None:
            source = DomainUser(user)
        elif (secret_user := self.secrets.identity()) is not None:
            source = DomainUser(secret_user, kind="aws-secret")
        with self._add_slots:
            lease_id = validate_lease_id(lease_id) if lease_id else new_lease_id()
            if self.store.exists(lease_id):
                raise InvalidRequestError(f"lease {lease_id} already exists")
            self._create(lease_id, source, ownership, specs, [None] * len(specs))
        log.info(
            "created lease %s for %s",
            lease_id,
            ", ".join(s.gmsa_name for s in specs),
            extra={"LEASE_ID": lease_id},
        )
        dirs = tuple(self.store.gmsa_dir(lease_id, s.gmsa_name) for s in specs)
        return LeaseResult(lease_id, dirs, tuple(s.gmsa_name for s in specs))

    def add_arn_lease(
        self,
        arns: Sequence[str],
        credentials: AwsCredentials,
        *,
        ownership: Ownership | None = None,
    ) -> ArnLeaseResult:
        """AddKerberosArnLease: one lease (id from the ARNs' fragment) for every gMSA, or nothing.

        Everything is checked and read before a file is written: the ARNs, the credspecs from
        S3, the secrets (one read per distinct secret ARN) and every TGT.
        """
        lease_id, refs = parse_arns(arns)
        if self.store.exists(lease_id):
            raise InvalidRequestError(f"lease {lease_id} already exists")
        source = ArnSecrets(credentials, self.config.aws_endpoint_url)
        items = fetch_arn_credspecs(lease_id, refs, source)
        specs, dirs = [spec for _, spec, _ in items], [ref.directory for ref, _, _ in items]
        with self._add_slots:
            record = self._create(lease_id, source, ownership, specs, dirs)
        log.info(
            "created ARN lease %s for %s",
            lease_id,
            ", ".join(spec.gmsa_name for _, spec, _ in items),
            extra={"LEASE_ID": lease_id},
        )
        return ArnLeaseResult(
            lease_id,
            tuple(
                (ref.arn, self.store.entry_dir(lease_id, entry))
                for (ref, _, _), entry in zip(items, record.entries, strict=True)
            ),
        )

    def _create(
        self,
        lease_id: str,
        source: CredentialSource,
        ownership: Ownership | None,
        specs: Sequence[Credspec],
        directories: Sequence[str | None],
    ) -> LeaseRecord:
        """Get every gMSA's TGT as ``source``'s identity, then publish the lease's files."""
        # Tickets first, in memory: a DC or KDC failure leaves nothing on disk.
        acquired = [
            publish.acquire(
                self.credentials, self.scheduler, spec,
                source.identity(spec.domain, spec.credential_arn),
            )
            for spec in specs
        ]
        record = publish.new_record(
            lease_id, source, specs, acquired, directories,
            ownership=ownership or publish.default_ownership(self.config),
            write_keytab=self.config.write_keytab,
            created_at=self.clock(),
        )
        publish.publish(
            self.store, self.scheduler, self.index, record, acquired, rc4=self.config.enable_rc4
        )
        return record

    def delete_lease(self, lease_id: str) -> list[Path]:
        """DeleteKerberosLease: remove exactly that lease; return its ccache paths."""
        lease_id = validate_lease_id(lease_id)
        self._ensure_loaded(lease_id)
        with self.scheduler.lease_lock(lease_id):
            try:
                removed = self.store.delete(lease_id)
            except LeaseNotFoundError:
                self.scheduler.unregister_lease(lease_id)
                self.index.pop(lease_id)
                raise
            # Gone from disk first, then from the scheduler: a rebind that registers the lease
            # again in between finds it gone (see credfetcher.rebind.Rebinder.rebind_lease).
            self.scheduler.unregister_lease(lease_id)
        self.index.pop(lease_id)
        log.info("deleted lease %s", lease_id, extra={"LEASE_ID": lease_id})
        return removed

    def _remove_orphan(self, lease_id: str) -> None:
        with contextlib.suppress(LeaseNotFoundError):
            self.delete_lease(lease_id)

    # -- renewing with new credentials, and the views ------------------------------------------

    def renew_domainless(self, user: UserIdentity) -> list[Path]:
        """RenewNonDomainJoinedKerberosLease (see :mod:`credfetcher.rebind`)."""
        return self.rebinder.renew_domainless(user)

    def renew_arn_leases(self, credentials: AwsCredentials) -> int:
        """RenewKerberosArnLease (see :mod:`credfetcher.rebind`)."""
        return self.rebinder.renew_arn_leases(credentials)

    def iter_leases(
        self, *, after: str = "", gmsa: str = "", state: str = ""
    ) -> Iterator[LeaseView]:
        """ListLeases (:func:`credfetcher.views.iter_leases`)."""
        return views.iter_leases(
            self.index, self.scheduler, self.store, self._ensure_loaded,
            after=after, gmsa=gmsa, state=state,
        )

    def metrics_state(self) -> LiveState:
        return views.metrics_state(self.scheduler, self.clock())

    def health(self) -> tuple[bool, str]:
        """HealthCheck (:func:`credfetcher.views.health`)."""
        return views.health(self.scheduler, self.secrets.problem())
