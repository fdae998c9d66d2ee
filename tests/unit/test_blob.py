"""MSDS-MANAGEDPASSWORD_BLOB decoding (MS-ADTS 2.2.19): a real Samba vector, hand-built blobs,
and property tests showing the decoder returns consistent values or raises BlobError, nothing else.
"""

from __future__ import annotations

import base64
import struct
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credfetcher.blob import (
    PREVIOUS_PASSWORD_WINDOW,
    ManagedPassword,
    authenticates_with_previous,
    parse_managed_password,
    password_for_authentication,
)
from credfetcher.errors import BlobError

DATA = Path(__file__).resolve().parent.parent / "data"
HEADER = struct.Struct("<HHIHHHH")
TICKS_PER_SECOND = 10_000_000


def samba_blob() -> bytes:
    """A blob read from the test DC (Samba 4.22) for webapp01: 290 bytes, offsets 16/0/274/282."""
    return base64.b64decode((DATA / "samba-webapp01.blob.b64").read_text())


def build_blob(
    current: bytes,
    previous: bytes | None = None,
    query_ticks: int = 30 * 86400 * TICKS_PER_SECOND,
    unchanged_ticks: int = 29 * 86400 * TICKS_PER_SECOND,
    *,
    padding: int = 0,
) -> bytes:
    """Lay out a blob field by field, with ``padding`` zero bytes in front of each field."""
    pad = b"\0" * padding
    body = bytearray()
    offsets: list[int] = []
    fields: list[bytes | None] = [
        current + b"\0\0",
        None if previous is None else previous + b"\0\0",
        struct.pack("<Q", query_ticks),
        struct.pack("<Q", unchanged_ticks),
    ]
    for value in fields:
        if value is None:
            offsets.append(0)
            continue
        body += pad
        offsets.append(HEADER.size + len(body))
        body += value
    length = HEADER.size + len(body)
    return HEADER.pack(1, 0, length, *offsets) + bytes(body)


def with_header(blob: bytes, **fields: int) -> bytes:
    """``blob`` with some header fields replaced (names as in MS-ADTS, shortened)."""
    names = ("version", "reserved", "length", "current", "previous", "query", "unchanged")
    values = dict(zip(names, HEADER.unpack_from(blob), strict=True))
    values.update(fields)
    return HEADER.pack(*(values[n] for n in names)) + blob[HEADER.size :]


PW_A = "Pässwörd-A".encode("utf-16-le")
PW_B = "Password-B".encode("utf-16-le")


class TestSambaVector:
    def test_decodes(self) -> None:
        blob = samba_blob()
        assert len(blob) == 290
        assert HEADER.unpack_from(blob)[3:] == (16, 0, 274, 282)
        mp = parse_managed_password(blob)
        assert len(mp.current) == 256
        assert mp.previous is None
        assert timedelta(days=29) < mp.query_interval < timedelta(days=31)
        # Samba reports UnchangedPasswordInterval five minutes short of QueryPasswordInterval.
        assert mp.query_interval - mp.unchanged_interval == timedelta(minutes=5)

    def test_repr_hides_passwords(self) -> None:
        mp = parse_managed_password(samba_blob())
        text = repr(mp)
        assert "current" not in text
        assert "previous" not in text
        assert repr(mp.current) not in text
        assert "query_interval" in text


class TestHandBuilt:
    @pytest.mark.parametrize("padding", [0, 2, 6])
    def test_current_and_previous(self, padding: int) -> None:
        mp = parse_managed_password(
            build_blob(PW_A, PW_B, 600 * TICKS_PER_SECOND, 300 * TICKS_PER_SECOND, padding=padding)
        )
        assert mp == ManagedPassword(
            current=PW_A,
            previous=PW_B,
            query_interval=timedelta(seconds=600),
            unchanged_interval=timedelta(seconds=300),
        )

    def test_windows_layout(self) -> None:
        # Windows: 256-byte passwords and padding in front of fields to align them.
        pw = bytes(range(1, 256)) + b"\x01"
        mp = parse_managed_password(build_blob(pw, pw[::-1], padding=6))
        assert mp.current == pw
        assert mp.previous == pw[::-1]

    def test_sub_tick_precision_is_truncated_to_microseconds(self) -> None:
        mp = parse_managed_password(build_blob(PW_A, query_ticks=15, unchanged_ticks=2**64 - 1))
        assert mp.query_interval == timedelta(microseconds=1)
        assert mp.unchanged_interval == timedelta(microseconds=(2**64 - 1) // 10)

    @pytest.mark.parametrize(
        ("blob", "message"),
        [
            (b"", "shorter than the 16-byte header"),
            (b"\x01\x00\x00\x00" + b"\0" * 11, "shorter than the 16-byte header"),
            (with_header(build_blob(PW_A), version=2), "version 2"),
            (with_header(build_blob(PW_A), reserved=1), "reserved field"),
            (with_header(build_blob(PW_A), length=4096), "Length field says 4096"),
            (build_blob(PW_A)[:-1], "Length field says"),
            (with_header(build_blob(PW_A), current=0), "CurrentPasswordOffset is 0"),
            (with_header(build_blob(PW_A), current=8), "CurrentPassword offset 8 overlaps"),
            (with_header(build_blob(PW_A, PW_B), previous=16), "PreviousPassword offset 16"),
            (with_header(build_blob(PW_A), query=17), "QueryPasswordInterval offset 17 overlaps"),
            (with_header(build_blob(PW_A), unchanged=300), "runs past the end"),
            (build_blob(b""), "CurrentPassword is empty"),
            (with_header(build_blob(PW_A), query=16 + len(PW_A)), "not NUL-terminated"),
        ],
        ids=lambda v: v if isinstance(v, str) else "",
    )
    def test_malformed(self, blob: bytes, message: str) -> None:
        with pytest.raises(BlobError, match=message):
            parse_managed_password(blob)

    def test_unterminated_previous(self) -> None:
        blob = build_blob(PW_A, PW_B)
        prev = HEADER.unpack_from(blob)[4]
        broken = with_header(blob, query=prev + len(PW_B))
        with pytest.raises(BlobError, match=r"PreviousPassword .* not NUL-terminated"):
            parse_managed_password(broken)


class TestRotationWindow:
    def _mp(self, query: timedelta, *, previous: bool = True) -> ManagedPassword:
        return ManagedPassword(
            current=PW_A,
            previous=PW_B if previous else None,
            query_interval=query,
            unchanged_interval=timedelta(0),
        )

    def test_far_from_change_uses_current(self) -> None:
        mp = self._mp(timedelta(days=3))
        assert not authenticates_with_previous(mp)
        assert password_for_authentication(mp) == PW_A

    @pytest.mark.parametrize(
        "query", [timedelta(0), timedelta(minutes=1), PREVIOUS_PASSWORD_WINDOW]
    )
    def test_within_five_minutes_uses_previous(self, query: timedelta) -> None:
        mp = self._mp(query)
        assert authenticates_with_previous(mp)
        assert password_for_authentication(mp) == PW_B

    def test_within_window_without_previous_uses_current(self) -> None:
        mp = self._mp(timedelta(minutes=1), previous=False)
        assert not authenticates_with_previous(mp)
        assert password_for_authentication(mp) == PW_A

    def test_window_is_configurable(self) -> None:
        mp = self._mp(timedelta(minutes=8))
        assert password_for_authentication(mp, window=timedelta(minutes=10)) == PW_B


# --- property tests -------------------------------------------------------------------------

# UTF-16 code units without 0x0000 (which would end the string early), surrogates included.
passwords = st.lists(st.integers(1, 0xFFFF), min_size=1, max_size=160).map(
    lambda units: struct.pack(f"<{len(units)}H", *units)
)
u64 = st.integers(0, 2**64 - 1)


def check_consistent(blob: bytes, mp: ManagedPassword) -> None:
    """What a successful decode promises about ``mp`` relative to the bytes of ``blob``."""
    _, _, length, cur, prev, query, unchanged = HEADER.unpack_from(blob)
    assert length == len(blob)
    for offset, pw in ((cur, mp.current), (prev, mp.previous)):
        if pw is None:
            assert offset == 0
            continue
        assert pw
        assert len(pw) % 2 == 0
        assert blob[offset : offset + len(pw)] == pw
        assert blob[offset + len(pw) : offset + len(pw) + 2] == b"\0\0"
        assert all(pw[i : i + 2] != b"\0\0" for i in range(0, len(pw), 2))
    assert unchanged + 8 <= len(blob)
    q_ticks = struct.unpack_from("<Q", blob, query)[0]
    u_ticks = struct.unpack_from("<Q", blob, unchanged)[0]
    assert mp.query_interval == timedelta(microseconds=q_ticks // 10)
    assert mp.unchanged_interval == timedelta(microseconds=u_ticks // 10)


def decode_or_blob_error(blob: bytes) -> ManagedPassword | None:
    try:
        mp = parse_managed_password(blob)
    except BlobError:
        return None
    check_consistent(blob, mp)
    return mp


@given(current=passwords, previous=st.none() | passwords, q=u64, u=u64, padding=st.integers(0, 8))
def test_round_trip(current: bytes, previous: bytes | None, q: int, u: int, padding: int) -> None:
    blob = build_blob(current, previous, q, u, padding=padding)
    mp = parse_managed_password(blob)
    assert (mp.current, mp.previous) == (current, previous)
    check_consistent(blob, mp)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes(blob: bytes) -> None:
    decode_or_blob_error(blob)


@given(st.binary(max_size=300), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF - 8))
def test_random_body_behind_a_plausible_header(body: bytes, cur: int, query: int) -> None:
    # Random bytes rarely get past version/length; this header always does, so the offset and
    # terminator checks get exercised on garbage.
    blob = HEADER.pack(1, 0, HEADER.size + len(body), cur, 0, query, query + 8) + body
    decode_or_blob_error(blob)


@given(current=passwords, previous=st.none() | passwords, cut=st.integers(0, 2000))
def test_truncations(current: bytes, previous: bytes | None, cut: int) -> None:
    blob = build_blob(current, previous)
    cut %= len(blob)
    truncated = blob[:cut]
    with pytest.raises(BlobError):
        parse_managed_password(truncated)
    # Truncated *and* Length fixed up to match: offsets now point past the end.
    if cut >= HEADER.size:
        decode_or_blob_error(with_header(truncated, length=cut))


@given(
    current=passwords,
    previous=st.none() | passwords,
    field=st.sampled_from(["current", "previous", "query", "unchanged"]),
    value=st.integers(0, 0xFFFF),
)
def test_corrupted_offsets(current: bytes, previous: bytes | None, field: str, value: int) -> None:
    decode_or_blob_error(with_header(build_blob(current, previous), **{field: value}))


@given(blob=st.just(samba_blob()), position=st.integers(0, 289), byte=st.integers(0, 255))
def test_corrupted_samba_bytes(blob: bytes, position: int, byte: int) -> None:
    decode_or_blob_error(blob[:position] + bytes([byte]) + blob[position + 1 :])
