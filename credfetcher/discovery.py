"""Find the domain controllers: an explicit list from the configuration, or DNS SRV records.

An Active Directory DC registers ``_ldap._tcp.dc._msdcs.<DNS domain>`` (MS-ADTS 6.3.6 / MS-ADTS
6.3.2.3, "DC locator"); the records are ordered as RFC 2782 prescribes: lowest priority first,
and within one priority a weighted random choice so that load spreads as the domain's
administrators asked. An explicit list (``domain_controllers`` in the configuration) overrides
discovery and keeps its order: the operator chose it.

Entries of such a list are plain host names (``dc1.example.com``), ``host:port``, or LDAP URLs
(``ldap://dc1.example.com``, ``ldaps://dc1.example.com:636``, RFC 4516 without DN or filter); an
IPv6 literal goes in brackets (``[2001:db8::1]:636``, RFC 3986 3.2.2). Note that Kerberos needs the
DC's host name (its SPN is ``ldap/<fqdn>``): an IP literal only works with a matching SPN.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import dns.resolver

from credfetcher import errors

__all__ = [
    "DomainController",
    "SrvRecord",
    "discover_dcs",
    "order_srv_records",
    "parse_dc_list",
    "srv_name",
]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class SrvRecord:
    """The fields of an SRV record (RFC 2782) that ordering needs; ``target`` has no final dot."""

    priority: int
    weight: int
    port: int
    target: str


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


def order_srv_records(
    records: Iterable[SrvRecord], *, rng: random.Random | None = None
) -> list[SrvRecord]:
    """Order SRV records as RFC 2782 ("Usage rules") says.

    Lowest priority first. Within one priority, repeatedly pick a record at random with
    probability proportional to its weight: put the zero-weight records first, sum the weights,
    draw a number in [0, sum] and take the first record whose running sum reaches it. A lone
    target of "." means "service decidedly not available" and yields nothing.
    """
    draw = rng if rng is not None else random.SystemRandom()
    usable = [r for r in records if r.target not in ("", ".")]
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in usable}):
        group = [r for r in usable if r.priority == priority]
        # Zero weights first, as the RFC asks, so they keep a small chance of selection.
        group.sort(key=lambda r: r.weight != 0)
        while group:
            total = sum(r.weight for r in group)
            threshold = draw.randint(0, total)
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= threshold:
                    ordered.append(group.pop(index))
                    break
    return ordered


def srv_name(domain: str) -> str:
    """The DC locator name for ``domain``: ``_ldap._tcp.dc._msdcs.<domain>`` (MS-ADTS 6.3.6)."""
    return f"_ldap._tcp.dc._msdcs.{domain.strip().rstrip('.').lower()}"


def _to_dc(record: SrvRecord) -> DomainController:
    # AD always publishes 389 here; keep the default port implicit so the transport (sealed LDAP
    # or LDAPS on 636) picks its own. A non-standard port can only mean plain/sealed LDAP.
    if record.port == 389:
        return DomainController(host=record.target.lower())
    return DomainController(host=record.target.lower(), port=record.port, scheme="ldap")


def discover_dcs(
    domain: str,
    *,
    nameservers: Sequence[str] | None = None,
    timeout: float,
    rng: random.Random | None = None,
) -> list[DomainController]:
    """Look up the domain's DCs in DNS and return them in RFC 2782 order.

    ``nameservers`` (IP addresses) replaces the system resolver configuration; ``timeout`` bounds
    the whole lookup, retries included. Raises :class:`~credfetcher.errors.DCUnavailableError`
    when DNS has no usable answer, telling the operator to fix DNS or list the DCs explicitly.
    """
    qname = srv_name(domain)
    try:
        resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = list(nameservers)
        answer = resolver.resolve(qname, "SRV", lifetime=timeout, search=False)
    except dns.resolver.NXDOMAIN:
        reason = "the name does not exist (NXDOMAIN)"
    except dns.resolver.NoAnswer:
        reason = "the name has no SRV records"
    except dns.resolver.NoNameservers as exc:
        reason = f"no name server could answer ({exc})"
    except dns.exception.Timeout:
        reason = f"no answer within {timeout:g} s"
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        records = [
            SrvRecord(
                priority=int(rr.priority),
                weight=int(rr.weight),
                port=int(rr.port),
                target=rr.target.to_text(omit_final_dot=True),
            )
            for rr in answer
        ]
        dcs = [_to_dc(r) for r in order_srv_records(records, rng=rng)]
        if dcs:
            log.debug("discovered domain controllers",
                      extra={"srv": qname, "dcs": [str(d) for d in dcs]})
            return dcs
        reason = "every SRV record says the service is not available ('.')"
    where = ", ".join(nameservers) if nameservers else "the system resolver"
    raise errors.DCUnavailableError(
        f"cannot discover domain controllers for {domain}: DNS SRV lookup of {qname} via {where} "
        f"failed: {reason}. Fix DNS for the domain, or list the DCs in the configuration "
        "(domain_controllers).",
        attempts=[(f"DNS {qname}", reason)],
    )
