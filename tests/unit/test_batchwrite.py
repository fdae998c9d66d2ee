"""Batched ccache writes (credfetcher.batchwrite through LeaseFiles.refresh_all), on real files.

The TGT is a real credential in MIT's v4 layout (built as in test_ccachefile) so libkrb5 writes
a real ccache; every hostile case is checked against what the per-file path
(:meth:`LeaseFiles.refresh`) reports for the same tree.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from credfetcher import batchwrite, files, leasefiles, tickets
from credfetcher.files import PRIVATE_DIR, Ownership
from credfetcher.groups import Target
from credfetcher.keys import KerberosKey
from credfetcher.leasefiles import LeaseFiles, WriteJob, WriteOutcome
from credfetcher.renewal import RenewalScheduler
from credfetcher.testing import FakeAccount, FakeClock, FixedRng, target_in
from tests.unit.test_ccachefile import GMSA, KRBTGT, credential

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
NOBODY = 65534
T = 1_800_000_000
COUNT = 12  # over BATCH_MIN
CLEAN = WriteOutcome(None, retry=False, stored=True)


def real_tgt(now: int = T, life: int = 36_000) -> tickets.Tgt:
    info = tickets.TicketInfo("webapp01$@CREDFETCHER.TEST", T - 5, now + life, now + 604_800)
    cred = credential(GMSA, KRBTGT, starttime=T - 5, endtime=now + life, renew_till=now + 604_800)
    return tickets.Tgt(info=info, marshalled=cred)


@dataclass
class Recorder:
    """A :class:`WriteJob`'s caller side: every target registered unless ``gone``."""

    gone: set[str] = field(default_factory=set)
    outcomes: dict[str, WriteOutcome] = field(default_factory=dict)
    beats: int = 0

    def job(self, tgt: tickets.Tgt) -> WriteJob:
        def record(target: Target, outcome: WriteOutcome) -> None:
            self.outcomes[target.lease_id] = outcome

        def progress() -> None:
            self.beats += 1

        return WriteJob(tgt, no_keys, self.due, record, progress)

    def due(self, target: Target) -> bool | None:
        return None if target.lease_id in self.gone else False


def no_keys() -> list[KerberosKey]:
    return []


def targets(root: Path, count: int = COUNT, ownership: Ownership | None = None) -> list[Target]:
    made = [target_in(root, f"lease{n:02}", "webapp01") for n in range(count)]
    if ownership is not None:
        made = [Target(t.lease_id, t.gmsa, t.ccache, ownership) for t in made]
    return made


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / PRIVATE_DIR).iterdir())


@pytest.fixture
def per_file_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch must not fall back to ``store_tgt``: it would hide a batch that never ran."""

    def refuse(*args: object, **kwargs: object) -> tickets.TicketInfo:
        raise AssertionError("store_tgt called: the batch was not used")

    monkeypatch.setattr(tickets, "store_tgt", refuse)


@pytest.mark.usefixtures("per_file_forbidden")
def test_a_batch_writes_the_same_ccache_libkrb5_reads_into_every_target(tmp_path: Path) -> None:
    tgt = real_tgt()
    group = targets(tmp_path, ownership=Ownership(mode=0o640))
    recorder = Recorder()
    LeaseFiles(tmp_path).refresh_all(group, recorder.job(tgt))
    assert recorder.outcomes == {t.lease_id: CLEAN for t in group}
    assert recorder.beats == len(group)
    assert len({t.ccache.read_bytes() for t in group}) == 1
    for t in group:
        assert stat.S_IMODE(t.ccache.stat().st_mode) == 0o640
        assert tickets.read_ticket_info(t.ccache, root=tmp_path, owner=os.geteuid()) == tgt.info
        # libkrb5 itself, not only credfetcher's parser
        assert tickets._ticket_info_by_libkrb5(t.ccache.read_bytes()) == tgt.info
    assert leftovers(tmp_path) == []


def test_the_batch_bytes_are_store_tgts_bytes(tmp_path: Path) -> None:
    tgt = real_tgt()
    single = target_in(tmp_path, "one", "webapp01")
    tickets.store_tgt(tgt, single.ccache, single.ownership, root=tmp_path)
    group = targets(tmp_path)
    LeaseFiles(tmp_path).refresh_all(group, Recorder().job(tgt))
    assert {t.ccache.read_bytes() for t in group} == {single.ccache.read_bytes()}


@needs_root
@pytest.mark.usefixtures("per_file_forbidden")
def test_each_target_gets_its_own_owner_and_mode(tmp_path: Path) -> None:
    group = targets(tmp_path)
    owned = [
        Target(t.lease_id, t.gmsa, t.ccache, Ownership(NOBODY + n % 2, NOBODY, 0o600 | n % 2 << 5))
        for n, t in enumerate(group)
    ]
    recorder = Recorder()
    LeaseFiles(tmp_path).refresh_all(owned, recorder.job(real_tgt()))
    assert set(recorder.outcomes.values()) == {CLEAN}
    for t in owned:
        st = t.ccache.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            t.ownership.uid,
            t.ownership.gid,
            t.ownership.mode,
        )
        assert tickets.read_ticket_info(t.ccache, root=tmp_path, owner=t.ownership.uid)


# Each plants something at lease02's files; the report must be the per-file path's.
def plant_symlink(target: Target, root: Path) -> None:
    (root / "outside").write_bytes(b"not yours")
    target.ccache.symlink_to(root / "outside")


def plant_directory(target: Target, root: Path) -> None:
    (target.ccache / "inside").mkdir(parents=True)


def plant_fifo(target: Target, root: Path) -> None:
    os.mkfifo(target.ccache)


def plant_foreign_file(target: Target, root: Path) -> None:
    target.ccache.write_bytes(b"someone else's")
    os.chown(target.ccache, NOBODY, NOBODY)


def plant_symlinked_lease_dir(target: Target, root: Path) -> None:
    lease_dir = target.ccache.parent.parent
    (root / "elsewhere" / "webapp01").mkdir(parents=True)
    (lease_dir / "webapp01").rmdir()
    lease_dir.rmdir()
    lease_dir.symlink_to(root / "elsewhere")


def plant_nothing_there(target: Target, root: Path) -> None:
    target.ccache.parent.rmdir()


PLANTS = [
    plant_symlink,
    plant_directory,
    plant_fifo,
    pytest.param(plant_foreign_file, marks=needs_root),
    plant_symlinked_lease_dir,
    plant_nothing_there,
]


@pytest.mark.parametrize("plant", PLANTS)
def test_something_planted_at_one_target_gives_the_per_file_report_and_spares_the_others(
    tmp_path: Path, plant: Callable[[Target, Path], None]
) -> None:
    tgt = real_tgt()
    reports = []
    for how in ("single", "batch"):
        root = tmp_path / how
        root.mkdir()
        group = targets(root)
        plant(group[2], root)
        lease_files = LeaseFiles(root)
        if how == "single":
            reports.append(lease_files.refresh(group[2], tgt, no_keys, keytab_due=False))
            continue
        recorder = Recorder()
        lease_files.refresh_all(group, recorder.job(tgt))
        assert leftovers(root) == []
        for t in group[:2] + group[3:]:
            assert recorder.outcomes[t.lease_id] == CLEAN
            assert tickets.read_ticket_info(t.ccache, root=root) == tgt.info
        reports.append(recorder.outcomes[group[2].lease_id])
    single, batch = reports
    assert single.error is not None
    assert batch == WriteOutcome(
        single.error.replace(str(tmp_path / "single"), str(tmp_path / "batch")),
        single.retry,
        single.stored,
    )
    outside = tmp_path / "batch" / "outside"
    assert not outside.exists() or outside.read_bytes() == b"not yours"  # replaced, not followed


def test_a_lease_deleted_during_the_pass_is_not_recreated(tmp_path: Path) -> None:
    group = targets(tmp_path)
    gone = group[5].ccache.parent.parent
    recorder = Recorder()
    stage = batchwrite.Chunk.stage

    def stage_then_delete(chunk: batchwrite.Chunk) -> None:
        stage(chunk)
        # What delete_lease does under the lease's lock: the directory goes, then the target.
        lease_files.lock(group[5].lease_id).acquire()
        try:
            for path in sorted(gone.rglob("*"), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            gone.rmdir()
            recorder.gone.add(group[5].lease_id)
        finally:
            lease_files.lock(group[5].lease_id).release()

    lease_files = LeaseFiles(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchwrite.Chunk, "stage", stage_then_delete)
        lease_files.refresh_all(group, recorder.job(real_tgt()))
    assert not gone.exists()
    assert group[5].lease_id not in recorder.outcomes
    assert len(recorder.outcomes) == COUNT - 1
    assert leftovers(tmp_path) == []


def test_an_unregistered_target_is_never_renamed_into_its_directory(tmp_path: Path) -> None:
    group = targets(tmp_path)
    recorder = Recorder(gone={group[7].lease_id})
    LeaseFiles(tmp_path).refresh_all(group, recorder.job(real_tgt()))
    assert not group[7].ccache.exists()
    assert group[7].lease_id not in recorder.outcomes
    assert group[6].ccache.exists()
    assert leftovers(tmp_path) == []


def failing_syncfs(calls: list[int], fail_at: int) -> Callable[[int], int]:
    def syncfs(fd: int) -> int:
        calls.append(fd)
        if len(calls) == fail_at:
            ctypes.set_errno(errno.EIO)
            return -1
        return 0

    return syncfs


def test_a_failing_syncfs_before_the_renames_fails_the_chunk_and_keeps_the_old_ccaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = targets(tmp_path)
    old = real_tgt(life=600)
    LeaseFiles(tmp_path).refresh_all(group, Recorder().job(old))
    before = {t.ccache: t.ccache.read_bytes() for t in group}
    calls: list[int] = []
    monkeypatch.setattr(batchwrite, "_syncfs", failing_syncfs(calls, fail_at=1))
    recorder = Recorder()
    LeaseFiles(tmp_path).refresh_all(group, recorder.job(real_tgt()))
    assert len(calls) == 1  # nothing renamed, nothing more to sync
    for t in group:
        outcome = recorder.outcomes[t.lease_id]
        assert (outcome.retry, outcome.stored) == (True, False)
        assert outcome.error == (
            f"cannot write {t.ccache}: cannot sync {tmp_path}'s filesystem: Input/output error"
        )
        assert t.ccache.read_bytes() == before[t.ccache]
    assert leftovers(tmp_path) == []


def test_a_failing_syncfs_after_the_renames_reports_every_target_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = targets(tmp_path)
    plant_directory(group[0], tmp_path)
    monkeypatch.setattr(batchwrite, "_syncfs", failing_syncfs([], fail_at=2))
    recorder = Recorder()
    LeaseFiles(tmp_path).refresh_all(group, recorder.job(real_tgt()))
    assert {(o.retry, o.stored) for o in recorder.outcomes.values()} == {(True, False)}
    first = recorder.outcomes[group[0].lease_id].error
    assert first is not None
    assert first.endswith("a directory sits there")  # its own error, not the sync's
    assert {recorder.outcomes[t.lease_id].error for t in group[1:]} == {
        f"cannot write {t.ccache}: cannot sync {tmp_path}'s filesystem: Input/output error"
        for t in group[1:]
    }
    assert leftovers(tmp_path) == []


def test_without_syncfs_each_file_is_fsynced_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchwrite, "_syncfs", None)
    fsynced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    group = targets(tmp_path)
    recorder = Recorder()
    LeaseFiles(tmp_path).refresh_all(group, recorder.job(real_tgt()))
    assert set(recorder.outcomes.values()) == {CLEAN}
    assert len(fsynced) == 2 * COUNT  # each staged file, each directory renamed into


def test_the_real_syncfs_is_libcs() -> None:
    assert batchwrite._syncfs is not None  # glibc has had it since 2.14
    assert batchwrite.syncfs(os.open("/", os.O_RDONLY)) is True


def test_a_full_disk_while_staging_fails_that_target_as_atomic_target_says_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = targets(tmp_path)
    write_new = files.write_new

    def full_for_lease03(
        dir_fd: int, name: str, data: bytes, ownership: Ownership | None = None
    ) -> None:
        if name.endswith(".3"):
            write_new(dir_fd, name, data[:10], ownership)  # a partial file, as a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_new(dir_fd, name, data, ownership)

    full = f"No space left on device: the filesystem of {tmp_path} is full"
    monkeypatch.setattr(batchwrite, "write_new", full_for_lease03)
    monkeypatch.setattr(batchwrite, "full_filesystem", lambda root: full)
    recorder = Recorder()
    LeaseFiles(tmp_path).refresh_all(group, recorder.job(real_tgt()))
    assert recorder.outcomes[group[3].lease_id] == WriteOutcome(
        f"cannot write ccache {group[3].ccache}: No space left on device ({full})",
        retry=True,
        stored=False,
    )
    assert not group[3].ccache.exists()
    assert {recorder.outcomes[t.lease_id] for t in group if t is not group[3]} == {CLEAN}
    assert leftovers(tmp_path) == []


def test_a_small_group_is_written_one_by_one(tmp_path: Path) -> None:
    calls = []

    def recording_store(
        tgt: tickets.Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
    ) -> tickets.TicketInfo:
        calls.append(path)
        return tgt.info

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tickets, "store_tgt", recording_store)
        group = targets(tmp_path, count=leasefiles.BATCH_MIN - 1)
        LeaseFiles(tmp_path).refresh_all(group, Recorder().job(real_tgt()))
    assert calls == [t.ccache for t in group]


@dataclass
class RealAccount(FakeAccount):
    """A FakeAccount whose TGTs are real credentials libkrb5 can write."""

    def ticket(self) -> tickets.Tgt:
        return real_tgt(int(self.clock()), self.life)


def test_a_renewal_of_a_large_group_writes_every_ccache_and_records_it(tmp_path: Path) -> None:
    clock = FakeClock(float(T))
    sched = RenewalScheduler(
        margin=7200.0, orphan_after=86_400.0, clock=clock, rng=FixedRng(0.5), krb_dir=tmp_path
    )
    account = RealAccount("webapp01", clock)
    group = targets(tmp_path, count=40)
    for t in group:
        sched.register(account.gmsa, account, t, account.ticket().info)
    clock.advance(36_000 - 3600)
    assert sched.run_due() == 1
    renewed = account.ticket().info
    for t in group:
        assert tickets.read_ticket_info(t.ccache, root=tmp_path) == renewed
        assert sched.ticket_info(t.lease_id, t.gmsa) == renewed
        status = sched.status(t.lease_id, t.gmsa)
        assert status is not None
        assert status.last_error == ""
    assert sched.heartbeat > 0
    assert leftovers(tmp_path) == []


def test_a_write_made_between_the_rename_and_the_record_keeps_its_own_outcome(
    tmp_path: Path,
) -> None:
    group = targets(tmp_path)
    lease_files = LeaseFiles(tmp_path)
    recorder = Recorder()
    newer = real_tgt(life=40_000)
    callers = WriteOutcome("the caller's write", retry=False, stored=True)
    sync = batchwrite.Chunk.sync

    def caller_writes_before_the_second_sync(chunk: batchwrite.Chunk) -> None:
        if chunk._synced:  # the renames are done, their outcomes not yet recorded
            with lease_files.lock(group[4].lease_id):
                assert lease_files.refresh(group[4], newer, no_keys, keytab_due=False) == CLEAN
                recorder.outcomes[group[4].lease_id] = callers
        sync(chunk)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batchwrite.Chunk, "sync", caller_writes_before_the_second_sync)
        lease_files.refresh_all(group, recorder.job(real_tgt()))
    assert recorder.outcomes[group[4].lease_id] == callers  # recorded last, as written last
    assert tickets.read_ticket_info(group[4].ccache, root=tmp_path) == newer.info
    assert recorder.outcomes[group[5].lease_id] == CLEAN
