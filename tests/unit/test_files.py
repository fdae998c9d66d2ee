"""Secret files: atomic replacement, mode and owner from creation, confined deletes."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from credfetcher.errors import StorageError
from credfetcher.files import (
    TEMP_PREFIX,
    Ownership,
    atomic_target,
    atomic_write_bytes,
    remove_tree_inside,
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
        atomic_write_bytes(target, b"new", Ownership())
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
    def test_temp_is_ready_before_the_library_writes(self, tmp_path: Path) -> None:
        target = tmp_path / "keytab"
        with atomic_target(target, Ownership(mode=0o640)) as tmp:
            assert tmp.parent == tmp_path
            assert tmp.name.startswith(TEMP_PREFIX)
            assert tmp.exists()
            assert mode(tmp) == 0o640
            assert tmp.stat().st_size == 0
            tmp.write_bytes(b"content")
            assert not target.exists()
        assert target.read_bytes() == b"content"
        assert mode(target) == 0o640
        assert temps(tmp_path) == []

    @needs_root
    def test_owner_at_creation_and_after(self, tmp_path: Path) -> None:
        target = tmp_path / "krb5cc"
        ownership = Ownership(uid=NOBODY, gid=NOBODY, mode=0o640)
        with atomic_target(target, ownership) as tmp:
            assert (tmp.stat().st_uid, tmp.stat().st_gid) == (NOBODY, NOBODY)
            # What MIT's cc_initialize does: unlink, then create a fresh 0600 file as the daemon.
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"ccache")
            os.close(fd)
        st = target.stat()
        assert (st.st_uid, st.st_gid, mode(target)) == (NOBODY, NOBODY, 0o640)

    @pytest.mark.usefixtures("umask_077")
    def test_mode_reapplied_after_the_library(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        with atomic_target(target, Ownership(mode=0o644)) as tmp:
            tmp.unlink()
            tmp.write_bytes(b"recreated under the umask")
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
        assert temps(tmp_path) == []

    def test_refuses_a_symlink_left_at_the_temp_name(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        secret = tmp_path / "elsewhere"
        secret.write_bytes(b"not for the container")
        secret.chmod(0o604)

        def planting_library() -> None:
            with atomic_target(target, Ownership(mode=0o644)) as tmp:
                tmp.unlink()
                tmp.symlink_to(secret)

        with pytest.raises(StorageError):
            planting_library()
        assert not target.exists()
        assert temps(tmp_path) == []
        assert mode(secret) == 0o604  # not chmod'ed through the link

    def test_missing_directory_is_a_storage_error(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError), atomic_target(tmp_path / "no" / "f", Ownership()):
            pytest.fail("the body must not run")


class TestRemoveTreeInside:
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        root = tmp_path / "krbdir"
        (root / "lease1" / "webapp01").mkdir(parents=True)
        (root / "lease1" / "webapp01" / "krb5cc").write_bytes(b"x")
        return root

    @pytest.fixture
    def outside(self, tmp_path: Path) -> Path:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "precious").write_bytes(b"keep")
        return outside

    def test_removes_a_tree(self, root: Path) -> None:
        remove_tree_inside(root, root / "lease1")
        assert not (root / "lease1").exists()
        assert root.is_dir()

    def test_removes_a_file(self, root: Path) -> None:
        remove_tree_inside(root, root / "lease1" / "webapp01" / "krb5cc")
        assert (root / "lease1" / "webapp01").is_dir()
        assert not (root / "lease1" / "webapp01" / "krb5cc").exists()

    def test_missing_target_is_fine(self, root: Path) -> None:
        remove_tree_inside(root, root / "no-such-lease")

    def test_refuses_root_itself(self, root: Path) -> None:
        for target in (root, root / ".", root / "lease1" / ".."):
            with pytest.raises(StorageError, match="not strictly inside"):
                remove_tree_inside(root, target)
        assert (root / "lease1").is_dir()

    @pytest.mark.parametrize("relative", ["..", "../outside", "lease1/../../outside", "../.."])
    def test_refuses_dotdot(self, root: Path, outside: Path, relative: str) -> None:
        with pytest.raises(StorageError, match="not strictly inside") as info:
            remove_tree_inside(root, root / relative)
        assert info.value.path == str(root / relative)
        assert (outside / "precious").exists()
        assert root.is_dir()

    def test_refuses_absolute_path_elsewhere(self, root: Path, outside: Path) -> None:
        with pytest.raises(StorageError):
            remove_tree_inside(root, outside)
        assert (outside / "precious").exists()

    def test_refuses_symlink_escape(self, root: Path, outside: Path) -> None:
        (root / "evil").symlink_to(outside)
        for target in (root / "evil", root / "evil" / "precious"):
            with pytest.raises(StorageError, match="not strictly inside"):
                remove_tree_inside(root, target)
        assert (outside / "precious").exists()

    def test_refuses_symlinked_parent_escape(self, root: Path, outside: Path) -> None:
        (root / "lease1" / "up").symlink_to(root.parent)
        with pytest.raises(StorageError):
            remove_tree_inside(root, root / "lease1" / "up" / "outside")
        assert (outside / "precious").exists()

    def test_symlink_inside_is_unlinked_not_followed(self, root: Path) -> None:
        (root / "alias").symlink_to(root / "lease1")
        remove_tree_inside(root, root / "alias")
        assert not (root / "alias").is_symlink()
        assert (root / "lease1" / "webapp01" / "krb5cc").exists()

    def test_symlinks_inside_the_tree_are_not_followed(self, root: Path, outside: Path) -> None:
        (root / "lease1" / "webapp01" / "escape").symlink_to(outside)
        remove_tree_inside(root, root / "lease1")
        assert not (root / "lease1").exists()
        assert (outside / "precious").exists()

    def test_missing_root(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError):
            remove_tree_inside(tmp_path / "nope", tmp_path / "nope" / "x")
