"""Removing a lease's files and directories, and nothing outside krbdir.

A delete names a path under krbdir that a container may have shaped: a symlink where a lease
directory was, ``..`` in a name, a tree full of links. :func:`remove_tree_inside` resolves
before it removes and refuses anything that is not strictly inside the root; inside, it unlinks
symlinks rather than following them and lets ``shutil.rmtree`` (which works on directory fds,
the version safe against symlink races) remove trees.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from credfetcher.errors import StorageError

__all__ = ["remove_tree_inside"]


def _strictly_inside(root: Path, candidate: Path) -> bool:
    return candidate != root and root in candidate.parents


def remove_tree_inside(root: Path, target: Path) -> None:
    """Remove ``target`` (file, symlink or directory tree) only if it lies strictly inside ``root``.

    Both paths are resolved first, so ``..`` components and symlinks pointing out of ``root`` are
    refused with :class:`StorageError`, and so is ``root`` itself. A ``target`` that is itself a
    symlink (to somewhere inside ``root``) is unlinked, never followed. A missing ``target`` is
    not an error: deleting is idempotent. ``shutil.rmtree`` works on directory fds and does not
    follow symlinks met inside the tree.
    """
    try:
        root_resolved = root.resolve(strict=True)
        # Where the name itself lives (the parent resolved, the last component kept) and where
        # it leads (fully resolved): both must stay inside root.
        name = target.name
        link = target.parent.resolve() / name
        resolved = target.resolve()
    except OSError as exc:
        raise StorageError(
            f"cannot resolve {target}: {exc.strerror or exc}", path=str(target)
        ) from exc
    if name in ("", ".", "..") or not (
        _strictly_inside(root_resolved, link) and _strictly_inside(root_resolved, resolved)
    ):
        raise StorageError(
            f"refusing to remove {target}: not strictly inside {root}", path=str(target)
        )
    try:
        if link.is_symlink() or not link.is_dir():
            link.unlink()
        else:
            shutil.rmtree(link)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(
            f"cannot remove {target}: {exc.strerror or exc}", path=str(target)
        ) from exc
