"""The TGT's times in a FILE ccache's bytes, parsed here: pure code, no I/O, no libkrb5.

Start-up recovery reads one ccache per lease; handing each to libkrb5 (a memfd, a krb5 context
that reads krb5.conf, a ``FILE:`` cache opened on it) cost ~125 of the ~150 us per file that
reading its times took, and at 20,000 leases recovery is that many files. This reads the layout
MIT documents as "ccache file format" (``doc/formats/ccache_file_format.rst`` in the MIT krb5
sources; https://web.mit.edu/kerberos/krb5-latest/doc/formats/ccache_file_format.html), version 4
only: what MIT has written since 1.3 and what :func:`credfetcher.tickets.store_tgt` writes.

Anything else -- another version, or a client name that libkrb5 would quote when it unparses it
(``/``, ``@``, ``\\`` or a control character inside a component or the realm) -- raises
:class:`Unsupported`, and the caller asks libkrb5, so the answer is libkrb5's in every case.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["TgtTimes", "Unsupported", "tgt_times"]

VERSION_4 = b"\x05\x04"
# What krb5_unparse_name escapes (MIT lib/krb5/krb/unparse.c): such a name is left to libkrb5.
_QUOTED = frozenset(b"/@\\\0\n\t\b")

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_TIMES = struct.Struct(">iiiiBI")  # authtime, starttime, endtime, renew_till (krb5_timestamp,
# a signed 32-bit value as pykrb5 gives it), is_skey, ticket_flags


class Unsupported(Exception):
    """A ccache this parser leaves to libkrb5."""


class TgtTimes(NamedTuple):
    """The client principal and the times of a ccache's TGT (RFC 4120 §5.3)."""

    principal: str
    authtime: int
    starttime: int
    endtime: int
    renew_till: int


def _octets(data: bytes, pos: int) -> tuple[bytes, int]:
    """A counted octet string: a 32-bit length, then that many bytes."""
    (length,) = _U32.unpack_from(data, pos)
    start = pos + 4
    end = start + length
    if end > len(data):
        raise ValueError("truncated ccache")
    return data[start:end], end


def _principal(data: bytes, pos: int) -> tuple[bytes, list[bytes], int]:
    """name type (32 bits), component count (32 bits), realm, components."""
    (count,) = _U32.unpack_from(data, pos + 4)
    realm, pos = _octets(data, pos + 8)
    components = []
    for _ in range(count):
        component, pos = _octets(data, pos)
        components.append(component)
    return realm, components, pos


def _skip_tagged(data: bytes, pos: int) -> int:
    """A count (32 bits), then that many (16-bit type, counted octet string) pairs: the
    addresses and the authorization data of a credential."""
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    for _ in range(count):
        _, pos = _octets(data, pos + 2)
    return pos


def tgt_times(data: bytes) -> TgtTimes | None:
    """The first ``krbtgt/REALM@REALM`` credential of the client's own realm in ``data``.

    None when the cache holds none (only its default principal, config entries
    ``X-CACHECONF:``, service tickets). Every credential is parsed, as libkrb5's iteration
    does: a truncated or malformed cache raises :class:`ValueError` wherever the damage is.
    """
    if data[:2] != VERSION_4:
        raise Unsupported(f"ccache version {data[:2].hex() or 'none'}")
    try:
        (header_length,) = _U16.unpack_from(data, 2)
        pos = 4 + header_length
        _, _, pos = _principal(data, pos)  # the default principal
        found: TgtTimes | None = None
        while pos < len(data):
            client_realm, client, pos = _principal(data, pos)
            server_realm, server, pos = _principal(data, pos)
            _, pos = _octets(data, pos + 2)  # keyblock: enctype (16 bits), key
            authtime, starttime, endtime, renew_till, _, _ = _TIMES.unpack_from(data, pos)
            pos = _skip_tagged(data, pos + _TIMES.size)  # addresses
            pos = _skip_tagged(data, pos)  # authorization data
            _, pos = _octets(data, pos)  # ticket
            _, pos = _octets(data, pos)  # second ticket
            if (
                found is None
                and server_realm == client_realm
                and server == [b"krbtgt", client_realm]
            ):
                if not client or not client_realm or any(_QUOTED & set(c) for c in client):
                    raise Unsupported("a client name libkrb5 would quote")
                if _QUOTED & set(client_realm):
                    raise Unsupported("a client realm libkrb5 would quote")
                name = b"/".join(client) + b"@" + client_realm
                found = TgtTimes(
                    name.decode("utf-8", "replace"), authtime, starttime, endtime, renew_till
                )
    except struct.error as exc:
        raise ValueError(f"truncated ccache: {exc}") from exc
    return found
