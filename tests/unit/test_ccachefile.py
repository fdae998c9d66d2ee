"""credfetcher.ccachefile against libkrb5: caches written by libkrb5 itself, read both ways.

Credentials are built in the v4 credential layout, handed to libkrb5 (``unmarshal_credentials``)
and stored by it in a FILE ccache, with config entries beside them (``cc_set_config``): the
bytes parsed are libkrb5's, not this test's. Every answer must equal libkrb5's own reading.
"""

from __future__ import annotations

import struct
from pathlib import Path

import krb5
import pytest

from credfetcher import ccachefile, tickets

REALM = b"CREDFETCHER.TEST"
T = 1_800_000_000


def octets(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def principal(components: list[bytes], realm: bytes = REALM) -> bytes:
    return (
        struct.pack(">II", 1, len(components)) + octets(realm) + b"".join(map(octets, components))
    )


def credential(
    client: bytes,
    server: bytes,
    *,
    starttime: int = T,
    endtime: int = T + 36_000,
    renew_till: int = T + 604_800,
) -> bytes:
    return (
        client
        + server
        + struct.pack(">H", 18)
        + octets(b"k" * 32)
        + struct.pack(">IIIIBI", T - 5, starttime, endtime, renew_till, 0, 0x40E10000)
        + struct.pack(">I", 0)  # no addresses
        + struct.pack(">I", 1)
        + struct.pack(">H", 1)
        + octets(b"authdata")
        + octets(b"TICKET" * 50)
        + octets(b"")
    )


GMSA = principal([b"webapp01$"])
KRBTGT = principal([b"krbtgt", REALM])
HTTP = principal([b"HTTP", b"web.credfetcher.test"])


def write_cache(path: Path, default: list[bytes], *creds: bytes, config: bool = True) -> bytes:
    ctx = krb5.init_context()
    ccache = krb5.cc_resolve(ctx, b"FILE:" + bytes(path))
    krb5.cc_initialize(ctx, ccache, krb5.parse_name_flags(ctx, b"/".join(default) + b"@" + REALM))
    if config:
        krb5.cc_set_config(ctx, ccache, None, b"pa_type", b"2")
    for cred in creds:
        krb5.cc_store_cred(ctx, ccache, krb5.unmarshal_credentials(ctx, cred))
    return path.read_bytes()


def by_libkrb5(data: bytes) -> tickets.TicketInfo | None:
    return tickets._ticket_info_by_libkrb5(data)


def test_the_tgt_among_config_entries_and_service_tickets(tmp_path: Path) -> None:
    data = write_cache(
        tmp_path / "cc",
        [b"webapp01$"],
        credential(GMSA, HTTP, endtime=T + 100),
        credential(GMSA, KRBTGT, starttime=0),  # no starttime: authtime counts
        credential(GMSA, KRBTGT, endtime=T + 1),  # a second TGT: the first one is the answer
    )
    assert data[:2] == ccachefile.VERSION_4
    info = tickets.ticket_info_from_bytes(data)
    assert info == by_libkrb5(data)
    assert info == tickets.TicketInfo("webapp01$@CREDFETCHER.TEST", T - 5, T + 36_000, T + 604_800)


def test_a_cache_without_a_tgt_of_its_own_realm_has_none(tmp_path: Path) -> None:
    other_realm_tgt = principal([b"krbtgt", b"OTHER.TEST"])
    data = write_cache(
        tmp_path / "cc", [b"webapp01$"], credential(GMSA, HTTP), credential(GMSA, other_realm_tgt)
    )
    assert ccachefile.tgt_times(data) is None
    assert tickets.ticket_info_from_bytes(data) is None
    assert by_libkrb5(data) is None


def test_a_damaged_cache_reads_as_no_ticket_as_libkrb5_says(tmp_path: Path) -> None:
    data = write_cache(tmp_path / "cc", [b"webapp01$"], credential(GMSA, KRBTGT))
    for cut in (3, 10, 40, len(data) // 2, len(data) - 1):
        assert tickets.ticket_info_from_bytes(data[:cut]) is None, cut
        assert by_libkrb5(data[:cut]) is None, cut
    with pytest.raises(ValueError, match="truncated"):
        ccachefile.tgt_times(data[:-1])


@pytest.mark.parametrize("components", [[b"svc@x"], [b"a\\b"], [b"host/web"], [b"multi", b"part"]])
def test_names_libkrb5_quotes_are_read_by_libkrb5(tmp_path: Path, components: list[bytes]) -> None:
    client = principal(components)
    data = write_cache(tmp_path / "cc", [b"webapp01$"], credential(client, KRBTGT), config=False)
    info = tickets.ticket_info_from_bytes(data)
    assert info is not None
    assert info == by_libkrb5(data)
    if len(components) == 2:
        assert info.principal == "multi/part@CREDFETCHER.TEST"  # parsed here: not quoted
    else:
        with pytest.raises(ccachefile.Unsupported):
            ccachefile.tgt_times(data)


def test_other_versions_are_left_to_libkrb5() -> None:
    with pytest.raises(ccachefile.Unsupported, match="0503"):
        ccachefile.tgt_times(b"\x05\x03" + b"\0" * 40)
