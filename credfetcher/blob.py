"""Decoder for the msDS-ManagedPassword attribute: MSDS-MANAGEDPASSWORD_BLOB (MS-ADTS 2.2.19).

Pure code, no I/O. Layout (all little-endian)::

    0  u16 Version                          must be 1
    2  u16 Reserved                         must be 0
    4  u32 Length                           size of the whole blob
    8  u16 CurrentPasswordOffset            never 0
   10  u16 PreviousPasswordOffset           0 when there is no previous password
   12  u16 QueryPasswordIntervalOffset
   14  u16 UnchangedPasswordIntervalOffset
   ... CurrentPassword                      NUL-terminated UTF-16LE (256 bytes + NUL on Windows)
   ... PreviousPassword                     (optional) same form
   ... QueryPasswordInterval                u64, 100 ns units
   ... UnchangedPasswordInterval            u64, 100 ns units

Fields appear in that order, possibly separated by alignment padding. Nothing here assumes a
particular offset or password size: Samba's blob is 290 bytes with offsets 16/0/274/282 (not the
8-byte alignment Windows uses), so every offset is read from the header and checked against
Length. Every malformation raises :class:`credfetcher.errors.BlobError` naming the problem;
nothing reads past the end of the blob.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import timedelta

from credfetcher.errors import BlobError

__all__ = [
    "PREVIOUS_PASSWORD_WINDOW",
    "ManagedPassword",
    "authenticates_with_previous",
    "parse_managed_password",
    "password_for_authentication",
]

_HEADER = struct.Struct("<HHIHHHH")
_INTERVAL = struct.Struct("<Q")
_VERSION = 1

#: When QueryPasswordInterval is at most this, CurrentPassword is already the *next* password and
#: the KDC still expects PreviousPassword (the DC hands out the new password ahead of the change).
PREVIOUS_PASSWORD_WINDOW = timedelta(minutes=5)


@dataclass(frozen=True)
class ManagedPassword:
    """A decoded MSDS-MANAGEDPASSWORD_BLOB.

    ``current`` and ``previous`` are the raw UTF-16LE password bytes without the NUL terminator:
    the RC4 key is the MD4 of exactly these bytes, and the AES keys derive from their UTF-8 form
    (:mod:`credfetcher.keys`). They are kept out of ``repr``.
    """

    current: bytes = field(repr=False)
    previous: bytes | None = field(repr=False)
    query_interval: timedelta
    unchanged_interval: timedelta


def _interval(blob: bytes, offset: int) -> timedelta:
    # 100 ns ticks; a u64 fits comfortably in timedelta (max ~ 58 000 years of ticks).
    (ticks,) = _INTERVAL.unpack_from(blob, offset)
    return timedelta(microseconds=ticks // 10)


def _password(blob: bytes, start: int, end: int, name: str) -> bytes:
    """The UTF-16LE string at ``start``, NUL-terminated before ``end`` (the next field)."""
    for pos in range(start, end - 1, 2):
        if blob[pos] == 0 and blob[pos + 1] == 0:
            if pos == start:
                raise BlobError(f"managed password blob: {name} is empty")
            return blob[start:pos]
    raise BlobError(
        f"managed password blob: {name} at offset {start} is not NUL-terminated before offset {end}"
    )


def parse_managed_password(blob: bytes) -> ManagedPassword:
    """Decode an msDS-ManagedPassword value (MS-ADTS 2.2.19); raise BlobError if malformed."""
    if len(blob) < _HEADER.size:
        raise BlobError(
            f"managed password blob: {len(blob)} bytes is shorter than the "
            f"{_HEADER.size}-byte header"
        )
    version, reserved, length, cur_off, prev_off, query_off, unchanged_off = _HEADER.unpack_from(
        blob
    )
    if version != _VERSION:
        raise BlobError(f"managed password blob: version {version}, expected {_VERSION}")
    if reserved != 0:
        raise BlobError(f"managed password blob: reserved field is {reserved:#x}, expected 0")
    if length != len(blob):
        raise BlobError(
            f"managed password blob: Length field says {length} bytes, the value has {len(blob)}"
        )
    if cur_off == 0:
        raise BlobError("managed password blob: CurrentPasswordOffset is 0")

    # The fields in their mandated order; each must start after the header and after the one
    # before it, and the two intervals must fit inside the blob.
    ordered = [("CurrentPassword", cur_off)]
    if prev_off != 0:
        ordered.append(("PreviousPassword", prev_off))
    ordered += [("QueryPasswordInterval", query_off), ("UnchangedPasswordInterval", unchanged_off)]
    floor = _HEADER.size
    for name, offset in ordered:
        if offset < floor:
            raise BlobError(
                f"managed password blob: {name} offset {offset} overlaps the "
                f"{'header' if floor == _HEADER.size else 'previous field'}"
            )
        # Passwords take at least a NUL (2 bytes), intervals 8 bytes.
        floor = offset + (_INTERVAL.size if name.endswith("Interval") else 2)
    if unchanged_off + _INTERVAL.size > length:
        raise BlobError(
            f"managed password blob: UnchangedPasswordInterval at offset "
            f"{unchanged_off} runs past the end ({length} bytes)"
        )

    current = _password(blob, cur_off, prev_off or query_off, "CurrentPassword")
    previous = _password(blob, prev_off, query_off, "PreviousPassword") if prev_off else None
    return ManagedPassword(
        current=current,
        previous=previous,
        query_interval=_interval(blob, query_off),
        unchanged_interval=_interval(blob, unchanged_off),
    )


def authenticates_with_previous(
    mp: ManagedPassword, *, window: timedelta = PREVIOUS_PASSWORD_WINDOW
) -> bool:
    """True when the KDC still expects PreviousPassword: the change is ``window`` or less away.

    Within that window the DC already returns the next password as CurrentPassword (Samba and
    Windows both do), but the KDC keeps accepting only the old one until the change happens.
    """
    return mp.previous is not None and mp.query_interval <= window


def password_for_authentication(
    mp: ManagedPassword, *, window: timedelta = PREVIOUS_PASSWORD_WINDOW
) -> bytes:
    """The UTF-16LE password the KDC accepts right now (see :func:`authenticates_with_previous`)."""
    if mp.previous is not None and mp.query_interval <= window:
        return mp.previous
    return mp.current
