"""One bound LDAP connection to a domain controller: SASL GSSAPI over LDAPS or sealed LDAP.

Authentication and encryption (RFC 4513 5.2.1.2, SASL GSSAPI per RFC 4752)
    Both transports bind with SASL GSSAPI (Kerberos) as a :mod:`credfetcher.identity`:

    * ``ldaps``: TLS on 636, certificate checked against ``ca_file`` (hostname included);
      the GSSAPI token carries RFC 5929 ``tls-server-end-point`` channel bindings
      (:mod:`credfetcher.tlsbinding`), which Samba 4.22 (and AD with LdapEnforceChannelBinding)
      requires: without them the bind fails with ``80090346`` (SEC_E_BAD_BINDINGS).
    * ``ldap-seal``: plain 389 with the RFC 4752 3.3 confidentiality security layer: every
      LDAP PDU is GSS_Wrap'ed with conf_flag set, length-prefixed.

    Choosing between them, and between DCs, is :class:`credfetcher.directory.DirectoryClient`'s
    job; this module opens one :class:`Endpoint` and says how an attempt failed
    (:class:`AttemptFailed`) so the client can decide what to try next.

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

Timeouts
    ``connect_timeout`` bounds the TCP connect; ``receive_timeout`` (the socket timeout) bounds
    the TLS handshake, each bind round trip and each search on the connection.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gssapi
import gssapi.raw
import ldap3
import ldap3.core.exceptions as ldap_exc
from gssapi.raw.misc import GSSError
from ldap3.protocol.sasl.sasl import send_sasl_negotiation

from credfetcher import errors
from credfetcher.discovery import DomainController
from credfetcher.names import Transport
from credfetcher.tlsbinding import tls_server_end_point

__all__ = [
    "LDAP3_CAN_SEAL",
    "LDAPS_PORT",
    "LDAP_PORT",
    "AttemptFailed",
    "Endpoint",
    "Slot",
    "check_ldap_transport",
    "describe",
    "open_bound",
    "quiet_close",
]

log = logging.getLogger(__name__)

LDAP_PORT = 389
LDAPS_PORT = 636

# RFC 4752 3.3 security layer bit masks.
_NO_SECURITY_LAYER = 0x01
_CONFIDENTIALITY = 0x04

# RFC 4511 4.1.9 result codes of a SASL bind round trip.
_SUCCESS = 0
_SASL_BIND_IN_PROGRESS = 14


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

# --- the SASL GSSAPI bind (RFC 4752 3.1) ----------------------------------------------


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

# --- one endpoint ----------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One DC address and the one transport used on it."""

    host: str
    port: int
    transport: Transport  # LDAPS or LDAP_SEAL, never AUTO

    @property
    def label(self) -> str:
        """How logs and messages name it: ``ldaps://dc1:636``, ``ldap://dc1:389 (sealed)``."""
        if self.transport is Transport.LDAPS:
            return f"ldaps://{self._host}:{self.port}"
        return f"ldap://{self._host}:{self.port} (sealed)"

    @property
    def _host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


@dataclass
class Slot:
    """One pooled connection for an (endpoint, identity); ``lock`` serialises its users."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Any = None
    last_used: float = 0.0


class AttemptFailed(Exception):
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


def describe(exc: BaseException) -> str:
    """A short reason for the list of failed attempts."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    # ldap3 prefixes its socket errors with what it was doing; keep it short for the list.
    return text.replace("socket connection error while opening: ", "connect failed: ")


def quiet_close(conn: Any) -> None:
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


def open_bound(
    endpoint: Endpoint,
    creds: gssapi.Credentials | None,
    *,
    timeout: float,
    tls_verify: bool,
    ca_file: Path | None,
) -> tuple[Any, bool]:
    """Open a connection to ``endpoint`` and bind it with SASL GSSAPI as ``creds``.

    Returns the connection and whether the DC accepted the bind (its ``result`` says why not).
    Raises :class:`AttemptFailed` when the DC could not be reached or the exchange broke off,
    and lets ``GSSError`` through (whose fault it is depends on the identity; the caller decides).
    The connection is closed before anything is raised.
    """
    use_tls = endpoint.transport is Transport.LDAPS
    tls = None
    if use_tls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if tls_verify else ssl.CERT_NONE,
            ca_certs_file=str(ca_file) if ca_file else None,
            sni=endpoint.host,
        )
    server = ldap3.Server(
        endpoint.host,
        port=endpoint.port,
        use_ssl=use_tls,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=timeout,
    )
    conn = _Connection(
        server,
        authentication=ldap3.SASL,
        sasl_mechanism=ldap3.KERBEROS,
        # ldap3 also packs this into SO_RCVTIMEO as whole seconds (struct "LL"), so it must
        # be an int; Python's own socket timeout (the one that counts) gets the same value.
        receive_timeout=max(1, math.ceil(timeout)),
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
        quiet_close(conn)
        raise AttemptFailed(describe(exc), timed_out=isinstance(exc, TimeoutError),
                            unreachable=True) from exc
    except _GssapiBindFailed as exc:
        quiet_close(conn)
        raise AttemptFailed(str(exc), layer=exc.kind == "layer",
                            bind=exc.kind == "identity") from exc
    except GSSError:
        quiet_close(conn)
        raise
    except ValueError as exc:  # an unreadable certificate for channel bindings
        quiet_close(conn)
        raise AttemptFailed(str(exc)) from exc
    return conn, bool(bound)
