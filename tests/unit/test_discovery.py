"""DC list parsing and RFC 2782 SRV ordering (no network)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import pytest

from credfetcher import errors
from credfetcher.discovery import (
    DomainController,
    SrvRecord,
    discover_dcs,
    order_srv_records,
    parse_dc_list,
    srv_name,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dc1.example.com", DomainController("dc1.example.com")),
        ("DC1.Example.COM.", DomainController("dc1.example.com")),
        ("dc1.example.com:3269", DomainController("dc1.example.com", 3269)),
        ("ldap://dc1.example.com", DomainController("dc1.example.com", None, "ldap")),
        ("ldaps://dc1.example.com:636/", DomainController("dc1.example.com", 636, "ldaps")),
        ("LDAPS://dc1.example.com", DomainController("dc1.example.com", None, "ldaps")),
        ("[2001:db8::1]", DomainController("2001:db8::1")),
        ("[2001:db8::1]:389", DomainController("2001:db8::1", 389)),
        ("ldaps://[2001:db8::1]:636", DomainController("2001:db8::1", 636, "ldaps")),
        ("2001:db8::1", DomainController("2001:db8::1")),
        ("192.0.2.7:389", DomainController("192.0.2.7", 389)),
    ],
)
def test_parse_dc_forms(text: str, expected: DomainController) -> None:
    assert parse_dc_list(text) == (expected,)


def test_parse_dc_list_separators_order_and_duplicates() -> None:
    dcs = parse_dc_list(" dc2.example.com, ldaps://dc1.example.com;dc3.example.com\n"
                        "dc2.example.com ")
    assert [dc.label for dc in dcs] == [
        "dc2.example.com",
        "ldaps://dc1.example.com",
        "dc3.example.com",
    ]
    assert parse_dc_list("  ") == ()


@pytest.mark.parametrize(
    "text",
    [
        "http://dc1.example.com",
        "ldap://dc1.example.com/dc=example",
        "dc1.example.com:0",
        "dc1.example.com:65536",
        "dc1.example.com:ldap",
        "[2001:db8::1",
        "[not-an-ip]:389",
        "[2001:db8::1]x",
        "2001:db8::zz:389",
        "bad_host!",
        "ldap://",
    ],
)
def test_parse_dc_list_rejects(text: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        parse_dc_list(text, setting="CF_DOMAIN_CONTROLLERS")
    assert info.value.setting == "CF_DOMAIN_CONTROLLERS"
    assert text in info.value.message


def test_label_round_trips() -> None:
    for text in ("ldaps://[2001:db8::1]:636", "ldap://dc1.example.com:389", "dc9.example.com"):
        assert parse_dc_list(parse_dc_list(text)[0].label)[0].label == text


def test_srv_order_priority_first() -> None:
    records = [
        SrvRecord(10, 100, 389, "c.example.com"),
        SrvRecord(0, 0, 389, "a.example.com"),
        SrvRecord(5, 50, 389, "b.example.com"),
    ]
    ordered = order_srv_records(records, rng=random.Random(1))
    assert [r.target for r in ordered] == ["a.example.com", "b.example.com", "c.example.com"]


def test_srv_order_weighted_random_follows_weights() -> None:
    records = [SrvRecord(0, 90, 389, "heavy"), SrvRecord(0, 10, 389, "light")]
    rng = random.Random(2782)
    firsts = Counter(order_srv_records(records, rng=rng)[0].target for _ in range(4000))
    assert 0.86 < firsts["heavy"] / 4000 < 0.94
    # Every ordering still holds every record exactly once.
    assert sorted(r.target for r in order_srv_records(records, rng=rng)) == ["heavy", "light"]


def test_srv_order_zero_weight_rarely_first_but_present() -> None:
    records = [SrvRecord(0, 0, 389, "zero"), SrvRecord(0, 100, 389, "hundred")]
    rng = random.Random(7)
    firsts = Counter(order_srv_records(records, rng=rng)[0].target for _ in range(2000))
    # RFC 2782: a zero-weight record is chosen first only when the draw is exactly 0.
    assert firsts["zero"] < 60
    assert firsts["hundred"] > 1900


def test_srv_order_drops_dot_target() -> None:
    assert order_srv_records([SrvRecord(0, 0, 0, ".")]) == []


class _FakeSrv:
    def __init__(self, priority: int, weight: int, port: int, target: str) -> None:
        self.priority = priority
        self.weight = weight
        self.port = port
        self.target = dns.name.from_text(target)


def test_discover_feeds_records_through_ordering(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Any, ...]] = []

    def resolve(self: dns.resolver.Resolver, qname: str, rdtype: str, **kw: Any) -> list[_FakeSrv]:
        asked.append((qname, rdtype, kw.get("lifetime"), list(self.nameservers)))
        return [
            _FakeSrv(1, 0, 389, "dc2.example.com."),
            _FakeSrv(0, 0, 389, "DC1.example.com."),
            _FakeSrv(0, 0, 3268, "gc.example.com."),
        ]

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", resolve)
    dcs = discover_dcs("Example.COM", nameservers=["192.0.2.53"], timeout=1.5,
                       rng=random.Random(0))
    assert asked == [("_ldap._tcp.dc._msdcs.example.com", "SRV", 1.5, ["192.0.2.53"])]
    assert set(dcs[:2]) == {DomainController("dc1.example.com"),
                            DomainController("gc.example.com", 3268, "ldap")}
    assert dcs[2] == DomainController("dc2.example.com")


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (dns.resolver.NXDOMAIN, "NXDOMAIN"),
        (dns.resolver.NoAnswer, "no SRV records"),
        (dns.exception.Timeout, "no answer within"),
    ],
)
def test_discover_errors_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, exc: type[Exception], words: str
) -> None:
    def resolve(self: dns.resolver.Resolver, *args: Any, **kw: Any) -> None:
        raise exc

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", resolve)
    with pytest.raises(errors.DCUnavailableError) as info:
        discover_dcs("example.com", nameservers=["192.0.2.53"], timeout=1.0)
    message = info.value.message
    assert words in message
    assert srv_name("example.com") in message
    assert "domain_controllers" in message
    assert info.value.attempts[0][0] == "DNS _ldap._tcp.dc._msdcs.example.com"
