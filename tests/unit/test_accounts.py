"""GmsaAccount's key cache with a fake clock, a fake directory and a fake KDC.

Blobs are laid out by hand (MS-ADTS 2.2.19, ``tests.unit.test_blob.build_blob``); the keys the
fake KDC is handed are compared with :func:`credfetcher.keys.derive_keys` of the password that
should have been used, so every test names *which* password authenticated.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from credfetcher import tickets
from credfetcher.accounts import (
    CLOCK_SKEW,
    CONFIRM_AFTER,
    RECONFIRM_EVERY,
    GmsaAccount,
    KeyMaterial,
)
from credfetcher.directory import DirectoryClient, GmsaRecord
from credfetcher.errors import DCUnavailableError, KerberosError, KeyRejectedError
from credfetcher.identity import HostIdentity
from credfetcher.keys import KerberosKey, derive_keys
from credfetcher.testing import FakeClock
from tests.unit.test_blob import TICKS_PER_SECOND, build_blob

REALM = "EXAMPLE.TEST"
DOMAIN = "example.test"
GMSA = "webapp01"
T0 = 1_800_000_000.0
DAY = 86_400


def password(seed: str) -> bytes:
    """A 256-byte UTF-16LE password, as a DC generates (lone surrogates and all)."""
    return hashlib.sha512(seed.encode()).digest() * 4


PW_OLD = password("old")
PW_NOW = password("now")
PW_NEXT = password("next")


def ticks(seconds: float) -> int:
    return int(seconds * TICKS_PER_SECOND)


def blob(current: bytes, previous: bytes | None, query: float, unchanged: float = 0.0) -> bytes:
    return build_blob(current, previous, ticks(query), ticks(unchanged), padding=2)


def keys_of(pw16: bytes, kvno: int) -> tuple[KerberosKey, ...]:
    return tuple(derive_keys(pw16, REALM, GMSA, kvno))


@dataclass
class FakeDirectory:
    """Answers fetch_managed_password with the next queued (blob, kvno), repeating the last.

    The account's second read for the key version (``GmsaAccount._reread_kvno``) does not move
    the queue: it gets the answer just given again (counted in ``rereads``), or the next one
    queued in ``reread_answers`` when a test plays a DC whose first read was stale.
    """

    answers: list[tuple[bytes, int]]
    fetches: int = 0
    rereads: int = 0
    reread_answers: list[tuple[bytes, int]] = field(default_factory=list)
    gate: threading.Event | None = None  # when set, a fetch waits for it
    fail: Exception | None = None  # when set, a fetch raises it (after counting)
    entered: threading.Event = field(default_factory=threading.Event)

    def fetch_managed_password(self, gmsa_name: str, identity: object) -> GmsaRecord:
        if sys._getframe(1).f_code.co_name == "_reread_kvno":
            self.rereads += 1
            if self.reread_answers:
                data, kvno = self.reread_answers.pop(0)
            else:
                data, kvno = self.answers[min(self.fetches, len(self.answers)) - 1]
            return self.record(gmsa_name, data, kvno)
        self.fetches += 1
        self.entered.set()
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            assert self.gate.wait(30), "test never released the fetch"
        data, kvno = self.answers[min(self.fetches, len(self.answers)) - 1]
        return self.record(gmsa_name, data, kvno)

    @staticmethod
    def record(gmsa_name: str, data: bytes, kvno: int) -> GmsaRecord:
        return GmsaRecord(
            sam_account_name=f"{gmsa_name}$",
            dn=f"CN={gmsa_name},CN=Managed Service Accounts,DC=example,DC=test",
            blob=data,
            kvno=kvno,
            dc="dc1.example.test",
        )


@dataclass
class FakeKdc:
    """Stands in for tickets.acquire_tgt: records the keys, accepts only ``accepted``."""

    accepted: set[bytes] = field(default_factory=set)  # AES256 key contents the KDC accepts
    used: list[tuple[KerberosKey, ...]] = field(default_factory=list)
    error: Exception | None = None

    def acquire_tgt(
        self,
        principal: str,
        *,
        password: bytes | None = None,
        keys: Sequence[KerberosKey] | None = None,
        lifetime: int | None = None,
        renew_lifetime: int | None = None,
    ) -> tickets.Tgt:
        assert password is None
        assert keys is not None
        self.used.append(tuple(keys))
        if self.error is not None:
            raise self.error
        if keys[0].contents not in self.accepted:
            raise KeyRejectedError(f"preauth failed for {principal}", principal=principal)
        info = tickets.TicketInfo(principal, int(T0), int(T0) + 600, int(T0) + 3600)
        return tickets.Tgt(info=info, marshalled=b"opaque")

    def accept(self, pw16: bytes, kvno: int = 1) -> None:
        self.accepted.add(keys_of(pw16, kvno)[0].contents)


@pytest.fixture
def kdc(monkeypatch: pytest.MonkeyPatch) -> FakeKdc:
    fake = FakeKdc()
    monkeypatch.setattr(tickets, "acquire_tgt", fake.acquire_tgt)
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


MakeAccount = Callable[..., tuple[GmsaAccount, FakeDirectory]]


@pytest.fixture
def make_account(clock: FakeClock) -> MakeAccount:
    def make(*answers: tuple[bytes, int]) -> tuple[GmsaAccount, FakeDirectory]:
        directory = FakeDirectory(list(answers))
        account = GmsaAccount(
            GMSA,
            DOMAIN,
            HostIdentity(f"HOST$@{REALM}", Path("/nonexistent/krb5.keytab")),
            cast(DirectoryClient, directory),
            lifetime=600,
            renew_lifetime=3600,
            clock=clock,
        )
        return account, directory

    return make


# -- which password authenticates -----------------------------------------------------------------


def test_far_from_a_change_the_current_password_authenticates(
    make_account: MakeAccount, kdc: FakeKdc
) -> None:
    account, _ = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    kdc.accept(PW_NOW, 3)
    _, material = account.acquire_tgt()
    assert kdc.used == [keys_of(PW_NOW, 3)]
    assert material.kvno == 3


@pytest.mark.parametrize(
    "query", [timedelta(minutes=5), timedelta(minutes=4, seconds=59), timedelta(seconds=1)]
)
def test_inside_the_five_minute_window_the_previous_password_authenticates(
    make_account: MakeAccount, kdc: FakeKdc, query: timedelta
) -> None:
    """CurrentPassword is already the next one; the KDC still wants the previous one.

    The DC still shows the kvno in effect (3) then (measured on Samba 4.22): it is the previous
    password's kvno, not the current one's.
    """
    account, _ = make_account((blob(PW_NEXT, PW_NOW, query.total_seconds()), 3))
    kdc.accept(PW_NOW, 3)
    account.acquire_tgt()
    assert kdc.used == [keys_of(PW_NOW, 3)]
    assert keys_of(PW_NEXT, 4) not in kdc.used


def test_just_outside_the_window_the_current_password_authenticates(
    make_account: MakeAccount, kdc: FakeKdc
) -> None:
    account, _ = make_account((blob(PW_NOW, PW_OLD, 5 * 60 + 1), 3))
    kdc.accept(PW_NOW, 3)
    account.acquire_tgt()
    assert kdc.used == [keys_of(PW_NOW, 3)]


def test_inside_the_window_without_a_previous_password_the_current_one_is_used(
    make_account: MakeAccount, kdc: FakeKdc
) -> None:
    """A freshly created gMSA has no previous password: nothing else to try."""
    account, _ = make_account((blob(PW_NOW, None, 60), 1))
    kdc.accept(PW_NOW, 1)
    account.acquire_tgt()
    assert kdc.used == [keys_of(PW_NOW, 1)]


def test_across_a_rotation_previous_then_the_new_password(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
) -> None:
    """Read 2 minutes before the change (previous used); at it, the next one at the next kvno
    without a read, then a read that confirms the kvno."""
    account, directory = make_account(
        (blob(PW_NEXT, PW_NOW, 120), 3),  # before the change: DC already hands out PW_NEXT
        (blob(PW_NEXT, PW_NOW, 30 * DAY), 4),  # after it
    )
    kdc.accept(PW_NOW, 3)
    account.acquire_tgt()
    assert kdc.used[-1] == keys_of(PW_NOW, 3)

    clock.now = T0 + 119
    account.acquire_tgt()
    assert directory.fetches == 1  # still before the change: cached keys
    assert kdc.used[-1] == keys_of(PW_NOW, 3)

    clock.now = T0 + 120  # the change: the KDC takes only the new password now
    kdc.accepted = set()
    kdc.accept(PW_NEXT, 4)
    _, material = account.acquire_tgt()
    assert directory.fetches == 1  # the window's read told the next password and when
    assert kdc.used[-1] == keys_of(PW_NEXT, 4)
    assert (material.kvno, material.confirmed) == (4, False)

    clock.now = T0 + 120 + CONFIRM_AFTER
    _, material = account.acquire_tgt()
    assert (directory.fetches, directory.rereads) == (2, 1)  # the confirming read is repeated
    assert (material.kvno, material.confirmed) == (4, True)
    assert kdc.used[-1] == keys_of(PW_NEXT, 4)


def test_at_a_change_the_next_password_is_kept_while_no_dc_can_confirm_it(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
) -> None:
    """The KDC switches at the change whether or not LDAP answers: so do the keys."""
    account, directory = make_account((blob(PW_NEXT, PW_NOW, 120), 3))
    window = account.material()
    assert keytab_of(account, window) == expected((PW_NOW, 3))
    clock.now = T0 + 120
    directory.fail = DCUnavailableError("no domain controller answered", attempts=[])
    promoted = account.material()
    assert keytab_of(account, promoted) == expected((PW_NEXT, 4), (PW_NOW, 3))
    clock.now = promoted.refetch_at
    kept = account.material()
    assert directory.fetches == 2
    assert keytab_of(account, kept) == expected((PW_NEXT, 4), (PW_NOW, 3))
    assert kept.refetch_at == clock.now + RECONFIRM_EVERY
    # A read when the DC is back confirms it.
    directory.fail = None
    directory.answers.append((blob(PW_NEXT, PW_NOW, 20 * 3600), 4))
    clock.now = kept.refetch_at
    confirmed = account.material()
    assert (confirmed.kvno, confirmed.confirmed) == (4, True)
    assert keytab_of(account, confirmed) == expected((PW_NEXT, 4), (PW_NOW, 3))


def test_a_dc_whose_clock_is_behind_wins_over_the_switch_at_the_change(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    account, _ = make_account(
        (blob(PW_NEXT, PW_NOW, 120), 3),
        (blob(PW_NEXT, PW_NOW, 4), 3),  # the DC is 5 s behind: still inside its window
    )
    account.material()
    clock.now = T0 + 120
    promoted = account.material()
    assert promoted.kvno == 4
    clock.now = promoted.refetch_at
    caplog.set_level(logging.INFO, logger="credfetcher.accounts")
    material = account.material()
    assert keytab_of(account, material) == expected((PW_NOW, 3))
    assert material.changes_at == clock.now + 4
    assert "its clock is behind this host's" in caplog.text


# -- how long keys are cached ---------------------------------------------------------------------


@pytest.mark.parametrize("query", [2 * 3600.0, 30 * DAY, 20 * DAY + 1234.5])
def test_keys_are_cached_until_query_interval_less_skew_then_fetched_again(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock, query: float
) -> None:
    account, directory = make_account(
        (blob(PW_NOW, PW_OLD, query), 3), (blob(PW_NEXT, PW_NOW, 30 * DAY), 4)
    )
    kdc.accept(PW_NOW, 3)
    kdc.accept(PW_NEXT, 4)
    first = account.material()
    assert first.refetch_at == pytest.approx(T0 + query - CLOCK_SKEW)

    for offset in (0.0, 60.0, 3600.0, query - CLOCK_SKEW - 1):
        clock.now = T0 + offset
        account.acquire_tgt()
    assert directory.fetches == 1
    assert set(kdc.used) == {keys_of(PW_NOW, 3)}

    clock.now = T0 + query - CLOCK_SKEW
    account.acquire_tgt()
    assert directory.fetches == 2
    assert kdc.used[-1] == keys_of(PW_NEXT, 4)


def test_a_zero_query_interval_is_not_trusted_for_long(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
) -> None:
    account, directory = make_account((blob(PW_NOW, None, 0), 1))
    kdc.accept(PW_NOW, 1)
    account.acquire_tgt()
    clock.now = T0 + 60
    account.acquire_tgt()
    assert directory.fetches == 2


def test_a_failed_reread_is_retried_by_the_next_call(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DC that fails on re-read surfaces the error, and the next call asks again."""
    account, directory = make_account((blob(PW_NOW, PW_OLD, 3600), 3))
    kdc.accept(PW_NOW, 3)
    account.acquire_tgt()

    def down(gmsa_name: str, identity: object) -> GmsaRecord:
        raise DCUnavailableError("no DC answered", attempts=[])

    clock.now = T0 + 3600
    monkeypatch.setattr(directory, "fetch_managed_password", down)
    with pytest.raises(DCUnavailableError):
        account.acquire_tgt()
    with pytest.raises(DCUnavailableError):
        account.acquire_tgt()


# -- the KDC rejects the cached key ---------------------------------------------------------------


def test_rejected_key_refetches_once_and_retries(make_account: MakeAccount, kdc: FakeKdc) -> None:
    """Rotated early (an administrator reset it): the cached keys are stale before their time."""
    account, directory = make_account(
        (blob(PW_NOW, PW_OLD, 20 * DAY), 3), (blob(PW_NEXT, PW_NOW, 30 * DAY), 4)
    )
    kdc.accept(PW_NOW, 3)
    account.acquire_tgt()
    kdc.accepted = set()
    kdc.accept(PW_NEXT, 4)

    _, material = account.acquire_tgt()
    assert directory.fetches == 2
    assert kdc.used == [keys_of(PW_NOW, 3), keys_of(PW_NOW, 3), keys_of(PW_NEXT, 4)]
    assert material.kvno == 4
    # The fresh keys are cached: no further fetch.
    account.acquire_tgt()
    assert directory.fetches == 2


def test_rejected_twice_gives_up_after_one_refetch(make_account: MakeAccount, kdc: FakeKdc) -> None:
    account, directory = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    with pytest.raises(KeyRejectedError):
        account.acquire_tgt()
    assert directory.fetches == 2
    assert len(kdc.used) == 2


def test_other_kdc_errors_do_not_refetch(make_account: MakeAccount, kdc: FakeKdc) -> None:
    """An unreachable KDC says nothing about the password: don't spend an LDAP search on it."""
    account, directory = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    kdc.error = KerberosError("no KDC reachable", principal=f"{GMSA}$@{REALM}")
    with pytest.raises(KerberosError) as info:
        account.acquire_tgt()
    assert not isinstance(info.value, KeyRejectedError)
    assert directory.fetches == 1
    assert len(kdc.used) == 1


# -- concurrency ----------------------------------------------------------------------------------


class CountingLock:
    """A lock that counts its waiting threads, so a test can wait for them without sleeping."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self.waiting = 0

    def __enter__(self) -> bool:
        with self._cond:
            self.waiting += 1
            self._cond.notify_all()
        self._lock.acquire()
        with self._cond:
            self.waiting -= 1
        return True

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait_for_waiters(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.waiting >= count, timeout=30)


@pytest.fixture
def threads() -> Iterator[list[threading.Thread]]:
    started: list[threading.Thread] = []
    yield started
    for t in started:
        t.join(30)
        assert not t.is_alive()


def test_concurrent_callers_share_one_fetch(
    make_account: MakeAccount,
    kdc: FakeKdc,
    threads: list[threading.Thread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """32 leases of one gMSA asking at once cost the DC one search."""
    account, directory = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    kdc.accept(PW_NOW, 3)
    directory.gate = threading.Event()
    lock = CountingLock()
    monkeypatch.setattr(account, "_lock", lock)
    results: list[tuple[KerberosKey, ...]] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _, material = account.acquire_tgt()
            results.append(material.auth_keys)
        except BaseException as exc:  # reported below
            errors.append(exc)

    for _ in range(32):
        t = threading.Thread(target=call)
        t.start()
        threads.append(t)
    # One caller is inside the fetch; the 31 others are queued behind it before it returns.
    assert directory.entered.wait(30)
    assert lock.wait_for_waiters(31)
    directory.gate.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert directory.fetches == 1
    assert len(results) == 32
    assert set(results) == {keys_of(PW_NOW, 3)}


# -- new leases share a young TGT ---------------------------------------------------------------


def test_new_leases_share_a_young_tgt(make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
                                      ) -> None:
    account, directory = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    kdc.accept(PW_NOW, 3)
    first, _ = account.lease_tgt()
    clock.advance(59)  # the fake KDC's tickets live 600 s: shared for a tenth of that
    second, material = account.lease_tgt()
    assert second is first
    assert len(kdc.used) == 1
    assert material.auth_keys == keys_of(PW_NOW, 3)
    clock.advance(2)
    third, _ = account.lease_tgt()
    assert third is not first
    assert len(kdc.used) == 2
    assert directory.fetches == 1


def test_renewal_never_shares_and_new_leases_share_its_tgt(
    make_account: MakeAccount, kdc: FakeKdc
) -> None:
    account, _ = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    kdc.accept(PW_NOW, 3)
    leased, _ = account.lease_tgt()
    renewed, _ = account.acquire_tgt()
    assert renewed is not leased
    assert len(kdc.used) == 2
    assert account.lease_tgt()[0] is renewed
    assert len(kdc.used) == 2


def test_no_sharing_once_the_keys_are_due_for_a_reread(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
) -> None:
    # QueryPasswordInterval of 20 s (a change is near: the previous password authenticates):
    # the keys are due again after 21 s, before the TGT is 60 s old, and a new lease must not
    # skip that re-read.
    account, directory = make_account((blob(PW_NOW, PW_OLD, 20), 3))
    kdc.accept(PW_OLD, 2)
    first, _ = account.lease_tgt()
    clock.advance(30)
    second, _ = account.lease_tgt()
    assert second is not first
    assert directory.fetches == 2


def test_concurrent_new_leases_wait_for_one_as_exchange(
    make_account: MakeAccount, kdc: FakeKdc, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, _ = make_account((blob(PW_NOW, PW_OLD, 20 * DAY), 3))
    kdc.accept(PW_NOW, 3)
    gate = threading.Event()
    entered = threading.Event()
    real = kdc.acquire_tgt

    def slow(principal: str, **kwargs: object) -> tickets.Tgt:
        entered.set()
        assert gate.wait(30)
        return real(principal, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tickets, "acquire_tgt", slow)
    got: list[tickets.Tgt] = []
    threads = [threading.Thread(target=lambda: got.append(account.lease_tgt()[0]))
               for _ in range(16)]
    for t in threads:
        t.start()
    assert entered.wait(30)
    gate.set()
    for t in threads:
        t.join(30)
    assert len(got) == 16
    assert len({id(t) for t in got}) == 1
    assert len(kdc.used) == 1


# -- the kvno, read consistently with the blob, and the keytab at every moment of a change ---------


def keytab_of(account: GmsaAccount, material: KeyMaterial) -> list[tuple[int, bytes]]:
    return [(k.kvno, k.contents) for k in account.keytab_keys(material, rc4=False)]


def expected(*pairs: tuple[bytes, int]) -> list[tuple[int, bytes]]:
    return [(k.kvno, k.contents) for pw, kvno in pairs for k in derive_keys(pw, REALM, GMSA, kvno)]


def test_the_read_that_rolls_keys_over_shows_the_old_kvno_and_is_read_again(
    make_account: MakeAccount, kdc: FakeKdc
) -> None:
    """Samba's first read after a change answers the new blob with the old kvno (measured)."""
    after = blob(PW_NEXT, PW_NOW, 20 * 3600)
    account, directory = make_account((after, 3))
    # The second read's intervals have counted down: the same passwords all the same.
    directory.reread_answers = [(blob(PW_NEXT, PW_NOW, 20 * 3600 - 1), 4)]
    material = account.material()
    assert (directory.fetches, directory.rereads) == (1, 1)
    assert material.kvno == 4
    assert material.auth_keys == keys_of(PW_NEXT, 4)
    assert keytab_of(account, material) == expected((PW_NEXT, 4), (PW_NOW, 3))


def test_a_reread_that_shows_another_blob_is_read_once_more(
    make_account: MakeAccount, kdc: FakeKdc
) -> None:
    """A change between the two reads: the kvno is taken from two reads of the same blob."""
    before = blob(PW_NOW, PW_OLD, 301)
    after = blob(PW_NEXT, PW_NOW, 20 * 3600)
    account, directory = make_account((before, 3))
    directory.reread_answers = [(after, 3), (after, 4)]
    material = account.material()
    assert directory.rereads == 2
    assert (material.kvno, material.managed_password.current) == (4, PW_NEXT)


def test_reads_inside_the_window_or_of_a_known_password_are_not_repeated(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
) -> None:
    account, directory = make_account(
        (blob(PW_NEXT, PW_NOW, 200), 3),  # a start inside the window: no roll-over to fear
    )
    material = account.material()
    assert directory.rereads == 0
    assert material.kvno == 3
    # The next password is not in the keytab before the change: kinit -k would take it.
    assert keytab_of(account, material) == expected((PW_NOW, 3))


def test_keytab_and_log_through_two_rotations(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """-10 min, the window, the change, the confirming read (stale kvno first), then the next
    rotation."""
    pw_later = password("later")
    start = blob(PW_NOW, PW_OLD, 600)
    after1 = blob(PW_NEXT, PW_NOW, 20 * 3600)
    after2 = blob(pw_later, PW_NEXT, 20 * 3600)
    account, directory = make_account(
        (start, 3),
        (blob(PW_NEXT, PW_NOW, 300), 3),
        (after1, 3),  # the read that rolls the keys over: new blob, old kvno
        (blob(pw_later, PW_NEXT, 300), 4),
        (after2, 4),
    )
    # Only reads showing a password in effect not seen before are repeated: the first, and
    # the first after each change.
    directory.reread_answers = [(start, 3), (after1, 4), (after2, 5)]
    caplog.set_level(logging.INFO, logger="credfetcher.accounts")
    steps: list[list[tuple[int, bytes]]] = []
    for _ in range(7):
        material = account.material()
        steps.append(keytab_of(account, material))
        clock.now = material.refetch_at
    # Reads: start, window, confirm (+ a re-read each, the first a stale kvno), window, confirm.
    assert (directory.fetches, directory.rereads, directory.reread_answers) == (5, 3, [])
    assert steps[0] == expected((PW_NOW, 3), (PW_OLD, 2))
    assert steps[1] == expected((PW_NOW, 3), (PW_OLD, 2))  # window: the one before is kept
    assert steps[2] == expected((PW_NEXT, 4), (PW_NOW, 3))  # the change: no read
    assert steps[3] == expected((PW_NEXT, 4), (PW_NOW, 3))  # confirmed by the DC
    assert steps[4] == expected((PW_NEXT, 4), (PW_NOW, 3))  # the next window
    assert steps[5] == expected((pw_later, 5), (PW_NEXT, 4))
    assert steps[6] == expected((pw_later, 5), (PW_NEXT, 4))
    changes = [r for r in caplog.records if "changed" in r.getMessage()]
    announced = "(the next password it announced)"
    assert [r.getMessage() for r in changes] == [
        f"password of {GMSA}$@{REALM} changed on dc1.example.test: kvno 3 -> 4 {announced}",
        f"password of {GMSA}$@{REALM} changed on dc1.example.test: kvno 4 -> 5 {announced}",
    ]
    assert all(r.levelno == logging.INFO for r in changes)
    assert all((r.__dict__["GMSA"], r.__dict__["DC"]) == (GMSA, "dc1.example.test")
               for r in changes)


def test_a_young_gmsa_keeps_the_password_it_had_as_previous_after_its_first_change(
    make_account: MakeAccount, kdc: FakeKdc, clock: FakeClock
) -> None:
    """Samba's blob has no PreviousPassword until the account is one interval old."""
    account, _ = make_account(
        (blob(PW_NOW, None, 600), 1),
        (blob(PW_NEXT, None, 20 * 3600), 2),  # right after the first change: no previous
        (blob(PW_NEXT, None, 19 * 3600), 2),  # a later read (a rejected key, say): still none
    )
    material = account.material()
    assert keytab_of(account, material) == expected((PW_NOW, 1))
    clock.now = material.refetch_at
    material = account.material()
    assert keytab_of(account, material) == expected((PW_NEXT, 2), (PW_NOW, 1))
    material = account.material(refresh=True)
    assert keytab_of(account, material) == expected((PW_NEXT, 2), (PW_NOW, 1))
    # A fresh start knows nothing of the earlier password: only what the DC says.
    fresh, _ = make_account((blob(PW_NEXT, None, 20 * 3600), 2))
    assert keytab_of(fresh, fresh.material()) == expected((PW_NEXT, 2))
