"""Writing a new lease: its tickets got first, its files staged, then published in one rename.

A DC or KDC failure leaves nothing on disk (the TGTs are got in memory before any file is
written), and a write failure removes the staging directory: a request either publishes a complete
lease or leaves nothing behind (:meth:`credfetcher.leases.LeaseStore.commit`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from credfetcher import tickets
from credfetcher.accounts import GmsaAccount, Identity, KeyMaterial
from credfetcher.config import Config
from credfetcher.credentials import Credentials, CredentialSource
from credfetcher.credspec import Credspec
from credfetcher.errors import CredfetcherError, InvalidRequestError
from credfetcher.files import Ownership
from credfetcher.keytab import write_keytab
from credfetcher.krbcodes import is_dc_outage
from credfetcher.lease_index import LeaseIndex
from credfetcher.leases import (
    CCACHE_NAME,
    KEYTAB_NAME,
    GmsaEntry,
    LeaseRecord,
    LeaseStore,
    LoadedLease,
)
from credfetcher.renewal import RenewalScheduler, Target

log = logging.getLogger(__name__)

Acquired = tuple[GmsaAccount, tickets.Tgt, KeyMaterial]


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


def entry(spec: Credspec, material: KeyMaterial, *, directory: str | None = None) -> GmsaEntry:
    """The metadata of one gMSA of a new lease."""
    return GmsaEntry(
        gmsa_name=spec.gmsa_name,
        domain=spec.domain,
        distinguished_name=material.dn,
        credspec=spec.raw,
        credential_arn=spec.credential_arn,
        directory=directory,
    )


def target(store: LeaseStore, record: LeaseRecord, gmsa: str) -> Target:
    """Where the scheduler writes ``gmsa``'s renewed ticket (and keys) for ``record``."""
    found = next((e for e in record.entries if e.gmsa_name == gmsa), None)
    directory = (
        store.entry_dir(record.lease_id, found)
        if found is not None
        else store.gmsa_dir(record.lease_id, gmsa)
    )
    return Target(
        lease_id=record.lease_id,
        gmsa=gmsa,
        ccache=directory / CCACHE_NAME,
        ownership=record.ownership,
        keytab=directory / KEYTAB_NAME if record.write_keytab else None,
    )


def acquire(
    credentials: Credentials, scheduler: RenewalScheduler, spec: Credspec, identity: Identity
) -> Acquired:
    """A TGT for a new lease's gMSA (shared while young), its failures tagged and watched.

    A DC or KDC that does not answer is what HealthCheck reports, whichever kind of lease met
    it; an answer clears it.
    """
    account = credentials.account(spec.domain, spec.gmsa_name, identity)
    try:
        tgt, material = account.lease_tgt()
    except CredfetcherError as exc:
        if exc.gmsa is None:
            exc.gmsa = spec.gmsa_name
        if is_dc_outage(exc):
            scheduler.last_dc_error = exc.message
        raise
    scheduler.last_dc_error = ""
    return account, tgt, material


def publish(
    store: LeaseStore,
    scheduler: RenewalScheduler,
    index: LeaseIndex,
    record: LeaseRecord,
    acquired: Sequence[Acquired],
    *,
    rc4: bool,
) -> None:
    """Write every entry's ccache (and keytab) into a staging directory, then publish it.

    ``acquired`` holds, in the order of ``record.entries``, what each entry's account got from
    the KDC. Any failure removes the staging directory: nothing of the lease remains. The
    published lease is registered for renewal and becomes visible to ListLeases.
    """
    lease_id = record.lease_id
    store.prepare()
    staging = store.stage(lease_id)
    infos = []
    try:
        for (account, tgt, material), gmsa in zip(acquired, record.entries, strict=True):
            gdir = store.staged_entry_dir(staging, gmsa)
            root = store.krb_dir
            infos.append(tickets.store_tgt(tgt, gdir / CCACHE_NAME, record.ownership, root=root))
            if record.write_keytab:
                write_keytab(
                    gdir / KEYTAB_NAME,
                    tgt.principal,
                    account.keytab_keys(material, rc4=rc4),
                    record.ownership,
                    root=root,
                )
        with scheduler.lease_lock(lease_id):
            store.commit(staging, record)
    except BaseException:
        store.discard(staging)
        raise
    index.put(record)
    for (account, _, _), gmsa, info in zip(acquired, record.entries, infos, strict=True):
        scheduler.register(account.key, account, target(store, record, gmsa.gmsa_name), info)


class Recovery:
    """What the leases loaded at start-up share: the ticket in each distinct ccache, parsed once
    rather than once per lease (the leases of a renewal group hold the same bytes: their files
    are written from one TGT)."""

    #: Distinct ccaches remembered at most; a full memo starts again.
    TICKETS = 256

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self._tickets: dict[bytes, tickets.TicketInfo | None] = {}

    def host_account(self, domain: str, gmsa: str) -> GmsaAccount:
        """The host's shared account (:meth:`Credentials.account` finds a known one by key)."""
        return self._credentials.account(domain, gmsa, self._credentials.host_identity(domain))

    def ticket_info(self, data: bytes) -> tickets.TicketInfo | None:
        """:func:`credfetcher.tickets.ticket_info_from_bytes`, a pure function of ``data``."""
        try:
            return self._tickets[data]
        except KeyError:
            pass
        info = tickets.ticket_info_from_bytes(data)
        if len(self._tickets) >= self.TICKETS:
            self._tickets.clear()
        self._tickets[data] = info
        return info


def register_recovered(
    store: LeaseStore,
    scheduler: RenewalScheduler,
    recovery: Recovery,
    loaded: LoadedLease,
    *,
    now: float,
) -> None:
    """Register a lease loaded from disk for renewal, each gMSA with the ticket it holds.

    A domainless lease's credentials were in memory only: its gMSAs wait, registered under a
    "waiting" key with no account, until a renewal or the secret's refresh gives them one.
    """
    record = loaded.record
    for gmsa in record.entries:
        tgt = target(store, record, gmsa.gmsa_name)
        # Read from a checked fd at load (never a FIFO, a symlink or a file the daemon did not
        # make); anything else reads as "no ticket": renewed now, and the write reports it.
        data = loaded.ccaches.get(gmsa.dir_name)
        info = recovery.ticket_info(data) if data else None
        fresh = info if info is not None and info.endtime > now + 60 else None
        if record.domainless_user is not None:
            account = None
            key: object = ("waiting", record.domainless_user.lower(), gmsa.domain)
            # Even an expired ticket tells when renewing stopped being possible: the orphan
            # clock of a lease waiting for its credentials starts there.
            fresh = info
        else:
            account = recovery.host_account(gmsa.domain, gmsa.gmsa_name)
            key = account.key
        scheduler.register(key, account, tgt, fresh)


def new_record(
    lease_id: str,
    source: CredentialSource,
    specs: Sequence[Credspec],
    acquired: Sequence[Acquired],
    directories: Sequence[str | None],
    *,
    ownership: Ownership,
    write_keytab: bool,
    created_at: float,
) -> LeaseRecord:
    """The metadata of a new lease: per credspec what ``source``'s identity read (``acquired``)
    and its directory (None: named after the gMSA), in request order."""
    return LeaseRecord(
        lease_id=lease_id,
        entries=tuple(
            entry(spec, material, directory=directory)
            for spec, (_, _, material), directory in zip(specs, acquired, directories, strict=True)
        ),
        domainless_user=source.label,
        ownership=ownership,
        write_keytab=write_keytab,
        created_at=created_at,
        kind=source.kind,
    )


def default_ownership(config: Config) -> Ownership:
    return Ownership(uid=config.ccache_owner, gid=config.ccache_group, mode=config.ccache_mode)


def ownership_for(config: Config, uid: int | None, gid: int | None, mode: int | None) -> Ownership:
    """Per-request ownership, falling back to the daemon-wide settings field by field."""
    default = default_ownership(config)
    if mode is not None and (mode & ~0o777 or mode & 0o002):
        raise InvalidRequestError(
            f"ownership mode {mode:#o} is not a permission mode without world-write"
        )
    for name, value in (("uid", uid), ("gid", gid)):
        if value is not None and not 0 <= value < 2**32 - 1:
            raise InvalidRequestError(f"ownership {name} {value} is out of range")
    if mode is not None and mode & 0o004:
        if not config.allow_world_readable:
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
