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

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver

from credfetcher import errors
from credfetcher.names import DomainController, parse_dc_entry, parse_dc_list

__all__ = [
    "DomainController",
    "SrvRecord",
    "discover_dcs",
    "order_srv_records",
    "parse_dc_entry",
    "parse_dc_list",
    "srv_name",
]

log = logging.getLogger(__name__)
@dataclass(frozen=True)
class SrvRecord:
    """The fields of an SRV record (RFC 2782) that ordering needs; ``target`` has no final dot."""

    priority: int
    weight: int
    port: int
    target: str



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
