"""Read a gMSA's managed password from Active Directory, failing over across domain controllers.

What is read
    ``msDS-ManagedPassword`` (MS-ADA2 2.379, the MS-ADTS 2.2.19 blob) of one gMSA, found by
    ``sAMAccountName``; the search and the record are :mod:`credfetcher.gmsasearch`.

How the DC is reached
    SASL GSSAPI (RFC 4752) over LDAPS with RFC 5929 channel bindings, or over plain LDAP with the
    GSSAPI confidentiality layer; one connection is :mod:`credfetcher.ldapchannel`. With
    ``auto`` (the default) a DC is tried sealed on 389 first (it needs no certificate), then on
    LDAPS when it refuses that. Bound connections are pooled per (endpoint, identity) and closed
    after being idle for a while.

Timeouts and failover
    Every network step has a timeout: ``connect_timeout`` for TCP connect and ``receive_timeout``
    (the socket timeout) for the TLS handshake, each bind round trip and each search. A DC that
    fails to connect, times out, or refuses the bind is recorded and the next DC is tried; a DC
    that timed out is tried last for a while. Kerberos exchanges with the KDC (AS for the TGT,
    TGS for ``ldap/<dc>``) are bounded by the Kerberos library's own ``kdc_timeout``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3
import ldap3.core.exceptions as ldap_exc
from gssapi.raw.misc import GSSError

from credfetcher import errors, ldapchannel, metrics
from credfetcher.discovery import DomainController, discover_dcs
from credfetcher.gmsasearch import (
    GMSA_CLASS,
    GmsaRecord,
    gmsa_filter,
    record_from_entry,
    search_one,
)
from credfetcher.identity import CredentialCache, Identity
from credfetcher.ldapchannel import (
    LDAP_PORT,
    LDAPS_PORT,
    AttemptFailed,
    Endpoint,
    Slot,
    check_ldap_transport,
    describe,
    quiet_close,
)
from credfetcher.names import Transport
from credfetcher.tlsbinding import tls_server_end_point
from credfetcher.values import GmsaName

# Names other modules and tests have always imported from here; they live in the modules above.
__all__ = [
    "DirectoryClient",
    "DirectoryConfig",
    "GmsaRecord",
    "Transport",
    "base_dn_for_domain",
    "check_ldap_transport",
    "gmsa_filter",
    "normalize_gmsa_name",
    "tls_server_end_point",
]

log = logging.getLogger(__name__)

# How long a DC that timed out or refused connections goes to the back of the queue: long enough
# that a burst of requests does not wait on it one after another, short enough to notice recovery.
_DOWN_FOR = 30.0
# A discovered DC list is re-read from DNS after this long (and after every DC failed).
_DISCOVERY_TTL = 300.0
# Pooled connections idle this long are closed (AD itself drops idle LDAP after 900 s).
_IDLE_CLOSE = 600.0


def base_dn_for_domain(domain: str) -> str:
    """``example.com`` -> ``DC=example,DC=com`` (the domain naming context, MS-ADTS 3.1.1.1.5)."""
    labels = [label for label in domain.strip().rstrip(".").split(".") if label]
    if not labels:
        raise errors.ConfigError(f"domain {domain!r} is not a DNS domain name", setting="domain")
    return ",".join(f"DC={label}" for label in labels)


@dataclass(frozen=True)
class DirectoryConfig:
    """Where and how to read gMSA passwords; parsed once from the daemon's configuration."""

    domain: str
    domain_controllers: tuple[DomainController, ...] = ()
    transport: Transport = Transport.AUTO
    ca_file: Path | None = None
    tls_verify: bool = True
    timeout: float = 5.0
    search_base: str | None = None
    dns_nameservers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise errors.ConfigError(f"timeout must be a positive number of seconds, not "
                                     f"{self.timeout!r}", setting="timeout")
        base_dn_for_domain(self.domain)
        if self.ca_file is not None and not self.ca_file.is_file():
            raise errors.ConfigError(f"CA file {self.ca_file} does not exist", setting="ca_file")

    @property
    def base_dn(self) -> str:
        """The search base: the configured one (e.g. ``CF_GMSA_OU``) or the domain's DN."""
        return self.search_base or base_dn_for_domain(self.domain)


def normalize_gmsa_name(name: str) -> str:
    """``webapp01`` or ``webapp01$`` -> ``webapp01$`` (a gMSA's sAMAccountName ends in ``$``).

    The rules are :class:`credfetcher.values.GmsaName`'s; this spelling stays for its callers.
    """
    return GmsaName.parse(name).sam


def _unavailable_message(
    domain: str, timeout: float, attempts: list[tuple[str, str]], refusals: set[str]
) -> str:
    """Why no DC served a read: refusals (the DC's answer) told apart from unreachable DCs."""
    refused = [(where, why) for where, why in attempts if where in refusals]
    failed = [(where, why) for where, why in attempts if where not in refusals]

    def listed(items: list[tuple[str, str]]) -> str:
        return "; ".join(f"{where}: {why}" for where, why in items)

    refusal_hint = (
        "The network is fine: the DC answered, and its own log says why it refused "
        "(operationsError: a failure inside the DC; insufficientAccessRights: the reading "
        "identity's rights; busy or unwillingToPerform: load or policy)."
    )
    network_hint = (
        f"Check the DC list or DNS, network reachability of ports 389/636, and the timeout "
        f"({timeout:g} s)."
    )
    if refused and not failed:
        return (
            f"every domain controller for {domain} that was tried refused to serve the "
            f"managed password ({listed(refused)}). {refusal_hint}"
        )
    if refused:
        return (
            f"no domain controller for {domain} served the managed password: refused by "
            f"{listed(refused)}; unreachable: {listed(failed)}. {refusal_hint} {network_hint}"
        )
    return f"no domain controller for {domain} answered ({listed(failed)}). {network_hint}"


class DirectoryClient:
    """Reads msDS-ManagedPassword; thread safe; one bound connection per (DC, identity).

    ``credentials`` may be shared with other components (the lease manager) so an identity's
    TGT is fetched once. ``clock`` is injectable for tests of the idle/back-off bookkeeping.
    """

    def __init__(
        self,
        config: DirectoryConfig,
        *,
        credentials: CredentialCache | None = None,
        discover: Callable[..., list[DomainController]] = discover_dcs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._creds = credentials if credentials is not None else CredentialCache()
        self._discover = discover
        self._clock = clock
        self._lock = threading.Lock()
        self._slots: dict[tuple[Endpoint, tuple[str, str, str]], Slot] = {}
        self._dn_cache: dict[tuple[str, str], str] = {}
        # Keyed by the DC entry, not the host: one host may be listed twice with other ports.
        self._down_until: dict[DomainController, float] = {}
        self._no_seal: set[DomainController] = set()
        self._preferred: DomainController | None = None
        self._discovered: tuple[float, list[DomainController]] | None = None
        self._binds = 0
        self._searches = 0
        self._closed = False
        check_ldap_transport(config.transport, config.domain_controllers)
        self._can_seal = ldapchannel.LDAP3_CAN_SEAL
        if not self._can_seal:
            log.warning("ldap3 %s cannot seal LDAP on 389 (no session_security=ENCRYPT): "
                        "reading gMSA passwords over LDAPS only",
                        getattr(ldap3, "__version__", "?"))
        if not config.tls_verify:
            log.warning(
                "TLS certificate verification of domain controllers is OFF (tls_verify=false): "
                "LDAPS connections can be intercepted; set a CA file instead"
            )

    # -- public ---------------------------------------------------------------------------

    @property
    def bind_count(self) -> int:
        """Binds this client performed (each one a new connection)."""
        with self._lock:
            return self._binds

    @property
    def search_count(self) -> int:
        """Searches this client sent."""
        with self._lock:
            return self._searches

    def fetch_managed_password(self, gmsa_name: str, identity: Identity) -> GmsaRecord:
        """Read the gMSA's msDS-ManagedPassword as ``identity``, failing over across DCs.

        Raises GmsaNotFoundError, PasswordAccessDeniedError, BindError, KerberosError or
        DCUnavailableError (every DC tried, with the reason for each).
        """
        if self._closed:
            raise errors.DirectoryError("the directory client is closed")
        sam = normalize_gmsa_name(gmsa_name)
        self._close_idle()
        dcs = self._ordered_dcs()
        attempts: list[tuple[str, str]] = []
        bind_failures: list[str] = []
        refusals: set[str] = set()  # endpoint labels whose DC answered with a refusal
        for dc in dcs:
            for endpoint in self._endpoints(dc):
                try:
                    record = self._fetch_on(endpoint, identity, sam)
                except AttemptFailed as exc:
                    attempts.append((endpoint.label, exc.reason))
                    log.warning(
                        "domain controller attempt failed",
                        extra={"dc": endpoint.label, "identity": identity.label,
                               "reason": exc.reason},
                    )
                    if exc.bind:
                        bind_failures.append(endpoint.host)
                    if exc.refused:
                        refusals.add(endpoint.label)
                    with self._lock:
                        if exc.layer:
                            self._no_seal.add(dc)
                        if exc.unreachable:
                            self._down_until[dc] = self._clock() + _DOWN_FOR
                    if exc.timed_out or exc.bind:
                        # A DC that hangs would hang on 636 too; a refused identity stays refused.
                        break
                    continue
                with self._lock:
                    self._preferred = dc
                    self._down_until.pop(dc, None)
                return record
        with self._lock:
            self._discovered = None  # the next request asks DNS again
        tried = "; ".join(f"{where}: {why}" for where, why in attempts)
        if bind_failures:
            raise errors.BindError(
                f"{identity.label} could not bind to any domain controller ({tried}). Check that "
                "the account is enabled, its keytab or password is current, and the clocks agree.",
                identity=identity.label,
                dc=bind_failures[0],
            )
        raise errors.DCUnavailableError(
            _unavailable_message(self.config.domain, self.config.timeout, attempts, refusals),
            attempts=attempts,
        )

    def warm(self, identity: Identity) -> bool:
        """Bind a pooled connection as ``identity`` now, ahead of the first read (best effort).

        For start-up: the identity's TGT, the DC's service ticket and the bind are what the first
        lease would otherwise wait for. The first DC/transport that binds is kept, exactly as
        :meth:`fetch_managed_password` would pool it. Nothing is raised and no DC is marked
        down: a failure is logged and left for the first real read to retry and report.
        """
        if self._closed:
            return False
        try:
            dcs = self._ordered_dcs()
        except errors.CredfetcherError as exc:
            log.info("start-up bind skipped: %s", exc.message)
            return False
        for dc in dcs:
            for endpoint in self._endpoints(dc):
                slot = self._slot(endpoint, identity)
                with slot.lock:
                    if slot.conn is not None:
                        return True
                    try:
                        slot.conn = self._connect(endpoint, identity)
                    except AttemptFailed as exc:
                        log.info("start-up bind failed", extra={"dc": endpoint.label,
                                                                 "reason": exc.reason})
                        continue
                    except errors.CredfetcherError as exc:  # our identity, not the DC
                        log.info("start-up bind skipped: %s", exc.message)
                        return False
                    slot.last_used = self._clock()
                with self._lock:
                    self._preferred = dc
                return True
        return False

    def close(self) -> None:
        """Unbind every pooled connection; further fetches raise."""
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            with slot.lock:
                self._drop(slot)

    def __enter__(self) -> DirectoryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- DC selection ---------------------------------------------------------------------

    def _ordered_dcs(self) -> list[DomainController]:
        dcs = list(self.config.domain_controllers) or self._discovered_dcs()
        now = self._clock()
        with self._lock:
            down = {dc for dc, until in self._down_until.items() if until > now}
            preferred = self._preferred
        # Stable sort: healthy before recently-down, the last DC that worked first, else as given.
        return sorted(dcs, key=lambda dc: (dc in down, dc != preferred))

    def _discovered_dcs(self) -> list[DomainController]:
        now = self._clock()
        with self._lock:
            cached = self._discovered
        if cached is not None and now - cached[0] < _DISCOVERY_TTL:
            return cached[1]
        dcs = self._discover(
            self.config.domain,
            nameservers=self.config.dns_nameservers or None,
            timeout=self.config.timeout,
        )
        with self._lock:
            self._discovered = (now, dcs)
        return dcs

    def _endpoints(self, dc: DomainController) -> list[Endpoint]:
        def seal(port: int | None) -> Endpoint:
            return Endpoint(dc.host, port or LDAP_PORT, Transport.LDAP_SEAL)

        def tls(port: int | None) -> Endpoint:
            return Endpoint(dc.host, port or LDAPS_PORT, Transport.LDAPS)

        if dc.scheme == "ldaps":
            return [tls(dc.port)]
        if dc.scheme == "ldap":
            return [seal(dc.port)]
        if self.config.transport is Transport.LDAPS:
            return [tls(dc.port)]
        if self.config.transport is Transport.LDAP_SEAL:
            return [seal(dc.port)]
        if dc.port is not None:
            return [tls(dc.port)] if dc.port == LDAPS_PORT else [seal(dc.port)]
        with self._lock:
            seal_refused = dc in self._no_seal
        return [tls(None)] if seal_refused or not self._can_seal else [seal(None), tls(None)]

    # -- one endpoint ---------------------------------------------------------------------

    def _slot(self, endpoint: Endpoint, identity: Identity) -> Slot:
        with self._lock:
            return self._slots.setdefault((endpoint, identity.key), Slot())

    def _fetch_on(self, endpoint: Endpoint, identity: Identity, sam: str) -> GmsaRecord:
        slot = self._slot(endpoint, identity)
        with slot.lock:
            slot.last_used = self._clock()
            for _ in range(2):
                reused = slot.conn is not None
                if slot.conn is None:
                    slot.conn = self._connect(endpoint, identity)
                try:
                    return self._lookup(slot.conn, endpoint, identity, sam)
                except ldap_exc.LDAPCommunicationError as exc:
                    self._drop(slot)
                    if reused:
                        # A pooled connection the DC (or a firewall) closed while idle: one
                        # fresh connection to the same DC before calling the DC failed.
                        log.info("pooled LDAP connection broke; reconnecting",
                                 extra={"dc": endpoint.label, "reason": describe(exc)})
                        continue
                    raise AttemptFailed(describe(exc),
                                         timed_out=isinstance(exc, TimeoutError)) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self, endpoint: Endpoint, identity: Identity) -> Any:
        """Open and bind a new connection; raises AttemptFailed or an identity error."""
        if endpoint.transport is not Transport.LDAPS and not self._can_seal:
            # e.g. a discovered DC on a non-standard port
            raise AttemptFailed("sealed LDAP needs ldap3 2.10.2rc4 (this ldap3 lacks "
                                "session_security=ENCRYPT)", layer=True)
        creds = self._creds.acquire(identity)  # BindError/KerberosError: not the DC's fault
        try:
            conn, bound = ldapchannel.open_bound(
                endpoint, creds, timeout=self.config.timeout, tls_verify=self.config.tls_verify,
                ca_file=self.config.ca_file,
            )
        except GSSError as exc:
            raise self._gss_failure(exc, endpoint, identity) from exc
        with self._lock:
            self._binds += 1
        metrics.inc(metrics.LDAP_BINDS, endpoint.host)
        if not bound:
            result = conn.result or {}
            quiet_close(conn)
            description = f"{result.get('description')}: {result.get('message', '')}".strip(": ")
            if result.get("result") == 8:  # strongerAuthRequired: this layer is not enough
                raise AttemptFailed(f"bind refused: {description}", layer=True)
            if result.get("result") == 49:  # invalidCredentials
                self._creds.forget(identity)
            raise AttemptFailed(f"bind as {identity.label} refused: {description}", bind=True)
        log.info("bound to domain controller",
                 extra={"dc": endpoint.label, "identity": identity.label})
        return conn

    def _gss_failure(
        self, exc: GSSError, endpoint: Endpoint, identity: Identity
    ) -> AttemptFailed:
        text = str(exc).split("Minor (", 1)[-1].split("): ", 1)[-1] or str(exc)
        if "not found in Kerberos database" in text:
            return AttemptFailed(
                f"the KDC knows no service ldap/{endpoint.host}: name DCs by their host name "
                f"(FQDN), not an address or alias ({text})"
            )
        if "Cannot contact any KDC" in text or "Cannot find KDC" in text:
            return AttemptFailed(f"no KDC reachable for a service ticket ({text})")
        self._creds.forget(identity)
        return AttemptFailed(f"Kerberos failed for {identity.label}: {text}", bind=True)

    def _lookup(self, conn: Any, endpoint: Endpoint, identity: Identity, sam: str) -> GmsaRecord:
        base = self.config.base_dn
        cache_key = (base.lower(), sam.lower())
        with self._lock:
            cached_dn = self._dn_cache.get(cache_key)
        entry = None
        if cached_dn is not None:
            entry = self._search(conn, endpoint, cached_dn, ldap3.BASE,
                                 f"(objectClass={GMSA_CLASS})", sam=sam, missing_ok=True)
            if entry is None:  # moved or deleted: forget the DN and search again
                with self._lock:
                    self._dn_cache.pop(cache_key, None)
        if entry is None:
            entry = self._search(conn, endpoint, base, ldap3.SUBTREE, gmsa_filter(sam), sam=sam,
                                 missing_ok=False)
        if entry is None:  # pragma: no cover - missing_ok=False raises instead
            raise errors.GmsaNotFoundError(f"gMSA {sam} not found under {base}", gmsa=sam)
        with self._lock:
            self._dn_cache[cache_key] = entry["dn"]
        return record_from_entry(entry, sam=sam, host=endpoint.host,
                                 identity_label=identity.label)

    def _search(
        self, conn: Any, endpoint: Endpoint, base: str, scope: str, search_filter: str, *,
        sam: str, missing_ok: bool
    ) -> dict[str, Any] | None:
        with self._lock:
            self._searches += 1
        metrics.inc(metrics.LDAP_SEARCHES, endpoint.host)
        return search_one(conn, host=endpoint.host, base=base, scope=scope,
                          search_filter=search_filter, sam=sam, timeout=self.config.timeout,
                          missing_ok=missing_ok)

    # -- housekeeping ---------------------------------------------------------------------

    def _drop(self, slot: Slot) -> None:
        if slot.conn is not None:
            quiet_close(slot.conn)
            slot.conn = None

    def _close_idle(self) -> None:
        cutoff = self._clock() - _IDLE_CLOSE
        with self._lock:
            idle = [(k, s) for k, s in self._slots.items() if s.last_used < cutoff]
        for key, slot in idle:
            if slot.lock.acquire(blocking=False):  # in use right now: not idle after all
                try:
                    if slot.last_used < cutoff:
                        self._drop(slot)
                        with self._lock:
                            if self._slots.get(key) is slot:
                                del self._slots[key]
                finally:
                    slot.lock.release()

