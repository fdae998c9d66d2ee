"""The one table of krb5 codes: every value equals MIT's own header, and one outage policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from credfetcher import krbcodes
from credfetcher.errors import BindError, CredfetcherError, DCUnavailableError, KerberosError
from credfetcher.krbcodes import Krb5Code

HEADER = Path("/usr/include/krb5/krb5.h")  # libkrb5-dev, installed by tools/bootstrap.sh

MIT_NAMES = {
    Krb5Code.C_PRINCIPAL_UNKNOWN: "KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN",
    Krb5Code.ETYPE_NOSUPP: "KRB5KDC_ERR_ETYPE_NOSUPP",
    Krb5Code.CLIENT_REVOKED: "KRB5KDC_ERR_CLIENT_REVOKED",
    Krb5Code.KEY_EXPIRED: "KRB5KDC_ERR_KEY_EXP",
    Krb5Code.PREAUTH_FAILED: "KRB5KDC_ERR_PREAUTH_FAILED",
    Krb5Code.BAD_INTEGRITY: "KRB5KRB_AP_ERR_BAD_INTEGRITY",
    Krb5Code.CLOCK_SKEW: "KRB5KRB_AP_ERR_SKEW",
    Krb5Code.MODIFIED: "KRB5KRB_AP_ERR_MODIFIED",
    Krb5Code.REALM_UNKNOWN: "KRB5_REALM_UNKNOWN",
    Krb5Code.KDC_UNREACH: "KRB5_KDC_UNREACH",
    Krb5Code.KT_NOTFOUND: "KRB5_KT_NOTFOUND",
    Krb5Code.KT_END: "KRB5_KT_END",
    Krb5Code.KT_KVNONOTFOUND: "KRB5_KT_KVNONOTFOUND",
    Krb5Code.FCC_NOFILE: "KRB5_FCC_NOFILE",
    Krb5Code.GENERIC_PREAUTH_FAILED: "KRB5_PREAUTH_FAILED",
    Krb5Code.REALM_CANT_RESOLVE: "KRB5_REALM_CANT_RESOLVE",
}


def test_every_code_is_mits() -> None:
    defines = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"#define (\w+)\s+\((-?\d+)L\)", HEADER.read_text())
    }
    assert set(MIT_NAMES) == set(Krb5Code)
    for code, name in MIT_NAMES.items():
        assert defines[name] == code, name


def test_gssapi_minor_codes_are_signed_back() -> None:
    unsigned = Krb5Code.KDC_UNREACH + (1 << 32)
    assert krbcodes.signed(unsigned) == Krb5Code.KDC_UNREACH
    assert krbcodes.explain(unsigned) == "no KDC for the realm answered"
    assert krbcodes.is_key_rejected(Krb5Code.PREAUTH_FAILED + (1 << 32))
    assert krbcodes.explain(12345) is None
    assert krbcodes.explain(None) is None


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (DCUnavailableError("no DC answered", attempts=[]), True),
        (KerberosError("x", principal="p", code=Krb5Code.KDC_UNREACH), True),
        # The caller's or the configuration's problem: not the DC's.
        (KerberosError("x", principal="p", code=Krb5Code.REALM_UNKNOWN), False),
        (KerberosError("x", principal="p", code=Krb5Code.C_PRINCIPAL_UNKNOWN), False),
        (KerberosError("x", principal="p", code=None), False),
        (BindError("wrong password", identity="u"), False),
    ],
)
def test_one_outage_policy(error: CredfetcherError, outage: bool) -> None:
    assert krbcodes.is_dc_outage(error) is outage
