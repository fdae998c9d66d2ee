"""LeaseFiles.refresh: every storage problem becomes an outcome, never an exception.

The ccache writer is replaced (its bytes are libkrb5's business, tested in test_tickets); the
keytab is really written, into ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from credfetcher import tickets
from credfetcher.errors import StorageError
from credfetcher.files import Ownership, TamperedError
from credfetcher.keys import KerberosKey, derive_keys
from credfetcher.leasefiles import LeaseFiles, WriteOutcome
from credfetcher.testing import FakeAccount, FakeClock, StoreRecorder, target_in

KEYS = derive_keys("Password-1".encode("utf-16-le"), "EXAMPLE.TEST", "webapp", 2)


class Keys:
    """A ``keys`` argument that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[KerberosKey]:
        self.calls += 1
        return list(KEYS)


@pytest.fixture
def tgt() -> tickets.Tgt:
    return FakeAccount("webapp", FakeClock()).ticket()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> StoreRecorder:
    recorder = StoreRecorder()
    monkeypatch.setattr(tickets, "store_tgt", recorder)
    return recorder


def failing_store(monkeypatch: pytest.MonkeyPatch, error: StorageError) -> None:
    def store(
        tgt: tickets.Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
    ) -> tickets.TicketInfo:
        raise error

    monkeypatch.setattr(tickets, "store_tgt", store)


def test_a_clean_write_writes_both_files(
    tmp_path: Path, tgt: tickets.Tgt, store: StoreRecorder
) -> None:
    target = target_in(tmp_path, "lease", "webapp", keytab=True)
    keys = Keys()
    outcome = LeaseFiles(tmp_path).refresh(target, tgt, keys, keytab_due=False)
    assert outcome == WriteOutcome(error=None, retry=False, stored=True)
    assert [w.path for w in store.writes] == [target.ccache]
    assert target.keytab is not None
    assert target.keytab.stat().st_size > 0
    assert keys.calls == 1  # no keytab there yet: written although not due


def test_a_keytab_in_place_and_not_due_is_left_alone(
    tmp_path: Path, tgt: tickets.Tgt, store: StoreRecorder
) -> None:
    target = target_in(tmp_path, "lease", "webapp", keytab=True)
    files = LeaseFiles(tmp_path)
    files.refresh(target, tgt, Keys(), keytab_due=True)
    keys = Keys()
    assert files.refresh(target, tgt, keys, keytab_due=False).error is None
    assert keys.calls == 0  # no key derived when no keytab is written
    assert files.refresh(target, tgt, keys, keytab_due=True).error is None
    assert keys.calls == 1


def test_a_ccache_that_cannot_be_written_is_retried(
    tmp_path: Path, tgt: tickets.Tgt, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_store(monkeypatch, StorageError("cannot write krb5cc: No space left", path="x"))
    target = target_in(tmp_path, "lease", "webapp", keytab=True)
    outcome = LeaseFiles(tmp_path).refresh(target, tgt, Keys(), keytab_due=True)
    assert outcome == WriteOutcome("cannot write krb5cc: No space left", retry=True, stored=False)
    assert target.keytab is not None
    assert target.keytab.exists()  # the keytab is not held back by the ccache


def test_tampering_is_reported_but_needs_no_retry(
    tmp_path: Path, tgt: tickets.Tgt, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_store(monkeypatch, TamperedError("found a FIFO at krb5cc", path="x", found="a FIFO"))
    outcome = LeaseFiles(tmp_path).refresh(
        target_in(tmp_path, "lease", "webapp"), tgt, Keys(), keytab_due=True
    )
    assert outcome == WriteOutcome("found a FIFO at krb5cc", retry=False, stored=True)


def test_a_directory_at_the_keytab_name_fails_that_write(
    tmp_path: Path, tgt: tickets.Tgt, store: StoreRecorder
) -> None:
    target = target_in(tmp_path, "lease", "webapp", keytab=True)
    assert target.keytab is not None
    (target.keytab / "planted").mkdir(parents=True)
    outcome = LeaseFiles(tmp_path).refresh(target, tgt, Keys(), keytab_due=True)
    assert outcome.retry
    assert outcome.stored
    assert outcome.error is not None
    assert "a directory sits there" in outcome.error


def test_each_lease_has_one_lock_until_forgotten() -> None:
    files = LeaseFiles()
    lock = files.lock("lease")
    assert files.lock("lease") is lock
    assert files.lock("other") is not lock
    files.forget("lease")
    assert files.lock("lease") is not lock
