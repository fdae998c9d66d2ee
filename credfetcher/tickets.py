"""In-process Kerberos: a gMSA's TGT from its password or keys, and FILE ccaches.

Everything goes through libkrb5 via pykrb5, inside this process: no ``kinit`` subprocess, no
password on a pipe or in argv, no ``KRB5CCNAME`` in the environment. The KDC is found the usual
way (``KRB5_CONFIG`` / ``/etc/krb5.conf``), read when each krb5 context is created.

Thread safety: a krb5 context must not be used by two threads at once, so every function creates
its own. A :class:`Tgt` holds no context at all: it keeps the credentials serialised in MIT's
ccache (v4) credential format (``marshal_credentials``, MIT >= 1.20), so any number of threads can
store the same Tgt concurrently.

The AS exchange is RFC 4120 §3.1 (with the KDC's PA-ETYPE-INFO2 salt, §5.2.7.5). Tickets are
renewed with a new AS exchange (:mod:`credfetcher.renewal`), not a TGS exchange with the RENEW
option: the keys are at hand, and a new ticket's renew_till starts afresh.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import krb5

from credfetcher import ccachefile, krbcodes, metrics
from credfetcher.errors import KerberosError, KeyRejectedError, StorageError, UnsupportedError
from credfetcher.files import Ownership, atomic_target, read_regular
from credfetcher.keys import KerberosKey

log = logging.getLogger(__name__)

__all__ = [
    "Tgt",
    "TicketInfo",
    "acquire_tgt",
    "gmsa_principal",
    "kdc_salt",
    "read_ticket_info",
    "store_tgt",
    "ticket_info_from_bytes",
    "write_ccache_file",
]

@dataclass(frozen=True)
class TicketInfo:
    """What a TGT is good for: client principal and its times (Unix seconds, RFC 4120 §5.3)."""

    principal: str
    starttime: int
    endtime: int
    renew_till: int


@dataclass(frozen=True)
class Tgt:
    """A TGT held in memory, ready to be stored into any number of ccache files.

    ``marshalled`` is the credential (ticket *and session key*) in MIT's ccache v4 credential
    format: secret, opaque, and kept out of ``repr``.
    """

    info: TicketInfo
    marshalled: bytes = field(repr=False, compare=False)

    @property
    def principal(self) -> str:
        """The client principal, e.g. ``webapp01$@CREDFETCHER.TEST``."""
        return self.info.principal


def gmsa_principal(name: str, realm: str) -> str:
    """``NAME$@REALM`` for a gMSA name given with or without its ``$`` (realm upper-cased)."""
    return f"{name.removesuffix('$')}$@{realm.upper()}"


def _marshal(ctx: krb5.Context, creds: krb5.Creds) -> bytes:
    try:
        marshal = krb5.marshal_credentials
    except AttributeError as exc:  # pragma: no cover - Heimdal or MIT < 1.20
        raise UnsupportedError("credfetcher needs MIT krb5 >= 1.20 (marshal_credentials)") from exc
    return marshal(ctx, creds)


def _unmarshal(ctx: krb5.Context, data: bytes) -> krb5.Creds:
    try:
        unmarshal = krb5.unmarshal_credentials
    except AttributeError as exc:  # pragma: no cover - Heimdal or MIT < 1.20
        raise UnsupportedError(
            "credfetcher needs MIT krb5 >= 1.20 (unmarshal_credentials)"
        ) from exc
    return unmarshal(ctx, data)


def _info(ctx: krb5.Context, creds: krb5.Creds) -> TicketInfo:
    times = creds.times
    return TicketInfo(
        principal=krb5.unparse_name_flags(ctx, creds.client).decode("utf-8", "replace"),
        # starttime is optional in the ticket (RFC 4120 §5.3): absent means "from authtime".
        starttime=times.starttime or times.authtime,
        endtime=times.endtime,
        renew_till=times.renew_till,
    )


def _tgt(ctx: krb5.Context, creds: krb5.Creds) -> Tgt:
    return Tgt(info=_info(ctx, creds), marshalled=_marshal(ctx, creds))


def _kerberos_error(exc: krb5.Krb5Error, principal: str, action: str) -> KerberosError:
    """Translate a krb5 error into the project's error tree (messages never carry secrets)."""
    code = exc.err_code
    reason = krbcodes.explain(code)
    if krbcodes.is_key_rejected(code):
        return KeyRejectedError(
            f"{action} for {principal}: the KDC rejected the key ({exc})",
            principal=principal,
            code=code,
        )
    if reason is not None:
        return KerberosError(
            f"{action} for {principal}: {reason} ({exc})", principal=principal, code=code
        )
    return KerberosError(f"{action} for {principal}: {exc}", principal=principal, code=code)


def acquire_tgt(
    principal: str,
    *,
    password: bytes | None = None,
    keys: Sequence[KerberosKey] | None = None,
    lifetime: int | None = None,
    renew_lifetime: int | None = None,
) -> Tgt:
    """A TGT for ``principal`` from its UTF-8 ``password`` or from its long-term ``keys``.

    Give exactly one of the two. ``password`` is :func:`credfetcher.keys.password_to_utf8` of the
    managed password (libkrb5 then salts it with the KDC's ETYPE-INFO2 salt). ``keys`` go into a
    private MEMORY: keytab (never a file) and are used directly; the highest kvno per enctype is
    used, so pass only the keys to authenticate with. Keys are the faster path (~15 ms against
    ~22 ms: no string-to-key). ``lifetime`` and ``renew_lifetime`` (seconds) are requests; the KDC
    may shorten them, and without ``renew_lifetime`` the krb5.conf default applies.

    Raises KeyRejectedError when the KDC refuses the password/keys, KerberosError otherwise.
    """
    if (password is None) == (keys is None):
        raise ValueError("acquire_tgt needs exactly one of password= or keys=")
    ctx = krb5.init_context()
    try:
        client = krb5.parse_name_flags(ctx, principal.encode())
        opt = krb5.get_init_creds_opt_alloc(ctx)
        if lifetime is not None:
            krb5.get_init_creds_opt_set_tkt_life(opt, lifetime)
        if renew_lifetime is not None:
            krb5.get_init_creds_opt_set_renew_life(opt, renew_lifetime)
        if keys is not None:
            # A random MEMORY: name: MIT's memory keytabs are process-wide by name, and another
            # thread may be doing the same for another gMSA. Freed when `keytab` is closed.
            keytab = krb5.kt_resolve(ctx, b"MEMORY:credfetcher-" + secrets.token_hex(16).encode())
            for key in keys:
                keyblock = krb5.init_keyblock(ctx, key.enctype, key.contents)
                krb5.kt_add_entry(ctx, keytab, client, key.kvno, 0, keyblock)
            metrics.inc(metrics.AS_EXCHANGES, principal)
            creds = krb5.get_init_creds_keytab(ctx, client, opt, keytab)
        else:
            metrics.inc(metrics.AS_EXCHANGES, principal)
            creds = krb5.get_init_creds_password(ctx, client, opt, password=password)
    except krb5.Krb5Error as exc:
        raise _kerberos_error(exc, principal, "cannot get a TGT") from exc
    return _tgt(ctx, creds)


def store_tgt(
    tgt: Tgt, path: Path, ownership: Ownership, *, root: Path | None = None
) -> TicketInfo:
    """Write ``tgt`` as a FILE ccache at ``path`` atomically, with ``ownership``; return its info.

    libkrb5 writes the cache in the private staging directory of ``root`` (krbdir; see
    :func:`credfetcher.files.atomic_target`), from where it is renamed over the old ccache:
    readers, including containers that bind-mount the directory, see the old cache or the new
    one, never a partial one, and libkrb5 never opens a name inside a lease directory. Raises
    StorageError, or :class:`credfetcher.files.TamperedError` after installing the cache when
    something the daemon did not make sat at ``path``.
    """
    with atomic_target(path, ownership, root=root) as tmp:
        write_ccache_file(tgt, tmp, path)
    return tgt.info


def write_ccache_file(tgt: Tgt, tmp: Path, path: Path) -> None:
    """libkrb5 writes ``tgt`` as a new FILE ccache at ``tmp`` (a name in the private staging
    directory, never in a lease); errors are StorageErrors naming ``path``, its destination."""
    ctx = krb5.init_context()
    try:
        creds = _unmarshal(ctx, tgt.marshalled)
        ccache = krb5.cc_resolve(ctx, b"FILE:" + bytes(tmp))
        krb5.cc_initialize(ctx, ccache, creds.client)
        krb5.cc_store_cred(ctx, ccache, creds)
    except krb5.Krb5Error as exc:
        raise StorageError(f"cannot write ccache {path}: {exc}", path=str(path)) from exc


def read_ticket_info(
    path: Path, *, root: Path | None = None, owner: int | None = None
) -> TicketInfo | None:
    """The TGT in the FILE ccache at ``path``, or None if missing, unreadable, unsafe or TGT-less.

    The file is read through :func:`credfetcher.files.read_regular` (``O_NOFOLLOW|O_NONBLOCK``,
    a regular file of one link and a sane size, owned by ``owner`` when given, directories
    walked from ``root``), once, and the bytes read are parsed (:func:`ticket_info_from_bytes`;
    when libkrb5 parses them, it reads a private in-memory copy, a memfd reached as
    ``FILE:/proc/self/fd/N``): no name in a lease directory is opened again, and a lock someone
    holds on the lease's file cannot make it wait (MIT takes a blocking read lock on FILE
    caches). The TGT is the ``krbtgt/REALM@REALM`` ticket of the cache's client realm; ccache
    config entries (``X-CACHECONF:``) and service tickets are skipped.
    """
    try:
        data = read_regular(path, root=root, owner=owner)
    except StorageError as exc:
        log.info("not reading a ticket from %s: %s", path, exc.message)
        return None
    return ticket_info_from_bytes(data) if data else None


def ticket_info_from_bytes(data: bytes) -> TicketInfo | None:
    """The TGT in a FILE ccache's bytes (see :func:`read_ticket_info`), or None.

    Parsed once, here (:mod:`credfetcher.ccachefile`); a cache that parser leaves to libkrb5
    (another format version, a name libkrb5 quotes) is parsed by libkrb5 instead.
    """
    try:
        times = ccachefile.tgt_times(data)
    except ValueError:
        return None  # libkrb5 refuses a damaged cache as a whole too
    except ccachefile.Unsupported:
        return _ticket_info_by_libkrb5(data)
    if times is None:
        return None
    return TicketInfo(
        principal=times.principal,
        # starttime is optional in the ticket (RFC 4120 §5.3): absent means "from authtime".
        starttime=times.starttime or times.authtime,
        endtime=times.endtime,
        renew_till=times.renew_till,
    )


def _ticket_info_by_libkrb5(data: bytes) -> TicketInfo | None:
    fd = os.memfd_create("credfetcher-ccache", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        ctx = krb5.init_context()
        ccache = krb5.cc_resolve(ctx, f"FILE:/proc/self/fd/{fd}".encode())
        # Iterate to the end before looking: pykrb5 only ends the sequence (closing the file MIT
        # opened for it) when iteration finishes; returning mid-loop leaked one fd per call.
        entries = list(ccache)
        for creds in entries:
            client_realm = creds.client.realm
            server = creds.server
            if server.realm == client_realm and server.components == [b"krbtgt", client_realm]:
                return _info(ctx, creds)
    except krb5.Krb5Error:
        return None
    finally:
        os.close(fd)
    return None


def kdc_salt(principal: str) -> bytes | None:
    """The AES salt the KDC advertises for ``principal`` (PA-ETYPE-INFO2, RFC 4120 §5.2.7.5).

    One AS exchange without preauthentication; no secret is involved. None when the KDC sends no
    salt (then the default salt applies). Use it with :func:`credfetcher.keys.derive_keys` where
    keys must match the KDC's exactly (keytabs for acceptors).
    """
    ctx = krb5.init_context()
    try:
        client = krb5.parse_name_flags(ctx, principal.encode())
        metrics.inc(metrics.AS_EXCHANGES, principal)
        info = krb5.get_etype_info(ctx, client)
    except krb5.Krb5Error as exc:
        raise _kerberos_error(exc, principal, "cannot ask the KDC for the salt") from exc
    return info.salt
