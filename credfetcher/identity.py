"""Who binds to the directory: the host's machine account (keytab) or a domainless user (password).

Either way the Kerberos TGT (RFC 4120 3.1, the AS exchange) is obtained in this process into a
private credential and handed to GSSAPI (RFC 2743) as a credential handle:

* a keytab identity uses ``gss_acquire_cred_from`` (MIT credential store extension) with
  ``client_keytab`` and a ``MEMORY:`` ccache named at random for this identity;
* a password identity uses ``gss_acquire_cred_with_password``, for which MIT keeps the TGT in a
  ``MEMORY:`` ccache owned by (and destroyed with) the credential handle.

The process-wide ``KRB5CCNAME`` is never read or changed, so requests that bind as different
identities at the same time cannot see each other's tickets. Passwords are never logged and never
appear in a repr; a user identity's pooling key holds a keyed hash of the password, not the
password, so a changed password gets a new connection.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gssapi
import gssapi.raw
import krb5
from gssapi.raw.misc import GSSError

from credfetcher import errors, krbcodes, metrics
from credfetcher.names import default_machine_principal

__all__ = [
    "DEFAULT_KEYTAB",
    "CredentialCache",
    "HostIdentity",
    "Identity",
    "UserIdentity",
    "default_machine_principal",
]

log = logging.getLogger(__name__)

DEFAULT_KEYTAB = Path("/etc/krb5.keytab")

# A fresh random key per process: the pooling key must change when a password changes, but a
# plain SHA-256 of a password lying in memory would be an offline-guessing target.
_KEY_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class HostIdentity:
    """The domain-joined host's machine account, authenticated from a keytab."""

    principal: str
    keytab: Path = DEFAULT_KEYTAB

    def __post_init__(self) -> None:
        name, at, realm = self.principal.rpartition("@")
        if not at or not name or not realm:
            raise errors.ConfigError(
                f"machine principal {self.principal!r} must look like NAME$@REALM",
                setting="principal",
            )

    @classmethod
    def for_host(
        cls, realm: str, *, hostname: str | None = None, keytab: Path = DEFAULT_KEYTAB
    ) -> HostIdentity:
        """This host's default identity (``hostname`` defaults to the kernel's node name)."""
        return cls(default_machine_principal(hostname or os.uname().nodename, realm), keytab)

    @property
    def label(self) -> str:
        """The principal, for messages (holds no secret)."""
        return self.principal

    @property
    def key(self) -> tuple[str, str, str]:
        """Hashable and secret-free: identifies a pooled connection."""
        return ("host", self.principal, str(self.keytab))


@dataclass(frozen=True)
class UserIdentity:
    """A domainless user: name, DNS domain, and password handed in by the caller."""

    username: str
    domain: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.username or any(c in self.username for c in "@\\/"):
            raise errors.InvalidRequestError(
                f"user name {self.username!r} must be a plain account name (no domain part)"
            )
        if not self.domain.strip(". "):
            raise errors.InvalidRequestError(f"user {self.username!r} has no domain")

    @classmethod
    def parse(cls, username: str, password: str, domain: str = "") -> UserIdentity:
        """Accept ``user`` (with ``domain``), ``user@dns.domain`` or ``DOMAIN\\user``.

        A DNS domain written in the user name (``user@dns.domain``) wins; a NetBIOS domain
        (``DOMAIN\\user``) only serves when ``domain`` is not given, because the Kerberos realm
        is the DNS name and a NetBIOS name is only a guess at it.
        """
        name = username.strip()
        embedded = ""
        if "\\" in name:
            embedded, _, name = name.partition("\\")
        elif "@" in name:
            name, _, embedded = name.rpartition("@")
        chosen = domain.strip()
        if embedded and ("." in embedded or not chosen):
            chosen = embedded
        return cls(username=name, domain=chosen.rstrip("."), password=password)

    @property
    def realm(self) -> str:
        """The Kerberos realm: the DNS domain upper-cased (AD's rule)."""
        return self.domain.upper()

    @property
    def principal(self) -> str:
        """``user@REALM``."""
        return f"{self.username}@{self.realm}"

    @property
    def label(self) -> str:
        """The principal, for messages (holds no secret)."""
        return self.principal

    @property
    def key(self) -> tuple[str, str, str]:
        """Hashable; a keyed hash stands for the password so a new password means a new key."""
        digest = hmac.new(_KEY_SECRET, self.password.encode("utf-8"), hashlib.sha256).hexdigest()
        return ("user", self.principal.lower(), digest)


Identity = HostIdentity | UserIdentity

# Re-acquire this long before the TGT expires, so a bind never starts on a ticket about to die.
REFRESH_MARGIN = 300.0


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    creds: gssapi.Credentials | None = None
    expires: float = 0.0
    ccache: str | None = None  # MEMORY: ccache of a keytab identity (ours to destroy)
    retired: str | None = None  # the previous one, destroyed at the next refresh


class CredentialCache:
    """Initiator credentials per identity, acquired in-process and kept until near expiry.

    Thread safe: each identity has its own lock, so one slow KDC exchange does not hold up
    requests for other identities, and concurrent first uses of an identity cause one AS exchange.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], _Entry] = {}

    def acquire(self, identity: Identity) -> gssapi.Credentials:
        """Credentials for ``identity``; raises BindError or KerberosError (see the module doc)."""
        with self._lock:
            entry = self._entries.setdefault(identity.key, _Entry())
        with entry.lock:
            if entry.creds is not None and self._clock() < entry.expires - REFRESH_MARGIN:
                return entry.creds
            creds = self._acquire_new(identity, entry)
            try:
                lifetime = creds.lifetime
            except GSSError:
                lifetime = None
            # GSSAPI says None for "indefinite"; hold such credentials for an hour anyway.
            entry.expires = self._clock() + (lifetime if lifetime is not None else 3600)
            entry.creds = creds
            return creds

    def forget(self, identity: Identity) -> None:
        """Drop cached credentials (a bind said they no longer work), forcing a new AS exchange."""
        with self._lock:
            entry = self._entries.get(identity.key)
        if entry is not None:
            with entry.lock:
                entry.creds = None
                entry.expires = 0.0

    def _acquire_new(self, identity: Identity, entry: _Entry) -> gssapi.Credentials:
        name = gssapi.Name(identity.principal, gssapi.NameType.kerberos_principal)
        try:
            if isinstance(identity, HostIdentity):
                creds = self._from_keytab(identity, name, entry)
            else:
                raw = gssapi.raw.acquire_cred_with_password(
                    name, identity.password.encode("utf-8"), usage="initiate"
                )
                creds = gssapi.Credentials(base=raw.creds)
        except GSSError as exc:
            raise _translate(identity, exc) from exc
        finally:
            metrics.inc(metrics.AS_EXCHANGES, identity.label)
        log.debug("acquired initiator credentials", extra={"principal": identity.label})
        return creds

    def _from_keytab(
        self, identity: HostIdentity, name: gssapi.Name, entry: _Entry
    ) -> gssapi.Credentials:
        keytab = identity.keytab
        if not keytab.is_file() or not os.access(keytab, os.R_OK):
            raise errors.BindError(
                f"cannot authenticate as {identity.label}: keytab {keytab} is missing or "
                "unreadable (join the host, or set the keytab path)",
                identity=identity.label,
            )
        # A new MEMORY ccache per acquisition: an existing one may still serve a bind in another
        # thread. The one before it is destroyed now; it is hours old and no longer used.
        ccache = f"MEMORY:credfetcher-{secrets.token_hex(12)}"
        creds = gssapi.Credentials(
            name=name,
            usage="initiate",
            store={"client_keytab": str(keytab), "ccache": ccache},
        )
        if entry.retired is not None:
            _destroy_ccache(entry.retired)
        entry.retired, entry.ccache = entry.ccache, ccache
        return creds


def _destroy_ccache(name: str) -> None:
    """Free a MEMORY: ccache: MIT keeps them for the life of the process until destroyed."""
    try:
        ctx = krb5.init_context()
        krb5.cc_destroy(ctx, krb5.cc_resolve(ctx, name.encode()))
    except krb5.Krb5Error as exc:
        log.debug("could not destroy a retired ccache: %s", exc)


def _translate(identity: Identity, exc: GSSError) -> errors.CredfetcherError:
    code = krbcodes.signed(int(exc.min_code or 0))
    where = f"keytab {identity.keytab}" if isinstance(identity, HostIdentity) else "its password"
    if code in krbcodes.NO_KDC:
        return errors.KerberosError(
            f"cannot authenticate as {identity.label}: {krbcodes.explain(code)} (check the KDCs "
            f"in krb5.conf or DNS for realm {identity.principal.rpartition('@')[2]})",
            principal=identity.label,
            code=code,
        )
    reason = krbcodes.explain(code) or _gss_text(exc)
    return errors.BindError(
        f"cannot authenticate as {identity.label} with {where}: {reason}",
        identity=identity.label,
    )


def _gss_text(exc: GSSError) -> str:
    """GSSAPI's own minor message (names and codes only: GSSAPI never echoes a password)."""
    try:
        minor = exc.get_all_statuses(exc.min_code, False)
    except Exception:  # a diagnostic only; the codes are still reported below
        minor = []
    text = "; ".join(m for m in minor if m) if minor else ""
    return text or f"GSSAPI error (major {exc.maj_code:#x}, minor {exc.min_code})"
