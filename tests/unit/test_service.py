"""LeaseService in-process with the fakes of test_accounts: a fake directory (blobs laid out by
hand), a fake KDC and a recorded ccache write. The lease directories and metadata are real files
under tmp_path. What a caller sees: the lease created, listed, recovered, moved, deleted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from credfetcher import aws, tickets
from credfetcher.aws import SecretIdentity
from credfetcher.config import Config
from credfetcher.credspec import make_credspec
from credfetcher.directory import DirectoryClient, DirectoryConfig
from credfetcher.errors import DCUnavailableError, InvalidRequestError, LeaseNotFoundError
from credfetcher.files import Ownership
from credfetcher.identity import UserIdentity
from credfetcher.keys import derive_keys
from credfetcher.service import LeaseService
from credfetcher.testing import FakeClock
from tests.unit.test_accounts import (
    DAY,
    DOMAIN,
    PW_NOW,
    PW_OLD,
    REALM,
    FakeDirectory,
    FakeKdc,
    blob,
)

USER_A = UserIdentity("reader", DOMAIN, "Password-A-1")
USER_B = UserIdentity("reader2", DOMAIN, "Password-B-1")


class Directory(FakeDirectory):
    """test_accounts' fake, with what the service also calls on a directory."""

    def warm(self, identity: object) -> bool:
        return True

    def close(self) -> None:
        pass


class World:
    """The fakes one service talks to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kdc = FakeKdc()
        monkeypatch.setattr(tickets, "acquire_tgt", self.kdc.acquire_tgt)
        self.directories: list[Directory] = []
        self.fail: Exception | None = None
        self.writes: list[Path] = []
        monkeypatch.setattr(tickets, "store_tgt", self.store_tgt)
        self.secret = USER_A
        monkeypatch.setattr(aws, "read_identity_secret", self.read_secret)

    def directory(self, config: DirectoryConfig) -> DirectoryClient:
        fake = Directory([(blob(PW_NOW, PW_OLD, 20 * DAY), 3)], fail=self.fail)
        self.directories.append(fake)
        return cast(DirectoryClient, fake)

    def store_tgt(
        self, tgt: tickets.Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
    ) -> tickets.TicketInfo:
        self.writes.append(path)
        return tgt.info

    def read_secret(self, *args: Any, **kwargs: Any) -> SecretIdentity:
        return SecretIdentity("arn:secret", self.secret)

    def accept(self, *gmsas: str) -> None:
        for gmsa in gmsas:
            self.kdc.accepted.add(derive_keys(PW_NOW, REALM, gmsa, 3)[0].contents)

    def service(self, krb_dir: Path, **settings: Any) -> LeaseService:
        config = Config(krb_dir=krb_dir, **settings)
        return LeaseService(config, clock=FakeClock(), directory_factory=self.directory)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(monkeypatch)
    w.accept("webapp01", "webapp02")
    return w


@pytest.fixture
def service(world: World, tmp_path: Path) -> Iterator[LeaseService]:
    svc = world.service(tmp_path / "krbdir")
    yield svc
    svc.stop()


def metadata(svc: LeaseService, lease_id: str) -> dict[str, Any]:
    path = svc.store.metadata_path(lease_id)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_a_lease_is_listed_until_deleted(service: LeaseService) -> None:
    a = service.add_lease([make_credspec("webapp01", DOMAIN)])
    b = service.add_lease([make_credspec("webapp02", DOMAIN), make_credspec("webapp01", DOMAIN)])
    assert a.gmsas == ("webapp01",)
    assert b.directories == tuple(service.store.gmsa_dir(b.lease_id, g) for g in b.gmsas)
    views = list(service.iter_leases())
    assert [v.lease_id for v in views] == sorted([a.lease_id, b.lease_id])
    assert {v.state for v in views} == {"active"}
    assert all(not v.domainless for v in views)
    [only] = service.iter_leases(gmsa="WEBAPP02")
    assert only.lease_id == b.lease_id
    assert [t.gmsa for t in only.tickets] == ["webapp02", "webapp01"]
    assert list(service.iter_leases(state="failing")) == []
    assert [v.lease_id for v in service.iter_leases(after=min(a.lease_id, b.lease_id))] == [
        max(a.lease_id, b.lease_id)
    ]
    service.delete_lease(a.lease_id)
    assert [v.lease_id for v in service.iter_leases()] == [b.lease_id]
    with pytest.raises(LeaseNotFoundError):
        service.delete_lease(a.lease_id)


def test_an_existing_lease_id_is_refused_and_nothing_is_written(service: LeaseService) -> None:
    service.add_lease([make_credspec("webapp01", DOMAIN)], lease_id="startup01")
    with pytest.raises(InvalidRequestError, match="lease startup01 already exists"):
        service.add_lease([make_credspec("webapp02", DOMAIN)], lease_id="startup01")
    assert [t.gmsa for v in service.iter_leases() for t in v.tickets] == ["webapp01"]


def test_a_dc_outage_fails_the_add_leaves_nothing_and_shows_in_health(
    world: World, tmp_path: Path
) -> None:
    world.fail = DCUnavailableError("no domain controller answered", attempts=[])
    svc = world.service(tmp_path / "krbdir")
    with pytest.raises(DCUnavailableError) as info:
        svc.add_lease([make_credspec("webapp01", DOMAIN)])
    assert info.value.gmsa == "webapp01"
    assert list(svc.iter_leases()) == []
    assert not list((tmp_path / "krbdir").glob("*"))
    ok, status = svc.health()
    assert not ok
    assert "domain controller unreachable: no domain controller answered" in status


def test_recovered_leases_load_before_they_are_listed(
    world: World, service: LeaseService, tmp_path: Path
) -> None:
    host = service.add_lease([make_credspec("webapp01", DOMAIN)]).lease_id
    user = service.add_lease([make_credspec("webapp02", DOMAIN)], user=USER_A).lease_id
    service.stop()
    again = world.service(tmp_path / "krbdir")
    names = again.store.scan()
    again.index.begin_loading(names)  # what the supervisor does before serving
    views = {v.lease_id: v for v in again.iter_leases()}  # loads each one it names
    assert views[host].state == "active"
    # A user's password was in memory only: its lease waits for RenewNonDomainJoined...
    assert views[user].state == "waiting-for-credentials"
    assert views[user].domainless
    again.recover(names)  # the loader finds them loaded
    assert again.index.count(names) == 2
    again.stop()


def test_adding_a_lease_never_moves_another(world: World, tmp_path: Path) -> None:
    """Issue 17: AddKerberosLease used to rebind every CF_AWS_SM_SECRET_NAME lease when it read
    a changed secret. Now only the refresh does."""
    svc = world.service(
        tmp_path / "krbdir", aws_sm_secret_name="reader-secret", aws_sm_refresh=0
    )
    first = svc.add_lease([make_credspec("webapp01", DOMAIN)]).lease_id
    assert metadata(svc, first)["credfetcher"]["kind"] == "aws-secret"
    assert len(world.kdc.used) == 1
    world.secret = USER_B  # rotated; aws_sm_refresh=0: every add reads it again
    second = svc.add_lease([make_credspec("webapp02", DOMAIN)]).lease_id
    user_of = {
        lease: metadata(svc, lease)["krb_ticket_info"][0]["domainless_user"]
        for lease in (first, second)
    }
    assert user_of == {first: USER_A.label, second: USER_B.label}
    assert len(world.kdc.used) == 2  # the second lease's TGT only: the first was not renewed
    assert [w.parent.name for w in world.writes] == ["webapp01", "webapp02"]

    svc.secrets.refresh()  # the refresh thread's check: now the first lease moves
    assert metadata(svc, first)["krb_ticket_info"][0]["domainless_user"] == USER_B.label
    # Renewed at once as USER_B (every secret lease is; the second already had USER_B).
    assert svc.store.gmsa_dir(first, "webapp01") / "krb5cc" in world.writes[2:]
    assert {v.state for v in svc.iter_leases()} == {"active"}
    svc.stop()


def test_the_supervisor_starts_and_stops_every_thread(world: World, tmp_path: Path) -> None:
    svc = world.service(tmp_path / "krbdir", aws_sm_secret_name="reader-secret")
    lease = svc.add_lease([make_credspec("webapp01", DOMAIN)]).lease_id
    svc.stop()
    before = set(threading.enumerate())
    again = world.service(tmp_path / "krbdir", aws_sm_secret_name="reader-secret")
    again.supervisor.stop_timeout = 10.0
    again.start()
    started = set(threading.enumerate()) - before
    assert {"renewal", "aws-secret"} <= {t.name for t in started}
    again.index.wait_loaded()
    assert [v.lease_id for v in again.iter_leases()] == [lease]
    again.stop()
    assert not [t for t in started if t.is_alive()]
