"""Keytab writing without a KDC: MIT's own keytab code reads back what we wrote."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import krb5
import pytest

from credfetcher.blob import ManagedPassword
from credfetcher.errors import StorageError
from credfetcher.files import PRIVATE_DIR, TEMP_PREFIX, Ownership
from credfetcher.keys import KerberosKey, derive_keys
from credfetcher.keytab import keys_for_keytab, write_keytab

REALM = "CREDFETCHER.TEST"
PRINCIPAL = "webapp01$@CREDFETCHER.TEST"
CURRENT = "current-password".encode("utf-16-le")
PREVIOUS = "previous-password".encode("utf-16-le")


def entries(path: Path) -> list[tuple[str, int, int, bytes]]:
    ctx = krb5.init_context()
    return [
        (
            krb5.unparse_name_flags(ctx, entry.principal).decode(),
            entry.kvno,
            entry.key.enctype,
            entry.key.data,
        )
        for entry in krb5.kt_resolve(ctx, b"FILE:" + bytes(path))
    ]


def managed(previous: bytes | None) -> ManagedPassword:
    return ManagedPassword(
        current=CURRENT,
        previous=previous,
        query_interval=timedelta(days=30),
        unchanged_interval=timedelta(days=29),
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "krb5.keytab"
    keys = derive_keys(CURRENT, REALM, "webapp01", 5, rc4=True)
    write_keytab(path, PRINCIPAL, keys, Ownership(mode=0o640))
    assert entries(path) == [(PRINCIPAL, 5, k.enctype, k.contents) for k in keys]
    assert path.stat().st_mode & 0o777 == 0o640
    # Staged in the private directory (now empty), never beside the keytab.
    assert sorted(p.name for p in tmp_path.iterdir()) == [PRIVATE_DIR, "krb5.keytab"]
    assert list((tmp_path / PRIVATE_DIR).iterdir()) == []


def test_replaces_an_existing_keytab(tmp_path: Path) -> None:
    path = tmp_path / "krb5.keytab"
    write_keytab(path, PRINCIPAL, derive_keys(PREVIOUS, REALM, "webapp01", 1), Ownership())
    new = derive_keys(CURRENT, REALM, "webapp01", 2)
    write_keytab(path, PRINCIPAL, new, Ownership())
    assert [e[1:] for e in entries(path)] == [(2, k.enctype, k.contents) for k in new]


@pytest.mark.skipif(shutil.which("klist") is None, reason="MIT klist is not installed")
def test_klist_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "krb5.keytab"
    write_keytab(
        path, PRINCIPAL, keys_for_keytab(managed(PREVIOUS), REALM, "webapp01", 7), Ownership()
    )
    out = subprocess.run(
        ["klist", "-k", "-e", str(path)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for kvno in (7, 6):
        for enctype in ("aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96"):
            assert f"   {kvno} {PRINCIPAL} ({enctype})" in out


def test_keys_for_keytab_current_then_previous() -> None:
    keys = keys_for_keytab(managed(PREVIOUS), REALM, "webapp01$", 7, rc4=True)
    assert keys == derive_keys(CURRENT, REALM, "webapp01", 7, rc4=True) + derive_keys(
        PREVIOUS, REALM, "webapp01", 6, rc4=True
    )


def test_keys_for_keytab_without_previous() -> None:
    assert keys_for_keytab(managed(None), REALM, "webapp01", 7) == derive_keys(
        CURRENT, REALM, "webapp01", 7
    )


def test_keys_for_keytab_kvno_one_has_no_older_version() -> None:
    assert {k.kvno for k in keys_for_keytab(managed(PREVIOUS), REALM, "webapp01", 1)} == {1}


def test_bad_key_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "krb5.keytab"
    path.write_bytes(b"old")
    bad = [KerberosKey(enctype=18, kvno=1, contents=b"k" * 32), KerberosKey(18, 1, b"")]
    bad_principal = "@@"
    with pytest.raises(StorageError) as info:
        write_keytab(path, bad_principal, bad, Ownership())
    assert info.value.path == str(path)
    assert path.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert list((tmp_path / PRIVATE_DIR).iterdir()) == []


def overlap(previous: bytes | None) -> ManagedPassword:
    """The blob of the last five minutes before a change: CURRENT is already the next password."""
    return ManagedPassword(
        current=CURRENT,
        previous=previous,
        query_interval=timedelta(minutes=4, seconds=50),
        unchanged_interval=timedelta(0),
    )


@pytest.mark.parametrize("kvno", [1, 7])
def test_keys_for_keytab_before_a_change_only_what_the_kdc_takes_now(kvno: int) -> None:
    """The DC still shows the kvno in effect: PREVIOUS is in effect at it; the next password
    (CURRENT) stays out, or MIT's kinit -k would pick it (highest kvno) and be refused."""
    keys = keys_for_keytab(overlap(PREVIOUS), REALM, "webapp01", kvno, rc4=True)
    assert keys == derive_keys(PREVIOUS, REALM, "webapp01", kvno, rc4=True)
    older = b"o\x00l\x00d\x00"
    keys = keys_for_keytab(overlap(PREVIOUS), REALM, "webapp01", kvno, before=older)
    assert keys == derive_keys(PREVIOUS, REALM, "webapp01", kvno) + (
        derive_keys(older, REALM, "webapp01", kvno - 1) if kvno > 1 else []
    )


def test_keys_for_keytab_before_a_change_without_previous_keeps_current() -> None:
    """A blob without a previous password has nothing else to offer (the KDC takes CURRENT)."""
    assert keys_for_keytab(overlap(None), REALM, "webapp01", 1) == derive_keys(
        CURRENT, REALM, "webapp01", 1
    )
