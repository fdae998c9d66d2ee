"""Per-gMSA credential state: the managed password's keys, cached, and TGTs acquired from them.

One :class:`GmsaAccount` exists per (domain, gMSA, identity that reads the password). It fetches
``msDS-ManagedPassword`` once, derives the keys (RFC 3962) and keeps them until the blob's
QueryPasswordInterval says the DC must be asked again (less a clock-skew allowance; MS-ADTS
3.1.1.4.4.1). Within five minutes of a change the previous password is the one the KDC accepts
(see :func:`credfetcher.blob.password_for_authentication`). When the KDC rejects our key anyway —
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
from credfetcher.errors import KeyRejectedError
from credfetcher.identity import HostIdentity, UserIdentity
from credfetcher.keys import KerberosKey, derive_keys
from credfetcher.keytab import keys_for_keytab

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


@dataclass(frozen=True)
class KeyMaterial:
    """Keys derived from one read of the managed password. Secrets hidden from repr.

    ``kvno`` is the version of the password in effect (read consistently with the blob);
    ``managed_password`` is the DC's blob, except that a young gMSA's missing PreviousPassword may
    be filled in from this account's earlier read (see :meth:`GmsaAccount._fetch`).
    """

    principal: str
    dn: str
    kvno: int
    auth_keys: tuple[KerberosKey, ...] = field(repr=False)
    managed_password: ManagedPassword = field(repr=False)
    fetched_at: float
    refetch_at: float


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
        return AccountKey(self.domain, self.gmsa.lower(), identity_key(self.identity))

    def material(self, *, refresh: bool = False) -> KeyMaterial:
        """The cached keys, fetched from the DC first when absent, stale, or ``refresh``."""
        with self._lock:
            current = self._material
            if refresh or current is None or self.clock() >= current.refetch_at:
                current = self._fetch()
                self._material = current
            return current

    def _fetch(self) -> KeyMaterial:
        earlier = self._material
        record = self.directory.fetch_managed_password(self.gmsa, self.identity)
        mp = parse_managed_password(record.blob)
        if not authenticates_with_previous(mp) and (
            earlier is None
            or password_for_authentication(earlier.managed_password) != mp.current
        ):
            record, mp = self._reread_kvno(record)
        kvno = record.kvno if record.kvno is not None else 1
        if earlier is not None and mp.previous is None and not authenticates_with_previous(mp):
            # A gMSA younger than one password interval gets no PreviousPassword in its blob,
            # even after its first change; the password we used until then is that previous
            # one, at the version before. Keytabs keep it (and keep keeping it on later reads of
            # the same password), so service tickets issued before the change still decrypt. A
            # restart loses it: the DC never says it.
            was = password_for_authentication(earlier.managed_password)
            carried = None
            if kvno == earlier.kvno + 1 and was != mp.current:
                carried = was
            elif kvno == earlier.kvno and was == mp.current:
                carried = earlier.managed_password.previous
            if carried is not None:
                mp = replace(mp, previous=carried)
        # The password the KDC accepts now, at the version the DC shows for it: in the five
        # minutes before a change the DC hands out the next password as CurrentPassword but
        # still shows the kvno of the one in effect (PreviousPassword).
        auth_pw = password_for_authentication(mp)
        keys = derive_keys(auth_pw, self.realm, self.gmsa, kvno)
        now = self.clock()
        interval = mp.query_interval.total_seconds()
        if interval <= 0:
            refetch = now + 60.0
        elif authenticates_with_previous(mp):
            # Ask again right after the change so the new password's keys take over.
            refetch = now + interval + 1.0
        else:
            refetch = now + max(interval - CLOCK_SKEW, min(interval, 60.0))
        if earlier is not None and auth_pw != password_for_authentication(
            earlier.managed_password
        ):
            log.info(
                "password of %s changed on %s: kvno %d -> %d",
                self.principal,
                record.dc,
                earlier.kvno,
                kvno,
                extra={"GMSA": self.gmsa, "DC": record.dc},
            )
        log.info(
            "read managed password of %s from %s (kvno %d%s, next read in %s)",
            self.principal,
            record.dc,
            kvno,
            ", next password known" if authenticates_with_previous(mp) else "",
            timedelta(seconds=round(refetch - now)),
            extra={"GMSA": self.gmsa, "DC": record.dc},
        )
        return KeyMaterial(
            principal=self.principal,
            dn=record.dn,
            kvno=kvno,
            auth_keys=tuple(keys),
            managed_password=mp,
            fetched_at=now,
            refetch_at=refetch,
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
        keytabs change with the password: five minutes before a change and right after it.
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

        See :func:`credfetcher.keytab.keys_for_keytab`: in effect at ``material.kvno``, plus the
        next one at kvno + 1 inside the five minutes before a change, else the previous one at
        kvno - 1.
        """
        return keys_for_keytab(
            material.managed_password, self.realm, self.gmsa, material.kvno, rc4=rc4
        )


def identity_key(identity: Identity) -> str:
    """A stable, secret-free key for grouping by identity."""
    return "|".join(identity.key)
