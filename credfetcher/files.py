"""The one filesystem module for secret files: ccaches, keytabs, lease metadata.

Every secret file credfetcher writes goes through here, so the rules hold everywhere (the certbot
model): the new content goes to a temp file in the *same directory* as the final file, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and its final mode from the first instant, flushed with ``fsync``,
then ``os.replace``d over the old file and the directory fsynced. Readers (and containers that see
the directory through a bind mount) therefore see either the old file or the new one, never a
half-written one; a crash leaves at most a ``TEMP_PREFIX`` leftover that crash recovery deletes.

Temp files never leave the final file's directory: a secret is never written anywhere else, not
even briefly, and ``os.replace`` stays a same-filesystem rename.

Every ``OSError`` becomes :class:`credfetcher.errors.StorageError` carrying the path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from credfetcher.errors import StorageError

__all__ = [
    "TEMP_PREFIX",
    "Ownership",
    "atomic_target",
    "atomic_write_bytes",
    "remove_tree_inside",
]

#: Prefix of every temp file this module creates; crash recovery deletes leftovers that carry it.
TEMP_PREFIX = ".cf-tmp-"

# O_NOFOLLOW: never write through a symlink someone planted at the temp name (O_EXCL already
# refuses an existing name, symlink or not; O_NOFOLLOW documents the intent and covers re-opens).
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Ownership:
    """Owner, group and mode for a secret file; ``None`` keeps the daemon's own uid/gid."""

    uid: int | None = None
    gid: int | None = None
    mode: int = 0o600


def _temp_path(path: Path) -> Path:
    # Random suffix: concurrent writers of the same target never collide on the temp name.
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(8)}")


def _apply_ownership(fd: int, ownership: Ownership) -> None:
    # fchmod after creation because the mode given to open() is filtered through the umask.
    os.fchmod(fd, ownership.mode)
    if ownership.uid is not None or ownership.gid is not None:
        uid = -1 if ownership.uid is None else ownership.uid
        gid = -1 if ownership.gid is None else ownership.gid
        os.fchown(fd, uid, gid)


def _create_temp(path: Path, ownership: Ownership) -> tuple[Path, int]:
    """Create a fresh temp file next to ``path``; return it and an fd open for writing."""
    tmp = _temp_path(path)
    fd = os.open(tmp, _CREATE_FLAGS, ownership.mode & 0o777)
    try:
        _apply_ownership(fd, ownership)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return tmp, fd


def _fsync_directory(directory: Path) -> None:
    # Without this the rename may not survive a power loss even though the data does.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    # Best effort on an error path: the original error is the one worth reporting.
    with contextlib.suppress(OSError):
        path.unlink()


def atomic_write_bytes(path: Path, data: bytes, ownership: Ownership) -> None:
    """Replace ``path`` with ``data`` atomically, with ``ownership`` from creation on."""
    tmp: Path | None = None
    try:
        tmp, fd = _create_temp(path, ownership)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}", path=str(path)) from exc
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)


@contextlib.contextmanager
def atomic_target(path: Path, ownership: Ownership) -> Iterator[Path]:
    """Yield a temp path next to ``path`` for a library to write; install it atomically on success.

    For writers that insist on a file name rather than bytes (libkrb5's ``FILE:`` ccaches and
    keytabs). The temp file exists when yielded (created ``O_EXCL`` with the final mode and owner);
    the library may also unlink and recreate it, as MIT's ``cc_initialize`` does, which is why the
    ownership is applied again afterwards. If the body raises, the temp file is removed, the old
    ``path`` is left untouched, and the body's exception propagates unchanged.
    """
    try:
        tmp, fd = _create_temp(path, ownership)
        os.close(fd)
    except OSError as exc:
        raise StorageError(
            f"cannot create a temp file for {path}: {exc.strerror or exc}", path=str(path)
        ) from exc
    installed = False
    try:
        yield tmp
        try:
            # O_NOFOLLOW + the S_ISREG check: whatever the library left under the temp name must
            # be a plain file before it becomes a secret file others will read.
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StorageError(f"{tmp} is not a regular file", path=str(path))
                _apply_ownership(fd, ownership)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            installed = True
            _fsync_directory(path.parent)
        except OSError as exc:
            raise StorageError(
                f"cannot install {path}: {exc.strerror or exc}", path=str(path)
            ) from exc
    finally:
        if not installed:
            _unlink_quietly(tmp)


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
