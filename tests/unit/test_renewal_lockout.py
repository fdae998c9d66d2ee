"""A domainless user's refused password is retried on a lockout-safe schedule, once per identity.

Every retry of a wrong password is a failed pre-authentication that AD counts towards the
account's lockout; the ordinary backoff (2 s doubling to 30 s) would lock an account with a
lockout policy within minutes. Fake clock, fake accounts: no DC, no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from credfetcher.errors import BindError, DCUnavailableError
from credfetcher.identity import UserIdentity
from credfetcher.renewal import BACKOFF_CAP, REJECTED_PASSWORD_RETRY, RenewalScheduler
from credfetcher.testing import FakeAccount, FakeClock, FixedRng
from credfetcher.testing import target_in as target
from tests.unit.test_renewal import LIFE

pytestmark = pytest.mark.usefixtures("writes")  # no ccache is really written

USER = UserIdentity("app", "example.test", "Old-Password-1")


@dataclass
class UserAccount(FakeAccount):
    identity: UserIdentity = USER


def refused() -> BindError:
    return BindError(
        "cannot authenticate as app@EXAMPLE.TEST with its password: wrong password",
        identity="app@EXAMPLE.TEST",
    )


def scheduler(clock: FakeClock, retry: float = REJECTED_PASSWORD_RETRY) -> RenewalScheduler:
    return RenewalScheduler(
        margin=7200.0, orphan_after=7 * 86400.0, clock=clock, rng=FixedRng(0.5),
        rejected_retry=retry,
    )


def test_default_outlasts_ads_usual_observation_windows() -> None:
    # Microsoft's baseline resets the bad-password count after 15 min, Samba's default after 30.
    assert REJECTED_PASSWORD_RETRY > 30 * 60


def test_a_refused_password_waits_the_lockout_safe_period(
    tmp_path: Path
) -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    account = UserAccount("webapp", clock)
    sched.register("webapp", account, target(tmp_path, "l1", "webapp"), account.ticket().info)
    account.fail_with = refused()
    clock.advance(LIFE)
    for _ in range(20):  # an hour of passes, one every 3 minutes
        sched.run_due()
        clock.advance(180)
    # One try at the due time, then one per period: never at the 2..30 s ordinary backoff.
    assert len(account.calls) == 2
    assert account.calls[1] - account.calls[0] >= REJECTED_PASSWORD_RETRY
    status = sched.status("l1", "webapp")
    assert status is not None
    assert "wrong password" in status.last_error


def test_groups_of_one_user_share_one_try_per_period(tmp_path: Path) -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    accounts = [UserAccount(f"gmsa{i}", clock) for i in range(5)]
    for i, account in enumerate(accounts):
        sched.register(account.gmsa, account, target(tmp_path, f"l{i}", account.gmsa),
                       account.ticket().info)
        account.fail_with = refused()
    clock.advance(LIFE)
    sched.run_due()  # the first pass may meet the refusal in each due group at once
    first = sum(len(a.calls) for a in accounts)
    for _ in range(40):
        clock.advance(REJECTED_PASSWORD_RETRY / 4)
        sched.run_due()
    later = sum(len(a.calls) for a in accounts) - first
    # Ten periods passed: at most one try per period for the whole identity.
    assert 1 <= later <= 11, later


def test_success_lifts_the_hold_and_other_failures_back_off_as_usual(
    tmp_path: Path
) -> None:
    clock = FakeClock()
    sched = scheduler(clock, retry=600.0)
    account = UserAccount("webapp", clock)
    sched.register("webapp", account, target(tmp_path, "l1", "webapp"), account.ticket().info)
    account.fail_with = refused()
    clock.advance(LIFE)
    sched.run_due()
    clock.advance(700)
    account.fail_with = None
    assert sched.run_due() == 1
    assert len(account.calls) == 2
    # A DC outage is not a refusal: the ordinary backoff applies.
    account.fail_with = DCUnavailableError("no DC answered", attempts=[])
    clock.advance(LIFE)
    sched.run_due()
    status = sched.status("l1", "webapp")
    assert status is not None
    assert status.next_attempt - clock() <= BACKOFF_CAP


def test_host_identities_keep_the_ordinary_backoff(tmp_path: Path) -> None:
    clock = FakeClock()
    sched = scheduler(clock)
    account = FakeAccount("webapp", clock)  # no user identity: a machine account's keytab
    sched.register("webapp", account, target(tmp_path, "l1", "webapp"), account.ticket().info)
    account.fail_with = refused()
    clock.advance(LIFE)
    sched.run_due()
    status = sched.status("l1", "webapp")
    assert status is not None
    assert status.next_attempt - clock() <= BACKOFF_CAP
