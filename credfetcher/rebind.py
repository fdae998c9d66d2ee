"""Moving leases to new credentials: the explicit renewal paths, and only they.

Three paths move a lease's gMSAs to another identity and renew them at once:
RenewNonDomainJoinedKerberosLease (a user's new password, :meth:`Rebinder.renew_domainless`),
RenewKerberosArnLease (each ARN lease's secrets re-read, :meth:`Rebinder.renew_arn_leases`) and
the CF_AWS_SM_SECRET_NAME refresh (:meth:`Rebinder.attach_secret_leases`, called from
:mod:`credfetcher.secret_source`'s refresh). Creating a lease never moves another.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from credfetcher.accounts import GmsaAccount
from credfetcher.credentials import ArnSecrets, Credentials
from credfetcher.errors import CredfetcherError, InvalidRequestError
from credfetcher.identity import UserIdentity
from credfetcher.krbcodes import is_dc_outage
from credfetcher.lease_index import LeaseIndex
from credfetcher.leases import CCACHE_NAME, GmsaEntry, LeaseRecord, LeaseStore
from credfetcher.publish import target
from credfetcher.renewal import RenewalScheduler

if TYPE_CHECKING:  # pragma: no cover
    from credfetcher.aws import AwsCredentials

log = logging.getLogger(__name__)

Plan = list[tuple[GmsaEntry, GmsaAccount]]


class Rebinder:
    """Gives loaded leases new accounts (identities) and renews them."""

    def __init__(
        self,
        *,
        index: LeaseIndex,
        store: LeaseStore,
        scheduler: RenewalScheduler,
        credentials: Credentials,
        clock: Callable[[], float],
        endpoint_url: str | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.scheduler = scheduler
        self.credentials = credentials
        self.clock = clock
        self.endpoint_url = endpoint_url

    def renew_domainless(self, user: UserIdentity) -> list[Path]:
        """RenewNonDomainJoinedKerberosLease: new user credentials for that user's leases.

        The credentials are proved first (:meth:`verified_accounts`): only when they get a TGT
        and read every affected gMSA's password does any lease move to them. A wrong password
        raises that error (UNAUTHENTICATED, naming the user) and leaves every lease renewing
        with the credentials it had, so the scheduler never retries the refused password.
        """
        self.index.wait_loaded()  # it concerns leases on disk that may not be loaded yet
        label = user.label.lower()
        records = [
            r for r in self.index.records()
            if r.domainless_user is not None and r.domainless_user.lower() == label
        ]
        accounts = self.verified_accounts(user, [e for r in records for e in r.entries])
        renewed: list[Path] = []
        for record in records:
            errors: list[CredfetcherError] = []
            plan = [(e, accounts[(e.domain, e.gmsa_name.lower())]) for e in record.entries]
            entries = self.rebind_lease(record, plan, errors)
            if errors:
                raise errors[0]
            renewed.extend(self.store.entry_dir(record.lease_id, e) / CCACHE_NAME for e in entries)
        return renewed

    def renew_arn_leases(self, credentials: AwsCredentials) -> int:
        """RenewKerberosArnLease: re-read every ARN lease's secrets with ``credentials``, renew.

        Every ARN lease is attempted; the first error is raised after all were tried (its
        message counts the failures). Returns the number of gMSA tickets renewed.
        """
        self.index.wait_loaded()  # it concerns leases on disk that may not be loaded yet
        source = ArnSecrets(credentials, self.endpoint_url)
        errors: list[CredfetcherError] = []
        renewed = 0
        for record in self.index.records("arn"):
            try:
                plan = []
                for entry in record.entries:
                    if entry.credential_arn is None:
                        raise InvalidRequestError(
                            f"lease {record.lease_id}: gMSA {entry.gmsa_name} has no "
                            "CredentialArn in its metadata"
                        )
                    user = source.identity(entry.domain, entry.credential_arn)
                    plan.append(
                        (entry, self.credentials.account(entry.domain, entry.gmsa_name, user))
                    )
            except CredfetcherError as exc:
                errors.append(exc)
                continue
            renewed += len(self.rebind_lease(record, plan, errors))
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.message = f"{first.message} (and {len(errors) - 1} more failure(s))"
            raise first
        return renewed

    # -- CF_AWS_SM_SECRET_NAME -----------------------------------------------------------------

    def prove_for_secret_leases(self, user: UserIdentity) -> None:
        """Raise unless ``user`` can read the gMSA passwords of every CF_AWS_SM_SECRET_NAME
        lease loaded now."""
        entries = [e for r in self.index.records("aws-secret") for e in r.entries]
        self.verified_accounts(user, entries)

    def secret_leases_failing(self) -> bool:
        """True while a CF_AWS_SM_SECRET_NAME lease fails to renew or waits for credentials."""
        self.index.wait_loaded()  # it concerns leases on disk that may not be loaded yet
        return any(
            (status := self.scheduler.status(r.lease_id, e.gmsa_name)) is not None
            and (status.last_error or status.waiting_for_credentials)
            for r in self.index.records("aws-secret")
            for e in r.entries
        )

    def attach_secret_leases(self, user: UserIdentity) -> None:
        """Move every CF_AWS_SM_SECRET_NAME lease to ``user`` (proved already) and renew it;
        failures are logged, each lease keeps renewing on its own."""
        self.index.wait_loaded()  # every such lease, also those not loaded yet
        errors: list[CredfetcherError] = []
        for old in self.index.records("aws-secret"):
            record = self.relabel(old, user.label)
            plan = [
                (e, self.credentials.account(e.domain, e.gmsa_name, user)) for e in record.entries
            ]
            self.rebind_lease(record, plan, errors)
        for error in errors:
            log.warning("renewal with the identity from the secret failed: %s", error.message)

    # -- the moves -----------------------------------------------------------------------------

    def rebind_lease(
        self, record: LeaseRecord, plan: Plan, errors: list[CredfetcherError]
    ) -> list[GmsaEntry]:
        """Give each gMSA of ``record`` its own account (identity) and renew it now; return the
        entries renewed (none when the lease was deleted meanwhile)."""
        if record.lease_id not in self.index:
            return []  # deleted meanwhile
        # Per-target moves: each gMSA of an ARN lease may come with a different identity.
        now = self.clock()
        for entry, account in plan:
            tgt = target(self.store, record, entry.gmsa_name)
            # What the daemon last wrote there, from memory: the lease's files are never read.
            info = self.scheduler.ticket_info(record.lease_id, entry.gmsa_name)
            self.scheduler.move_target(
                account.key, account, tgt, info if info and info.endtime > now else None
            )
        if not self.store.exists(record.lease_id):
            # Deleted while we moved it: delete_lease removes a lease from disk before it
            # unregisters it, so one of us two always sees the other and nothing lives on.
            self.scheduler.unregister_lease(record.lease_id)
            return []
        renewed = []
        for entry, account in plan:
            error = self.scheduler.renew_group(account.key, asked=True)
            if error is not None:
                if error.gmsa is None:
                    error.gmsa = entry.gmsa_name
                errors.append(error)
            else:
                renewed.append(entry)
        return renewed

    def relabel(self, record: LeaseRecord, user_label: str) -> LeaseRecord:
        """Record in the lease's metadata which identity now reads its gMSAs' passwords."""
        if record.domainless_user == user_label:
            return record
        new = dataclasses.replace(record, domainless_user=user_label)
        with self.scheduler.lease_lock(record.lease_id):
            # Under the index's lock: a lease deleted meanwhile is neither rewritten nor kept.
            self.index.replace(new, self.store.update_metadata)
        return new

    def verified_accounts(
        self, user: UserIdentity, entries: Sequence[GmsaEntry]
    ) -> dict[tuple[str, str], GmsaAccount]:
        """The account of each (domain, gMSA) in ``entries`` as read by ``user``, each proved
        (:meth:`credfetcher.credentials.Credentials.proved_account`). Nothing is registered
        before its proof succeeds, so a refused password leaves no account behind."""
        accounts: dict[tuple[str, str], GmsaAccount] = {}
        for entry in entries:
            slot = (entry.domain, entry.gmsa_name.lower())
            if slot in accounts:
                continue
            try:
                accounts[slot] = self.credentials.proved_account(
                    entry.domain, entry.gmsa_name, user
                )
            except CredfetcherError as exc:
                if is_dc_outage(exc):
                    self.scheduler.last_dc_error = exc.message
                raise
        return accounts
