"""The one filesystem module for secret files: ccaches, keytabs, lease metadata.

Every file credfetcher writes or reads back under krbdir goes through here, so the rules hold
everywhere. A lease's directory is handed to a container, which may be able to write it (a
``docker -v`` without ``:ro``, a hostPath volume, a root app): whatever sits there is hostile.

Writing (:func:`atomic_write_bytes`, :func:`atomic_target`): the new content is produced -- by us
or by libkrb5 -- in the *private staging directory* ``<root>/.cf-private`` (:data:`PRIVATE_DIR`:
root-owned, 0700, on krbdir's filesystem and never inside a lease, so never mounted into a
container). There it gets its final mode and then its owner (in that order: ``fchmod`` needs no
capability while the daemon still owns the file, so the daemon writes only files it owns, as the
unit's bare ``CAP_CHOWN`` requires), is ``fsync``ed, and is then moved over the final name with
``renameat`` relative to the destination directory's fd. The directories from ``root`` down are
each opened with ``openat(O_DIRECTORY | O_NOFOLLOW)``, so a symlinked directory is refused, never
followed. ``rename(2)`` never opens, follows or truncates what it replaces: a symlink, FIFO,
socket, hard link or huge file at the final name is replaced as a name, and reported afterwards
(:class:`TamperedError`); a directory there cannot be replaced and is reported
(:class:`StorageError`). Readers (and containers behind a bind mount) see the old file or the new
one, never a half-written one; a crash leaves at most a leftover in the private directory, which
start-up removes (:func:`clean_private_dir`). A renewal's many ccaches are written with these
steps, fsyncs batched into ``syncfs`` (:mod:`credfetcher.batchwrite`, which says why that is safe).

Reading (:func:`read_regular`): the file is opened ``O_NOFOLLOW | O_NONBLOCK`` relative to its
checked directory fd, and used only after ``fstat`` says it is a regular file with one link, a
sane size and the expected owner; then read into memory. Nothing under a lease directory is ever
opened by name by a library.

Every ``OSError`` becomes :class:`credfetcher.errors.StorageError` carrying the path.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from credfetcher.errors import StorageError
from credfetcher.removal import remove_tree_inside  # defined there; importable from here as before
from credfetcher.values import Ownership  # defined there; importable from here as before

__all__ = [
    "MAX_FILE_SIZE",
    "PRIVATE_DIR",
    "TEMP_PREFIX",
    "Ownership",
    "TamperedError",
    "atomic_target",
    "atomic_write_bytes",
    "clean_private_dir",
    "describe",
    "full_filesystem",
    "open_dir",
    "open_dir_at",
    "private_dir_fd",
    "read_regular",
    "read_regular_at",
    "regular_file_exists",
    "remove_tree_inside",
    "rename_staged",
    "tampered",
    "write_new",
]

log = logging.getLogger(__name__)

#: Prefix of every temp file this module creates; crash recovery deletes leftovers that carry it.
TEMP_PREFIX = ".cf-tmp-"
#: The private staging directory, directly under the root (krbdir): 0700, root only.
PRIVATE_DIR = ".cf-private"
#: Larger than anything credfetcher writes (a ccache or keytab is a few KiB): a bigger file at a
#: lease's file name was not made by the daemon and is never read.
MAX_FILE_SIZE = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone planted returns at once instead of waiting for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TamperedError(StorageError):
    """The file was written and installed, but something the daemon did not make sat at its name
    (``found`` says what) and was replaced; the lease's directory has been tampered with."""

    def __init__(self, message: str, *, path: str, found: str) -> None:
        super().__init__(message, path=path)
        self.found = found


def describe(st: os.stat_result, *, owner: int | None = None) -> str | None:
    """What an lstat result shows, when it is not a plain file the daemon could have made."""
    mode = st.st_mode
    kinds = (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    for test, text in kinds:
        if test(mode):
            return text
    if not stat.S_ISREG(mode):
        return f"a file of type {stat.S_IFMT(mode):o}"
    # 0 links: the file was renamed over after we opened it (a concurrent write), still ours.
    if st.st_nlink > 1:
        return f"a hard link (a file with {st.st_nlink} names)"
    if st.st_size > MAX_FILE_SIZE:
        return f"a {st.st_size}-byte file"
    if owner is not None and st.st_uid != owner:
        return f"a file owned by uid {st.st_uid} (expected {owner})"
    return None


def _relative_parts(root: Path, path: Path) -> tuple[list[str], str]:
    try:
        parts = path.relative_to(root).parts
    except ValueError as exc:
        raise StorageError(f"{path} is not inside {root}", path=str(path)) from exc
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"{path} is not a file name inside {root}", path=str(path))
    return list(parts[:-1]), parts[-1]


def _describe_at(dir_fd: int, name: str) -> str:
    try:
        return describe(os.stat(name, dir_fd=dir_fd, follow_symlinks=False)) or "a file"
    except OSError:
        return "something that vanished"


def open_dir(root: Path, parts: list[str] | tuple[str, ...]) -> int:
    """An fd of ``root/parts...``: ``root`` (krbdir, trusted) by path, each part with ``openat``
    and ``O_NOFOLLOW`` from its parent's fd. A symlink or non-directory on the way is refused
    with a :class:`StorageError` naming what was found."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    walked = root
    try:
        for part in parts:
            walked = walked / part
            child = open_dir_at(fd, part, walked, "not a directory: refused")
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir_at(dir_fd: int, name: str, path: Path | str, refusal: str) -> int:
    """``openat(dir_fd, name, O_DIRECTORY|O_NOFOLLOW)``; a symlink or non-directory at ``name``
    raises StorageError saying what it is (``path`` is how messages show it)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            found = _describe_at(dir_fd, name)
            raise StorageError(f"{path} is {found}, {refusal}", path=str(path)) from exc
        raise


def private_dir_fd(root_fd: int, root: Path) -> int:
    """The private staging directory's fd, created 0700 if missing; refused unless it is a
    directory the daemon owns (its mode is put back to 0700 if it is not)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(PRIVATE_DIR, 0o700, dir_fd=root_fd)
    fd = open_dir_at(
        root_fd, PRIVATE_DIR, root / PRIVATE_DIR, "not the daemon's private directory"
    )
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise StorageError(
            f"{root / PRIVATE_DIR} is owned by uid {st.st_uid}, not by the daemon",
            path=str(root / PRIVATE_DIR),
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.fchmod(fd, 0o700)
    return fd


def clean_private_dir(root: Path) -> int:
    """Create ``root/.cf-private`` (0700) if needed and remove every leftover in it (start-up:
    nothing is being written yet). Returns how many leftovers were removed."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = private_dir_fd(root_fd, root)
        finally:
            os.close(root_fd)
        removed = 0
        try:
            for entry in os.scandir(fd):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.name, dir_fd=fd)
                else:
                    os.unlink(entry.name, dir_fd=fd)
                removed += 1
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(
            f"cannot prepare {root / PRIVATE_DIR}: {exc.strerror or exc}",
            path=str(root / PRIVATE_DIR),
        ) from exc
    return removed


def _apply_ownership(fd: int, ownership: Ownership) -> None:
    # Mode first, while the daemon still owns the file: after fchown to another user, changing
    # the mode would need CAP_FOWNER, which the shipped unit does not grant.
    os.fchmod(fd, ownership.mode)
    if ownership.uid is not None or ownership.gid is not None:
        uid = -1 if ownership.uid is None else ownership.uid
        gid = -1 if ownership.gid is None else ownership.gid
        os.fchown(fd, uid, gid)


def _install(
    path: Path,
    ownership: Ownership,
    root: Path | None,
    produce: Callable[[int, str], None],
    tmp: str | None = None,
) -> None:
    """Produce a file in the private directory with ``produce(private_fd, temp_name)``, give it
    ``ownership``, fsync it and rename it over ``path``. See the module docstring."""
    root = path.parent if root is None else root
    _, name = _relative_parts(root, path)
    tmp = tmp or f"{TEMP_PREFIX}{name}.{secrets.token_hex(8)}"
    root_fd = private_fd = -1
    installed = False
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        private_fd = private_dir_fd(root_fd, root)
        produce(private_fd, tmp)
        fd = os.open(tmp, _READ_FLAGS, dir_fd=private_fd)
        try:
            # Whatever the library left under the temp name must be a plain file before it
            # becomes a secret file others will read.
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"the staged {name} is not a regular file", path=str(path))
            _apply_ownership(fd, ownership)
            os.fsync(fd)
        finally:
            os.close(fd)
        found = rename_staged(path, root, private_fd, tmp, ownership.expected_uid, sync=True)
        installed = True
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}", path=str(path)) from exc
    finally:
        if not installed and private_fd >= 0:
            # Best effort on an error path: the original error is the one worth reporting.
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=private_fd)
        for fd in (private_fd, root_fd):
            if fd >= 0:
                os.close(fd)
    if found is not None:
        raise tampered(path, found)


def write_new(dir_fd: int, name: str, data: bytes, ownership: Ownership | None = None) -> None:
    """Create ``name`` in ``dir_fd`` (``O_EXCL|O_NOFOLLOW``: never an existing file or a link),
    write ``data`` and, when given, apply ``ownership`` on the fd. No fsync: the caller's."""
    fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if ownership is not None:
            _apply_ownership(fd, ownership)
    finally:
        os.close(fd)


def rename_staged(
    path: Path, root: Path, private_fd: int, tmp: str, owner: int, *, sync: bool
) -> str | None:
    """Rename the staged ``tmp`` over ``path`` (directories walked from ``root``), then fsync the
    directory when ``sync``. Returns what sat at ``path`` if not a file the daemon (as ``owner``)
    could have made (:func:`describe`); a directory there raises StorageError, other failures
    OSError."""
    parts, name = _relative_parts(root, path)
    dir_fd = open_dir(root, parts)
    try:
        try:
            found = describe(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), owner=owner)
        except FileNotFoundError:
            found = None
        try:
            os.rename(tmp, name, src_dir_fd=private_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                what = _describe_at(dir_fd, name)
                raise StorageError(
                    f"cannot replace {path}: {what} sits there", path=str(path)
                ) from exc
            raise
        if sync:
            # Without this the rename may not survive a power loss even though the data does.
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return found


def tampered(path: Path, found: str) -> TamperedError:
    """The report for a file installed over ``found`` (logged here, raised by the caller)."""
    log.warning("replaced %s found at %s", found, path)
    return TamperedError(f"found {found} at {path} (replaced it)", path=str(path), found=found)


def atomic_write_bytes(
    path: Path, data: bytes, ownership: Ownership, *, root: Path | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically, with ``ownership`` from the first instant it
    is visible. ``root``: the trusted top (krbdir) whose private directory stages the file and
    from which the directories down to ``path`` are walked; default ``path.parent``.

    Raises :class:`TamperedError` (after installing) when something else sat at ``path``.
    """
    _install(path, ownership, root, lambda private_fd, tmp: write_new(private_fd, tmp, data))


@contextlib.contextmanager
def atomic_target(path: Path, ownership: Ownership, *, root: Path | None = None) -> Iterator[Path]:
    """Yield a fresh name in the private directory for a library to write; install it on success.

    For writers that insist on a file name rather than bytes (libkrb5's ``FILE:`` ccaches and
    keytabs). The yielded file does not exist yet: the library creates it (as the daemon, in a
    directory only the daemon can enter). Ownership is applied afterwards, on an fd, before the
    file is renamed to ``path`` (see :func:`atomic_write_bytes` for ``root`` and errors). If the
    body raises, the temp file is removed, the old ``path`` is untouched, and the body's
    exception propagates unchanged.
    """
    top = path.parent if root is None else root
    _relative_parts(top, path)
    tmp_name = f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(8)}"
    private = top / PRIVATE_DIR
    try:
        root_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.close(private_dir_fd(root_fd, top))
        finally:
            os.close(root_fd)
    except OSError as exc:
        raise StorageError(f"cannot stage {path}: {exc.strerror or exc}", path=str(path)) from exc
    try:
        yield private / tmp_name
    except StorageError as exc:
        with contextlib.suppress(OSError):
            (private / tmp_name).unlink()
        # Libraries report a full disk vaguely (MIT: "Credentials cache I/O operation
        # failed"): say what the filesystem says, the operator's first question.
        full = full_filesystem(top)
        if full is None:
            raise
        raise StorageError(f"{exc.message} ({full})", path=exc.path) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            (private / tmp_name).unlink()
        raise

    # The library wrote tmp_name; _install checks, finishes and moves it (or removes it).
    _install(path, ownership, top, lambda _fd, _name: None, tmp_name)


def full_filesystem(root: Path) -> str | None:
    try:
        st = os.statvfs(root)
    except OSError:
        return None
    if st.f_bavail == 0:
        return f"No space left on device: the filesystem of {root} is full"
    if st.f_files and st.f_favail == 0:
        return f"No space left on device: the filesystem of {root} has no free inodes"
    return None


def read_regular(
    path: Path,
    *,
    root: Path | None = None,
    owner: int | None = None,
    max_size: int = MAX_FILE_SIZE,
) -> bytes | None:
    """The contents of ``path`` if it is a regular file the daemon could have made, else None
    when it is missing. Opened ``O_NOFOLLOW | O_NONBLOCK`` relative to its directory (walked
    from ``root`` as in :func:`open_dir`); anything but a regular file with one link, at most
    ``max_size`` bytes and owned by ``owner`` (when given) raises :class:`StorageError` naming
    what was found. Never blocks: a FIFO is refused before any read."""
    top = path.parent if root is None else root
    parts, name = _relative_parts(top, path)
    try:
        dir_fd = open_dir(top, parts)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}", path=str(path)) from exc
    try:
        return read_regular_at(dir_fd, name, path, owner=owner, max_size=max_size)
    finally:
        os.close(dir_fd)


def read_regular_at(
    dir_fd: int, name: str, path: Path | str, *, owner: int | None = None,
    max_size: int = MAX_FILE_SIZE,
) -> bytes | None:
    """:func:`read_regular` of ``name`` in the checked directory ``dir_fd`` (``path``: its name)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # ELOOP: a symlink (O_NOFOLLOW); ENXIO: a socket.
        found = None
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):
            found = _describe_at(dir_fd, name)
        if found is not None:
            raise StorageError(f"{path} is {found}: not read", path=str(path)) from exc
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}", path=str(path)) from exc
    try:
        return _read_checked(fd, path, owner, max_size)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}", path=str(path)) from exc
    finally:
        os.close(fd)


def _read_checked(fd: int, path: Path | str, owner: int | None, max_size: int) -> bytes:
    st = os.fstat(fd)
    found = describe(st, owner=owner)
    if found is None and st.st_size > max_size:
        found = f"a {st.st_size}-byte file"
    if found is not None:
        raise StorageError(f"{path} is {found}: not read", path=str(path))
    chunks = []
    left = max_size + 1
    while left > 0:
        chunk = os.read(fd, min(left, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > max_size:
        raise StorageError(f"{path} grew past {max_size} bytes: not read", path=str(path))
    return data


def regular_file_exists(path: Path, *, root: Path | None = None, owner: int | None = None) -> bool:
    """Whether a file the daemon could have made sits at ``path``: regular, one link, a sane
    size, owned by ``owner`` when given (lstat through checked directories; never opens it).
    Anything else there, or an unreachable directory, counts as missing."""
    top = path.parent if root is None else root
    try:
        parts, name = _relative_parts(top, path)
        dir_fd = open_dir(top, parts)
    except (OSError, StorageError):
        return False
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return describe(st, owner=owner) is None
    except OSError:
        return False
    finally:
        os.close(dir_fd)

