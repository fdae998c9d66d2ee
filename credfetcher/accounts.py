"""Per-gMSA credential state: the managed password's keys, cached, and TGTs acquired from them.

One :class:`GmsaAccount` exists per (domain, gMSA, identity that reads the password). It fetches
``msDS-ManagedPassword`` once, derives the keys (RFC 3962) and keeps them until the blob's
QueryPasswordInterval says the DC must be asked again (less a clock-skew allowance; MS-ADTS
3.1.1.4.4.1). Within five minutes of a change the previous password is the one the KDC accepts
(see :func:`credfetcher.blob.password_for_authentication`) and the blob already holds the next
one; at the change the account switches to that next password by itself, at the next kvno,
without asking the DC (:meth:`GmsaAccount._promote`), and reads the DC right after to confirm
the version. That is what lets keytabs hold exactly the passwords the KDC uses at every moment,
even when no DC answers at the change (``docs/rotation.md``). When the KDC rejects our key anyway —
the password rotated early, or an administrator reset it — the password is fetched again once and
the request retried. Concurrent callers share one fetch through the account's lock, so 32
simultaneous leases for one gMSA cost the DC one fetch (two searches the first time and after a
change: the key version is read again, see :meth:`GmsaAccount._reread_kvno`). A change of the
password in effect is logged at INFO with the old and new kvno; ``docs/rotation.md`` has the
timeline.

New leases share TGTs too (:meth:`GmsaAccount.lease_tgt`): a lease created while the account's
latest TGT is young (:data:`SHARE_TGT_FOR`) gets that TGT instead of an AS exchange of its own, and
concurrent creations wait for one exchange in flight. Every lease of an account carries the
group's TGT from its first renewal on anyway (:mod:`credfetcher.renewal`); sharing it from the
start is what keeps 50 containers starting at once from costing the KDC 50 AS exchanges.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta

from credfetcher import tickets
from credfetcher.blob import (
    ManagedPassword,
    authenticates_with_previous,
    parse_managed_password,
    password_for_authentication,
)
from credfetcher.directory import DirectoryClient, GmsaRecord
from credfetcher.errors import CredfetcherError, KeyRejectedError
from credfetcher.identity import HostIdentity, UserIdentity
from credfetcher.keys import KerberosKey, derive_keys
from credfetcher.keytab import versioned_keys

log = logging.getLogger(__name__)

Identity = HostIdentity | UserIdentity
# Margin taken off QueryPasswordInterval: a host whose clock runs behind the DC's must not keep
# keys past the change (AD's default maximum skew is 5 minutes).
CLOCK_SKEW = 300.0
# A new lease gets the account's latest TGT while it is younger than this (seconds) and than a
# tenth of its life, so it still has >= 90 % of its life. Five minutes: a burst of container
# starts shares one AS exchange, and an account disabled meanwhile is noticed no later than AD
# itself notices it for TGTs it issued (it re-checks the account on TGS requests only for TGTs
# older than 20 minutes).
SHARE_TGT_FOR = 300.0
# Extra reads allowed to get a kvno consistent with the blob (:meth:`GmsaAccount._reread_kvno`).
_KVNO_READS = 2
# After switching to the next password at a change, the DC is read this long after (seconds) to
# confirm its kvno; while no DC answers, again this often. Samba rolls the keys over on the first
# read after the change, so the first confirming read may show the old kvno (_reread_kvno).
CONFIRM_AFTER = 1.0
RECONFIRM_EVERY = 60.0


@dataclass(frozen=True)
class KeyMaterial:
    """Keys derived from one read of the managed password. Secrets hidden from repr.

    ``kvno`` is the version of ``in_effect``, the password the KDC accepts now (read consistently
    with the blob); ``before`` was in effect at ``kvno - 1`` when known (from the blob, or for a
    young gMSA or inside the window from this account's earlier read). ``managed_password`` is the
    DC's blob as last read from ``dc``. Inside the five minutes before a change ``changes_at`` is
    when the blob's CurrentPassword takes over. ``confirmed`` is False for keys the account
    switched to by itself at a change, until a read of the DC shows their kvno.
    """

    principal: str
    dn: str
    dc: str
    kvno: int
    auth_keys: tuple[KerberosKey, ...] = field(repr=False)
    managed_password: ManagedPassword = field(repr=False)
    in_effect: bytes = field(repr=False)
    before: bytes | None = field(repr=False)
    fetched_at: float
    refetch_at: float
    changes_at: float | None = None
    confirmed: bool = True


@dataclass(frozen=True)
class AccountKey:
    domain: str
    gmsa: str
    identity: str


class GmsaAccount:
    """Keys and tickets for one gMSA as read by one identity."""

    def __init__(
        self,
        gmsa: str,
        domain: str,
        identity: Identity,
        directory: DirectoryClient,
        *,
        lifetime: int,
        renew_lifetime: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gmsa = gmsa
        self.domain = domain
        self.realm = domain.upper()
        self.identity = identity
        self.directory = directory
        self.lifetime = lifetime
        self.renew_lifetime = renew_lifetime
        self.clock = clock
        self.principal = tickets.gmsa_principal(gmsa, self.realm)
        self._lock = threading.Lock()
        self._material: KeyMaterial | None = None
        self._tgt_lock = threading.Lock()  # one AS exchange in flight for new leases
        # The latest TGT, its keys, and when (self.clock) it was acquired.
        self._latest: tuple[tickets.Tgt, KeyMaterial, float] | None = None

    @property
    def key(self) -> AccountKey:
        return account_key(self.domain, self.gmsa, self.identity)

    def material(self, *, refresh: bool = False) -> KeyMaterial:
        """The cached keys, fetched from the DC first when absent, stale, or ``refresh``.

        At a change announced by the last read, the next password takes over first
        (:meth:`_promote`); if the DC cannot be read to confirm it, those keys are kept.
        """
        with self._lock:
            now = self.clock()
            current = self._material
            if current is not None and current.changes_at is not None and now >= current.changes_at:
                current = self._material = self._promote(current, now)
            if refresh or current is None or now >= current.refetch_at:
                try:
                    fetched = self._fetch()
                except CredfetcherError as exc:
                    if current is None or current.confirmed or refresh:
                        raise
                    # The KDC takes the next password from the change on whether or not an LDAP
                    # read confirms its kvno; the keys (and keytabs) must not wait for one.
                    current = self._material = replace(current, refetch_at=now + RECONFIRM_EVERY)
                    log.warning(
                        "cannot confirm the kvno of %s after its password change (%s): "
                        "keeping kvno %d",
                        self.principal,
                        exc.message,
                        current.kvno,
                        extra={"GMSA": self.gmsa},
                    )
                    return current
                current = self._material = fetched
            return current

    def _promote(self, window: KeyMaterial, now: float) -> KeyMaterial:
        """The keys after the change ``window`` announced, without asking the DC.

        Inside the five minutes before a change the DC's blob carries the next password and the
        time left until it takes over (MS-ADTS 3.1.1.4.4.1). At that moment the KDC issues
        tickets under it at the next key version (AD and Samba count one per change), so the
        account switches then: the password that was in effect becomes the one before. The kvno
        is reasoned, not read, so the keys are marked unconfirmed and the DC is read
        :data:`CONFIRM_AFTER` later (:meth:`_reread_kvno` then repeats that read).
        """
        upcoming = window.managed_password.current
        kvno = window.kvno + 1
        log.info(
            "password of %s changed on %s: kvno %d -> %d (the next password it announced)",
            self.principal,
            window.dc,
            window.kvno,
            kvno,
            extra={"GMSA": self.gmsa, "DC": window.dc},
        )
        return replace(
            window,
            kvno=kvno,
            auth_keys=tuple(derive_keys(upcoming, self.realm, self.gmsa, kvno)),
            in_effect=upcoming,
            before=window.in_effect,
            refetch_at=now + CONFIRM_AFTER,
            changes_at=None,
            confirmed=False,
        )

    def _fetch(self) -> KeyMaterial:
        earlier = self._material
        record = self.directory.fetch_managed_password(self.gmsa, self.identity)
        mp = parse_managed_password(record.blob)
        if not authenticates_with_previous(mp) and (
            earlier is None or not earlier.confirmed or earlier.in_effect != mp.current
        ):
            record, mp = self._reread_kvno(record)
        kvno = record.kvno if record.kvno is not None else 1
        # The password the KDC accepts now, at the version the DC shows for it: in the five
        # minutes before a change the DC hands out the next password as CurrentPassword but
        # still shows the kvno of the one in effect (PreviousPassword).
        in_effect = password_for_authentication(mp)
        window = authenticates_with_previous(mp)
        before = None if window else mp.previous
        if earlier is not None and before is None:
            # What the blob does not carry, our earlier read may know. Inside the window the
            # blob has no room for the password in effect before (it holds next and in effect).
            # A gMSA younger than one password interval gets no PreviousPassword even after its
            # first change: the password we used until then is that previous one. Keytabs keep
            # it, so service tickets issued before the change still decrypt. A restart loses it:
            # the DC never says it.
            if kvno == earlier.kvno and in_effect == earlier.in_effect:
                before = earlier.before
            elif kvno == earlier.kvno + 1 and in_effect != earlier.in_effect:
                before = earlier.in_effect
        keys = derive_keys(in_effect, self.realm, self.gmsa, kvno)
        now = self.clock()
        interval = mp.query_interval.total_seconds()
        changes_at = None
        if interval <= 0:
            refetch = now + 60.0
        elif window:
            # The next password takes over at the change (material() -> _promote).
            refetch = changes_at = now + interval
        else:
            refetch = now + max(interval - CLOCK_SKEW, min(interval, 60.0))
        if earlier is not None and in_effect != earlier.in_effect:
            if not earlier.confirmed and in_effect == earlier.before:
                log.warning(
                    "%s still has the password of %s at kvno %d in effect: its clock is behind "
                    "this host's",
                    record.dc,
                    self.principal,
                    kvno,
                    extra={"GMSA": self.gmsa, "DC": record.dc},
                )
            else:
                log.info(
                    "password of %s changed on %s: kvno %d -> %d",
                    self.principal,
                    record.dc,
                    earlier.kvno,
                    kvno,
                    extra={"GMSA": self.gmsa, "DC": record.dc},
                )
        elif earlier is not None and not earlier.confirmed and kvno != earlier.kvno:
            log.warning(
                "%s shows kvno %d for the new password of %s, not %d: using the DC's",
                record.dc,
                kvno,
                self.principal,
                earlier.kvno,
                extra={"GMSA": self.gmsa, "DC": record.dc},
            )
        log.info(
            "read managed password of %s from %s (kvno %d%s, next read in %s)",
            self.principal,
            record.dc,
            kvno,
            ", next password known" if window else "",
            timedelta(seconds=round(refetch - now)),
            extra={"GMSA": self.gmsa, "DC": record.dc},
        )
        return KeyMaterial(
            principal=self.principal,
            dn=record.dn,
            dc=record.dc,
            kvno=kvno,
            auth_keys=tuple(keys),
            managed_password=mp,
            in_effect=in_effect,
            before=before,
            fetched_at=now,
            refetch_at=refetch,
            changes_at=changes_at,
        )

    def _reread_kvno(self, record: GmsaRecord) -> tuple[GmsaRecord, ManagedPassword]:
        """The record again, read until two reads in a row carry the same passwords; the last.

        Why a re-read rather than reasoning: the kvno cannot be told from the blob alone. Its
        intervals say how far the next change is, never how many changes came before, and the
        LDAP read that makes a DC roll the keys over (Samba 4.22 does it on the first read after
        the change) answers the new blob with the *old* ``msDS-KeyVersionNumber``; only the next
        read shows the new one. Reasoning from our own earlier read (old kvno + 1) would fail
        after a restart, an administrator's reset, or a missed change. So a read that shows a
        password in effect that we did not know yet (first read, or a change) is followed by a
        second one, which costs one search (~2 ms on the pooled connection) per change, and
        whose kvno is used once it returns the same passwords. Reads inside the five minutes
        before a change need none: that roll-over happens only at the change itself.
        """
        mp = parse_managed_password(record.blob)
        for _ in range(_KVNO_READS):
            again = self.directory.fetch_managed_password(self.gmsa, self.identity)
            again_mp = parse_managed_password(again.blob)
            # The passwords, not the whole blob: its intervals count down between two reads.
            if (again_mp.current, again_mp.previous) == (mp.current, mp.previous):
                return again, again_mp
            # A change (or the start of the five-minute window) fell between the two reads.
            record, mp = again, again_mp
        log.warning(
            "managed password of %s changed on every one of %d reads: its kvno may be off",
            self.principal,
            _KVNO_READS + 1,
            extra={"GMSA": self.gmsa, "DC": record.dc},
        )
        return record, mp

    def keys_due_at(self) -> float | None:
        """When (``self.clock``) the cached keys must be read again; None before a first read.

        The renewal loop renews groups with keytabs then (:mod:`credfetcher.renewal`), so their
        keytabs change with the password: at the change itself (:meth:`_promote`) and when the
        DC confirms it a second later.
        """
        material = self._material
        return None if material is None else material.refetch_at

    def acquire_tgt(self) -> tuple[tickets.Tgt, KeyMaterial]:
        """A fresh TGT from the cached keys; re-read the password once if the KDC rejects them."""
        material = self.material()
        try:
            tgt = tickets.acquire_tgt(
                self.principal,
                keys=material.auth_keys,
                lifetime=self.lifetime,
                renew_lifetime=self.renew_lifetime,
            )
        except KeyRejectedError:
            log.warning(
                "KDC rejected the cached key of %s: reading the managed password again",
                self.principal,
                extra={"GMSA": self.gmsa},
            )
            material = self.material(refresh=True)
            tgt = tickets.acquire_tgt(
                self.principal,
                keys=material.auth_keys,
                lifetime=self.lifetime,
                renew_lifetime=self.renew_lifetime,
            )
        self._latest = (tgt, material, self.clock())
        return tgt, material

    def lease_tgt(self) -> tuple[tickets.Tgt, KeyMaterial]:
        """A TGT for a new lease: the latest one while young (:data:`SHARE_TGT_FOR`), else fresh.

        Renewal must not use this (it wants a ticket that ends later): it calls
        :meth:`acquire_tgt`, whose result new leases then share.
        """
        with self._tgt_lock:
            latest = self._latest
            if latest is not None:
                tgt, material, acquired = latest
                life = tgt.info.endtime - tgt.info.starttime
                now = self.clock()
                if (
                    0 <= now - acquired < min(SHARE_TGT_FOR, life / 10)
                    and material is self._material
                    and now < material.refetch_at
                ):
                    return tgt, material
            return self.acquire_tgt()

    def keytab_keys(self, material: KeyMaterial, *, rc4: bool) -> list[KerberosKey]:
        """Both passwords' keys, each at its own kvno, for acceptors such as SQL Server.

        The password in effect at ``material.kvno``, the one before at kvno - 1 when known. The
        next password joins only at the change, when it is the one in effect (why:
        :func:`credfetcher.keytab.keys_for_keytab`).
        """
        return versioned_keys(
            material.in_effect, material.before, self.realm, self.gmsa, material.kvno, rc4=rc4
        )


def identity_key(identity: Identity) -> str:
    """A stable, secret-free key for grouping by identity."""
    return "|".join(identity.key)


def account_key(domain: str, gmsa: str, identity: Identity) -> AccountKey:
    """The key of the account reading ``gmsa`` of ``domain`` as ``identity``
    (:attr:`GmsaAccount.key`), known without making the account."""
    return AccountKey(domain, gmsa.lower(), identity_key(identity))
