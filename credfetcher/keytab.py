"""Keytabs for gMSA acceptors (SQL Server on Linux, Apache, sshd...): MIT ``FILE:`` format.

The entries are written by MIT's own keytab code through pykrb5 (``kt_resolve`` + ``kt_add_entry``)
into a fresh file in the daemon's private staging directory
(:func:`credfetcher.files.atomic_target`), then renamed into place, so a service never reads a
half-written keytab. Two passwords go in, each at the kvno it has on the DC
(:func:`keys_for_keytab`): service tickets issued on either side of a password change carry that
version and must decrypt (RFC 4120 §5.3, the ``kvno`` of EncryptedData). The password that comes
next joins at the change itself, not before (why: :func:`keys_for_keytab`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import krb5

from credfetcher.blob import ManagedPassword, authenticates_with_previous
from credfetcher.errors import StorageError
from credfetcher.files import Ownership, atomic_target
from credfetcher.keys import KerberosKey, derive_keys

__all__ = ["keys_for_keytab", "versioned_keys", "write_keytab"]

def keys_for_keytab(
    mp: ManagedPassword,
    realm: str,
    sam_account_name: str,
    kvno: int,
    *,
    rc4: bool = False,
    salt: bytes | None = None,
    before: bytes | None = None,
) -> list[KerberosKey]:
    """The keys an acceptor needs from one read of the DC's blob, each at the kvno it has.

    ``kvno`` is the key version in effect, as the DC's ``msDS-KeyVersionNumber`` shows it when
    read consistently with ``mp`` (:mod:`credfetcher.accounts`). The DC's blob has two shapes:

    * Outside the last five minutes before a change (MS-ADTS 3.1.1.4.4.1): CurrentPassword is in
      effect at ``kvno`` and PreviousPassword was in effect at ``kvno - 1``. Keys: current at
      ``kvno``, then previous at ``kvno - 1`` (service tickets issued before the last change
      still decrypt).
    * Inside them (:func:`credfetcher.blob.authenticates_with_previous`): CurrentPassword is
      already the *next* password and PreviousPassword is the one in effect, while the DC still
      shows the kvno in effect. Keys: previous at ``kvno``, then ``before`` (the password in
      effect before it, which this blob no longer carries; the caller may know it from an
      earlier read) at ``kvno - 1``. The next password is left out until the change: MIT's
      ``kinit -k`` takes the highest kvno of a keytab for its AS request and the KDC refuses
      the next password until the change, so a keytab holding it at ``kvno + 1`` would stop
      clients for five minutes. :class:`credfetcher.accounts.GmsaAccount` writes it at the
      change (``docs/rotation.md``).

    A password without a version to carry is left out: the one before when ``kvno`` is 1 (no
    earlier version exists, and kvno 0 means "any version" to keytab lookups), or when there is
    none. ``salt`` as in :func:`credfetcher.keys.derive_keys`.
    """
    if authenticates_with_previous(mp) and mp.previous is not None:
        in_effect, older = mp.previous, before
    else:
        in_effect, older = mp.current, mp.previous if mp.previous is not None else before
    return versioned_keys(in_effect, older, realm, sam_account_name, kvno, rc4=rc4, salt=salt)


def versioned_keys(
    in_effect: bytes,
    before: bytes | None,
    realm: str,
    sam_account_name: str,
    kvno: int,
    *,
    rc4: bool = False,
    salt: bytes | None = None,
) -> list[KerberosKey]:
    """``in_effect``'s keys at ``kvno`` (first), then ``before``'s at ``kvno - 1`` if kvno > 1."""
    keys = derive_keys(in_effect, realm, sam_account_name, kvno, rc4=rc4, salt=salt)
    if before is not None and kvno > 1:
        keys += derive_keys(before, realm, sam_account_name, kvno - 1, rc4=rc4, salt=salt)
    return keys


def write_keytab(
    path: Path,
    principal: str,
    keys: Iterable[KerberosKey],
    ownership: Ownership,
    *,
    root: Path | None = None,
) -> None:
    """Replace ``path`` atomically with a keytab holding ``keys`` for ``principal``.

    ``principal`` is the full name, e.g. ``webapp01$@CREDFETCHER.TEST``; each key carries its own
    kvno. MIT's keytab code creates and fills the file in the private staging directory of
    ``root`` (krbdir) as the daemon, in a file the daemon owns; it gets ``ownership`` (mode, then
    owner and group) on an fd before it is renamed to ``path`` (:func:`credfetcher.files.
    atomic_target`). Writing before the chown is what lets a daemon with no capability but
    CAP_CHOWN make a keytab for another user.
    """
    timestamp = int(time.time())
    with atomic_target(path, ownership, root=root) as tmp:
        try:
            # A context per call: krb5 contexts must not be shared between threads.
            ctx = krb5.init_context()
            keytab = krb5.kt_resolve(ctx, b"FILE:" + bytes(tmp))
            client = krb5.parse_name_flags(ctx, principal.encode())
            for key in keys:
                keyblock = krb5.init_keyblock(ctx, key.enctype, key.contents)
                krb5.kt_add_entry(ctx, keytab, client, key.kvno, timestamp, keyblock)
        except (OSError, krb5.Krb5Error) as exc:
            raise StorageError(f"cannot write keytab {path}: {exc}", path=str(path)) from exc
