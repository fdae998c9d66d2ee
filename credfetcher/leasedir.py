"""One lease directory, opened once, and everything start-up does in it relative to that fd.

Start-up loads every lease found in krbdir (:meth:`credfetcher.service.LeaseService.recover`):
it reads the metadata, gives the modes of today to what older versions made, removes the temp
files they left in gMSA directories, and reads each gMSA's ticket. Done by path
(:func:`credfetcher.files.read_regular`, :func:`ensure_mode_at`), each of those
steps walked krbdir → lease → gMSA again from the root: six and more opens of the same
directories per lease, most of the time a 20,000-lease recovery took (issue 18). Here the lease
directory is opened once from krbdir's fd, each gMSA directory once from the lease's, and every
read and ``fchmod`` is relative to those fds.

The checks are :mod:`credfetcher.files`' own (:func:`~credfetcher.files.open_dir_at`,
:func:`~credfetcher.files.read_regular_at`, :func:`set_mode`): a symlink,
FIFO, hard link or foreign-owned file at any of these names is refused as there (never followed,
waited on or written through), a symlink or non-directory at a directory's name is never entered,
and the errors say the same words, naming the same paths.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from credfetcher.errors import StorageError
from credfetcher.files import (
    TEMP_PREFIX,
    open_dir_at,
    read_regular_at,
)

log = logging.getLogger(__name__)

_REFUSED = "not a directory: refused"  # what files.open_dir says of a symlink on the way


class LeaseDir:
    """The lease directory ``root/name`` (``name``: a validated lease id), once
    :meth:`read_metadata` has opened it; the fds it holds are closed on :meth:`close`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        # How messages show paths: what str() of the pathlib path gives (krbdir has no trailing /).
        self.path = f"{root}/{name}"
        self._fd = -1
        # gMSA directory name → its fd, or why it could not be opened.
        self._dirs: dict[str, int | OSError | StorageError] = {}

    def __enter__(self) -> LeaseDir:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._dirs.values():
            if isinstance(fd, int):
                os.close(fd)
        self._dirs.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_metadata(self, file_name: str, owner: int) -> bytes | None:
        """:func:`~credfetcher.files.read_regular` of ``root/name/file_name``: None when the lease
        directory or the file is missing; the directory stays open for the other methods."""
        path = f"{self.path}/{file_name}"
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._fd = open_dir_at(root_fd, self.name, self.path, _REFUSED)
            finally:
                os.close(root_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}", path=path) from exc
        return read_regular_at(self._fd, file_name, path, owner=owner)

    def tighten(
        self, file_name: str, file_mode: int, dir_names: Iterable[str], dir_mode: int
    ) -> bool:
        """Give the lease directory and ``dir_names`` ``dir_mode`` and ``file_name``
        ``file_mode``, where the daemon owns them (:func:`ensure_mode_at`'s
        rules); whether any changed."""
        changed = set_mode(self._fd, dir_mode)
        changed |= ensure_mode_at(self._fd, file_name, file_mode)
        for name in dir_names:
            fd = self._dir(name)
            if isinstance(fd, int):
                changed |= set_mode(fd, dir_mode)
        return changed

    def remove_old_temps(self, dir_name: str) -> None:
        """Remove the temp files versions before the private directory left in a gMSA directory
        (never one reached through a symlink); a directory that cannot be opened is left to the
        first renewal, which reports it."""
        fd = self._dir(dir_name)
        if not isinstance(fd, int):
            return
        try:
            for item in os.scandir(fd):
                if item.name.startswith(TEMP_PREFIX) and not item.is_dir(follow_symlinks=False):
                    os.unlink(item.name, dir_fd=fd)
        except OSError as exc:
            log.warning("cannot clean %s/%s: %s", self.name, dir_name, exc)

    def read_ticket_file(self, dir_name: str, file_name: str, owner: int) -> bytes | None:
        """The bytes of ``dir_name/file_name`` as :func:`credfetcher.tickets.read_ticket_info`
        reads them: None when missing, and when unsafe or unreadable, which is logged."""
        path = f"{self.path}/{dir_name}/{file_name}"
        fd = self._dir(dir_name)
        if isinstance(fd, FileNotFoundError):
            return None
        if isinstance(fd, StorageError):
            message = fd.message
        elif isinstance(fd, OSError):
            message = f"cannot read {path}: {fd.strerror or fd}"
        else:
            try:
                return read_regular_at(fd, file_name, path, owner=owner)
            except StorageError as exc:
                message = exc.message
        log.info("not reading a ticket from %s: %s", path, message)
        return None

    def _dir(self, name: str) -> int | OSError | StorageError:
        found = self._dirs.get(name)
        if found is None:
            try:
                found = open_dir_at(self._fd, name, f"{self.path}/{name}", _REFUSED)
            except (OSError, StorageError) as exc:
                found = exc
            self._dirs[name] = found
        return found


_MODE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def ensure_mode_at(dir_fd: int, name: str, mode: int) -> bool:
    """Give ``name`` in the checked directory ``dir_fd`` (a directory or regular file the daemon
    owns) ``mode`` if it has another; return whether it changed. Opened like
    :func:`credfetcher.files.read_regular` (never followed, never waited on); anything else there
    is left alone. For files and directories made by older versions."""
    try:
        fd = os.open(name, _MODE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return set_mode(fd, mode)
    finally:
        os.close(fd)


def set_mode(fd: int, mode: int) -> bool:
    """:func:`ensure_mode_at` of an open fd: fchmod it to ``mode`` if it is the daemon's."""
    try:
        st = os.fstat(fd)
        mine = st.st_uid == os.geteuid() and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode))
        if not mine or stat.S_IMODE(st.st_mode) == mode:
            return False
        os.fchmod(fd, mode)
    except OSError:
        return False
    return True
