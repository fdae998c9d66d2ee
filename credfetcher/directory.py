"""Read a gMSA's managed password from Active Directory over an encrypted LDAP connection.

Protocol
    LDAPv3 (RFC 4511) search by ``sAMAccountName`` for the constructed attribute
    ``msDS-ManagedPassword`` (MS-ADA2 2.379; the blob is MS-ADTS 2.2.19). The DC returns it only
    to principals allowed by the gMSA's ``msDS-GroupMSAMembership``
    (PrincipalsAllowedToRetrieveManagedPassword) and only over an encrypted connection (MS-ADTS
    3.1.1.4.4); a caller without the right simply gets no attribute, which is reported as
    :class:`~credfetcher.errors.PasswordAccessDeniedError`. Filter values are escaped per RFC 4515.

Authentication and encryption (RFC 4513 5.2.1.2, SASL GSSAPI per RFC 4752)
    Both transports bind with SASL GSSAPI (Kerberos) as a :mod:`credfetcher.identity`:

    * ``ldaps``: TLS on 636, certificate checked against ``ca_file`` (hostname included);
      the GSSAPI token carries RFC 5929 ``tls-server-end-point`` channel bindings, which Samba
      4.22 (and AD with LdapEnforceChannelBinding) requires: without them the bind fails with
      ``80090346`` (SEC_E_BAD_BINDINGS).
    * ``ldap-seal``: plain 389 with the RFC 4752 3.3 confidentiality security layer: every
      LDAP PDU is GSS_Wrap'ed with conf_flag set, length-prefixed.
    * ``auto``: sealed 389 first (it needs no certificate), LDAPS when the DC refuses that.

Why ldap3 2.10.2rc4
    ldap3 2.9.1, the latest stable release, only negotiates "no security layer", which Samba
    refuses on 389 (strongerAuthRequired) and Windows answers by omitting the password. The
    2.10.2 release candidates add ``session_security=ENCRYPT`` for GSSAPI: ldap3 then wraps
    every request and unwraps every response with the GSSAPI context. That code was verified
    here against Samba 4.22 (single results, a 238-entry search, 50 threads on one connection),
    so it is used rather than a second implementation of the framing. The pin is deliberate and
    should move to the first stable 2.10 release.

    The SASL GSSAPI *negotiation* is ours (:func:`_sasl_gssapi_bind`, RFC 4752 3.1): ldap3's
    computes channel bindings with the ``cryptography`` package, which credfetcher does not
    otherwise need, and it does not check that the server offered, and the context delivers,
    confidentiality. Ours derives the binding hash from the certificate's DER with hashlib,
    refuses to continue unsealed on 389, and takes credentials only from the in-process
    credential handle (never a ccache found through the environment).

Timeouts and failover
    Every network step has a timeout: ``connect_timeout`` for TCP connect and ``receive_timeout``
    (the socket timeout) for the TLS handshake, each bind round trip and each search. A DC that
    fails to connect, times out, or refuses the bind is recorded and the next DC is tried; a DC
    that timed out is tried last for a while. Kerberos exchanges with the KDC (AS for the TGT,
    TGS for ``ldap/<dc>``) are bounded by the Kerberos library's own ``kdc_timeout``.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gssapi
import gssapi.raw
import ldap3
import ldap3.core.exceptions as ldap_exc
from gssapi.raw.misc import GSSError
from ldap3.protocol.sasl.sasl import send_sasl_negotiation
from ldap3.utils.conv import escape_filter_chars

from credfetcher import errors, metrics
from credfetcher.discovery import DomainController, discover_dcs
from credfetcher.identity import CredentialCache, Identity
from credfetcher.names import Transport

__all__ = [
    "LDAP3_CAN_SEAL",
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

MANAGED_PASSWORD = "msDS-ManagedPassword"  # noqa: S105 - an attribute name
KEY_VERSION = "msDS-KeyVersionNumber"
GMSA_CLASS = "msDS-GroupManagedServiceAccount"

LDAP_PORT = 389
LDAPS_PORT = 636

# RFC 4752 3.3 security layer bit masks.
_NO_SECURITY_LAYER = 0x01
_CONFIDENTIALITY = 0x04

# RFC 4511 4.1.9 result codes that matter here.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_REFERRAL = 10
_SASL_BIND_IN_PROGRESS = 14
_NO_SUCH_OBJECT = 32

# How long a DC that timed out or refused connections goes to the back of the queue: long enough
# that a burst of requests does not wait on it one after another, short enough to notice recovery.
_DOWN_FOR = 30.0
# A discovered DC list is re-read from DNS after this long (and after every DC failed).
_DISCOVERY_TTL = 300.0
# Pooled connections idle this long are closed (AD itself drops idle LDAP after 900 s).
_IDLE_CLOSE = 600.0


# Sealed LDAP on 389 needs ldap3's GSSAPI wrapping (``session_security=ENCRYPT``, 2.10.2rc1 and
# later); ldap3 2.9.1, which distributions ship, has neither. LDAPS does not use it.
LDAP3_CAN_SEAL: bool = hasattr(ldap3, "ENCRYPT") and (
    "session_security" in inspect.signature(ldap3.Connection.__init__).parameters
)


def check_ldap_transport(
    transport: Transport, domain_controllers: Sequence[DomainController] = ()
) -> None:
    """Raise ConfigError at start-up when the settings need sealing that this ldap3 lacks.

    ``auto`` alone does not: without sealing it uses LDAPS only (:class:`DirectoryClient` warns).
    """
    if LDAP3_CAN_SEAL:
        return
    sealed = [
        dc.label
        for dc in domain_controllers
        if dc.scheme == "ldap"
        or (dc.scheme is None and dc.port not in (None, LDAPS_PORT) and transport is Transport.AUTO)
    ]
    if transport is not Transport.LDAP_SEAL and not sealed:
        return
    what = (f"the domain controllers {', '.join(sealed)} (ldap:// or a port other than 636)"
            if sealed else "CF_LDAP_TRANSPORT=ldap-seal")
    raise errors.ConfigError(
        f"{what} need sealed LDAP (SASL GSSAPI confidentiality on 389), which ldap3 "
        f"{getattr(ldap3, '__version__', '?')} cannot do: it lacks session_security=ENCRYPT "
        "(ldap3 2.10.2rc4 has it). Use LDAPS (CF_LDAP_TRANSPORT=ldaps or auto, DCs as host "
        "names or ldaps:// URLs) or install ldap3==2.10.2rc4.",
        setting="ldap_transport",
    )


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


@dataclass(frozen=True)
class GmsaRecord:
    """What one read returned; ``blob`` is the raw msDS-ManagedPassword (MS-ADTS 2.2.19)."""

    sam_account_name: str
    dn: str
    blob: bytes = field(repr=False)
    kvno: int | None
    dc: str


def normalize_gmsa_name(name: str) -> str:
    """``webapp01`` or ``webapp01$`` -> ``webapp01$`` (a gMSA's sAMAccountName ends in ``$``)."""
    bare = name.strip().removesuffix("$")
    if not bare or any(ord(c) < 0x20 for c in bare):
        raise errors.InvalidRequestError(f"{name!r} is not a gMSA account name")
    return bare + "$"


def gmsa_filter(sam_account_name: str) -> str:
    """The search filter for one gMSA, its value escaped per RFC 4515 3."""
    return (f"(&(objectClass={GMSA_CLASS})"
            f"(sAMAccountName={escape_filter_chars(sam_account_name)}))")


# --- RFC 5929 channel bindings -------------------------------------------------------------

# Signature algorithm OID -> hash (RFC 5929 4.1: MD5 and SHA-1 are replaced by SHA-256).
_SIG_HASHES = {
    "1.2.840.113549.1.1.4": "sha256",  # md5WithRSAEncryption
    "1.2.840.113549.1.1.5": "sha256",  # sha1WithRSAEncryption
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.10045.4.1": "sha256",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.1": "sha224",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.10040.4.3": "sha256",  # dsa-with-sha1
    "2.16.840.1.101.3.4.3.2": "sha256",  # dsa-with-sha256
}
# Digest OIDs inside RSASSA-PSS parameters (RFC 4055 3.1).
_DIGESTS = {
    "1.3.14.3.2.26": "sha256",  # SHA-1 -> SHA-256 as above
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
}
_RSASSA_PSS = "1.2.840.113549.1.1.10"


def _der_item(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos`` (X.690 8.1): (tag, start of contents, end of contents)."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("DER item overruns its container")
    return tag, pos, pos + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _der_item(data, start)
        items.append(item)
        start = item[2]
    return items


def _oid(data: bytes) -> str:
    """Decode an OBJECT IDENTIFIER's contents (X.690 8.19)."""
    arcs: list[int] = []
    value = 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        raise ValueError("empty OID")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _signature_hash(cert_der: bytes) -> str:
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }
    _, start, end = _der_item(cert_der, 0)
    parts = _der_children(cert_der, start, end)
    _, alg_start, alg_end = parts[1]
    alg = _der_children(cert_der, alg_start, alg_end)
    oid = _oid(cert_der[alg[0][1] : alg[0][2]])
    if oid == _RSASSA_PSS:
        # RSASSA-PSS-params: hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1.
        if len(alg) > 1:
            for tag, p_start, _ in _der_children(cert_der, alg[1][1], alg[1][2]):
                if tag == 0xA0:
                    _, h_start, h_end = _der_item(cert_der, p_start)
                    inner = _der_children(cert_der, h_start, h_end)
                    return _DIGESTS.get(_oid(cert_der[inner[0][1] : inner[0][2]]), "sha256")
        return "sha256"
    # RFC 5929 leaves other algorithms (e.g. Ed25519) undefined; SHA-256 is what Windows uses.
    return _SIG_HASHES.get(oid, "sha256")


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 4 ``tls-server-end-point`` application data for the server certificate."""
    try:
        algorithm = _signature_hash(cert_der)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"cannot read the DC's certificate: {exc}") from exc
    return b"tls-server-end-point:" + hashlib.new(algorithm, cert_der).digest()


# --- the SASL GSSAPI bind ------------------------------------------------------------------


class _GssapiBindFailed(Exception):
    """The GSSAPI exchange failed before the DC gave a result; ``kind`` says whose fault."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # "dc": try another DC; "identity": our credentials; "layer": no sealing


def _sasl_gssapi_bind(conn: Any, controls: Any) -> Any:
    """RFC 4752 3.1 client side over an ldap3 connection; returns ldap3's final bind result.

    Token exchange until the context is established; then the server's wrapped 4-octet offer
    (supported layers, max message size) is unwrapped and answered with our choice: the
    confidentiality layer on plain LDAP, "no security layer" inside TLS (RFC 4513 5.2.1.2 lets
    the TLS layer protect the session instead).
    """
    seal: bool = conn.credfetcher_seal
    bindings = None
    if not seal:
        bindings = gssapi.raw.ChannelBindings(
            application_data=tls_server_end_point(conn.socket.getpeercert(True))
        )
    wanted = gssapi.RequirementFlag
    flags = wanted.mutual_authentication | wanted.out_of_sequence_detection
    if seal:
        flags |= wanted.confidentiality | wanted.integrity
    ctx = gssapi.SecurityContext(
        name=gssapi.Name(f"ldap@{conn.server.host}", gssapi.NameType.hostbased_service),
        creds=conn.credfetcher_creds,
        mech=gssapi.MechType.kerberos,
        flags=flags,
        usage="initiate",
        channel_bindings=bindings,
    )
    in_token: bytes | None = None
    result: Any = None
    while not ctx.complete:
        out_token = ctx.step(in_token) or b""
        result = send_sasl_negotiation(conn, controls, out_token)
        if result["result"] not in (_SUCCESS, _SASL_BIND_IN_PROGRESS):
            return result
        in_token = result["saslCreds"] or b""
    # RFC 4752 3.1: after establishment one more empty response fetches the layer offer (unless
    # the server already sent it with the last token, which Kerberos' AP-REP exchange does not).
    if not in_token:
        result = send_sasl_negotiation(conn, controls, b"")
        if result["result"] not in (_SUCCESS, _SASL_BIND_IN_PROGRESS):
            return result
        in_token = result["saslCreds"] or b""
    offer = ctx.unwrap(in_token).message
    if len(offer) != 4:
        raise _GssapiBindFailed("malformed GSSAPI security layer offer", kind="dc")
    offered = offer[0]
    if seal:
        if not offered & _CONFIDENTIALITY:
            raise _GssapiBindFailed("the DC does not offer a GSSAPI confidentiality layer",
                                    kind="layer")
        if gssapi.RequirementFlag.confidentiality not in ctx.actual_flags:
            raise _GssapiBindFailed("the Kerberos context cannot encrypt", kind="layer")
        # Echo the server's maximum as ours: ldap3 reassembles any length it receives.
        choice = bytes([_CONFIDENTIALITY]) + offer[1:4]
        conn.krb_wrap_size_limit = int.from_bytes(offer[1:4], "big")
    else:
        if not offered & _NO_SECURITY_LAYER:
            raise _GssapiBindFailed("the DC insists on a GSSAPI layer inside TLS", kind="layer")
        choice = bytes([_NO_SECURITY_LAYER, 0, 0, 0])
    # RFC 4752 3.1: the answer is wrapped with conf_flag FALSE; no authorization identity.
    reply = ctx.wrap(choice, False).message
    conn.krb_ctx = ctx  # ldap3 seals with it once sasl_in_progress is over
    return send_sasl_negotiation(conn, controls, reply)


# ldap3 has no type information; subclassing it is how its bind dispatch lets us supply the
# SASL negotiation (Connection.do_sasl_bind) while keeping its framing, sealing and parsing.
class _Connection(ldap3.Connection):  # type: ignore[misc]
    credfetcher_creds: gssapi.Credentials | None = None
    credfetcher_seal: bool = False

    def do_sasl_bind(self, controls: Any) -> Any:
        with self.connection_lock:
            self.sasl_in_progress = True
            try:
                return _sasl_gssapi_bind(self, controls)
            finally:
                self.sasl_in_progress = False


# --- connection pool -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    transport: Transport  # LDAPS or LDAP_SEAL, never AUTO

    @property
    def label(self) -> str:
        if self.transport is Transport.LDAPS:
            return f"ldaps://{self._host}:{self.port}"
        return f"ldap://{self._host}:{self.port} (sealed)"

    @property
    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@dataclass
class _Slot:
    """One pooled connection for an (endpoint, identity); ``lock`` serialises its users."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Any = None
    last_used: float = 0.0


class _AttemptFailed(Exception):
    """One endpoint did not work; ``timed_out`` skips the DC's other transports.

    ``refused``: the DC answered, with an LDAP result code that says it will not serve the
    search (operationsError, insufficientAccessRights, unwillingToPerform, busy...): reachable,
    so the operator should look at the DC rather than at the network.
    """

    def __init__(self, reason: str, *, timed_out: bool = False, unreachable: bool = False,
                 bind: bool = False, layer: bool = False, refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        self.unreachable = unreachable or timed_out
        self.bind = bind
        self.layer = layer
        self.refused = refused


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    # ldap3 prefixes its socket errors with what it was doing; keep it short for the list.
    return text.replace("socket connection error while opening: ", "connect failed: ")


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
        self._slots: dict[tuple[_Endpoint, tuple[str, str, str]], _Slot] = {}
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
        self._can_seal = LDAP3_CAN_SEAL
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
                except _AttemptFailed as exc:
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
                    except _AttemptFailed as exc:
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

    def _endpoints(self, dc: DomainController) -> list[_Endpoint]:
        def seal(port: int | None) -> _Endpoint:
            return _Endpoint(dc.host, port or LDAP_PORT, Transport.LDAP_SEAL)

        def tls(port: int | None) -> _Endpoint:
            return _Endpoint(dc.host, port or LDAPS_PORT, Transport.LDAPS)

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

    def _slot(self, endpoint: _Endpoint, identity: Identity) -> _Slot:
        with self._lock:
            return self._slots.setdefault((endpoint, identity.key), _Slot())

    def _fetch_on(self, endpoint: _Endpoint, identity: Identity, sam: str) -> GmsaRecord:
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
                                 extra={"dc": endpoint.label, "reason": _describe(exc)})
                        continue
                    raise _AttemptFailed(_describe(exc),
                                         timed_out=isinstance(exc, TimeoutError)) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self, endpoint: _Endpoint, identity: Identity) -> Any:
        """Open and bind a new connection; raises _AttemptFailed or an identity error."""
        use_tls = endpoint.transport is Transport.LDAPS
        if not use_tls and not self._can_seal:  # e.g. a discovered DC on a non-standard port
            raise _AttemptFailed("sealed LDAP needs ldap3 2.10.2rc4 (this ldap3 lacks "
                                 "session_security=ENCRYPT)", layer=True)
        creds = self._creds.acquire(identity)  # BindError/KerberosError: not the DC's fault
        tls = None
        if use_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED if self.config.tls_verify else ssl.CERT_NONE,
                ca_certs_file=str(self.config.ca_file) if self.config.ca_file else None,
                sni=endpoint.host,
            )
        server = ldap3.Server(
            endpoint.host,
            port=endpoint.port,
            use_ssl=use_tls,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.config.timeout,
        )
        conn = _Connection(
            server,
            authentication=ldap3.SASL,
            sasl_mechanism=ldap3.KERBEROS,
            # ldap3 also packs this into SO_RCVTIMEO as whole seconds (struct "LL"), so it must
            # be an int; Python's own socket timeout (the one that counts) gets the same value.
            receive_timeout=max(1, math.ceil(self.config.timeout)),
            auto_referrals=False,
            raise_exceptions=False,
            read_only=True,
            return_empty_attributes=False,
            # Only sealing needs this argument: LDAPS works with an ldap3 that lacks it (2.9.1).
            **({} if use_tls else {"session_security": ldap3.ENCRYPT}),
        )
        conn.credfetcher_creds = creds
        conn.credfetcher_seal = not use_tls
        try:
            conn.open(read_server_info=False)
            bound = conn.bind(read_server_info=False)
        except ldap_exc.LDAPCommunicationError as exc:
            _quiet_close(conn)
            raise _AttemptFailed(_describe(exc), timed_out=isinstance(exc, TimeoutError),
                                 unreachable=True) from exc
        except _GssapiBindFailed as exc:
            _quiet_close(conn)
            raise _AttemptFailed(str(exc), layer=exc.kind == "layer",
                                 bind=exc.kind == "identity") from exc
        except GSSError as exc:
            _quiet_close(conn)
            raise self._gss_failure(exc, endpoint, identity) from exc
        except ValueError as exc:  # an unreadable certificate for channel bindings
            _quiet_close(conn)
            raise _AttemptFailed(str(exc)) from exc
        with self._lock:
            self._binds += 1
        metrics.inc(metrics.LDAP_BINDS, endpoint.host)
        if not bound:
            result = conn.result or {}
            _quiet_close(conn)
            description = f"{result.get('description')}: {result.get('message', '')}".strip(": ")
            if result.get("result") == 8:  # strongerAuthRequired: this layer is not enough
                raise _AttemptFailed(f"bind refused: {description}", layer=True)
            if result.get("result") == 49:  # invalidCredentials
                self._creds.forget(identity)
            raise _AttemptFailed(f"bind as {identity.label} refused: {description}", bind=True)
        log.info("bound to domain controller",
                 extra={"dc": endpoint.label, "identity": identity.label})
        return conn

    def _gss_failure(
        self, exc: GSSError, endpoint: _Endpoint, identity: Identity
    ) -> _AttemptFailed:
        text = str(exc).split("Minor (", 1)[-1].split("): ", 1)[-1] or str(exc)
        if "not found in Kerberos database" in text:
            return _AttemptFailed(
                f"the KDC knows no service ldap/{endpoint.host}: name DCs by their host name "
                f"(FQDN), not an address or alias ({text})"
            )
        if "Cannot contact any KDC" in text or "Cannot find KDC" in text:
            return _AttemptFailed(f"no KDC reachable for a service ticket ({text})")
        self._creds.forget(identity)
        return _AttemptFailed(f"Kerberos failed for {identity.label}: {text}", bind=True)

    def _lookup(self, conn: Any, endpoint: _Endpoint, identity: Identity, sam: str) -> GmsaRecord:
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
        dn: str = entry["dn"]
        with self._lock:
            self._dn_cache[cache_key] = dn
        attrs: Mapping[str, list[bytes]] = entry.get("raw_attributes") or {}
        blob = _attr(attrs, MANAGED_PASSWORD)
        if not blob:
            raise errors.PasswordAccessDeniedError(
                f"{identity.label} may not read the managed password of gMSA {sam} ({dn}) on "
                f"{endpoint.host}: the DC returned no {MANAGED_PASSWORD}. Add {identity.label} "
                f"(or a group it is in) to the gMSA's PrincipalsAllowedToRetrieveManagedPassword "
                f"(attribute msDS-GroupMSAMembership), e.g. Set-ADServiceAccount "
                f"-PrincipalsAllowedToRetrieveManagedPassword or samba-tool service-account "
                f"group-msa-membership add; a new group membership counts once the identity "
                f"gets a new ticket.",
                identity=identity.label,
                gmsa=sam,
                dc=endpoint.host,
            )
        kvno_raw = _attr(attrs, KEY_VERSION)
        name_raw = _attr(attrs, "sAMAccountName")
        return GmsaRecord(
            sam_account_name=name_raw[0].decode("utf-8") if name_raw else sam,
            dn=dn,
            blob=bytes(blob[0]),
            kvno=int(kvno_raw[0]) if kvno_raw and kvno_raw[0].isdigit() else None,
            dc=endpoint.host,
        )

    def _search(
        self, conn: Any, endpoint: _Endpoint, base: str, scope: str, search_filter: str, *,
        sam: str, missing_ok: bool
    ) -> dict[str, Any] | None:
        with self._lock:
            self._searches += 1
        metrics.inc(metrics.LDAP_SEARCHES, endpoint.host)
        conn.search(
            search_base=base,
            search_filter=search_filter,
            search_scope=scope,
            attributes=["sAMAccountName", MANAGED_PASSWORD, KEY_VERSION],
            size_limit=2,
            time_limit=max(1, math.ceil(self.config.timeout)),
        )
        result = conn.result or {}
        code = result.get("result")
        entries = [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]
        if code == _NO_SUCH_OBJECT or (code in (_SUCCESS, _REFERRAL) and not entries):
            if missing_ok:
                return None
            where = "does not exist" if code == _NO_SUCH_OBJECT else "holds no such account"
            raise errors.GmsaNotFoundError(
                f"gMSA {sam} not found: search base {base} {where} on {endpoint.host}. Check the "
                "name in the credspec and the search base (CF_GMSA_OU / search_base).",
                dc=endpoint.host,
                gmsa=sam,
            )
        if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
            # operationsError, busy, unwillingToPerform...: this DC answered but will not serve
            # us now; try another, and say it refused (it is reachable).
            raise _AttemptFailed(
                f"refused the search: {result.get('description')} (LDAP result {code}) "
                f"{result.get('message', '')}".strip(),
                refused=True,
            )
        if len(entries) > 1:
            raise errors.DirectoryError(
                f"more than one gMSA named {sam} under {base}", dc=endpoint.host, gmsa=sam
            )
        entry: dict[str, Any] = entries[0]
        return entry

    # -- housekeeping ---------------------------------------------------------------------

    def _drop(self, slot: _Slot) -> None:
        if slot.conn is not None:
            _quiet_close(slot.conn)
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


def _attr(attrs: Mapping[str, Sequence[bytes]], name: str) -> Sequence[bytes]:
    """Attribute values by name, case-insensitively (LDAP descriptors are, RFC 4512 1.4)."""
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return values
    return []


def _quiet_close(conn: Any) -> None:
    """Unbind (or just close) a connection that failed or is no longer wanted."""
    try:
        if conn.bound and not conn.closed:
            conn.unbind()
        else:
            conn.strategy.close()
    except (ldap_exc.LDAPException, OSError):
        log.debug("closing an LDAP connection failed", exc_info=True)
    finally:
        # ldap3 leaves the socket open when the unbind itself fails (a connection the DC already
        # dropped): close it here so no descriptor outlives the connection.
        sock = getattr(conn, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
