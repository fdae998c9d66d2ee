"""Confined deletes: nothing outside krbdir is ever removed, whatever the lease directory holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from credfetcher.errors import StorageError
from credfetcher.removal import remove_tree_inside


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
