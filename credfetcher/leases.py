"""The lease store: lease directories and their metadata under krbdir, all-or-nothing on disk.

Layout (credentials-fetcher's, so the ECS agent and scripts find everything where they expect)::

    <krbdir>/<lease_id>/<lease_id>_metadata.json
    <krbdir>/<lease_id>/<gMSA>/krb5cc            (and krb5.keytab when asked)

A lease is built in a staging directory ``<krbdir>/.cf-tmp-<lease_id>-<random>`` holding its
metadata and every ccache, then renamed to ``<krbdir>/<lease_id>`` in one step: a lease directory
without metadata, or metadata without its files, never exists, even across a crash (rename(2) is
atomic, and krbdir is fsynced before the RPC answers, so an acknowledged lease survives power
loss). Deletion renames the lease out of the way first, then removes it. Start-up removes every
``.cf-tmp-*`` leftover. Every path is built from a validated lease id and a validated gMSA name and
checked to stay inside krbdir before anything is removed.

Every file is written through :mod:`credfetcher.files`: staged in ``<krbdir>/.cf-private``
(0700, never a lease) and renamed into place relative to a directory fd; start-up empties it.
Lease and gMSA directories are 0711: a container's non-root app can enter the one bind-mounted
into it, but no host user can list which leases or files exist. Metadata (which names domainless
users, DNs and secret ARNs) is 0600.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from credfetcher.credspec import validate_gmsa_name
from credfetcher.errors import InvalidRequestError, LeaseNotFoundError, StorageError
from credfetcher.files import (
    PRIVATE_DIR,
    TEMP_PREFIX,
    Ownership,
    TamperedError,
    atomic_write_bytes,
    clean_private_dir,
    remove_tree_inside,
)
from credfetcher.leasedir import LeaseDir
from credfetcher.values import LeaseId

log = logging.getLogger(__name__)

# A lease directory named by the caller (ARN leases' ``#<lease_id>/<dir>``): one path component,
# no dots (so never ``..`` and never ``<lease_id>_metadata.json``).
DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
CCACHE_NAME = "krb5cc"
KEYTAB_NAME = "krb5.keytab"
METADATA_VERSION = 1
# Enterable by anyone (a non-root app must reach its bind-mounted gMSA directory), listable by
# root only; the files inside carry the lease's own owner and mode.
DIR_MODE = 0o711
METADATA_MODE = 0o600


def new_lease_id() -> str:
    """20 lowercase hex characters from the OS CSPRNG, as credentials-fetcher makes them."""
    return LeaseId.new()


def validate_lease_id(lease_id: str) -> str:
    """Accept a random lease id or a named one (start-up, ARN); anything else is refused.

    :class:`~credfetcher.values.LeaseId` matches the whole string: ``re``'s ``$`` also matches
    before a final newline, which let ``"<id>\\n"`` through here before.
    """
    return LeaseId(lease_id)


def validate_dir_name(name: str) -> str:
    """Accept a caller-chosen directory name (letters, digits, '-', '_'; at most 128)."""
    if DIR_NAME.fullmatch(name):
        return name
    shown = name[:64].encode("unicode_escape").decode("ascii")
    raise InvalidRequestError(
        f"directory name {shown!r} must be letters, digits, '-' and '_' (at most 128, "
        "starting with a letter or digit)"
    )


@dataclass(frozen=True)
class GmsaEntry:
    """One gMSA of a lease."""

    gmsa_name: str
    domain: str
    distinguished_name: str
    credspec: str
    credential_arn: str | None = None
    directory: str | None = None
    """The directory's name when the caller chose it (ARN leases); None: the gMSA's name."""

    @property
    def dir_name(self) -> str:
        return self.directory or self.gmsa_name


@dataclass(frozen=True)
class LeaseRecord:
    """What the metadata file says about a lease."""

    lease_id: str
    entries: tuple[GmsaEntry, ...]
    domainless_user: str | None = None
    ownership: Ownership = field(default_factory=Ownership)
    write_keytab: bool = False
    created_at: float = field(default_factory=time.time)
    kind: str = "domain-joined"  # or "domainless", "arn"


@dataclass(frozen=True)
class LoadedLease:
    """A lease loaded from disk at start-up, with what its files held then."""

    record: LeaseRecord
    ccaches: dict[str, bytes | None]
    """gMSA directory name → its ccache's bytes; None: none there, or not safe to read."""


class LeaseStore:
    """Lease directories under ``krb_dir``."""

    def __init__(self, krb_dir: Path) -> None:
        self.krb_dir = krb_dir

    # -- paths -----------------------------------------------------------------------------

    def lease_dir(self, lease_id: str) -> Path:
        return self.krb_dir / validate_lease_id(lease_id)

    def gmsa_dir(self, lease_id: str, gmsa_name: str) -> Path:
        return self.lease_dir(lease_id) / validate_gmsa_name(gmsa_name)

    def entry_dir(self, lease_id: str, entry: GmsaEntry) -> Path:
        """The directory of one gMSA of a lease (its own name, or the one the caller chose)."""
        return self.lease_dir(lease_id) / _checked_dir_name(entry)

    def metadata_path(self, lease_id: str) -> Path:
        return self.lease_dir(lease_id) / f"{lease_id}_metadata.json"

    def exists(self, lease_id: str) -> bool:
        return self.metadata_path(lease_id).is_file()

    # -- creation --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create krbdir (0755: containers traverse it to reach their bind-mounted directory)."""
        try:
            self.krb_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create {self.krb_dir}: {exc.strerror}", path=str(self.krb_dir)
            ) from exc

    def stage(self, lease_id: str) -> Path:
        """A fresh, private staging directory for a lease being built."""
        validate_lease_id(lease_id)
        staging = self.krb_dir / f"{TEMP_PREFIX}{lease_id}-{secrets.token_hex(4)}"
        try:
            staging.mkdir(mode=DIR_MODE)
            # mkdir's mode passes through the umask (027 on hardened hosts would give 0710):
            # set it outright, a non-root container must traverse this directory.
            staging.chmod(DIR_MODE)
        except OSError as exc:
            raise StorageError(
                f"cannot create {staging}: {exc.strerror}", path=str(staging)
            ) from exc
        return staging

    @staticmethod
    def staged_entry_dir(staging: Path, entry: GmsaEntry) -> Path:
        path = staging / _checked_dir_name(entry)
        path.mkdir(mode=DIR_MODE, exist_ok=True)
        path.chmod(DIR_MODE)  # the container's mount root: not left to the umask either
        return path

    def commit(self, staging: Path, record: LeaseRecord) -> None:
        """Write the metadata into ``staging`` and rename it to the lease directory, durably."""
        final = self.lease_dir(record.lease_id)
        atomic_write_bytes(
            staging / f"{record.lease_id}_metadata.json",
            encode_metadata(record, final),
            Ownership(mode=METADATA_MODE),
            root=self.krb_dir,
        )
        try:
            os.rename(staging, final)
        except OSError as exc:
            raise StorageError(
                f"cannot publish lease {record.lease_id}: {exc.strerror}", path=str(final)
            ) from exc
        _fsync_dir(self.krb_dir)

    def update_metadata(self, record: LeaseRecord) -> None:
        """Rewrite an existing lease's metadata in place (atomically)."""
        # TamperedError: written; files.py logged what it replaced, the metadata is ours again.
        with contextlib.suppress(TamperedError):
            atomic_write_bytes(
                self.metadata_path(record.lease_id),
                encode_metadata(record, self.lease_dir(record.lease_id)),
                Ownership(mode=METADATA_MODE),
                root=self.krb_dir,
            )

    def discard(self, staging: Path) -> None:
        """Remove a staging directory after a failed request: nothing of the lease remains."""
        if staging.exists():
            remove_tree_inside(self.krb_dir, staging)

    # -- deletion and recovery -------------------------------------------------------------

    def delete(self, lease_id: str) -> list[Path]:
        """Remove a lease; return the ccache paths it held. Unknown id: LeaseNotFoundError."""
        final = self.lease_dir(lease_id)
        if not final.is_dir() or final.is_symlink():
            raise LeaseNotFoundError(f"no lease {lease_id!r}")
        removed = sorted(final.glob(f"*/{CCACHE_NAME}"))
        doomed = self.krb_dir / f"{TEMP_PREFIX}del-{lease_id}-{secrets.token_hex(4)}"
        try:
            os.rename(final, doomed)
        except FileNotFoundError as exc:
            raise LeaseNotFoundError(f"no lease {lease_id!r}") from exc
        except OSError as exc:
            raise StorageError(
                f"cannot remove lease {lease_id}: {exc.strerror}", path=str(final)
            ) from exc
        _fsync_dir(self.krb_dir)
        remove_tree_inside(self.krb_dir, doomed)
        return removed

    def recover(self) -> list[LeaseRecord]:
        """Clean up after a crash and return every lease found on disk (:meth:`scan`, then
        :meth:`load` of each)."""
        return [record for name in self.scan() if (record := self.load(name)) is not None]

    def scan(self) -> list[str]:
        """Clean up after a crash; return the names of the lease directories, sorted.

        Staging and half-deleted directories and the private directory's leftovers are removed.
        One directory listing and no file read: a daemon serves right after this and loads the
        leases themselves (:meth:`load`) in the background.
        """
        self.prepare()
        leftovers = clean_private_dir(self.krb_dir)
        if leftovers:
            log.info("removed %d leftover(s) of interrupted writes", leftovers)
        names: list[str] = []
        with os.scandir(self.krb_dir) as entries:
            for entry in entries:
                name = entry.name
                if name == PRIVATE_DIR:
                    continue
                if name.startswith(TEMP_PREFIX):
                    log.info("removing leftover %s from an interrupted request", entry.path)
                    _remove(self.krb_dir, Path(entry.path))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    names.append(name)
        return sorted(names)

    def load(self, name: str) -> LeaseRecord | None:
        """The lease in directory ``name`` (:meth:`load_lease`), or None."""
        loaded = self.load_lease(name)
        return None if loaded is None else loaded.record

    def load_lease(self, name: str) -> LoadedLease | None:
        """The lease in directory ``name`` and its gMSAs' ccaches, or None when it is gone or
        unreadable.

        A lease directory whose metadata is missing or unreadable cannot be served or renewed
        and is removed, with a warning naming it. Metadata and ccaches are read from checked fds
        (a FIFO, a symlink or a foreign file at their names is unreadable, never waited on or
        followed), all relative to the lease directory opened once (:mod:`credfetcher.leasedir`).
        Older versions' modes are tightened and their leftover temp files removed on the way.
        """
        meta = f"{name}_metadata.json"
        with LeaseDir(self.krb_dir, name) as lease:
            try:
                validate_lease_id(name)
                data = lease.read_metadata(meta, owner=os.geteuid())
                if data is None:
                    if not os.path.lexists(lease.path):
                        return None  # deleted meanwhile
                    raise ValueError("no metadata")
                record = decode_metadata(data)
                if record.lease_id != name:
                    raise ValueError(f"metadata names lease {record.lease_id!r}")
            except (InvalidRequestError, OSError, ValueError, KeyError, TypeError) as exc:
                reason: object = exc
            except StorageError as exc:
                reason = exc.message
            else:
                return LoadedLease(record, self._tidy(lease, record))
        entry = self.krb_dir / name
        log.warning("removing %s: not a readable lease (%s)", entry, reason)
        _remove(self.krb_dir, entry)
        return None

    @staticmethod
    def _tidy(lease: LeaseDir, record: LeaseRecord) -> dict[str, bytes | None]:
        """Give what older versions made today's modes (they made lease directories 0755 and
        metadata 0644: any host user could list leases and read domainless users, DNs, secret
        ARNs), remove the temp files they left, and read each gMSA directory's ccache."""
        # Names decode_metadata validated (_entry): each a gMSA name or a checked directory name.
        dirs = list(dict.fromkeys(gmsa.dir_name for gmsa in record.entries))
        meta = f"{record.lease_id}_metadata.json"
        if lease.tighten(meta, METADATA_MODE, dirs, DIR_MODE):
            log.info("lease %s: directories set to 0711 and metadata to 0600", record.lease_id)
        owner = record.ownership.expected_uid
        ccaches: dict[str, bytes | None] = {}
        for name in dirs:
            lease.remove_old_temps(name)
            ccaches[name] = lease.read_ticket_file(name, CCACHE_NAME, owner)
        return ccaches

    def iter_lease_ids(self) -> Iterator[str]:
        for entry in self.krb_dir.iterdir():
            if (
                not entry.name.startswith(".")
                and (entry / f"{entry.name}_metadata.json").is_file()
            ):
                yield entry.name


def _remove(root: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree_inside(root, path)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_metadata(record: LeaseRecord, lease_dir: Path) -> bytes:
    """credentials-fetcher's metadata shape, plus a ``credfetcher`` object of our own."""
    info = [
        {
            "krb_file_path": str(lease_dir / e.dir_name / CCACHE_NAME),
            "service_account_name": e.gmsa_name,
            "domain_name": e.domain,
            "domainless_user": record.domainless_user or "",
            "credspec_info": e.credspec,
            "distinguished_name": e.distinguished_name,
            "credential_arn": e.credential_arn or "",
        }
        for e in record.entries
    ]
    doc: dict[str, Any] = {
        "krb_ticket_info": info,
        "credfetcher": {
            "version": METADATA_VERSION,
            "lease_id": record.lease_id,
            "kind": record.kind,
            "created_at": record.created_at,
            "write_keytab": record.write_keytab,
            "ownership": asdict(record.ownership),
        },
    }
    return json.dumps(doc, indent=2).encode()


def _checked_dir_name(entry: GmsaEntry) -> str:
    if entry.directory is not None:
        return validate_dir_name(entry.directory)
    return validate_gmsa_name(entry.gmsa_name)


def _parent_name(path: str) -> str:
    """``Path(path).parent.name`` without a Path per lease (start-up decodes one per lease): the
    last but one of the components pathlib keeps (it drops empty and ``.`` ones)."""
    parts = [part for part in path.split("/") if part and part != "."]
    return parts[-2] if len(parts) > 1 else ""


@functools.lru_cache(maxsize=1024)
def _entry(
    account_name: str, domain: str, *, dn: str, credspec: str, arn: str | None, parent: str
) -> GmsaEntry:
    """One gMSA of a lease's metadata, validated. Cached: at start-up, every lease of a gMSA
    repeats the same entry (frozen, so shared), and validating it is most of decoding one."""
    gmsa_name = validate_gmsa_name(account_name)
    # The caller-chosen directory: krb_file_path's parent, when not the gMSA name.
    directory = validate_dir_name(parent) if parent and parent != account_name else None
    return GmsaEntry(
        gmsa_name=gmsa_name,
        domain=domain,
        distinguished_name=dn,
        credspec=credspec,
        credential_arn=arn,
        directory=directory,
    )


def decode_metadata(data: bytes) -> LeaseRecord:
    doc = json.loads(data)
    ours = doc["credfetcher"]
    if ours.get("version") != METADATA_VERSION:
        raise ValueError(f"unknown metadata version {ours.get('version')!r}")
    entries = tuple(
        _entry(
            str(i["service_account_name"]),
            str(i["domain_name"]),
            dn=str(i.get("distinguished_name", "")),
            credspec=str(i.get("credspec_info", "")),
            arn=str(i.get("credential_arn") or "") or None,
            parent=_parent_name(str(i.get("krb_file_path") or "")),
        )
        for i in doc["krb_ticket_info"]
    )
    users = {str(i.get("domainless_user") or "") for i in doc["krb_ticket_info"]}
    own = ours.get("ownership") or {}
    return LeaseRecord(
        lease_id=validate_lease_id(str(ours["lease_id"])),
        entries=entries,
        domainless_user=next(iter(users - {""}), None),
        ownership=Ownership(
            uid=own.get("uid"), gid=own.get("gid"), mode=int(own.get("mode", 0o600))
        ),
        write_keytab=bool(ours.get("write_keytab", False)),
        created_at=float(ours.get("created_at", 0.0)),
        kind=str(ours.get("kind", "domain-joined")),
    )
