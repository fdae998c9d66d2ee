"""Names the daemon is configured with, parsed once and loading no network library: the domain
controllers of ``CF_DOMAIN_CONTROLLERS``, the LDAP transport, and named lease ids.

The store, the configuration and the CLI import these; the LDAP (:mod:`credfetcher.directory`)
and DNS (:mod:`credfetcher.discovery`) modules use them, so only the daemon pays for ldap3 and
dnspython.

Entries of a DC list are plain host names (``dc1.example.com``), ``host:port``, or LDAP URLs
(``ldap://dc1.example.com``, ``ldaps://dc1.example.com:636``, RFC 4516 without DN or filter); an
IPv6 literal goes in brackets (``[2001:db8::1]:636``, RFC 3986 3.2.2).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from credfetcher import errors

__all__ = [
    "DomainController",
    "Scheme",
    "Transport",
    "default_machine_principal",
    "machine_principal",
    "parse_dc_entry",
    "parse_dc_list",
    "principal_realm",
]

# NetBIOS computer names are at most 15 characters (MS-NBTE / MS-ADTS 3.1.1.5.2.8, the
# sAMAccountName of a computer is that name plus "$").
NETBIOS_MAX = 15


class Transport(enum.Enum):
    """How to protect the LDAP connection (see :mod:`credfetcher.directory`)."""

    AUTO = "auto"
    LDAPS = "ldaps"
    LDAP_SEAL = "ldap-seal"


Scheme = Literal["ldap", "ldaps"]

# RFC 1123 host names (labels of letters, digits, hyphens; underscores tolerated because some
# sites use them in internal names). Length limits are checked separately.
_HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                      r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
_URL_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>[^/?#]*)/?$")
_SPLIT_RE = re.compile(r"[\s,;]+")


@dataclass(frozen=True)
class DomainController:
    """One DC to try; ``port`` and ``scheme`` are None when the transport decides them."""

    host: str
    port: int | None = None
    scheme: Scheme | None = None

    @property
    def label(self) -> str:
        """The DC as written in messages and metrics (``ldaps://dc1.example.com:636``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port is None else f"{host}:{self.port}"
        return text if self.scheme is None else f"{self.scheme}://{text}"

    def __str__(self) -> str:
        return self.label



def _bad(entry: str, why: str, setting: str) -> errors.ConfigError:
    return errors.ConfigError(
        f"invalid domain controller {entry!r} in {setting}: {why}. Use a host name, host:port, "
        "ldap://host[:port], ldaps://host[:port], or [IPv6]:port.",
        setting=setting,
    )


def _parse_port(text: str, entry: str, setting: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _bad(entry, f"port {text!r} is not a number from 1 to 65535", setting)
    return int(text)


def _parse_hostport(text: str, entry: str, setting: str) -> tuple[str, int | None]:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _bad(entry, "unclosed '[' around an IPv6 address", setting)
        host, rest = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise _bad(entry, f"{host!r} is not an IPv6 address", setting) from None
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise _bad(entry, "unexpected text after ']'", setting)
        return host, _parse_port(rest[1:], entry, setting)
    if text.count(":") > 1:
        # A bare IPv6 literal: no port can be attached without brackets (RFC 3986 3.2.2).
        try:
            ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            raise _bad(entry, "an IPv6 address with a port must be written [address]:port",
                       setting) from None
        return text, None
    host, sep, port_text = text.partition(":")
    port = _parse_port(port_text, entry, setting) if sep else None
    if not host or len(host) > 253 or not _HOST_RE.match(host):
        raise _bad(entry, f"{host!r} is not a valid host name", setting)
    return host.rstrip(".").lower(), port


def parse_dc_entry(entry: str, *, setting: str = "domain_controllers") -> DomainController:
    """Parse one entry of a DC list (see the module docstring for the accepted forms)."""
    text = entry.strip()
    scheme: Scheme | None = None
    match = _URL_RE.match(text)
    if match:
        raw_scheme = match.group("scheme").lower()
        if raw_scheme == "ldap":
            scheme = "ldap"
        elif raw_scheme == "ldaps":
            scheme = "ldaps"
        else:
            raise _bad(entry, f"scheme {raw_scheme!r} is not ldap or ldaps", setting)
        text = match.group("rest")
    elif "://" in text or "/" in text:
        raise _bad(entry, "a URL may hold only scheme, host and port", setting)
    if not text:
        raise _bad(entry, "no host", setting)
    host, port = _parse_hostport(text, entry, setting)
    return DomainController(host=host, port=port, scheme=scheme)


def parse_dc_list(
    text: str, *, setting: str = "domain_controllers"
) -> tuple[DomainController, ...]:
    """Parse a list of DCs separated by commas, semicolons or white space, keeping its order.

    Raises :class:`~credfetcher.errors.ConfigError` (naming ``setting``) on a malformed entry.
    Duplicates are dropped: trying a dead DC twice only doubles the wait.
    """
    result: list[DomainController] = []
    for entry in _SPLIT_RE.split(text.strip()):
        if not entry:
            continue
        dc = parse_dc_entry(entry, setting=setting)
        if dc not in result:
            result.append(dc)
    return tuple(result)


def default_machine_principal(hostname: str, realm: str) -> str:
    """The machine account principal AD gives a joined host: ``SHORTNAME$@REALM``.

    The short name is the first label of ``hostname``, upper-cased and cut to 15 characters, as
    the join tools do for the computer's sAMAccountName.
    """
    short = hostname.strip().split(".", 1)[0].upper()[:NETBIOS_MAX]
    if not short:
        raise errors.ConfigError("cannot derive the machine principal from an empty host name",
                                 setting="principal")
    if not realm.strip():
        raise errors.ConfigError("cannot derive the machine principal without a realm",
                                 setting="domain")
    return f"{short}$@{realm.strip().upper()}"


def machine_principal(configured: str | None, realm: str, hostname: str) -> str:
    """The host's principal for ``realm``: ``configured`` (``NAME$`` gets ``@REALM``), else
    :func:`default_machine_principal` of ``hostname``."""
    if configured is None:
        return default_machine_principal(hostname, realm)
    return configured if "@" in configured else f"{configured}@{realm.strip().upper()}"


def principal_realm(principal: str | None) -> str | None:
    """The realm of ``NAME@REALM``, or None when ``principal`` names none (``linuxhost01$``)."""
    if principal is None or "@" not in principal:
        return None
    return principal.rpartition("@")[2] or None
