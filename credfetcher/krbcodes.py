"""The MIT krb5 error codes credfetcher acts on, in one table, and the one outage policy.

libkrb5 (pykrb5's ``Krb5Error.err_code``) and GSSAPI (the minor status of a ``GSSError``) report
the same com_err codes (table "krb5", MIT's ``krb5_err.h``); a KDC's protocol error *n* (RFC 4120
§7.5.9) arrives as :data:`BASE` + *n*. Each code the daemon treats specially is named here once,
with the words an operator should read, and :func:`is_dc_outage` decides for every caller what
counts as a DC or KDC outage (what HealthCheck reports): only a DC or KDC that did not answer. A
realm this host has no KDC for, an unknown or disabled account, a wrong password are the
caller's or the configuration's problem; if they counted, any caller could make the host report
its DC unreachable.
"""

from __future__ import annotations

import enum

from credfetcher.errors import CredfetcherError, DCUnavailableError, KerberosError

__all__ = ["BASE", "Krb5Code", "explain", "is_dc_outage", "is_key_rejected", "signed"]

BASE = -1765328384


class Krb5Code(enum.IntEnum):
    """com_err codes of the krb5 table that change what the daemon does or says."""

    C_PRINCIPAL_UNKNOWN = BASE + 6  # KDC_ERR_C_PRINCIPAL_UNKNOWN
    ETYPE_NOSUPP = BASE + 14  # KDC_ERR_ETYPE_NOSUPP
    CLIENT_REVOKED = BASE + 18  # KDC_ERR_CLIENT_REVOKED
    KEY_EXPIRED = BASE + 23  # KDC_ERR_KEY_EXPIRED
    PREAUTH_FAILED = BASE + 24  # KDC_ERR_PREAUTH_FAILED
    BAD_INTEGRITY = BASE + 31  # KRB_AP_ERR_BAD_INTEGRITY
    CLOCK_SKEW = BASE + 37  # KRB_AP_ERR_SKEW
    MODIFIED = BASE + 41  # KRB_AP_ERR_MODIFIED
    REALM_UNKNOWN = BASE + 154  # KRB5_REALM_UNKNOWN: no KDC configured or found for the realm
    KDC_UNREACH = BASE + 156  # KRB5_KDC_UNREACH: no KDC of the realm answered
    KT_NOTFOUND = BASE + 181  # KRB5_KT_NOTFOUND
    KT_END = BASE + 182  # KRB5_KT_END: the keytab was read to its end without a match
    KT_KVNONOTFOUND = BASE + 230  # KRB5_KT_KVNONOTFOUND
    FCC_NOFILE = BASE + 195  # KRB5_FCC_NOFILE
    GENERIC_PREAUTH_FAILED = BASE + 210  # KRB5_PREAUTH_FAILED
    REALM_CANT_RESOLVE = BASE + 220  # KRB5_REALM_CANT_RESOLVE


# The KDC refused our key or password: preauthentication failed at the KDC, or the AS-REP did
# not decrypt with our key on our side.
KEY_REJECTED = frozenset(
    {
        Krb5Code.PREAUTH_FAILED,
        Krb5Code.GENERIC_PREAUTH_FAILED,
        Krb5Code.BAD_INTEGRITY,
        Krb5Code.MODIFIED,
    }
)
# No KDC could be found or reached for the realm (the message says so; only KDC_UNREACH is an
# outage, see is_dc_outage).
NO_KDC = frozenset({Krb5Code.KDC_UNREACH, Krb5Code.REALM_UNKNOWN, Krb5Code.REALM_CANT_RESOLVE})

_EXPLAINED = {
    Krb5Code.C_PRINCIPAL_UNKNOWN: "the account is unknown to the KDC (none such in the realm)",
    Krb5Code.CLIENT_REVOKED: "the account's credentials are revoked (disabled, locked out or "
    "expired; gMSAs created by samba-tool start disabled)",
    Krb5Code.KEY_EXPIRED: "the account's password has expired",
    Krb5Code.ETYPE_NOSUPP: "the account has no key of an encryption type both sides support",
    Krb5Code.CLOCK_SKEW: "the clocks of this host and the KDC differ too much",
    Krb5Code.PREAUTH_FAILED: "wrong password or stale keytab (pre-authentication failed)",
    Krb5Code.GENERIC_PREAUTH_FAILED: "wrong password or stale keytab (pre-authentication failed)",
    Krb5Code.BAD_INTEGRITY: "wrong password or stale keytab (integrity check failed)",
    Krb5Code.MODIFIED: "wrong password or stale keytab (the KDC's reply did not decrypt)",
    Krb5Code.KT_NOTFOUND: "the keytab holds no key for this principal",
    Krb5Code.KT_END: "the keytab holds no key for this principal",
    Krb5Code.KT_KVNONOTFOUND: "the keytab holds no key of the right version for this principal",
    # MIT reports a keytab it could not use (no entry for the principal) as "no ccache found".
    Krb5Code.FCC_NOFILE: "the keytab holds no usable key for this principal",
    Krb5Code.KDC_UNREACH: "no KDC for the realm answered",
    Krb5Code.REALM_UNKNOWN: "no KDC is configured or discoverable for the realm",
    Krb5Code.REALM_CANT_RESOLVE: "the realm's KDC host names do not resolve",
}


def signed(code: int) -> int:
    """GSSAPI minor codes come back unsigned; the krb5 table is signed 32-bit."""
    return code - (1 << 32) if code >= (1 << 31) else code


def explain(code: int | None) -> str | None:
    """What ``code`` means for an operator, or None for a code with no special words."""
    if code is None:
        return None
    try:
        return _EXPLAINED.get(Krb5Code(signed(code)))
    except ValueError:
        return None


def is_key_rejected(code: int | None) -> bool:
    return code is not None and signed(code) in KEY_REJECTED


def is_dc_outage(exc: CredfetcherError) -> bool:
    """A DC or KDC that did not answer: the one thing HealthCheck reports as an outage."""
    if isinstance(exc, DCUnavailableError):
        return True
    return isinstance(exc, KerberosError) and exc.code == Krb5Code.KDC_UNREACH
