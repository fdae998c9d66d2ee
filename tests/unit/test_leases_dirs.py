"""Lease directories are enterable (not listable) by a container's non-root user whatever the
daemon's umask; metadata is root's alone; the private staging directory is never a lease."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from credfetcher.errors import InvalidRequestError
from credfetcher.files import PRIVATE_DIR
from credfetcher.leases import (
    GmsaEntry,
    LeaseRecord,
    LeaseStore,
    new_lease_id,
    validate_dir_name,
    validate_lease_id,
)


@pytest.fixture(params=[0o022, 0o027, 0o077], ids=lambda m: f"umask-{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask: int = request.param
    old = os.umask(mask)
    yield mask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_lease_and_gmsa_directories_are_0711(tmp_path: Path, umask: int) -> None:
    store = LeaseStore(tmp_path / "krbdir")
    store.prepare()
    lease_id = new_lease_id()
    staging = store.stage(lease_id)
    entry = GmsaEntry("webapp01", "example.com", "CN=webapp01", "{}")
    store.staged_entry_dir(staging, entry)
    record = LeaseRecord(lease_id=lease_id, entries=(entry,))

    store.commit(staging, record)

    # The bind mount's root is the gMSA directory: the app must search it; the lease directory
    # above it is on the path of runtimes that resolve the source as a non-root user.
    # Enterable by anyone, listable by root only: no host user learns which leases exist.
    assert _mode(store.lease_dir(lease_id)) == 0o711
    assert _mode(store.gmsa_dir(lease_id, "webapp01")) == 0o711
    assert _mode(store.metadata_path(lease_id)) == 0o600


def test_private_directory_is_not_a_lease(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "krbdir")
    store.prepare()
    private = store.krb_dir / PRIVATE_DIR
    private.mkdir(mode=0o700)
    (private / ".cf-tmp-krb5cc.0123").write_bytes(b"left by a crash")
    with pytest.raises(InvalidRequestError):
        validate_lease_id(PRIVATE_DIR)

    assert store.recover() == []
    assert private.is_dir()
    assert list(private.iterdir()) == []
    assert list(store.iter_lease_ids()) == []


def test_recovery_tightens_what_older_versions_made(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path / "krbdir")
    store.prepare()
    lease_id = new_lease_id()
    staging = store.stage(lease_id)
    entry = GmsaEntry("webapp01", "example.com", "CN=webapp01", "{}")
    store.staged_entry_dir(staging, entry)
    store.commit(staging, LeaseRecord(lease_id=lease_id, entries=(entry,)))
    for path, old in (
        (store.lease_dir(lease_id), 0o755),
        (store.gmsa_dir(lease_id, "webapp01"), 0o755),
        (store.metadata_path(lease_id), 0o644),
    ):
        path.chmod(old)

    assert [r.lease_id for r in store.recover()] == [lease_id]

    assert _mode(store.lease_dir(lease_id)) == 0o711
    assert _mode(store.gmsa_dir(lease_id, "webapp01")) == 0o711
    assert _mode(store.metadata_path(lease_id)) == 0o600


@pytest.mark.parametrize("text", ["0123456789abcdef0123\n", "webapp\n", "a/b", "..", ""])
def test_lease_ids_are_matched_whole(text: str) -> None:
    # re's "$" matches before a trailing newline; a lease id with one must not name a directory.
    with pytest.raises(InvalidRequestError):
        validate_lease_id(text)


def test_gmsa_directory_names_are_matched_whole() -> None:
    with pytest.raises(InvalidRequestError):
        validate_dir_name("webapp01\n")
