"""Value types parsed once at the edge (CLI arguments, configuration, RPC requests).

Each type checks its invariant when it is made, so code that holds one need not check again:

* :class:`LeaseId`: a lease id as credentials-fetcher makes them (20 lowercase hex characters)
  or as an operator or caller names one (letters, digits, ``-`` and ``_``, at most 64; never a
  ``.``, so never ``..`` or a metadata file name). The whole string must match: a trailing
  newline is no part of an id.
* :class:`GmsaName`: a gMSA's account name with its one trailing ``$`` taken off. AD's
  sAMAccountName of a (group) managed service account ends in ``$`` (MS-ADTS 3.1.1.5.2.8) and
  AD compares names case-insensitively, so :attr:`GmsaName.sam` and :attr:`GmsaName.key` are the
  two spellings the rest of the code needs.
* :class:`Ownership`: owner, group and mode of a secret file, with ids that ``chown(2)``
  accepts and a mode that :func:`check_mode` allows.

:func:`check_mode` is the one rule for the mode of credential files, used by the CLI (before a
request is sent), the configuration (``CF_CCACHE_MODE``) and the server (each request's
``ownership``), so all three refuse the same modes with the same reason. Errors are
:class:`~credfetcher.errors.InvalidRequestError`; the configuration turns them into
``ConfigError`` and the CLI into a usage error.

Nothing here loads an RPC, LDAP or Kerberos library: the CLI and the configuration import it.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass

from credfetcher.errors import InvalidRequestError

__all__ = [
    "MAX_ID",
    "GmsaName",
    "LeaseId",
    "Ownership",
    "check_id",
    "check_mode",
]

# (uid_t)-1 and (gid_t)-1 mean "leave unchanged" to chown(2), so neither is an owner.
MAX_ID = 2**32 - 2

# A random id (20 lowercase hex characters) is also a named one; one pattern takes both.
# Named ids (CF_CRED_SPEC_FILE's, an ARN's #fragment) never hold '.', so never '..' or a
# metadata file name.
_LEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_mode(mode: int, *, allow_world_readable: bool) -> int:
    """Return ``mode`` if credential files may have it; else raise naming the mode and why.

    Refused always: anything but permission bits, no bits at all, and world-writable modes
    (another user could replace the tickets). World-readable modes only when the daemon runs
    with ``CF_ALLOW_WORLD_READABLE=true`` (``allow_world_readable``): every user of the host
    could then use the gMSA's tickets.
    """
    if not 0 < mode <= 0o777:
        raise InvalidRequestError(
            f"mode 0{mode:03o} is not a permission mode between 0001 and 0777 (such as 0440)"
        )
    if mode & 0o002:
        raise InvalidRequestError(
            f"mode 0{mode:03o} is world-writable: every user on the host could replace the "
            "credentials, which the daemon never allows"
        )
    if mode & 0o004 and not allow_world_readable:
        raise InvalidRequestError(
            f"mode 0{mode:03o} would let every user on the host read the credentials; the daemon "
            "allows that only with CF_ALLOW_WORLD_READABLE=true"
        )
    return mode


def check_id(value: int, what: str) -> int:
    """Return a uid or gid (``what`` names it) that ``chown(2)`` can give a file."""
    if not 0 <= value <= MAX_ID:
        raise InvalidRequestError(f"{what} {value} is out of range (0..{MAX_ID})")
    return value


class LeaseId(str):
    """A validated lease id; ``LeaseId(text)`` raises InvalidRequestError for anything else."""

    __slots__ = ()

    def __new__(cls, value: str) -> LeaseId:
        if not isinstance(value, str) or not _LEASE_ID.fullmatch(value):
            shown = str(value)[:64].encode("unicode_escape").decode("ascii")
            raise InvalidRequestError(
                f"lease id {shown!r} is not a lease id (20 lowercase hex characters, or a name "
                "of letters, digits, '-' and '_')"
            )
        return super().__new__(cls, value)

    @classmethod
    def new(cls) -> LeaseId:
        """20 lowercase hex characters from the OS CSPRNG, as credentials-fetcher makes them."""
        return cls(secrets.token_hex(10))


@dataclass(frozen=True)
class GmsaName:
    """A gMSA account name without its trailing ``$``, as :meth:`parse` leaves it.

    ``bare`` keeps the caller's case (it names directories and principals); compare names with
    :attr:`key`. Made directly, ``bare`` must already be in that form: not empty, no control
    characters, no leading white space.
    """

    bare: str

    def __post_init__(self) -> None:
        bare = self.bare
        if not bare or bare != bare.lstrip() or any(ord(c) < 0x20 for c in bare):
            raise InvalidRequestError(f"{bare!r} is not a gMSA account name")

    @classmethod
    def parse(cls, text: str) -> GmsaName:
        """``webapp01``, ``webapp01$`` or `` webapp01$ `` -> ``GmsaName("webapp01")``."""
        bare = text.strip().removesuffix("$")
        if not bare or any(ord(c) < 0x20 for c in bare):
            raise InvalidRequestError(f"{text!r} is not a gMSA account name")
        return cls(bare)

    @property
    def sam(self) -> str:
        """The sAMAccountName: ``webapp01$``."""
        return self.bare + "$"

    @property
    def key(self) -> str:
        """The name as AD compares it (case-insensitively), for lookups and matching."""
        return self.bare.casefold()

    def __str__(self) -> str:
        return self.bare


@dataclass(frozen=True)
class Ownership:
    """Owner, group and mode for a secret file; ``None`` keeps the daemon's own uid/gid.

    The mode is checked as if world-readable modes were allowed: whether they are is the
    daemon's configuration, applied where a request or a setting is parsed.
    """

    uid: int | None = None
    gid: int | None = None
    mode: int = 0o600

    def __post_init__(self) -> None:
        if self.uid is not None:
            check_id(self.uid, "uid")
        if self.gid is not None:
            check_id(self.gid, "gid")
        check_mode(self.mode, allow_world_readable=True)

    @property
    def expected_uid(self) -> int:
        """The owner a file written with this ownership has."""
        return os.geteuid() if self.uid is None else self.uid
