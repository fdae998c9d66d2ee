"""The lease service: what every RPC does, independent of gRPC.

Data flows one way: a request is validated here (credspecs, lease ids, identities), the
directory and the KDC are asked through :mod:`credfetcher.accounts`, and the result is written
through :mod:`credfetcher.leases` and :mod:`credfetcher.tickets`. A request either publishes a
complete lease or leaves nothing behind; an error names the gMSA it concerns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import krb5

from credfetcher import aws, tickets
from credfetcher.accounts import AccountKey, GmsaAccount, Identity, KeyMaterial
from credfetcher.config import Config
from credfetcher.credspec import Credspec, parse_credspec
from credfetcher.directory import DirectoryClient, DirectoryConfig
from credfetcher.errors import (
    BindError,
    CredfetcherError,
    InvalidRequestError,
    KeyRejectedError,
    LeaseNotFoundError,
)
from credfetcher.exporter import LiveState
from credfetcher.files import Ownership
from credfetcher.identity import HostIdentity, UserIdentity
from credfetcher.keytab import write_keytab
from credfetcher.krbcodes import is_dc_outage
from credfetcher.leaseindex import LeaseIndex
from credfetcher.leases import (
    CCACHE_NAME,
    KEYTAB_NAME,
    GmsaEntry,
    LeaseRecord,
    LeaseStore,
    new_lease_id,
    validate_lease_id,
)
from credfetcher.names import principal_realm
from credfetcher.renewal import RenewalScheduler, Target

if TYPE_CHECKING:  # pragma: no cover
    from credfetcher.aws import AwsCredentials, CredspecArn, SecretIdentity

log = logging.getLogger(__name__)

MAX_GMSAS_PER_LEASE = 64
# Lease creations doing work at once. More gain nothing (the DC and the KDC answer in tens of
# milliseconds) but make every thread, HealthCheck's included, wait longer for the GIL.
CONCURRENT_ADDS = 8
# ARN leases: what their metadata says in "domainless_user" (each gMSA's identity comes from its
# own credspec's secret and is re-read at every RenewKerberosArnLease; none is kept on disk).
ARN_LEASE_USER = "aws-secrets-manager"
# CF_AWS_SM_SECRET_NAME: re-read the secret every CF_AWS_SM_REFRESH seconds, and sooner (at
# most every SECRET_RETRY seconds) while a lease made with it fails to renew or a bind is refused.
SECRET_RETRY = 30.0


def _entry(spec: Credspec, material: KeyMaterial, *, directory: str | None = None) -> GmsaEntry:
    return GmsaEntry(
        gmsa_name=spec.gmsa_name,
        domain=spec.domain,
        distinguished_name=material.dn,
        credspec=spec.raw,
        credential_arn=spec.credential_arn,
        directory=directory,
    )


@dataclass(frozen=True)
class LeaseResult:
    lease_id: str
    directories: tuple[Path, ...]
    gmsas: tuple[str, ...]


@dataclass(frozen=True)
class ArnLeaseResult:
    lease_id: str
    directories: tuple[tuple[str, Path], ...]
    """(S3 ARN without its fragment, created directory) per requested ARN, in request order."""


@dataclass(frozen=True)
class TicketView:
    gmsa: str
    domain: str
    directory: Path
    expires_at: float
    renew_until: float
    last_error: str
    next_renewal_at: float


@dataclass(frozen=True)
class LeaseView:
    lease_id: str
    domainless: bool
    state: str
    tickets: tuple[TicketView, ...]


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
        self.scheduler = RenewalScheduler(
            margin=config.renew_margin,
            orphan_after=config.orphan_after,
            rc4=config.enable_rc4,
            clock=clock,
            on_orphan=self._remove_orphan,
            rejected_retry=config.rejected_password_retry,
            krb_dir=config.krb_dir,
        )
        self._directory_factory = directory_factory
        self._directories: dict[str, DirectoryClient] = {}
        self._accounts: dict[AccountKey, GmsaAccount] = {}
        self._leases: dict[str, LeaseRecord] = {}
        # Lease directories found at start-up and not loaded yet (see start()).
        self._pending: set[str] = set()
        self._index = LeaseIndex()  # the ids of both, sorted: a ListLeases page is a slice
        self._load_lock = threading.Lock()
        self._recovered = threading.Event()
        self._recovered.set()
        self._users: dict[tuple[str, str], UserIdentity] = {}
        self._lock = threading.RLock()
        self._add_slots = threading.BoundedSemaphore(CONCURRENT_ADDS)
        self._sm_lock = threading.Lock()
        self._sm: SecretIdentity | None = None
        self._sm_read_at = 0.0
        self._sm_error = ""
        # A secret whose identity the DC refused: (identity key, not before, the error). The same
        # secret is not tried again before then (see CF_REJECTED_PASSWORD_RETRY).
        self._sm_refused: tuple[tuple[str, str, str], float, str] | None = None
        if config.ccache_mode & 0o004:
            log.warning(
                "CF_CCACHE_MODE 0%o: every lease's ccache and keytab are readable by every user "
                "on this host (allowed by CF_ALLOW_WORLD_READABLE)",
                config.ccache_mode,
            )

    # -- plumbing --------------------------------------------------------------------------

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

    def account(self, spec_domain: str, gmsa: str, identity: Identity) -> GmsaAccount:
        candidate = GmsaAccount(
            gmsa,
            spec_domain,
            identity,
            self.directory(spec_domain),
            lifetime=self.config.ticket_lifetime,
            renew_lifetime=self.config.renew_lifetime,
            clock=self.clock,
        )
        with self._lock:
            return self._accounts.setdefault(candidate.key, candidate)

    def default_ownership(self) -> Ownership:
        return Ownership(
            uid=self.config.ccache_owner, gid=self.config.ccache_group, mode=self.config.ccache_mode
        )

    def ownership_for(self, uid: int | None, gid: int | None, mode: int | None) -> Ownership:
        """Per-request ownership, falling back to the daemon-wide settings field by field."""
        default = self.default_ownership()
        if mode is not None and (mode & ~0o777 or mode & 0o002):
            raise InvalidRequestError(
                f"ownership mode {mode:#o} is not a permission mode without world-write"
            )
        for name, value in (("uid", uid), ("gid", gid)):
            if value is not None and not 0 <= value < 2**32 - 1:
                raise InvalidRequestError(f"ownership {name} {value} is out of range")
        if mode is not None and mode & 0o004:
            if not self.config.allow_world_readable:
                raise InvalidRequestError(
                    f"ownership mode {mode:#o} would let every user on the host read the "
                    "credentials; the daemon allows that only with CF_ALLOW_WORLD_READABLE=true"
                )
            log.warning(
                "a lease asks for mode %#o: its ccache is readable by every user on this host "
                "(allowed by CF_ALLOW_WORLD_READABLE)",
                mode,
            )
        return Ownership(
            uid=default.uid if uid is None else uid,
            gid=default.gid if gid is None else gid,
            mode=mode or default.mode,
        )

    # -- start-up --------------------------------------------------------------------------

    def start(self) -> None:
        """List the leases on disk, start the scheduler, load the leases in the background.

        Only krbdir's listing happens before this returns, so the daemon serves at once whatever
        the lease count: an upgrade's restart costs the ECS agent's or kubelet's calls nothing,
        and systemd's start timeout is never near. A call that names a lease not loaded yet
        loads it first (:meth:`_ensure_loaded`), so no lease on disk is ever NOT_FOUND; calls
        that need every lease (domainless, ARN and secret renewals) wait for the loader.
        Renewal is held while loading, then each due group is renewed once (one AS exchange
        per account, not one per lease loaded), the earliest-ending first as always.
        """
        # Off the start-up path: a slow or absent DC must not delay serving.
        threading.Thread(target=self.warm_up, name="warm-up", daemon=True).start()
        names = self.store.scan()
        with self._lock:
            self._pending = set(names)
            self._index.load([*names, *self._leases])
        self._recovered.clear()
        self.scheduler.hold()
        self.scheduler.start()
        threading.Thread(
            target=self._recover, args=(names,), name="recovery", daemon=True
        ).start()

    def _recover(self, names: Sequence[str]) -> None:
        try:
            for name in names:
                self._ensure_loaded(name)
        except Exception:
            log.exception("recovering the leases in %s failed", self.config.krb_dir)
        finally:
            with self._lock:
                for name in self._pending - self._leases.keys():
                    self._index.remove(name)
                self._pending.clear()  # what the loop could not load is no lease to wait for
            self._recovered.set()
            self.scheduler.release()
        with self._lock:
            # Whoever loaded them (this loop, or a call that named one first), less any deleted.
            loaded = sum(name in self._leases for name in names)
        log.info("recovered %d lease(s) from %s", loaded, self.config.krb_dir)

    def wait_recovered(self, timeout: float | None = None) -> bool:
        """Block until every lease found at start-up is loaded; False on timeout."""
        return self._recovered.wait(timeout)

    def _ensure_loaded(self, lease_id: str) -> bool:
        """Load ``lease_id`` now if it was found at start-up and is not loaded yet; True when
        this call loaded it."""
        with self._lock:
            if lease_id not in self._pending:
                return False
        with self._load_lock:
            with self._lock:
                if lease_id not in self._pending:
                    return False  # another caller loaded it while we waited
            record = None
            try:
                record = self.store.load(lease_id)
                if record is not None:
                    self._register_recovered(record)
            finally:
                with self._lock:
                    self._pending.discard(lease_id)
                    if lease_id not in self._leases:
                        self._index.remove(lease_id)
        return record is not None

    def _register_recovered(self, record: LeaseRecord) -> None:
        now = self.clock()
        with self._lock:
            self._leases[record.lease_id] = record
            self._index.add(record.lease_id)
        for entry in record.entries:
            target = self._target(record, entry.gmsa_name)
            # From a checked fd (never a FIFO, a symlink or a file the daemon did not make);
            # anything else reads as "no ticket": renewed now, and the write reports it.
            info = tickets.read_ticket_info(
                target.ccache, root=self.store.krb_dir, owner=record.ownership.expected_uid
            )
            fresh = info if info is not None and info.endtime > now + 60 else None
            if record.domainless_user is not None:
                account = None
                key: object = ("waiting", record.domainless_user.lower(), entry.domain)
                # Even an expired ticket tells when renewing stopped being possible: the
                # orphan clock of a lease waiting for its credentials starts there.
                fresh = info
            else:
                host = self.host_identity(entry.domain)
                account = self.account(entry.domain, entry.gmsa_name, host)
                key = account.key
            self.scheduler.register(key, account, target, fresh)

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

    def stop(self) -> None:
        self.scheduler.stop()
        with self._lock:
            for client in self._directories.values():
                client.close()

    def _target(self, record: LeaseRecord, gmsa: str) -> Target:
        entry = next((e for e in record.entries if e.gmsa_name == gmsa), None)
        directory = (
            self.store.entry_dir(record.lease_id, entry)
            if entry is not None
            else self.store.gmsa_dir(record.lease_id, gmsa)
        )
        return Target(
            lease_id=record.lease_id,
            gmsa=gmsa,
            ccache=directory / CCACHE_NAME,
            ownership=record.ownership,
            keytab=directory / KEYTAB_NAME if record.write_keytab else None,
        )

    # -- RPCs ------------------------------------------------------------------------------

    @staticmethod
    def parse_credspecs(texts: Sequence[str]) -> list[Credspec]:
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

    def add_lease(
        self,
        credspec_texts: Sequence[str],
        *,
        user: UserIdentity | None = None,
        ownership: Ownership | None = None,
        lease_id: str | None = None,
        kind: str = "domain-joined",
    ) -> LeaseResult:
        """AddKerberosLease / AddNonDomainJoinedKerberosLease: all gMSAs or nothing."""
        specs = self.parse_credspecs(credspec_texts)
        if user is None and self.config.aws_sm_secret_name is not None:
            # credentials-fetcher's --aws_sm_secret_name: the daemon-wide domainless identity.
            user, kind = self.secret_identity(), "aws-secret"
        with self._add_slots:
            return self._add_lease(specs, user, ownership, lease_id, kind)

    def _add_lease(
        self,
        specs: list[Credspec],
        user: UserIdentity | None,
        ownership: Ownership | None,
        lease_id: str | None,
        kind: str,
    ) -> LeaseResult:
        ownership = ownership or self.default_ownership()
        lease_id = validate_lease_id(lease_id) if lease_id else new_lease_id()
        if self.store.exists(lease_id):
            raise InvalidRequestError(f"lease {lease_id} already exists")
        if user is not None and kind == "domain-joined":
            kind = "domainless"

        # Tickets first, in memory: a DC or KDC failure leaves nothing on disk.
        acquired = [
            self._acquire(spec, user if user is not None else self.host_identity(spec.domain))
            for spec in specs
        ]
        record = LeaseRecord(
            lease_id=lease_id,
            entries=tuple(
                _entry(spec, material)
                for spec, (_, _, material) in zip(specs, acquired, strict=True)
            ),
            domainless_user=user.label if user is not None else None,
            ownership=ownership,
            write_keytab=self.config.write_keytab,
            created_at=self.clock(),
            kind=kind,
        )
        self._publish(record, acquired)
        with self._lock:
            if user is not None:
                self._users[(user.username.lower(), user.domain.lower())] = user
        dirs = tuple(self.store.gmsa_dir(lease_id, s.gmsa_name) for s in specs)
        log.info(
            "created lease %s for %s",
            lease_id,
            ", ".join(s.gmsa_name for s in specs),
            extra={"LEASE_ID": lease_id},
        )
        return LeaseResult(lease_id, dirs, tuple(s.gmsa_name for s in specs))

    def _acquire(
        self, spec: Credspec, identity: Identity
    ) -> tuple[GmsaAccount, tickets.Tgt, KeyMaterial]:
        """A TGT for a new lease's gMSA (shared while young), its failures tagged and watched.

        A DC or KDC that does not answer is what HealthCheck reports, whichever kind of lease
        met it; an answer clears it.
        """
        account = self.account(spec.domain, spec.gmsa_name, identity)
        try:
            tgt, material = account.lease_tgt()
        except CredfetcherError as exc:
            if exc.gmsa is None:
                exc.gmsa = spec.gmsa_name
            if is_dc_outage(exc):
                self.scheduler.last_dc_error = exc.message
            raise
        self.scheduler.last_dc_error = ""
        return account, tgt, material

    def _publish(
        self,
        record: LeaseRecord,
        acquired: Sequence[tuple[GmsaAccount, tickets.Tgt, KeyMaterial]],
    ) -> None:
        """Write every entry's ccache (and keytab) into a staging directory, then publish it.

        ``acquired`` holds, in the order of ``record.entries``, what each entry's account got
        from the KDC. Any failure removes the staging directory: nothing of the lease remains.
        The published lease is registered for renewal and becomes visible to ListLeases.
        """
        lease_id = record.lease_id
        self.store.prepare()
        staging = self.store.stage(lease_id)
        infos = []
        try:
            for (account, tgt, material), entry in zip(acquired, record.entries, strict=True):
                gdir = self.store.staged_entry_dir(staging, entry)
                root = self.store.krb_dir
                infos.append(
                    tickets.store_tgt(tgt, gdir / CCACHE_NAME, record.ownership, root=root)
                )
                if record.write_keytab:
                    write_keytab(
                        gdir / KEYTAB_NAME,
                        tgt.principal,
                        account.keytab_keys(material, rc4=self.config.enable_rc4),
                        record.ownership,
                        root=root,
                    )
            with self.scheduler.lease_lock(lease_id):
                self.store.commit(staging, record)
        except BaseException:
            self.store.discard(staging)
            raise
        with self._lock:
            self._leases[lease_id] = record
            self._index.add(lease_id)
        for (account, _, _), entry, info in zip(acquired, record.entries, infos, strict=True):
            self.scheduler.register(
                account.key, account, self._target(record, entry.gmsa_name), info
            )

    def delete_lease(self, lease_id: str) -> list[Path]:
        """DeleteKerberosLease: remove exactly that lease; return its ccache paths."""
        lease_id = validate_lease_id(lease_id)
        self._ensure_loaded(lease_id)
        with self.scheduler.lease_lock(lease_id):
            try:
                removed = self.store.delete(lease_id)
            except LeaseNotFoundError:
                self.scheduler.unregister_lease(lease_id)
                with self._lock:
                    self._leases.pop(lease_id, None)
                    self._index.remove(lease_id)
                raise
            # Gone from disk first, then from the scheduler: a rebind that registers the lease
            # again in between finds it gone (see _rebind_lease).
            self.scheduler.unregister_lease(lease_id)
        with self._lock:
            self._leases.pop(lease_id, None)
            self._index.remove(lease_id)
        log.info("deleted lease %s", lease_id, extra={"LEASE_ID": lease_id})
        return removed

    def _remove_orphan(self, lease_id: str) -> None:
        with contextlib.suppress(LeaseNotFoundError):
            self.delete_lease(lease_id)

    def renew_domainless(self, user: UserIdentity) -> list[Path]:
        """RenewNonDomainJoinedKerberosLease: new user credentials for that user's leases.

        The credentials are proved first (:meth:`_verified_accounts`): only when they get a TGT
        and read every affected gMSA's password does any lease move to them. A wrong password
        raises that error (UNAUTHENTICATED, naming the user) and leaves every lease renewing
        with the credentials it had, so the scheduler never retries the refused password.
        """
        self._recovered.wait()  # it concerns leases on disk that may not be loaded yet
        with self._lock:
            records = [
                r
                for r in self._leases.values()
                if r.domainless_user is not None and r.domainless_user.lower() == user.label.lower()
            ]
        accounts = self._verified_accounts(user, [e for r in records for e in r.entries])
        with self._lock:
            self._users[(user.username.lower(), user.domain.lower())] = user
        renewed: list[Path] = []
        for record in records:
            errors: list[CredfetcherError] = []
            plan = [(e, accounts[(e.domain, e.gmsa_name.lower())]) for e in record.entries]
            entries = self._rebind_lease(record, plan, errors)
            if errors:
                raise errors[0]
            renewed.extend(self.store.entry_dir(record.lease_id, e) / CCACHE_NAME for e in entries)
        return renewed

    def _verified_accounts(
        self, user: UserIdentity, entries: Sequence[GmsaEntry]
    ) -> dict[tuple[str, str], GmsaAccount]:
        """The account of each (domain, gMSA) in ``entries`` as read by ``user``, each proved.

        Proof is reading the gMSA's managed password as ``user``: the LDAP bind needs the user's
        own TGT (one AS exchange with the password), the read needs the right to the password.
        Nothing is registered before it succeeds, so a refused password leaves no account
        behind; an account already known for these exact credentials has proved them before.
        """
        accounts: dict[tuple[str, str], GmsaAccount] = {}
        for entry in entries:
            slot = (entry.domain, entry.gmsa_name.lower())
            if slot in accounts:
                continue
            candidate = GmsaAccount(
                entry.gmsa_name,
                entry.domain,
                user,
                self.directory(entry.domain),
                lifetime=self.config.ticket_lifetime,
                renew_lifetime=self.config.renew_lifetime,
                clock=self.clock,
            )
            with self._lock:
                account = self._accounts.get(candidate.key, candidate)
            try:
                account.material()
            except CredfetcherError as exc:
                if is_dc_outage(exc):
                    self.scheduler.last_dc_error = exc.message
                raise
            with self._lock:
                accounts[slot] = self._accounts.setdefault(candidate.key, account)
        return accounts

    def iter_leases(
        self, *, after: str = "", gmsa: str = "", state: str = ""
    ) -> Iterator[LeaseView]:
        """Leases in lease-id order, from the first id greater than ``after``, made lazily.

        ``gmsa`` (case-insensitive) and ``state`` filter; empty means all. The ids are read
        from the sorted index a chunk at a time as iteration goes (a page costs the page, not
        every lease): a lease deleted meanwhile is skipped, one added past the position reached
        is seen, and no lease is seen twice.
        """
        wanted = gmsa.lower()
        for lease_id in self._index.walk(after, self._lock):
            self._ensure_loaded(lease_id)
            with self._lock:
                record = self._leases.get(lease_id)
            if record is None:
                continue
            if wanted and all(e.gmsa_name.lower() != wanted for e in record.entries):
                continue
            view = self._view(record)
            if not state or view.state == state:
                yield view

    def _view(self, record: LeaseRecord) -> LeaseView:
        tviews = []
        states = set()
        for entry in record.entries:
            status = self.scheduler.status(record.lease_id, entry.gmsa_name)
            if status is None:
                states.add("unknown")
                tviews.append(
                    TicketView(
                        entry.gmsa_name,
                        entry.domain,
                        self.store.entry_dir(record.lease_id, entry),
                        0,
                        0,
                        "",
                        0,
                    )
                )
                continue
            if status.waiting_for_credentials:
                states.add("waiting-for-credentials")
            elif status.last_error:
                states.add("failing")
            tviews.append(
                TicketView(
                    gmsa=entry.gmsa_name,
                    domain=entry.domain,
                    directory=self.store.entry_dir(record.lease_id, entry),
                    expires_at=status.endtime,
                    renew_until=status.renew_till,
                    last_error=status.last_error
                    or (
                        "waiting for RenewNonDomainJoinedKerberosLease (credentials are "
                        "kept in memory only and were lost at restart)"
                        if status.waiting_for_credentials
                        else ""
                    ),
                    next_renewal_at=status.next_attempt,
                )
            )
        state = next(
            (s for s in ("waiting-for-credentials", "failing", "unknown") if s in states),
            "active",
        )
        return LeaseView(
            record.lease_id, record.domainless_user is not None, state, tuple(tviews)
        )

    def metrics_state(self) -> LiveState:
        """Leases by state and each account's earliest ticket end, for the metrics endpoint."""
        counts, ends = self.scheduler.live_counts()
        return LiveState(leases_by_state=counts, ticket_ends=ends, now=self.clock())

    def health(self) -> tuple[bool, str]:
        """ "OK" only when the renewal loop is alive, the last DC/KDC exchange succeeded and,
        with CF_AWS_SM_SECRET_NAME, its identity could be read."""
        problems = []
        if not self.scheduler.alive(max_age=60.0):
            problems.append("renewal loop is not running")
        failing = self.scheduler.failing_groups()
        if failing:
            principal, error = failing[0]
            more = f" (+{len(failing) - 1} more)" if len(failing) > 1 else ""
            problems.append(f"renewal failing for {principal}{more}: {error}")
        elif self.scheduler.last_dc_error:
            problems.append(f"domain controller unreachable: {self.scheduler.last_dc_error}")
        # One lease's files failing (a full disk would fail them all; a tampered directory only
        # its own) is shown by ListLeases; HealthCheck only when no lease can be written.
        write_error = self.scheduler.all_writes_failing()
        if write_error:
            problems.append(f"no lease's files can be written: {write_error}")
        if self._sm_error and self._sm is None:
            # Every AddKerberosLease needs this identity and there is none: say so before callers
            # find out. A failed re-read while the last identity still serves is only logged.
            problems.append(f"cannot read CF_AWS_SM_SECRET_NAME: {self._sm_error}")
        if problems:
            return False, "; ".join(problems)
        return True, "OK"

    # -- AWS: ARN leases and CF_AWS_SM_SECRET_NAME (see credfetcher.aws) --------------------

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
        lease_id = lease_ids[0]
        dirs = [ref.directory for ref in refs]
        if len(set(dirs)) != len(dirs):
            raise InvalidRequestError(f"two credspec ARNs name the same directory: {dirs}")
        if self.store.exists(lease_id):
            raise InvalidRequestError(f"lease {lease_id} already exists")

        endpoint = self.config.aws_endpoint_url
        account = aws.caller_account(credentials, endpoint)
        read_secret = self._secret_reader(credentials)
        items: list[tuple[CredspecArn, Credspec, UserIdentity]] = []
        seen: dict[tuple[str, str], str] = {}
        for ref in refs:
            text = aws.fetch_credspec(ref, credentials, endpoint_url=endpoint, account=account)
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
            items.append((ref, spec, read_secret(spec.credential_arn).user))
        with self._add_slots:
            return self._add_arn_lease(lease_id, items, ownership or self.default_ownership())

    def _add_arn_lease(
        self,
        lease_id: str,
        items: list[tuple[CredspecArn, Credspec, UserIdentity]],
        ownership: Ownership,
    ) -> ArnLeaseResult:
        acquired = [self._acquire(spec, user) for _, spec, user in items]
        record = LeaseRecord(
            lease_id=lease_id,
            entries=tuple(
                _entry(spec, material, directory=ref.directory)
                for (ref, spec, _), (_, _, material) in zip(items, acquired, strict=True)
            ),
            domainless_user=ARN_LEASE_USER,
            ownership=ownership,
            write_keytab=self.config.write_keytab,
            created_at=self.clock(),
            kind="arn",
        )
        self._publish(record, acquired)
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

    def _secret_reader(self, credentials: AwsCredentials) -> Callable[[str], SecretIdentity]:
        """Reads identity secrets with one request's ``credentials``, each secret ARN once."""
        endpoint = self.config.aws_endpoint_url
        return functools.cache(
            lambda arn: aws.read_identity_secret(arn, credentials, endpoint_url=endpoint)
        )

    def renew_arn_leases(self, credentials: AwsCredentials) -> int:
        """RenewKerberosArnLease: re-read every ARN lease's secrets with ``credentials``, renew.

        Every ARN lease is attempted; the first error is raised after all were tried (its
        message counts the failures). Returns the number of gMSA tickets renewed.
        """
        self._recovered.wait()  # it concerns leases on disk that may not be loaded yet
        with self._lock:
            records = [r for r in self._leases.values() if r.kind == "arn"]
        read_secret = self._secret_reader(credentials)
        errors: list[CredfetcherError] = []
        renewed = 0
        for record in records:
            try:
                plan = []
                for entry in record.entries:
                    if entry.credential_arn is None:
                        raise InvalidRequestError(
                            f"lease {record.lease_id}: gMSA {entry.gmsa_name} has no "
                            "CredentialArn in its metadata"
                        )
                    user = read_secret(entry.credential_arn).user
                    plan.append((entry, self.account(entry.domain, entry.gmsa_name, user)))
            except CredfetcherError as exc:
                errors.append(exc)
                continue
            renewed += len(self._rebind_lease(record, plan, errors))
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.message = f"{first.message} (and {len(errors) - 1} more failure(s))"
            raise first
        return renewed

    def _rebind_lease(
        self,
        record: LeaseRecord,
        plan: list[tuple[GmsaEntry, GmsaAccount]],
        errors: list[CredfetcherError],
    ) -> list[GmsaEntry]:
        """Give each gMSA of ``record`` its own account (identity) and renew it now; return the
        entries renewed (none when the lease was deleted meanwhile)."""
        with self._lock:
            if record.lease_id not in self._leases:
                return []  # deleted meanwhile
        # Per-target moves: each gMSA of an ARN lease may come with a different identity.
        now = self.clock()
        for entry, account in plan:
            target = self._target(record, entry.gmsa_name)
            # What the daemon last wrote there, from memory: the lease's files are never read.
            info = self.scheduler.ticket_info(record.lease_id, entry.gmsa_name)
            self.scheduler.move_target(
                account.key, account, target, info if info and info.endtime > now else None
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

    def secret_identity(self, *, refresh: bool = False) -> UserIdentity | None:
        """The CF_AWS_SM_SECRET_NAME identity (None when unset), re-read every CF_AWS_SM_REFRESH.

        A changed secret (another user or password) moves every lease made with it to the new
        identity, once that identity has proved it can read every one of their gMSAs'
        passwords; until then the leases keep the identity they had. A refused password is
        not tried again for CF_REJECTED_PASSWORD_RETRY. Raises the AWS or DC error when the
        secret cannot be read or used and no identity is cached.
        """
        name = self.config.aws_sm_secret_name
        if name is None:
            return None
        with self._sm_lock:
            current = self._sm
            now = time.monotonic()
            if (current is not None and not refresh
                    and now - self._sm_read_at < self.config.aws_sm_refresh):
                return current.user
            try:
                fresh = aws.read_identity_secret(
                    name, None, endpoint_url=self.config.aws_endpoint_url
                )
            except CredfetcherError as exc:
                self._sm_error = exc.message
                raise
            self._sm_read_at = now
            if current is not None and current.user.key == fresh.user.key:
                self._sm, self._sm_error = fresh, ""
                return fresh.user
            try:
                self._prove_secret_identity(fresh.user, now)
            except CredfetcherError as exc:
                self._sm_error = exc.message
                if current is None:
                    raise
                log.warning(
                    "secret %s now holds %s, which cannot be used (%s); its leases keep %s",
                    name,
                    fresh.user.label,
                    exc.message,
                    current.user.label,
                )
                return current.user
            self._sm, self._sm_error = fresh, ""
        log.info("identity from secret %s: %s", name, fresh.user.label)
        self._attach_secret_leases(fresh.user)
        return fresh.user

    def _prove_secret_identity(self, user: UserIdentity, now: float) -> None:
        """Raise unless ``user`` can read the gMSA passwords of every CF_AWS_SM_SECRET_NAME lease.

        A refusal of the password itself is remembered: the same secret raises the same error
        without asking the DC until CF_REJECTED_PASSWORD_RETRY has passed.
        """
        refused = self._sm_refused
        if refused is not None and refused[0] == user.key and now < refused[1]:
            raise BindError(
                f"{refused[2]} (not tried again for {refused[1] - now:.0f} s: "
                "CF_REJECTED_PASSWORD_RETRY)",
                identity=user.label,
            )
        with self._lock:
            records = [r for r in self._leases.values() if r.kind == "aws-secret"]
        entries = [e for r in records for e in r.entries]
        try:
            self._verified_accounts(user, entries)
        except (BindError, KeyRejectedError) as exc:
            self._sm_refused = (user.key, now + self.config.rejected_password_retry, exc.message)
            raise
        self._sm_refused = None

    def _attach_secret_leases(self, user: UserIdentity) -> None:
        with self._lock:
            records = [r for r in self._leases.values() if r.kind == "aws-secret"]
        errors: list[CredfetcherError] = []
        for record in records:
            self._relabel(record, user.label)
            plan = [(e, self.account(e.domain, e.gmsa_name, user)) for e in record.entries]
            self._rebind_lease(record, plan, errors)
        for error in errors:
            log.warning("renewal with the identity from the secret failed: %s", error.message)

    def _relabel(self, record: LeaseRecord, user_label: str) -> None:
        """Record in the lease's metadata which identity now reads its gMSAs' passwords."""
        self._recovered.wait()  # it concerns leases on disk that may not be loaded yet
        if record.domainless_user == user_label:
            return
        with self.scheduler.lease_lock(record.lease_id), self._lock:
            if record.lease_id not in self._leases:
                return  # deleted meanwhile
            record = dataclasses.replace(record, domainless_user=user_label)
            self.store.update_metadata(record)
            self._leases[record.lease_id] = record

    def refresh_secret_identity(self) -> None:
        """One check of the periodic refresh: re-read when due, or early while renewals fail."""
        self._recovered.wait()  # it concerns leases on disk that may not be loaded yet
        if self.config.aws_sm_secret_name is None:
            return
        with self._lock:
            records = [r for r in self._leases.values() if r.kind == "aws-secret"]
        failing = any(
            (status := self.scheduler.status(r.lease_id, e.gmsa_name)) is not None
            and (status.last_error or status.waiting_for_credentials)
            for r in records
            for e in r.entries
        )
        age = time.monotonic() - self._sm_read_at
        if (
            self._sm is None
            or age >= self.config.aws_sm_refresh
            or (failing and age >= self.secret_check_interval)
        ):
            self.secret_identity(refresh=True)

    @property
    def secret_check_interval(self) -> float:
        return min(SECRET_RETRY, self.config.aws_sm_refresh)

    def secret_refresh_loop(self, stop: threading.Event) -> None:
        """Thread body: :meth:`refresh_secret_identity` every check interval until ``stop``."""
        while not stop.wait(self.secret_check_interval):
            try:
                self.refresh_secret_identity()
            except CredfetcherError as exc:
                log.warning("cannot read CF_AWS_SM_SECRET_NAME: %s", exc.message)
            except Exception:
                log.exception("refreshing the CF_AWS_SM_SECRET_NAME identity failed")
