"""A renewal's many ccaches, written with two ``syncfs`` calls instead of two fsyncs per file.

Every target of one account gets the same TGT, so its ccache's bytes are the same for all of
them: libkrb5 writes them once (:func:`ccache_bytes`), and :class:`Chunk` installs them for a
chunk of targets with the steps of :func:`credfetcher.files.atomic_write_bytes` -- staged in the
private directory (``O_CREAT|O_EXCL``, the target's mode and owner applied on the fd), renamed
over the final name relative to directories walked from krbdir with ``O_NOFOLLOW``, what sat
there described and reported (:class:`credfetcher.files.TamperedError`), a directory there
refused -- except that the per-file ``fsync`` of the file and of its directory are replaced by
one ``syncfs(2)`` of krbdir's filesystem after all files are staged, and one after all are
renamed. At 20,000 leases the fsyncs were most of a renewal pass's time.

Why that keeps the files as durable as they need to be:

* A renewal is acknowledged to nobody, and the ccache it replaces is still valid: renewal starts
  with the margin left, and a target whose write fails is written again long before its ticket
  ends (:mod:`credfetcher.renewal`).
* The first ``syncfs`` puts every staged file's data on disk before any rename makes it visible,
  so after a power loss each ccache is the old one or the complete new one, never empty or
  partial (the ordering ``fsync``-then-``rename`` gives, for all files at once).
* The second makes the renames durable before the outcomes are recorded (ListLeases then shows
  what a reboot would find), as the directory ``fsync`` does for one file.
* A ``syncfs`` that fails fails the whole chunk: before the renames, every staged file is
  removed and the old ccaches stay; after them, every renamed target is reported as unwritten
  and written again on its own (per-file) retry.

New leases (AddKerberosLease) keep the per-file path: their acknowledgment promises that the
file is on disk. Keytabs keep it too: they are written rarely (a password change).

``syncfs`` is not in Python's :mod:`os`, so it is called from libc through :mod:`ctypes`
(``use_errno`` for its error); where libc has none, each staged file and each directory renamed
into is fsynced instead (the same guarantees, at the per-file cost).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from credfetcher import tickets
from credfetcher.errors import StorageError
from credfetcher.files import (
    PRIVATE_DIR,
    TEMP_PREFIX,
    Ownership,
    full_filesystem,
    private_dir_fd,
    read_regular,
    rename_staged,
    tampered,
    write_new,
)

__all__ = ["CHUNK", "Chunk", "ccache_bytes", "syncfs"]

#: Targets staged, synced and renamed together: bounds the temp files sitting in the private
#: directory at once, and the time before the first rename of a chunk.
CHUNK = 256
_SYNC_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


#: glibc's ``syncfs(int fd)`` (Linux >= 2.6.39), or None where libc lacks it.
_syncfs = _libc_syncfs()


def syncfs(fd: int) -> bool:
    """``syncfs(2)`` the filesystem holding ``fd``: write back every dirty page and inode of it.

    Hand-written because :mod:`os` has ``sync`` and ``fsync`` but no ``syncfs``. Returns False
    when libc has no ``syncfs`` (the caller fsyncs file by file); raises OSError when it fails.
    """
    if _syncfs is None:
        return False
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def ccache_bytes(tgt: tickets.Tgt, root: Path) -> bytes:
    """The FILE ccache libkrb5 writes for ``tgt``, as bytes.

    libkrb5 writes it in ``root``'s private directory exactly as
    :func:`credfetcher.tickets.store_tgt` does; it is read back from a checked fd and removed at
    once. The bytes (a secret) stay in this process. Raises StorageError.
    """
    os.close(_open_private(root))  # made if missing, checked
    tmp = root / PRIVATE_DIR / f"{TEMP_PREFIX}ccache.{secrets.token_hex(8)}"
    try:
        tickets.write_ccache_file(tgt, tmp, tmp)
        data = read_regular(tmp, root=root, owner=os.geteuid())
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not data:
        raise StorageError(f"libkrb5 left no ccache at {tmp}", path=str(tmp))
    return data


def _open_private(root: Path) -> int:
    """The fd of ``root``'s private directory (see :func:`credfetcher.files.private_dir_fd`)."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return private_dir_fd(root_fd, root)
        finally:
            os.close(root_fd)
    except OSError as exc:
        raise StorageError(
            f"cannot stage in {root / PRIVATE_DIR}: {exc.strerror or exc}", path=str(root)
        ) from exc


class Chunk:
    """One chunk of targets' ccaches, all with the same ``data``.

    Made (it opens the private directory, or raises StorageError) and used as a context
    manager, in this order: :meth:`stage`, :meth:`sync` (before any rename),
    :meth:`install` for each target still to be written (the caller holds its lease's lock),
    :meth:`sync` again, then :meth:`result` for each. Leaving the block removes every staged
    file not renamed (a target skipped or failed). A failure is that target's only, except a
    failing ``syncfs``, which fails every target not yet synced.
    """

    def __init__(self, root: Path, data: bytes, files: Sequence[tuple[Path, Ownership]]) -> None:
        self.root = root
        self.data = data
        self.files = files
        self._token = secrets.token_hex(8)
        self._staged: dict[int, str] = {}  # index -> temp name, while in the private directory
        self._renamed: dict[int, str | None] = {}  # index -> what sat at its name, not synced
        self._done: dict[int, str | None] = {}  # renamed and synced
        self._errors: dict[int, StorageError] = {}
        self._synced = False
        self._private = _open_private(root)

    def __enter__(self) -> Chunk:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._private)
        self._staged.clear()
        os.close(self._private)

    def stage(self) -> None:
        """Create every target's file in the private directory, with its mode and owner."""
        for i, (path, ownership) in enumerate(self.files):
            tmp = f"{TEMP_PREFIX}{path.name}.{self._token}.{i}"
            try:
                write_new(self._private, tmp, self.data, ownership)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self._private)
                message = f"cannot write ccache {path}: {exc.strerror or exc}"
                # As atomic_target says it: the operator's first question is the free space.
                full = full_filesystem(self.root)
                self._fail(i, f"{message} ({full})" if full else message)
            else:
                self._staged[i] = tmp

    def sync(self) -> None:
        """Make what was staged (the first call, before any rename) or renamed (the second)
        durable."""
        first, self._synced = not self._synced, True
        try:
            if first and self._staged and not syncfs(self._private):
                for tmp in self._staged.values():
                    fd = os.open(tmp, _SYNC_FLAGS, dir_fd=self._private)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            elif not first and self._renamed:
                syncfs(self._private)  # without syncfs, install() fsynced each directory
        except OSError as exc:
            reason = f"cannot sync {self.root}'s filesystem: {exc.strerror or exc}"
            for i in self._staged if first else self._renamed:
                self._fail(i, f"cannot write {self.files[i][0]}: {reason}")
            for tmp in self._staged.values():
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=self._private)
            self._staged.clear()
            self._renamed.clear()
            return
        self._done.update(self._renamed)
        self._renamed.clear()

    def install(self, i: int) -> None:
        """Rename target ``i``'s staged file over its ccache (if it was staged and synced)."""
        tmp = self._staged.get(i)
        if tmp is None:
            return
        path, ownership = self.files[i]
        try:
            found = rename_staged(
                path, self.root, self._private, tmp, ownership.expected_uid, sync=_syncfs is None
            )
        except StorageError as exc:
            self._errors[i] = exc
            return
        except OSError as exc:
            self._fail(i, f"cannot write {path}: {exc.strerror or exc}")
            return
        del self._staged[i]
        self._renamed[i] = found

    def result(self, i: int) -> StorageError | None:
        """Target ``i``'s outcome: None (written), its error, or a
        :class:`credfetcher.files.TamperedError` (written over something foreign)."""
        if i in self._errors:
            return self._errors[i]
        if i not in self._done:
            return StorageError(f"{self.files[i][0]} was not written", path=str(self.files[i][0]))
        found = self._done[i]
        return None if found is None else tampered(self.files[i][0], found)

    def _fail(self, i: int, message: str) -> None:
        self._errors[i] = StorageError(message, path=str(self.files[i][0]))
