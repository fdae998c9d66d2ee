"""The LDAP search for one gMSA on a bound connection, and the record it yields.

Protocol
    LDAPv3 (RFC 4511 4.5) search by ``sAMAccountName`` for the constructed attribute
    ``msDS-ManagedPassword`` (MS-ADA2 2.379; the blob is MS-ADTS 2.2.19) and
    ``msDS-KeyVersionNumber``. The DC returns the password only to principals allowed by the
    gMSA's ``msDS-GroupMSAMembership`` (PrincipalsAllowedToRetrieveManagedPassword) and only over
    an encrypted connection (MS-ADTS 3.1.1.4.4); a caller without the right simply gets no
    attribute, which is reported as :class:`~credfetcher.errors.PasswordAccessDeniedError`.
    Filter values are escaped per RFC 4515 3.

Which DC and which connection is :class:`credfetcher.directory.DirectoryClient`'s business; a
DC that answers with a refusal is reported as :class:`~credfetcher.ldapchannel.AttemptFailed`
(``refused``) so the client tries the next one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ldap3.utils.conv import escape_filter_chars

from credfetcher import errors
from credfetcher.ldapchannel import AttemptFailed

__all__ = [
    "GMSA_CLASS",
    "KEY_VERSION",
    "MANAGED_PASSWORD",
    "GmsaRecord",
    "gmsa_filter",
    "record_from_entry",
    "search_one",
]

MANAGED_PASSWORD = "msDS-ManagedPassword"  # noqa: S105 - an attribute name
KEY_VERSION = "msDS-KeyVersionNumber"
GMSA_CLASS = "msDS-GroupManagedServiceAccount"

# RFC 4511 4.1.9 result codes that matter to a search.
_SUCCESS = 0
_SIZE_LIMIT_EXCEEDED = 4
_REFERRAL = 10
_NO_SUCH_OBJECT = 32


@dataclass(frozen=True)
class GmsaRecord:
    """What one read returned; ``blob`` is the raw msDS-ManagedPassword (MS-ADTS 2.2.19)."""

    sam_account_name: str
    dn: str
    blob: bytes = field(repr=False)
    kvno: int | None
    dc: str


def gmsa_filter(sam_account_name: str) -> str:
    """The search filter for one gMSA, its value escaped per RFC 4515 3."""
    return (f"(&(objectClass={GMSA_CLASS})"
            f"(sAMAccountName={escape_filter_chars(sam_account_name)}))")


def search_one(
    conn: Any, *, host: str, base: str, scope: str, search_filter: str, sam: str,
    timeout: float, missing_ok: bool
) -> dict[str, Any] | None:
    """The one gMSA entry ``search_filter`` finds under ``base``; None if none and ``missing_ok``.

    Raises GmsaNotFoundError (nothing there), DirectoryError (two accounts of that name) or
    AttemptFailed (the DC refused to search).
    """
    conn.search(
        search_base=base,
        search_filter=search_filter,
        search_scope=scope,
        attributes=["sAMAccountName", MANAGED_PASSWORD, KEY_VERSION],
        size_limit=2,
        time_limit=max(1, math.ceil(timeout)),
    )
    result = conn.result or {}
    code = result.get("result")
    entries = [r for r in (conn.response or []) if r.get("type") == "searchResEntry"]
    if code == _NO_SUCH_OBJECT or (code in (_SUCCESS, _REFERRAL) and not entries):
        if missing_ok:
            return None
        where = "does not exist" if code == _NO_SUCH_OBJECT else "holds no such account"
        raise errors.GmsaNotFoundError(
            f"gMSA {sam} not found: search base {base} {where} on {host}. Check the "
            "name in the credspec and the search base (CF_GMSA_OU / search_base).",
            dc=host,
            gmsa=sam,
        )
    if code not in (_SUCCESS, _SIZE_LIMIT_EXCEEDED):
        # operationsError, busy, unwillingToPerform...: this DC answered but will not serve
        # us now; try another, and say it refused (it is reachable).
        raise AttemptFailed(
            f"refused the search: {result.get('description')} (LDAP result {code}) "
            f"{result.get('message', '')}".strip(),
            refused=True,
        )
    if len(entries) > 1:
        raise errors.DirectoryError(
            f"more than one gMSA named {sam} under {base}", dc=host, gmsa=sam
        )
    entry: dict[str, Any] = entries[0]
    return entry


def record_from_entry(
    entry: Mapping[str, Any], *, sam: str, host: str, identity_label: str
) -> GmsaRecord:
    """The record of a found entry; PasswordAccessDeniedError when it carries no password."""
    dn: str = entry["dn"]
    attrs: Mapping[str, list[bytes]] = entry.get("raw_attributes") or {}
    blob = _attr(attrs, MANAGED_PASSWORD)
    if not blob:
        raise errors.PasswordAccessDeniedError(
            f"{identity_label} may not read the managed password of gMSA {sam} ({dn}) on "
            f"{host}: the DC returned no {MANAGED_PASSWORD}. Add {identity_label} "
            f"(or a group it is in) to the gMSA's PrincipalsAllowedToRetrieveManagedPassword "
            f"(attribute msDS-GroupMSAMembership), e.g. Set-ADServiceAccount "
            f"-PrincipalsAllowedToRetrieveManagedPassword or samba-tool service-account "
            f"group-msa-membership add; a new group membership counts once the identity "
            f"gets a new ticket.",
            identity=identity_label,
            gmsa=sam,
            dc=host,
        )
    kvno_raw = _attr(attrs, KEY_VERSION)
    name_raw = _attr(attrs, "sAMAccountName")
    return GmsaRecord(
        sam_account_name=name_raw[0].decode("utf-8") if name_raw else sam,
        dn=dn,
        blob=bytes(blob[0]),
        kvno=int(kvno_raw[0]) if kvno_raw and kvno_raw[0].isdigit() else None,
        dc=host,
    )


def _attr(attrs: Mapping[str, Sequence[bytes]], name: str) -> Sequence[bytes]:
    """Attribute values by name, case-insensitively (LDAP descriptors are, RFC 4512 1.4)."""
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return values
    return []
