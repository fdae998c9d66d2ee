"""Credspec parsing: the real New-CredentialSpec shape, clear errors, and no path tricks."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credfetcher.credspec import (
    MAX_CREDSPEC_BYTES,
    make_credspec,
    parse_credspec,
    validate_domain,
    validate_gmsa_name,
)
from credfetcher.errors import CredspecError

# The blog's example, as New-CredentialSpec writes it.
BLOG_SPEC = json.dumps(
    {
        "CmsPlugins": ["ActiveDirectory"],
        "DomainJoinConfig": {
            "Sid": "S-1-5-21-1445507628-2856671781-3529916291",
            "MachineAccountName": "gmsamachines",
            "Guid": "af602f85-d754-4eea-9fa8-fd76810485f1",
            "DnsTreeName": "corp.example.com",
            "DnsName": "corp.example.com",
            "NetBiosName": "DEMOCORP",
        },
        "ActiveDirectoryConfig": {
            "GroupManagedServiceAccounts": [
                {"Name": "gmsamachines", "Scope": "corp.example.com"},
                {"Name": "gmsamachines", "Scope": "DEMOCORP"},
            ]
        },
    }
)


def test_blog_credspec() -> None:
    spec = parse_credspec(BLOG_SPEC)
    assert spec.gmsa_name == "gmsamachines"
    assert spec.domain == "corp.example.com"
    assert spec.realm == "CORP.EXAMPLE.COM"
    assert spec.netbios_name == "DEMOCORP"
    assert spec.credential_arn is None


def test_first_non_empty_name_wins_and_dollar_is_dropped() -> None:
    doc = json.loads(BLOG_SPEC)
    doc["ActiveDirectoryConfig"]["GroupManagedServiceAccounts"] = [
        {"Name": "", "Scope": "x"},
        {"Name": "WebApp01$", "Scope": "corp.example.com"},
    ]
    assert parse_credspec(json.dumps(doc)).gmsa_name == "WebApp01"


@pytest.mark.parametrize("as_string", [False, True])
def test_credential_arn(as_string: bool) -> None:
    doc = json.loads(BLOG_SPEC)
    plugin = {"CredentialArn": "arn:aws:secretsmanager:us-west-2:123:secret:gmsa-user"}
    doc["ActiveDirectoryConfig"]["HostAccountConfig"] = {
        "PortableCcgVersion": "1",
        "PluginGUID": "{859E1386-BDB4-49E8-85C7-3070B13920E1}",
        "PluginInput": json.dumps(plugin) if as_string else plugin,
    }
    assert parse_credspec(json.dumps(doc)).credential_arn == plugin["CredentialArn"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"ActiveDirectoryConfig": {}}', "DomainJoinConfig"),
        ('{"DomainJoinConfig": {"DnsName": "a.b"}}', "ActiveDirectoryConfig"),
        (
            '{"DomainJoinConfig": {"DnsName": "a.b"}, "ActiveDirectoryConfig": {}}',
            "GroupManagedServiceAccounts",
        ),
        (
            '{"DomainJoinConfig": {"DnsName": "a.b"}, '
            '"ActiveDirectoryConfig": {"GroupManagedServiceAccounts": [{"Name": ""}]}}',
            "names no gMSA",
        ),
        (make_credspec("../x", "corp.example.com"), "not allow"),
        (make_credspec("a/b", "corp.example.com"), "not allow"),
        (make_credspec("..", "corp.example.com"), "not allow"),
        (make_credspec("abc\x00", "corp.example.com"), "not allow"),
        (make_credspec("a" * 16, "corp.example.com"), "longer than 15"),
        (make_credspec("web", "corp..example.com"), "not a DNS name"),
        (make_credspec("web", "../etc"), "not a DNS name"),
        ("[" * 100_000 + "]" * 100_000, "at most"),
    ],
)
def test_rejections_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(CredspecError) as info:
        parse_credspec(text)
    assert needle in str(info.value)


def test_one_mebibyte_credspec_is_refused_before_parsing() -> None:
    doc = json.loads(BLOG_SPEC)
    doc["Padding"] = "x" * (1 << 20)
    with pytest.raises(CredspecError, match=f"at most {MAX_CREDSPEC_BYTES}"):
        parse_credspec(json.dumps(doc))


def test_deep_nesting_under_the_limit_is_a_clean_error() -> None:
    with pytest.raises(CredspecError):
        parse_credspec("[" * 30_000 + "]" * 30_000)


@given(st.text(max_size=40))
def test_gmsa_names_never_become_paths(name: str) -> None:
    try:
        bare = validate_gmsa_name(name)
    except CredspecError:
        return
    assert "/" not in bare
    assert "\\" not in bare
    assert "\x00" not in bare
    assert bare not in {".", ".."}
    assert 0 < len(bare) <= 15


@given(st.text(max_size=300))
def test_domains_are_dns_names_or_rejected(domain: str) -> None:
    try:
        clean = validate_domain(domain)
    except CredspecError:
        return
    assert clean == clean.lower()
    assert all(0 < len(label) <= 63 for label in clean.split("."))
    assert "/" not in clean
    assert ".." not in clean


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_any_json_parses_or_raises_credspec_error(value: object) -> None:
    with contextlib.suppress(CredspecError):
        parse_credspec(json.dumps(value))


def test_make_credspec_roundtrip() -> None:
    spec = parse_credspec(make_credspec("webapp01", "CREDFETCHER.TEST"))
    assert (spec.gmsa_name, spec.domain) == ("webapp01", "credfetcher.test")
