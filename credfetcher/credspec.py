"""Credential spec parsing: the JSON Windows' ``New-CredentialSpec`` writes.

Pure code, no I/O. credfetcher reads what credentials-fetcher reads:

* ``DomainJoinConfig.DnsName`` — the AD domain (DNS form, RFC 1035 labels);
* the first non-empty ``ActiveDirectoryConfig.GroupManagedServiceAccounts[].Name`` — the gMSA;
* ``ActiveDirectoryConfig.HostAccountConfig.PluginInput.CredentialArn`` — optional, for the
  domainless and ARN modes (``PluginInput`` is an object, or a JSON string in older specs).

Everything else (Sid, MachineAccountName, Guid, NetBiosName, Scope, CmsPlugins) is carried in the
lease metadata but not used. Names are checked against Active Directory's rules for
sAMAccountName (MS-ADTS 3.1.1.5.2.2: no ``"/\\[]:;|=,+*?<>`` and no control characters; at most 15
characters before ``$`` for computer-class accounts such as gMSAs), which also rules out
anything that could act as a path component (``..``, separators, NUL) when the name becomes a
directory under krbdir.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from credfetcher.errors import CredspecError

MAX_CREDSPEC_BYTES = 64 * 1024
MAX_GMSA_NAME = 15
MAX_DOMAIN_NAME = 253

_SAM_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f"/\\\[\]:;|=,+*?<>@]')
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Credspec:
    """The parts of one credential spec that credfetcher acts on."""

    gmsa_name: str
    """The gMSA's name without the trailing ``$`` (its sAMAccountName is ``gmsa_name + '$'``)."""
    domain: str
    """The AD domain in lower-case DNS form, e.g. ``corp.example.com``."""
    netbios_name: str | None
    credential_arn: str | None
    raw: str
    """The credspec text as received, kept for the lease metadata (it holds no secret)."""

    @property
    def realm(self) -> str:
        """The Kerberos realm: the domain's DNS name upper-cased (AD's convention)."""
        return self.domain.upper()


def validate_gmsa_name(name: str) -> str:
    """Return ``name`` without a trailing ``$`` if it is a valid gMSA name, else raise."""
    bare = name[:-1] if name.endswith("$") else name
    if not bare:
        raise CredspecError("gMSA name is empty", field="GroupManagedServiceAccounts[].Name")
    if len(bare) > MAX_GMSA_NAME:
        raise CredspecError(
            f"gMSA name {bare[:40]!r} is longer than {MAX_GMSA_NAME} characters "
            "(AD's limit for service account names)",
            field="GroupManagedServiceAccounts[].Name",
        )
    try:
        # A lone surrogate (a JSON "\ud800" escape) is no Unicode text: LDAP (UTF-8, RFC 4511
        # 4.1.2) and the file system cannot carry it.
        bare.encode("utf-8")
    except UnicodeEncodeError:
        raise CredspecError(
            f"gMSA name {bare!r} is not valid Unicode (it holds a lone UTF-16 surrogate)",
            field="GroupManagedServiceAccounts[].Name",
        ) from None
    if _SAM_FORBIDDEN.search(bare) or bare.strip(". ") == "" or bare != bare.strip():
        raise CredspecError(
            f"gMSA name {bare!r} contains characters Active Directory does not allow "
            '(control characters, spaces at the ends, only dots, or one of "/\\[]:;|=,+*?<>@)',
            field="GroupManagedServiceAccounts[].Name",
        )
    return bare


def validate_domain(domain: str) -> str:
    """Return ``domain`` lower-cased if it is a valid DNS domain name, else raise."""
    name = domain.rstrip(".") if domain.endswith(".") and not domain.endswith("..") else domain
    if not name or len(name) > MAX_DOMAIN_NAME:
        raise CredspecError(
            f"domain name {domain[:80]!r} is empty or longer than {MAX_DOMAIN_NAME} characters",
            field="DomainJoinConfig.DnsName",
        )
    if not all(_DNS_LABEL.match(label) for label in name.split(".")):
        raise CredspecError(
            f"domain name {domain[:80]!r} is not a DNS name (letters, digits and '-' in "
            "dot-separated labels of at most 63 characters)",
            field="DomainJoinConfig.DnsName",
        )
    return name.lower()


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CredspecError(f"credspec field {path} must be a JSON object", field=path)
    return value


def _optional_str(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CredspecError(f"credspec field {path} must be a string", field=path)
    return value


def _credential_arn(ad: dict[str, Any]) -> str | None:
    host = ad.get("HostAccountConfig")
    if host is None:
        return None
    host = _object(host, "ActiveDirectoryConfig.HostAccountConfig")
    plugin_input = host.get("PluginInput")
    if plugin_input is None:
        return None
    if isinstance(plugin_input, str):
        # Older specs carry PluginInput as a JSON document inside a string.
        try:
            plugin_input = json.loads(plugin_input)
        except json.JSONDecodeError as exc:
            raise CredspecError(
                "credspec field ActiveDirectoryConfig.HostAccountConfig.PluginInput is a string "
                f"but not JSON: {exc.msg}",
                field="ActiveDirectoryConfig.HostAccountConfig.PluginInput",
            ) from exc
    plugin = _object(plugin_input, "ActiveDirectoryConfig.HostAccountConfig.PluginInput")
    return _optional_str(
        plugin.get("CredentialArn"),
        "ActiveDirectoryConfig.HostAccountConfig.PluginInput.CredentialArn",
    )


def parse_credspec(text: str | bytes) -> Credspec:
    """Parse one credential spec; raise :class:`CredspecError` naming the bad or missing field."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_CREDSPEC_BYTES:
        raise CredspecError(
            f"credspec is {size} bytes; at most {MAX_CREDSPEC_BYTES} are accepted", field=None
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CredspecError(f"credspec is not UTF-8: {exc.reason}") from exc
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise CredspecError(f"credspec is not valid JSON: {detail}") from exc
    doc = _object(doc, "(top level)")

    join = _object(doc.get("DomainJoinConfig"), "DomainJoinConfig")
    dns_name = join.get("DnsName")
    if not isinstance(dns_name, str) or not dns_name:
        raise CredspecError(
            "credspec has no DomainJoinConfig.DnsName (the AD domain)",
            field="DomainJoinConfig.DnsName",
        )
    domain = validate_domain(dns_name)
    netbios = _optional_str(join.get("NetBiosName"), "DomainJoinConfig.NetBiosName")

    ad = _object(doc.get("ActiveDirectoryConfig"), "ActiveDirectoryConfig")
    accounts = ad.get("GroupManagedServiceAccounts")
    if not isinstance(accounts, list):
        raise CredspecError(
            "credspec has no ActiveDirectoryConfig.GroupManagedServiceAccounts list",
            field="ActiveDirectoryConfig.GroupManagedServiceAccounts",
        )
    name: str | None = None
    for i, account in enumerate(accounts):
        entry = _object(account, f"ActiveDirectoryConfig.GroupManagedServiceAccounts[{i}]")
        candidate = _optional_str(
            entry.get("Name"), f"ActiveDirectoryConfig.GroupManagedServiceAccounts[{i}].Name"
        )
        if candidate:
            name = candidate
            break
    if name is None:
        raise CredspecError(
            "credspec names no gMSA (every GroupManagedServiceAccounts[].Name is empty)",
            field="ActiveDirectoryConfig.GroupManagedServiceAccounts[].Name",
        )
    return Credspec(
        gmsa_name=validate_gmsa_name(name),
        domain=domain,
        netbios_name=netbios,
        credential_arn=_credential_arn(ad),
        raw=text,
    )


def make_credspec(gmsa_name: str, domain: str, netbios_name: str | None = None) -> str:
    """A minimal credspec in New-CredentialSpec's shape, for tests, the demo and the CLI."""
    netbios = netbios_name or domain.split(".", maxsplit=1)[0].upper()
    return json.dumps(
        {
            "CmsPlugins": ["ActiveDirectory"],
            "DomainJoinConfig": {
                "Sid": "S-1-5-21-0-0-0",
                "MachineAccountName": gmsa_name,
                "Guid": "00000000-0000-0000-0000-000000000000",
                "DnsTreeName": domain,
                "DnsName": domain,
                "NetBiosName": netbios,
            },
            "ActiveDirectoryConfig": {
                "GroupManagedServiceAccounts": [
                    {"Name": gmsa_name, "Scope": domain},
                    {"Name": gmsa_name, "Scope": netbios},
                ]
            },
        }
    )
