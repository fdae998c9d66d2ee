"""Loading a lease at start-up through fds opened once (:mod:`credfetcher.leasedir`, issue 18).

Real files in a temporary krbdir. Whatever sits at a name the loader opens -- the metadata, a
gMSA directory, a ccache -- is refused exactly as the path-walking readers refuse it
(:func:`credfetcher.files.read_regular`, :func:`credfetcher.tickets.read_ticket_info`): the same
words, nothing followed, waited on or written through.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from credfetcher.errors import InvalidRequestError, StorageError
from credfetcher.files import TEMP_PREFIX, read_regular
from credfetcher.leases import (
    CCACHE_NAME,
    GmsaEntry,
    LeaseRecord,
    LeaseStore,
    LoadedLease,
    decode_metadata,
    encode_metadata,
    validate_dir_name,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")

LEASE = "0123456789abcdef0123"
CCACHE = b"\x05\x04 a ccache's bytes"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def make_lease(
    root: Path, *, gmsas: tuple[str, ...] = ("webapp01",), directory: str | None = None
) -> LeaseStore:
    """A lease as the daemon publishes it (staged, committed), each gMSA with a ccache."""
    store = LeaseStore(root)
    store.prepare()
    staging = store.stage(LEASE)
    entries = tuple(
        GmsaEntry(name, "example.com", f"CN={name}", "{}", directory=directory) for name in gmsas
    )
    for entry in entries:
        (store.staged_entry_dir(staging, entry) / CCACHE_NAME).write_bytes(CCACHE)
    store.commit(staging, LeaseRecord(lease_id=LEASE, entries=entries))
    return store


def test_a_lease_loads_with_every_ccache(tmp_path: Path) -> None:
    store = make_lease(tmp_path / "krbdir", gmsas=("webapp01", "webapp02"))
    loaded = store.load_lease(LEASE)
    assert loaded is not None
    assert loaded.record.lease_id == LEASE
    assert [e.gmsa_name for e in loaded.record.entries] == ["webapp01", "webapp02"]
    assert loaded.ccaches == {"webapp01": CCACHE, "webapp02": CCACHE}
    assert store.load(LEASE) == loaded.record


def test_a_caller_chosen_directory_is_where_the_ccache_is_read(tmp_path: Path) -> None:
    store = make_lease(tmp_path / "krbdir", directory="app-dir")
    loaded = store.load_lease(LEASE)
    assert loaded is not None
    assert loaded.record.entries[0].directory == "app-dir"
    assert loaded.ccaches == {"app-dir": CCACHE}


def test_a_missing_ccache_or_gmsa_directory_reads_as_none_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_lease(tmp_path / "krbdir", gmsas=("webapp01", "webapp02"))
    (store.gmsa_dir(LEASE, "webapp01") / CCACHE_NAME).unlink()
    (store.gmsa_dir(LEASE, "webapp02") / CCACHE_NAME).unlink()
    store.gmsa_dir(LEASE, "webapp02").rmdir()
    with caplog.at_level(logging.INFO):
        loaded = store.load_lease(LEASE)
    assert loaded is not None
    assert loaded.ccaches == {"webapp01": None, "webapp02": None}
    assert "not reading a ticket" not in caplog.text


def test_a_lease_gone_before_it_is_loaded_is_none_and_not_recreated(tmp_path: Path) -> None:
    store = make_lease(tmp_path / "krbdir")
    store.delete(LEASE)
    assert store.load_lease(LEASE) is None
    assert not store.lease_dir(LEASE).exists()


def _plant_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def _plant_symlink(path: Path) -> None:
    decoy = path.parent.parent / "decoy"
    decoy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(decoy)


def _plant_hard_link(path: Path) -> None:
    os.link(path, path.parent.parent / "second-name")


def _plant_foreign_owner(path: Path) -> None:
    os.chown(path, 4242, -1)


PLANTS = [
    pytest.param(_plant_fifo, "is a FIFO: not read", id="fifo"),
    pytest.param(_plant_symlink, "is a symlink: not read", id="symlink"),
    pytest.param(
        _plant_hard_link, "is a hard link (a file with 2 names): not read", id="hard-link"
    ),
    pytest.param(
        _plant_foreign_owner, "is a file owned by uid 4242", id="foreign", marks=needs_root
    ),
]


@pytest.mark.parametrize(("plant", "words"), PLANTS)
def test_hostile_metadata_is_never_followed_and_the_lease_is_removed_as_before(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    plant: Callable[[Path], None],
    words: str,
) -> None:
    store = make_lease(tmp_path / "krbdir")
    meta = store.metadata_path(LEASE)
    plant(meta)
    # What the path-walking reader says of it: the loader must say the same.
    with pytest.raises(StorageError) as before:
        read_regular(meta, root=store.krb_dir, owner=os.geteuid())
    assert words in before.value.message

    with caplog.at_level(logging.WARNING):
        assert store.load_lease(LEASE) is None  # returns at once: a FIFO is never waited on
    assert f"removing {store.lease_dir(LEASE)}: not a readable lease ({before.value.message})" in (
        caplog.text
    )
    assert not os.path.lexists(store.lease_dir(LEASE))
    for outside in ("decoy", "second-name"):
        if (store.krb_dir / outside).exists():
            assert (store.krb_dir / outside).read_bytes().startswith(b"{")  # never written


@pytest.mark.parametrize(("plant", "words"), PLANTS)
def test_a_hostile_ccache_reads_as_no_ticket_and_is_reported_as_before(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    plant: Callable[[Path], None],
    words: str,
) -> None:
    store = make_lease(tmp_path / "krbdir")
    ccache = store.gmsa_dir(LEASE, "webapp01") / CCACHE_NAME
    plant(ccache)
    with caplog.at_level(logging.INFO):
        loaded = store.load_lease(LEASE)
    assert loaded is not None
    assert loaded.ccaches == {"webapp01": None}
    assert f"not reading a ticket from {ccache}: {ccache} {words}" in caplog.text


def test_a_symlinked_gmsa_directory_is_never_entered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_lease(tmp_path / "krbdir")
    gdir = store.gmsa_dir(LEASE, "webapp01")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    (elsewhere / CCACHE_NAME).write_bytes(CCACHE)
    (elsewhere / f"{TEMP_PREFIX}old").write_bytes(b"x")
    for item in gdir.iterdir():
        item.unlink()
    gdir.rmdir()
    gdir.symlink_to(elsewhere)

    with caplog.at_level(logging.INFO):
        loaded = store.load_lease(LEASE)

    assert loaded is not None
    assert loaded.ccaches == {"webapp01": None}
    assert (
        f"not reading a ticket from {gdir / CCACHE_NAME}: {gdir} is a symlink, not a directory: "
        "refused" in caplog.text
    )
    # Neither tightened nor cleaned through the link.
    assert _mode(elsewhere) == 0o755
    assert (elsewhere / f"{TEMP_PREFIX}old").exists()
    assert gdir.is_symlink()


def test_a_file_at_a_gmsa_directory_name_is_left_alone(tmp_path: Path) -> None:
    store = make_lease(tmp_path / "krbdir")
    gdir = store.gmsa_dir(LEASE, "webapp01")
    for item in gdir.iterdir():
        item.unlink()
    gdir.rmdir()
    gdir.write_bytes(b"not a directory")
    gdir.chmod(0o644)
    loaded = store.load_lease(LEASE)
    assert loaded is not None
    assert loaded.ccaches == {"webapp01": None}
    assert _mode(gdir) == 0o644


def test_what_older_versions_made_is_tightened_and_their_temps_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_lease(tmp_path / "krbdir")
    gdir = store.gmsa_dir(LEASE, "webapp01")
    for path, old in (
        (store.lease_dir(LEASE), 0o755),
        (gdir, 0o755),
        (store.metadata_path(LEASE), 0o644),
    ):
        path.chmod(old)
    (gdir / f"{TEMP_PREFIX}krb5cc.1234").write_bytes(b"half-written")
    (gdir / f"{TEMP_PREFIX}dir").mkdir()  # not a file the old versions left: kept
    (gdir / f"{TEMP_PREFIX}link").symlink_to(tmp_path / "nowhere")

    with caplog.at_level(logging.INFO):
        loaded = store.load_lease(LEASE)

    assert loaded is not None
    assert loaded.ccaches == {"webapp01": CCACHE}
    assert _mode(store.lease_dir(LEASE)) == 0o711
    assert _mode(gdir) == 0o711
    assert _mode(store.metadata_path(LEASE)) == 0o600
    assert sorted(p.name for p in gdir.iterdir()) == [f"{TEMP_PREFIX}dir", CCACHE_NAME]
    assert f"lease {LEASE}: directories set to 0711 and metadata to 0600" in caplog.text


def test_modes_already_right_are_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_lease(tmp_path / "krbdir")
    with caplog.at_level(logging.INFO):
        assert store.load_lease(LEASE) is not None
    assert "directories set to 0711" not in caplog.text


@needs_root
def test_a_foreign_gmsa_directory_is_read_but_not_tightened(tmp_path: Path) -> None:
    """As ensure_mode did: only what the daemon owns gets today's modes."""
    store = make_lease(tmp_path / "krbdir")
    gdir = store.gmsa_dir(LEASE, "webapp01")
    gdir.chmod(0o755)
    os.chown(gdir, 4242, -1)
    loaded = store.load_lease(LEASE)
    assert loaded is not None
    assert loaded.ccaches == {"webapp01": CCACHE}
    assert _mode(gdir) == 0o755


def test_a_fifo_ccache_never_blocks_loading(tmp_path: Path) -> None:
    store = make_lease(tmp_path / "krbdir")
    _plant_fifo(store.gmsa_dir(LEASE, "webapp01") / CCACHE_NAME)
    result: list[LoadedLease | None] = []
    worker = threading.Thread(target=lambda: result.append(store.load_lease(LEASE)), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert result[0] is not None


def test_a_symlinked_lease_directory_is_refused_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_lease(tmp_path / "krbdir")
    real = tmp_path / "real-lease"
    store.lease_dir(LEASE).rename(real)
    store.lease_dir(LEASE).symlink_to(real)
    with caplog.at_level(logging.WARNING):
        assert store.load_lease(LEASE) is None
    assert f"{store.lease_dir(LEASE)} is a symlink, not a directory: refused" in caplog.text
    assert not os.path.lexists(store.lease_dir(LEASE))
    assert (real / f"{LEASE}_metadata.json").is_file()  # the link went, not what it named


def _directory_as_pathlib_said(path: str) -> str | None:
    """What decode_metadata answered before it stopped making a Path per lease."""
    name = Path(path).parent.name if path else ""
    return None if not name or name == "webapp01" else validate_dir_name(name)


@pytest.mark.parametrize(
    "path",
    [
        "/k/lease/app-dir/krb5cc",
        "/k/lease/app-dir/krb5cc/",
        "/k//lease/./app-dir//krb5cc",
        "/k/lease/app-dir/./krb5cc",
        "//k/lease/app-dir/krb5cc",
        "/k/lease/webapp01/krb5cc",
        "app-dir/krb5cc",
        "krb5cc",
        "/krb5cc",
        "/",
        "",
    ],
)
def test_the_directory_named_by_krb_file_path_is_what_pathlib_says(path: str) -> None:
    record = LeaseRecord(lease_id=LEASE, entries=(GmsaEntry("webapp01", "d", "dn", "{}"),))
    doc = encode_metadata(record, Path("/k/lease")).replace(
        b'"/k/lease/webapp01/krb5cc"', f'"{path}"'.encode()
    )
    assert decode_metadata(doc).entries[0].directory == _directory_as_pathlib_said(path)


def test_a_bad_directory_in_krb_file_path_is_refused_as_before() -> None:
    record = LeaseRecord(lease_id=LEASE, entries=(GmsaEntry("webapp01", "d", "dn", "{}"),))
    doc = encode_metadata(record, Path("/k/lease")).replace(
        b'"/k/lease/webapp01/krb5cc"', b'"/k/lease/../krb5cc"'
    )
    with pytest.raises(InvalidRequestError) as before:
        _directory_as_pathlib_said("/k/lease/../krb5cc")
    with pytest.raises(InvalidRequestError) as now:
        decode_metadata(doc)
    assert now.value.message == before.value.message
