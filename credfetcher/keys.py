"""Kerberos long-term keys for a gMSA, derived from its managed password.

Pure computation (no KDC, no files). The password bytes are the UTF-16LE ``current`` or
``previous`` of :class:`credfetcher.blob.ManagedPassword`.

- AES256-CTS-HMAC-SHA1-96 (18) and AES128-CTS-HMAC-SHA1-96 (17): RFC 3962 string-to-key over the
  UTF-8 form of the password, computed by MIT's own code through pykrb5 ``c_string_to_key``, with
  the salt AD uses for computer accounts (gMSAs are computer-like accounts; the KDC's ETYPE-INFO2
  salt for them follows this rule, MS-KILE 3.1.1.2).
- RC4-HMAC (23, RFC 4757): MD4 over the raw UTF-16LE bytes. Deliberately not MIT's RC4
  string-to-key, which re-encodes the UTF-8 string to UTF-16 and therefore differs as soon as the
  UTF-8 conversion replaced a lone surrogate. Off by default: RC4 is deprecated (RFC 8429).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import krb5
from Cryptodome.Hash import MD4

__all__ = [
    "Enctype",
    "KerberosKey",
    "derive_keys",
    "gmsa_salt",
    "password_to_utf8",
    "rc4_key",
]


class Enctype(enum.IntEnum):
    """The encryption types credfetcher derives (RFC 3961 / RFC 3962 / RFC 4757 numbers)."""

    AES256_CTS_HMAC_SHA1_96 = 18
    AES128_CTS_HMAC_SHA1_96 = 17
    RC4_HMAC = 23


@dataclass(frozen=True)
class KerberosKey:
    """One long-term key: enctype, key version number and the key bytes (kept out of ``repr``)."""

    enctype: int
    kvno: int
    contents: bytes = field(repr=False)


def password_to_utf8(pw16: bytes) -> bytes:
    """The UTF-8 password Kerberos string-to-key sees for a UTF-16LE managed password.

    gMSA passwords are 128 random UTF-16 code units, so ~98% of them contain a lone surrogate;
    a strict decode would fail almost always. AD and Samba replace each one with U+FFFD, and so do
    we (``'replace'``), which makes the AES keys match the KDC's. Never raises, even on odd lengths.
    """
    return pw16.decode("utf-16-le", "replace").encode("utf-8")


def gmsa_salt(realm: str, sam_account_name: str) -> bytes:
    """The AES salt of a gMSA: ``REALM + "host" + name + "." + realm`` (computer-account rule).

    ``name`` is the sAMAccountName lower-cased and without its trailing ``$``; the realm is
    upper-cased in front and lower-cased at the end, whatever case the caller gives.
    """
    name = sam_account_name.removesuffix("$").lower()
    return f"{realm.upper()}host{name}.{realm.lower()}".encode()


def rc4_key(pw16: bytes) -> bytes:
    """The RC4-HMAC key (RFC 4757 §2): MD4 of the raw UTF-16LE password bytes."""
    # pycryptodomex, because hashlib's md4 is gone under OpenSSL 3 without the legacy provider.
    return bytes(MD4.new(pw16).digest())  # noqa: S303  (RFC 4757 mandates MD4)


def derive_keys(
    pw16: bytes,
    realm: str,
    sam_account_name: str,
    kvno: int,
    *,
    rc4: bool = False,
    salt: bytes | None = None,
) -> list[KerberosKey]:
    """AES256 and AES128 keys (and RC4 when ``rc4``) for ``sam_account_name`` at ``kvno``.

    ``sam_account_name`` may be given with or without its trailing ``$``. ``salt`` overrides the
    computer-account rule of :func:`gmsa_salt`: pass the salt the KDC advertises in ETYPE-INFO2
    (:func:`credfetcher.tickets.kdc_salt`) when you have it. The KDC's salt is the truth; the rule
    is what AD computes, but a DC may have stored something else (an account renamed since its
    keys were made, or a Samba DC whose accounts were created without its realm configured, whose
    salt then reads ``"host" + name + "."``). The order (strongest first) is the keytab order.
    """
    pw_utf8 = password_to_utf8(pw16)
    if salt is None:
        salt = gmsa_salt(realm, sam_account_name)
    # A context per call: krb5 contexts are not safe to share between threads.
    ctx = krb5.init_context()
    keys = [
        KerberosKey(
            enctype=int(enctype),
            kvno=kvno,
            contents=krb5.c_string_to_key(ctx, int(enctype), pw_utf8, salt).data,
        )
        for enctype in (Enctype.AES256_CTS_HMAC_SHA1_96, Enctype.AES128_CTS_HMAC_SHA1_96)
    ]
    if rc4:
        keys.append(KerberosKey(enctype=int(Enctype.RC4_HMAC), kvno=kvno, contents=rc4_key(pw16)))
    return keys
