"""Password conversion and key derivation: RFC 3962 (AES) through MIT, RFC 4757 (RC4) as MD4."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credfetcher.blob import parse_managed_password
from credfetcher.keys import (
    Enctype,
    KerberosKey,
    derive_keys,
    gmsa_salt,
    password_to_utf8,
    rc4_key,
)

DATA = Path(__file__).resolve().parent.parent / "data"
REALM = "CREDFETCHER.TEST"
REPLACEMENT = "\ufffd".encode()


def samba_vector() -> tuple[bytes, dict[str, Any]]:
    """webapp01's password from a real blob, and the keys Samba exported for that password."""
    blob = base64.b64decode((DATA / "samba-webapp01.blob.b64").read_text())
    expected: dict[str, Any] = json.loads((DATA / "samba-webapp01.keys.json").read_text())
    return parse_managed_password(blob).current, expected


def units(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}H", *values)


# Code units drawn so that lone surrogates, valid pairs and 0x000A all turn up often.
high = st.integers(0xD800, 0xDBFF)
low = st.integers(0xDC00, 0xDFFF)
code_unit_runs = st.one_of(
    st.integers(1, 0xFFFF).map(lambda u: [u]),
    high.map(lambda u: [u]),  # lone high surrogate (unless a low one happens to follow)
    low.map(lambda u: [u]),  # lone low surrogate
    st.tuples(high, low).map(list),  # valid pair
    st.just([0x000A]),  # newline: what broke `dotnet | kinit`
)
gmsa_passwords = st.lists(code_unit_runs, min_size=1, max_size=128).map(
    lambda runs: units(*(u for run in runs for u in run))
)


class TestPasswordToUtf8:
    def test_lone_high_surrogate(self) -> None:
        assert password_to_utf8(units(0x41, 0xD800, 0x42)) == b"A" + REPLACEMENT + b"B"

    def test_lone_low_surrogate(self) -> None:
        assert password_to_utf8(units(0xDC00, 0x41)) == REPLACEMENT + b"A"

    def test_reversed_pair_is_two_lone_surrogates(self) -> None:
        assert password_to_utf8(units(0xDC00, 0xD800)) == REPLACEMENT * 2

    def test_valid_pair(self) -> None:
        assert password_to_utf8(units(0xD83D, 0xDE00)) == "\U0001f600".encode()

    def test_newline_kept(self) -> None:
        assert password_to_utf8(units(0x61, 0x0A, 0x62)) == b"a\nb"

    def test_odd_length_does_not_raise(self) -> None:
        assert password_to_utf8(b"a\x00b") == b"a" + REPLACEMENT

    @given(gmsa_passwords)
    def test_never_raises_and_is_valid_utf8(self, pw16: bytes) -> None:
        utf8 = password_to_utf8(pw16)
        text = utf8.decode("utf-8")  # strict: no surrogates can survive
        assert "\n" not in text or b"\n\x00" in pw16
        # Each code unit yields at most one character (a pair yields one), never more.
        assert len(text) <= len(pw16) // 2

    @given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=64))
    def test_well_formed_passwords_round_trip(self, text: str) -> None:
        assert password_to_utf8(text.encode("utf-16-le")) == text.encode("utf-8")


class TestSalt:
    def test_computer_account_rule(self) -> None:
        assert gmsa_salt(REALM, "webapp01$") == b"CREDFETCHER.TESThostwebapp01.credfetcher.test"

    @pytest.mark.parametrize(
        ("realm", "name"),
        [("credfetcher.test", "WebApp01$"), ("CredFetcher.Test", "WEBAPP01"), (REALM, "webapp01")],
    )
    def test_case_and_dollar_do_not_matter(self, realm: str, name: str) -> None:
        assert gmsa_salt(realm, name) == b"CREDFETCHER.TESThostwebapp01.credfetcher.test"


class TestDeriveKeys:
    def test_samba_vector(self) -> None:
        pw16, expected = samba_vector()
        keys = derive_keys(pw16, REALM, "webapp01$", 1, rc4=True)
        assert {str(k.enctype): k.contents.hex() for k in keys} == expected["keys"]
        assert {k.kvno for k in keys} == {expected["kvno"]}

    def test_salt_override(self) -> None:
        pw16, _ = samba_vector()
        rule = derive_keys(pw16, REALM, "webapp01", 3, salt=gmsa_salt(REALM, "webapp01"))
        assert derive_keys(pw16, REALM, "webapp01", 3) == rule
        # A DC may store another salt (renamed account, mis-provisioned Samba: "host<name>.").
        other = derive_keys(pw16, REALM, "webapp01", 3, salt=b"hostwebapp01.")
        assert [k.contents for k in other] != [k.contents for k in rule]

    def test_order_sizes_and_kvno(self) -> None:
        keys = derive_keys(units(0x41, 0xD800), REALM, "webapp01$", 7, rc4=True)
        assert [(k.enctype, len(k.contents), k.kvno) for k in keys] == [
            (Enctype.AES256_CTS_HMAC_SHA1_96, 32, 7),
            (Enctype.AES128_CTS_HMAC_SHA1_96, 16, 7),
            (Enctype.RC4_HMAC, 16, 7),
        ]

    def test_rc4_off_by_default(self) -> None:
        keys = derive_keys(units(0x41), REALM, "webapp01$", 1)
        assert Enctype.RC4_HMAC not in {k.enctype for k in keys}

    def test_dollar_optional(self) -> None:
        pw16 = units(0x41, 0x0A, 0xDFFF)
        assert derive_keys(pw16, REALM, "webapp01", 1) == derive_keys(pw16, REALM, "webapp01$", 1)

    @given(gmsa_passwords)
    def test_aes_deterministic(self, pw16: bytes) -> None:
        first = derive_keys(pw16, REALM, "webapp01$", 2)
        assert first == derive_keys(pw16, REALM, "webapp01$", 2)
        assert first != derive_keys(pw16, REALM, "webapp02$", 2)

    def test_repr_hides_key(self) -> None:
        key = KerberosKey(enctype=18, kvno=1, contents=b"\xaa" * 32)
        assert repr(key) == "KerberosKey(enctype=18, kvno=1)"


class TestRc4:
    # RFC 1320 appendix A.5 test suite: MD4 through the same code path as the RC4 key.
    @pytest.mark.parametrize(
        ("message", "digest"),
        [
            (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
            (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
            (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
            (b"message digest", "d9130a8164549fe818874806e1c7014b"),
            (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "e33b4ddc9c38f2199c3e7b164fcc0536",
            ),
        ],
    )
    def test_rfc1320_vectors(self, message: bytes, digest: str) -> None:
        assert rc4_key(message).hex() == digest
        (rc4,) = [k for k in derive_keys(message, REALM, "x", 1, rc4=True) if k.enctype == 23]
        assert rc4.contents.hex() == digest

    @given(gmsa_passwords)
    def test_rc4_hashes_raw_utf16_not_the_replaced_text(self, pw16: bytes) -> None:
        # With a replacement, re-encoding the UTF-8 text gives different bytes, hence another key.
        reencoded = password_to_utf8(pw16).decode().encode("utf-16-le")
        assert (rc4_key(pw16) == rc4_key(reencoded)) == (pw16 == reencoded)
