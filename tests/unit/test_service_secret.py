"""A changed CF_AWS_SM_SECRET_NAME identity must prove itself before its leases move to it, and a
refused one is not tried again before CF_REJECTED_PASSWORD_RETRY (issue 15). No DC, no AWS: the
secret reader and the directory are fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from credfetcher import aws
from credfetcher.aws import SecretIdentity
from credfetcher.config import Config
from credfetcher.directory import DirectoryConfig
from credfetcher.errors import BindError
from credfetcher.identity import UserIdentity
from credfetcher.leases import GmsaEntry, LeaseRecord
from credfetcher.service import LeaseService

GOOD = UserIdentity("reader", "example.test", "Good-Password-1")
WRONG = UserIdentity("reader", "example.test", "Wrong-Password-1")


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


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LeaseService, list[Any]]:
    RefusingDirectory.reads = []
    config = Config(krb_dir=tmp_path / "krbdir", aws_sm_secret_name="reader-secret")
    svc = LeaseService(config, directory_factory=RefusingDirectory)  # type: ignore[arg-type]
    record = LeaseRecord(
        lease_id="0123456789abcdef0123",
        entries=(GmsaEntry("webapp01", "example.test", "CN=webapp01", "{}"),),
        domainless_user=GOOD.label,
        kind="aws-secret",
    )
    svc._leases[record.lease_id] = record
    secret: list[Any] = [SecretIdentity("arn:secret", WRONG)]
    monkeypatch.setattr(aws, "read_identity_secret", lambda *a, **k: secret[0])
    attached: list[Any] = []
    monkeypatch.setattr(svc, "_attach_secret_leases", attached.append)
    return svc, attached


def test_a_refused_secret_keeps_the_working_identity(
    service: tuple[LeaseService, list[Any]],
) -> None:
    svc, attached = service
    svc._sm = SecretIdentity("arn:secret", GOOD)  # what the leases use now
    assert svc.secret_identity(refresh=True) == GOOD
    assert attached == []  # no lease moved
    assert RefusingDirectory.reads == [WRONG.label]
    for _ in range(5):  # the refresh loop comes back every 30 s: no new try at the DC
        assert svc.secret_identity(refresh=True) == GOOD
    assert RefusingDirectory.reads == [WRONG.label]


def test_a_refused_secret_at_start_raises_without_asking_again(
    service: tuple[LeaseService, list[Any]],
) -> None:
    svc, attached = service
    with pytest.raises(BindError, match="wrong password"):
        svc.secret_identity(refresh=True)
    with pytest.raises(BindError, match="not tried again"):
        svc.secret_identity(refresh=True)
    assert RefusingDirectory.reads == [WRONG.label]
    assert attached == []
    ok, status = svc.health()
    assert not ok
    assert "wrong password" in status
