"""CF_AWS_SM_SECRET_NAME (credfetcher.secret_source): a changed identity must prove itself before
its leases move to it, a refused one is not tried again before CF_REJECTED_PASSWORD_RETRY
(issue 15), and only the refresh moves leases, never a read for a new lease (issue 17). No DC, no
AWS: the secret reader is replaced and the directory is a fake."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from credfetcher import aws
from credfetcher.aws import SecretIdentity
from credfetcher.config import Config
from credfetcher.directory import DirectoryConfig
from credfetcher.errors import AwsError, BindError
from credfetcher.identity import UserIdentity
from credfetcher.leases import GmsaEntry, LeaseRecord
from credfetcher.secret_source import SECRET_RETRY, SecretSource
from credfetcher.service import LeaseService

GOOD = UserIdentity("reader", "example.test", "Good-Password-1")
WRONG = UserIdentity("reader", "example.test", "Wrong-Password-1")
OTHER = UserIdentity("reader2", "example.test", "Other-Password-1")


class RefusingDirectory:
    """Refuses every password read (a wrong password); counts the attempts."""

    reads: ClassVar[list[str]] = []

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config

    def fetch_managed_password(self, gmsa: str, identity: UserIdentity) -> Any:
        RefusingDirectory.reads.append(identity.label)
        raise BindError(
            f"cannot authenticate as {identity.label} with its password: wrong password",
            identity=identity.label,
        )

    def close(self) -> None:
        pass


class Secret:
    """Stands in for aws.read_identity_secret: the identity the secret holds now."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, user: UserIdentity) -> None:
        self.user = user
        self.reads = 0
        self.error: Exception | None = None
        monkeypatch.setattr(aws, "read_identity_secret", self.read)

    def read(self, *args: Any, **kwargs: Any) -> SecretIdentity:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return SecretIdentity("arn:secret", self.user)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- through the service: the proof is a real read of every secret lease's gMSA (refused) ------


@pytest.fixture
def refusing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LeaseService, Secret]:
    RefusingDirectory.reads = []
    config = Config(krb_dir=tmp_path / "krbdir", aws_sm_secret_name="reader-secret")
    svc = LeaseService(config, directory_factory=RefusingDirectory)  # type: ignore[arg-type]
    return svc, Secret(monkeypatch, GOOD)


def add_secret_lease(svc: LeaseService) -> None:
    svc.index.put(
        LeaseRecord(
            lease_id="0123456789abcdef0123",
            entries=(GmsaEntry("webapp01", "example.test", "CN=webapp01", "{}"),),
            domainless_user=GOOD.label,
            kind="aws-secret",
        )
    )


def test_a_refused_secret_keeps_the_working_identity(
    refusing: tuple[LeaseService, Secret],
) -> None:
    svc, secret = refusing
    # What the leases use now: read while no lease needed proving.
    assert svc.secrets.identity(refresh=True) == GOOD
    add_secret_lease(svc)
    secret.user = WRONG
    assert svc.secrets.identity(refresh=True) == GOOD
    assert RefusingDirectory.reads == [WRONG.label]
    for _ in range(5):  # the refresh loop comes back every 30 s: no new try at the DC
        assert svc.secrets.identity(refresh=True) == GOOD
    assert RefusingDirectory.reads == [WRONG.label]
    assert svc.index.records()[0].domainless_user == GOOD.label  # no lease moved


def test_a_refused_secret_at_start_raises_without_asking_again(
    refusing: tuple[LeaseService, Secret],
) -> None:
    svc, secret = refusing
    add_secret_lease(svc)
    secret.user = WRONG
    with pytest.raises(BindError, match="wrong password"):
        svc.secrets.identity(refresh=True)
    with pytest.raises(BindError, match="not tried again"):
        svc.secrets.identity(refresh=True)
    assert RefusingDirectory.reads == [WRONG.label]
    ok, status = svc.health()
    assert not ok
    assert "cannot read CF_AWS_SM_SECRET_NAME" in status
    assert "wrong password" in status


# -- SecretSource alone: recording prove/attach, a fake monotonic clock --------------------------


class Recorder:
    def __init__(self) -> None:
        self.proved: list[UserIdentity] = []
        self.attached: list[UserIdentity] = []
        self.failing = False
        self.refuse: Exception | None = None

    def prove(self, user: UserIdentity) -> None:
        self.proved.append(user)
        if self.refuse is not None:
            raise self.refuse

    def source(self, tmp_path: Path, **settings: Any) -> tuple[SecretSource, Monotonic]:
        clock = Monotonic()
        config = Config(krb_dir=tmp_path, aws_sm_secret_name="reader-secret", **settings)
        source = SecretSource(
            config,
            prove=self.prove,
            attach=self.attached.append,
            failing=lambda: self.failing,
            monotonic=clock,
        )
        return source, clock


def test_reading_a_new_identity_moves_no_lease_until_the_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    source, _ = rec.source(tmp_path)
    secret = Secret(monkeypatch, GOOD)
    assert source.identity() == GOOD  # what AddKerberosLease does
    secret.user = OTHER
    assert source.identity(refresh=True) == OTHER
    assert rec.proved == [GOOD, OTHER]
    assert rec.attached == []  # reading, even a changed secret, moves nothing
    source.refresh()
    assert rec.attached == [OTHER]  # the refresh moves the leases to the identity in use
    source.refresh()
    assert rec.attached == [OTHER]  # once


def test_the_refresh_re_reads_when_due_and_early_while_leases_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    source, clock = rec.source(tmp_path, aws_sm_refresh=600.0)
    secret = Secret(monkeypatch, GOOD)
    source.refresh()
    assert (secret.reads, rec.attached) == (1, [GOOD])
    clock.now += SECRET_RETRY
    source.refresh()
    assert secret.reads == 1  # healthy leases: not before CF_AWS_SM_REFRESH
    rec.failing = True
    source.refresh()
    assert secret.reads == 2  # a failing lease: every check interval
    rec.failing = False
    clock.now += 600
    source.refresh()
    assert secret.reads == 3
    assert rec.attached == [GOOD]  # the same identity: nothing to move


def test_an_unreadable_secret_is_a_health_problem_only_without_an_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    source, _ = rec.source(tmp_path)
    secret = Secret(monkeypatch, GOOD)
    secret.error = AwsError("no route to Secrets Manager")
    with pytest.raises(AwsError):
        source.identity()
    assert source.problem() == "cannot read CF_AWS_SM_SECRET_NAME: no route to Secrets Manager"
    secret.error = None
    assert source.identity() == GOOD
    secret.error = AwsError("down again")
    with pytest.raises(AwsError):
        source.identity(refresh=True)
    assert source.problem() == ""  # the last identity still serves
    assert source.identity() == GOOD


def test_the_refresh_loop_moves_leases_when_woken_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    source, _ = rec.source(tmp_path, aws_sm_refresh=3600.0)
    secret = Secret(monkeypatch, GOOD)
    source.identity(refresh=True)  # the supervisor's read at start-up
    stop = threading.Event()
    thread = threading.Thread(target=source.refresh_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        for _ in range(200):  # first thing the loop does: give the leases that identity
            if rec.attached:
                break
            threading.Event().wait(0.01)
        assert rec.attached == [GOOD]
        secret.user = OTHER
        assert source.identity(refresh=True) == OTHER  # a new lease's read wakes the loop
        for _ in range(200):
            if len(rec.attached) == 2:
                break
            threading.Event().wait(0.01)
        assert rec.attached == [GOOD, OTHER]
    finally:
        stop.set()
        source.wake()
        thread.join(5)
    assert not thread.is_alive()
