"""Secret files: atomic replacement, mode and owner from creation (deletes: test_removal)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from credfetcher.errors import StorageError
from credfetcher.files import (
    PRIVATE_DIR,
    TEMP_PREFIX,
    Ownership,
    TamperedError,
    atomic_target,
    atomic_write_bytes,
    clean_private_dir,
    read_regular,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
NOBODY = 65534


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A strict umask, to show the final mode does not depend on it."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def temps(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class TestAtomicWriteBytes:
    def test_writes_and_replaces(self, tmp_path: Path) -> None:
        target = tmp_path / "krb5cc"
        atomic_write_bytes(target, b"one", Ownership())
        atomic_write_bytes(target, b"two", Ownership())
        assert target.read_bytes() == b"two"
        assert mode(target) == 0o600
        assert temps(tmp_path) == []

    @pytest.mark.usefixtures("umask_077")
    def test_mode_ignores_umask(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        atomic_write_bytes(target, b"x", Ownership(mode=0o644))
        assert mode(target) == 0o644

    @needs_root
    def test_owner_and_group(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        atomic_write_bytes(target, b"x", Ownership(uid=NOBODY, gid=NOBODY, mode=0o640))
        st = target.stat()
        assert (st.st_uid, st.st_gid, mode(target)) == (NOBODY, NOBODY, 0o640)

    @needs_root
    def test_only_group(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        atomic_write_bytes(target, b"x", Ownership(gid=NOBODY))
        assert (target.stat().st_uid, target.stat().st_gid) == (os.geteuid(), NOBODY)

    def test_missing_directory_is_a_storage_error(self, tmp_path: Path) -> None:
        target = tmp_path / "missing" / "f"
        with pytest.raises(StorageError) as info:
            atomic_write_bytes(target, b"x", Ownership())
        assert info.value.path == str(target)
        assert isinstance(info.value.__cause__, OSError)

    def test_replace_failure_leaves_no_temp(self, tmp_path: Path) -> None:
        target = tmp_path / "d"
        target.mkdir()
        (target / "child").write_text("keeps the directory non-empty")
        with pytest.raises(StorageError):
            atomic_write_bytes(target, b"x", Ownership())  # cannot replace a directory
        assert temps(tmp_path) == []
        assert (target / "child").exists()

    def test_replaces_a_symlink_instead_of_following_it(self, tmp_path: Path) -> None:
        victim = tmp_path / "victim"
        victim.write_bytes(b"untouched")
        target = tmp_path / "link"
        target.symlink_to(victim)
        with pytest.raises(TamperedError, match="found a symlink") as info:
            atomic_write_bytes(target, b"new", Ownership())
        assert info.value.found == "a symlink"
        assert victim.read_bytes() == b"untouched"
        assert not target.is_symlink()
        assert target.read_bytes() == b"new"

    def test_reader_never_sees_a_partial_file(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        versions = [bytes([i]) * 65536 for i in range(4)]
        atomic_write_bytes(target, versions[0], Ownership())
        stop = threading.Event()
        seen: list[bytes] = []

        def reader() -> None:
            while not stop.is_set():
                seen.append(target.read_bytes())

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for i in range(500):
                atomic_write_bytes(target, versions[i % 4], Ownership())
        finally:
            stop.set()
            thread.join()
        assert seen
        assert all(data in versions for data in seen)


class TestAtomicTarget:
    def test_library_writes_in_the_private_directory(self, tmp_path: Path) -> None:
        target = tmp_path / "keytab"
        with atomic_target(target, Ownership(mode=0o640)) as tmp:
            assert tmp.parent == tmp_path / PRIVATE_DIR
            assert mode(tmp.parent) == 0o700
            assert tmp.name.startswith(TEMP_PREFIX)
            assert not tmp.exists()  # the library creates it, as the daemon
            tmp.write_bytes(b"content")
            assert not target.exists()
        assert target.read_bytes() == b"content"
        assert mode(target) == 0o640
        assert temps(tmp_path) == []
        assert list((tmp_path / PRIVATE_DIR).iterdir()) == []

    @needs_root
    def test_owner_applied_after_the_library(self, tmp_path: Path) -> None:
        target = tmp_path / "krb5cc"
        ownership = Ownership(uid=NOBODY, gid=NOBODY, mode=0o440)
        with atomic_target(target, ownership) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"ccache")
            os.close(fd)
            # Written while the daemon owns it: no capability beyond CAP_CHOWN is needed.
            assert tmp.stat().st_uid == os.geteuid()
        st = target.stat()
        assert (st.st_uid, st.st_gid, mode(target)) == (NOBODY, NOBODY, 0o440)

    @pytest.mark.usefixtures("umask_077")
    def test_mode_applied_after_the_library(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        with atomic_target(target, Ownership(mode=0o644)) as tmp:
            tmp.write_bytes(b"created under the umask")
        assert mode(target) == 0o644

    def test_error_in_body_keeps_old_file(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        target.write_bytes(b"old")

        def failing_library() -> None:
            with atomic_target(target, Ownership()) as tmp:
                tmp.write_bytes(b"half")
                raise RuntimeError("library failed")

        with pytest.raises(RuntimeError, match="library failed"):
            failing_library()
        assert target.read_bytes() == b"old"
        assert list((tmp_path / PRIVATE_DIR).iterdir()) == []

    def test_refuses_a_symlink_left_at_the_temp_name(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        secret = tmp_path / "elsewhere"
        secret.write_bytes(b"not for the container")
        secret.chmod(0o604)

        def planting_library() -> None:
            with atomic_target(target, Ownership(mode=0o644)) as tmp:
                tmp.symlink_to(secret)

        with pytest.raises(StorageError):
            planting_library()
        assert not target.exists()
        assert list((tmp_path / PRIVATE_DIR).iterdir()) == []
        assert mode(secret) == 0o604  # not chmod'ed through the link

    def test_missing_directory_is_a_storage_error(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError), atomic_target(tmp_path / "no" / "f", Ownership()):
            pytest.fail("the body must not run")


class TestHostileLeaseDirectory:
    """What a container may leave at a lease's file names: replaced or refused, never followed,
    opened or waited on; nothing outside the directory changes."""

    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        (tmp_path / "krbdir" / "lease" / "gmsa").mkdir(parents=True)
        return tmp_path / "krbdir"

    @pytest.fixture
    def victim(self, tmp_path: Path) -> Path:
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        return victim

    def _plant(self, kind: str, at: Path, victim: Path) -> None:
        if kind == "symlink":
            at.symlink_to(victim)
        elif kind == "dangling symlink":
            at.symlink_to(victim.parent / "created-by-root")
        elif kind == "fifo":
            os.mkfifo(at)
        elif kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(at))
            sock.close()
        elif kind == "hard link":
            os.link(victim, at)
        elif kind == "huge file":
            with at.open("wb") as fh:
                fh.truncate(1 << 30)

    @pytest.mark.parametrize(
        ("kind", "found"),
        [
            ("symlink", "a symlink"),
            ("dangling symlink", "a symlink"),
            ("fifo", "a FIFO"),
            ("socket", "a socket"),
            ("hard link", "a hard link"),
            ("huge file", "a 1073741824-byte file"),
        ],
    )
    def test_replaced_and_reported(
        self, root: Path, victim: Path, kind: str, found: str
    ) -> None:
        at = root / "lease" / "gmsa" / "krb5cc"
        self._plant(kind, at, victim)
        with pytest.raises(StorageError, match=found):
            read_regular(at, root=root)  # never opened as a file, never waited on
        with pytest.raises(TamperedError, match=f"found {found}") as info:
            atomic_write_bytes(at, b"new", Ownership(), root=root)
        assert info.value.found.startswith(found)
        assert not at.is_symlink()
        assert at.read_bytes() == b"new"
        assert read_regular(at, root=root) == b"new"
        assert victim.read_bytes() == b"precious"
        assert not (victim.parent / "created-by-root").exists()

    def test_a_directory_at_the_name_is_reported(self, root: Path) -> None:
        at = root / "lease" / "gmsa" / "krb5cc"
        (at / "inside").mkdir(parents=True)
        with pytest.raises(StorageError, match="a directory sits there"):
            atomic_write_bytes(at, b"new", Ownership(), root=root)
        assert (at / "inside").is_dir()
        assert list((root / PRIVATE_DIR).iterdir()) == []

    def test_a_symlinked_directory_is_not_followed(self, root: Path, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (root / "lease" / "gmsa").rmdir()
        (root / "lease" / "gmsa").symlink_to(outside)
        at = root / "lease" / "gmsa" / "krb5cc"
        with pytest.raises(StorageError, match="is a symlink, not a directory"):
            atomic_write_bytes(at, b"new", Ownership(), root=root)
        with pytest.raises(StorageError, match="is a symlink, not a directory"):
            read_regular(at, root=root)
        assert list(outside.iterdir()) == []

    def test_foreign_owner_is_not_read(self, root: Path) -> None:
        at = root / "lease" / "gmsa" / "krb5cc"
        at.write_bytes(b"x")
        with pytest.raises(StorageError, match="owned by uid"):
            read_regular(at, root=root, owner=os.geteuid() + 1)
        assert read_regular(at, root=root, owner=os.geteuid()) == b"x"

    def test_missing_is_none(self, root: Path) -> None:
        assert read_regular(root / "lease" / "gmsa" / "krb5cc", root=root) is None
        assert read_regular(root / "nolease" / "gmsa" / "krb5cc", root=root) is None

    def test_private_directory_is_root_only_and_cleaned(self, root: Path) -> None:
        atomic_write_bytes(root / "lease" / "f", b"x", Ownership(), root=root)
        private = root / PRIVATE_DIR
        assert mode(private) == 0o700
        (private / f"{TEMP_PREFIX}krb5cc.leftover").write_bytes(b"crash")
        (private / "adir").mkdir()
        private.chmod(0o755)
        assert clean_private_dir(root) == 2
        assert list(private.iterdir()) == []
        assert mode(private) == 0o700

    def test_private_directory_symlink_is_refused(self, root: Path, tmp_path: Path) -> None:
        (root / PRIVATE_DIR).symlink_to(tmp_path)
        with pytest.raises(StorageError, match="not the daemon's private directory"):
            atomic_write_bytes(root / "lease" / "f", b"x", Ownership(), root=root)
