"""Crashes: SIGKILL at random moments during concurrent Add/Delete calls loses nothing.

Rounds of concurrent calls, each cut short by a SIGKILL of the daemon at a random moment. After
every kill, *before* the daemon runs again, the raw store must already be consistent (a container
or the ECS agent reads it directly): every lease directory complete, no directory without
metadata, no metadata without its ccaches. After the restart: no ``.cf-tmp-*`` leftovers, every
lease whose Add returned OK and that was not deleted is there with a valid ccache, and no lease
whose Delete returned OK is back. Calls cut by the kill have an unknown outcome; a lease such a
call may have created must be complete too.

A SIGKILL cannot show whether data reach the disk (the page cache survives the process), so the
durability order — file contents fsynced before the rename that publishes them, each directory
fsynced after the rename into it, all before the RPC answers — is checked separately, on the real
code path, by recording fsync and rename calls.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.credspec import make_credspec
from credfetcher.identity import UserIdentity
from credfetcher.service import LeaseService
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon
from tests.reliability.helpers import LeaseOnDisk, check_store

# Issue 8 asks for >= 10 kills during 200 concurrent calls: 12 rounds of 20 calls.
ROUNDS = 12
CALLS_PER_ROUND = 20
KEEP_IN_FLIGHT = 5  # calls of a round not yet answered, at least, when the kill comes
SEED = int(os.environ.get("CF_TEST_CRASH_SEED", str(int(time.time()))))


@dataclass
class Outcome:
    kind: str  # "add" or "delete"
    lease_id: str | None  # for deletes: the lease; for adds: the id returned (None if failed)
    gmsas: tuple[str, ...]
    ok: bool
    error: str = ""


def _add(daemon: Daemon, gmsas: tuple[str, ...]) -> Outcome:
    specs = [make_credspec(g, daemon.dc.domain, daemon.dc.netbios) for g in gmsas]
    try:
        with daemon.channel() as ch:
            resp = pb_grpc.CredentialsFetcherServiceStub(ch).AddKerberosLease(
                pb.CreateKerberosLeaseRequest(credspec_contents=specs), timeout=30
            )
    except grpc.RpcError as exc:
        return Outcome("add", None, gmsas, False, f"{exc.code()}: {exc.details()}")
    return Outcome("add", resp.lease_id, gmsas, True)


def _delete(daemon: Daemon, lease_id: str) -> Outcome:
    try:
        with daemon.channel() as ch:
            pb_grpc.CredentialsFetcherServiceStub(ch).DeleteKerberosLease(
                pb.DeleteKerberosLeaseRequest(lease_id=lease_id), timeout=30
            )
    except grpc.RpcError as exc:
        return Outcome("delete", lease_id, (), False, f"{exc.code()}: {exc.details()}")
    return Outcome("delete", lease_id, (), True)


def test_sigkill_during_concurrent_calls_loses_nothing(samba_dc: TestDC, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    gmsas = samba_dc.gmsas
    live: dict[str, tuple[str, ...]] = {}  # acknowledged (or found complete) and not deleted
    gone: set[str] = set()  # Delete returned OK: must never come back
    kills = interrupted = acked_adds = acked_deletes = 0
    with running_daemon(samba_dc, tmp_path / "d") as daemon:
        for rnd in range(ROUNDS):
            # Deletes target leases from earlier rounds; each lease is deleted at most once a round.
            victims = rng.sample(sorted(live), k=min(len(live), CALLS_PER_ROUND * 2 // 5))
            in_doubt = set(victims)
            jobs: list[Future[Outcome]] = []
            with ThreadPoolExecutor(max_workers=CALLS_PER_ROUND) as pool:
                for i in range(CALLS_PER_ROUND):
                    if i < len(victims):
                        jobs.append(pool.submit(_delete, daemon, victims[i]))
                    else:
                        picked = tuple(rng.sample(gmsas, k=rng.choice((1, 1, 2))))
                        jobs.append(pool.submit(_add, daemon, picked))
                # The kill lands after a random number of the round's calls have answered, not
                # after a random time: on a fast host all 20 answered within 0.1 s, and kills
                # after that cut nothing (CI saw 0 cut by 12 kills). The rest are in flight or
                # queued when it lands.
                answered = _answers(jobs)
                for _ in range(rng.randint(0, CALLS_PER_ROUND - KEEP_IN_FLIGHT)):
                    assert answered.acquire(timeout=60), "no call answered within 60 s"
                time.sleep(rng.uniform(0.0, 0.002))
                daemon.kill()
                kills += 1
                _done, pending = wait(jobs, timeout=60)
                assert not pending, "calls still running 60 s after the daemon was killed"
            outcomes = [j.result() for j in jobs]
            for out in outcomes:
                if not out.ok:
                    interrupted += 1
                    continue
                assert out.lease_id is not None
                if out.kind == "add":
                    acked_adds += 1
                    live[out.lease_id] = out.gmsas
                else:
                    acked_deletes += 1
                    gone.add(out.lease_id)
                    live.pop(out.lease_id, None)
                    in_doubt.discard(out.lease_id)
            context = f"round {rnd} (seed {SEED}): {[o for o in outcomes if not o.ok][:3]}"

            # The raw store, as the kill left it (recovery has not run).
            raw = check_store(daemon.krb_dir, samba_dc.realm, allow_temp=True)
            _check_acknowledged(raw, live, gone, in_doubt, context)

            daemon.start()
            after = check_store(daemon.krb_dir, samba_dc.realm, allow_temp=False)
            _check_acknowledged(after, live, gone, in_doubt, context)
            assert set(after) == set(raw), f"recovery changed the lease set: {context}"
            with daemon.client() as stub:
                leases = stub.ListLeases(pb.ListLeasesRequest()).leases
            listed = {lease.lease_id for lease in leases}
            assert listed == set(after), context
            # Leases of cut calls that made it (an Add whose reply was lost, a Delete that did
            # not happen) are complete leases now: they join the set the next rounds check.
            for lease_id in set(after) - set(live):
                assert lease_id not in gone, f"deleted lease {lease_id} is back: {context}"
                live[lease_id] = after[lease_id].gmsas
            for lease_id in in_doubt - set(after):
                live.pop(lease_id, None)
                gone.add(lease_id)
    # The kills must really have cut calls, and enough calls must have completed to check.
    assert kills >= 10
    # Each kill comes with calls of its round unanswered, but a few may still answer between the
    # last wait and the kill. Half the rounds is proof that kills cut calls mid-flight; what
    # matters is the checks above, every round.
    assert interrupted >= ROUNDS // 2, f"only {interrupted} calls were cut by {kills} kills"
    assert acked_adds >= 20, acked_adds
    assert acked_deletes >= 5, acked_deletes


def _answers(jobs: list[Future[Outcome]]) -> threading.Semaphore:
    """A semaphore released once per call of ``jobs`` that has answered (or failed)."""
    answered = threading.Semaphore(0)
    for job in jobs:
        job.add_done_callback(lambda _job: answered.release())
    return answered


def _check_acknowledged(
    found: dict[str, LeaseOnDisk],
    live: dict[str, tuple[str, ...]],
    gone: set[str],
    in_doubt: set[str],
    context: str,
) -> None:
    missing = {lid for lid in live if lid not in in_doubt} - set(found)
    assert not missing, f"acknowledged leases lost: {sorted(missing)}; {context}"
    back = gone & set(found)
    assert not back, f"deleted leases resurrected: {sorted(back)}; {context}"
    for lease_id, gmsas in live.items():
        if lease_id in found:
            got = found[lease_id].gmsas
            assert set(got) == set(gmsas), f"{lease_id} has {got}, expected {gmsas}; {context}"


# -- durability order -------------------------------------------------------------------------


@pytest.fixture
def in_process_service(
    samba_dc: TestDC, krb5_config: Path, tmp_path: Path
) -> Iterator[LeaseService]:
    service = LeaseService(samba_dc.service_config(tmp_path, write_keytab=True))
    try:
        yield service
    finally:
        service.stop()


def test_acknowledged_lease_is_on_disk_durably_before_the_reply(
    in_process_service: LeaseService, samba_dc: TestDC, monkeypatch: pytest.MonkeyPatch
) -> None:
    """File contents fsynced before the rename that publishes them; each directory fsynced after
    every rename or creation in it — all before add_lease returns (what a power loss needs)."""
    events: list[tuple[str, str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
        real_fsync(fd)

    def at(directory: int | None, name: str | os.PathLike[str]) -> str:
        if directory is None:
            return os.fspath(name)
        return os.path.join(os.readlink(f"/proc/self/fd/{directory}"), os.fspath(name))

    def rename(
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
    ) -> None:
        # files.py renames relative to directory fds (renameat): log the full paths.
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        events.append(("rename", at(src_dir_fd, src), at(dst_dir_fd, dst)))

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    specs = [make_credspec(g, samba_dc.domain, samba_dc.netbios) for g in samba_dc.gmsas[:2]]
    result = in_process_service.add_lease(specs)
    monkeypatch.undo()

    krb_dir = in_process_service.config.krb_dir.resolve()
    lease_dir = krb_dir / result.lease_id
    synced: set[str] = set()  # paths whose contents were fsynced, followed through renames
    dirty: set[str] = set()  # directories with a rename not yet made durable by fsync
    for kind, a, b in events:
        if kind == "fsync":
            synced.add(a)
            dirty.discard(a)
            continue
        moved = {a: b} | {p: b + p[len(a) :] for p in synced if p.startswith(a + "/")}
        assert a in synced, f"{a} renamed to {b} before its contents were fsynced"
        synced = {moved.get(p, p) for p in synced}
        dirty = {moved.get(p, p) for p in dirty}
        dirty.add(os.path.dirname(b))
    files = [p for p in lease_dir.rglob("*") if p.is_file()]
    assert len(files) >= 5, files  # metadata + 2 x (krb5cc, krb5.keytab)
    for path in files:
        assert str(path) in synced, f"{path} published without fsync"
    assert not dirty, f"renames not made durable (directory never fsynced after): {sorted(dirty)}"
    assert str(krb_dir) in synced


def test_a_lease_deleted_while_it_is_rebound_leaves_no_renewal_behind(
    in_process_service: LeaseService, samba_dc: TestDC, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RenewNonDomainJoined and DeleteKerberosLease of the same lease at once: whichever order
    they interleave in, the deleted lease must not live on as a renewal group (an AS exchange
    every cycle for files that are gone). Here the delete lands just before the rebind moves
    the lease's targets, the narrowest window."""
    service = in_process_service
    user = UserIdentity(samba_dc.user, samba_dc.domain, samba_dc.user_password)
    gmsa = samba_dc.gmsas[0]
    lease = service.add_lease([make_credspec(gmsa, samba_dc.domain)], user=user).lease_id
    assert service.scheduler.status(lease, gmsa) is not None
    move = service.scheduler.move_target
    deleted: list[str] = []

    def delete_first(*args: Any, **kwargs: Any) -> None:
        if not deleted:
            deleted.append(lease)
            service.delete_lease(lease)  # another RPC, completing first
        move(*args, **kwargs)

    monkeypatch.setattr(service.scheduler, "move_target", delete_first)
    service.renew_domainless(user)
    assert deleted == [lease]
    assert service.scheduler.status(lease, gmsa) is None
    assert service.scheduler.lease_count() == 0
    assert not service.store.lease_dir(lease).exists()
