"""Configuration: parsed once (flags > environment > TOML file > defaults) into a frozen object.

Every setting is declared once in :data:`SETTINGS` with its environment name (the first four are
credentials-fetcher's own: ``CF_KRB_DIR``, ``CF_UNIX_DOMAIN_SOCKET_DIR``, ``CF_CRED_SPEC_FILE``,
``CF_GMSA_OU``), its TOML key (the lower-case name, e.g. ``krb_dir``), its command-line flag and
its parser. Nothing deeper in the code reads the environment or the file again: it receives the
:class:`Config` (or a part of it) and nothing else, so there is one fallback for each setting.
``KRB5_CONFIG`` is left to libkrb5, which reads it itself.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from credfetcher.errors import ConfigError, InvalidRequestError
from credfetcher.names import (
    DomainController,
    Transport,
    machine_principal,
    parse_dc_list,
)
from credfetcher.values import LeaseId, check_id, check_mode

DEFAULT_CONFIG_FILE = Path("/etc/credfetcher/credfetcher.toml")
SOCKET_NAME = "credentials_fetcher.sock"


@dataclass(frozen=True)
class CredSpecFile:
    """``CF_CRED_SPEC_FILE=path[:lease_id]``: a lease created (or refreshed) at start-up."""

    path: Path
    lease_id: str = "credspec"


@dataclass(frozen=True)
class Config:
    """The daemon's whole configuration. Secrets: none (domainless passwords come per request)."""

    krb_dir: Path = Path("/var/credentials-fetcher/krbdir")
    socket_dir: Path = Path("/var/credentials-fetcher/socket")
    socket_group: str | None = None
    socket_mode: int = 0o660
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    peer_max_connections: int = 256
    peer_max_per_uid: int = 64
    peer_max_refused: int = 8
    peer_idle_timeout: int = 600
    cred_spec_file: CredSpecFile | None = None
    gmsa_ou: str | None = None
    domain_controllers: tuple[DomainController, ...] = ()
    dns_nameservers: tuple[str, ...] = ()
    machine_keytab: Path = Path("/etc/krb5.keytab")
    machine_principal: str | None = None
    ldap_transport: Transport = Transport.AUTO
    ldap_ca_file: Path | None = None
    ldap_tls_verify: bool = True
    ldap_timeout: float = 5.0
    ccache_owner: int | None = None
    ccache_group: int | None = None
    ccache_mode: int = 0o600
    allow_world_readable: bool = False
    write_keytab: bool = False
    enable_rc4: bool = False
    ticket_lifetime: int = 10 * 3600
    renew_lifetime: int = 7 * 24 * 3600
    renew_margin: int = 2 * 3600
    orphan_after: int = 7 * 24 * 3600
    rejected_password_retry: int = 1860
    rpc_threads: int = 64
    log_level: str = "INFO"
    aws_sm_secret_name: str | None = None
    aws_sm_refresh: float = 600.0
    aws_endpoint_url: str | None = None
    metrics_address: str | None = None
    config_file: Path | None = field(default=None, compare=False)

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / SOCKET_NAME

    def machine_principal_for(self, realm: str) -> str:
        """``NAME$@REALM`` for the host: configured, or the short host name (AD's 15-char rule)."""
        return machine_principal(self.machine_principal, realm, socket.gethostname())


def _path(value: str) -> Path:
    if not value:
        raise ValueError("must not be empty")
    return Path(value)


def _opt_str(value: str) -> str | None:
    return value or None


UNIX_PREFIX = "unix:"


@dataclass(frozen=True)
class MetricsAddress:
    """Where to serve: a loopback ``host``/``port``, or a Unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{UNIX_PREFIX}{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_metrics_address(text: str) -> MetricsAddress:
    """``unix:/abs/path``, or ``HOST:PORT`` where HOST is a loopback address or ``localhost``.

    Anything else raises ValueError saying what is wrong.
    """
    text = text.strip()
    if text.startswith(UNIX_PREFIX):
        path = Path(text[len(UNIX_PREFIX) :])
        if not path.is_absolute():
            raise ValueError(f"{text!r}: a Unix socket path must be absolute")
        return MetricsAddress(path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (a loopback address) or unix:/path")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"{text!r}: serve metrics on a loopback address (127.0.0.1, ::1, localhost) "
                "or a Unix socket only"
            )
    return MetricsAddress(host=host, port=int(port_text))


def _metrics_address(value: str) -> str | None:
    # Checked here so a public address is refused at start-up, not when the daemon binds it.
    return str(parse_metrics_address(value)) if value.strip() else None


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _positive_int(value: str) -> int:
    number = int(value, 10)
    if number <= 0:
        raise ValueError(f"{value!r} must be a positive number of seconds")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value!r} must be positive")
    return number


def _mode(value: str) -> int:
    # World-readable modes depend on CF_ALLOW_WORLD_READABLE, checked once every setting is read.
    try:
        return check_mode(int(value, 8), allow_world_readable=True)
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from None


def _numeric_id(value: str, what: str) -> int:
    try:
        return check_id(int(value), what)
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from None


def _uid(value: str) -> int | None:
    if value == "":
        return None
    if value.isdigit():
        return _numeric_id(value, "uid")
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ValueError(f"no such user {value!r}") from None


def _gid(value: str) -> int | None:
    if value == "":
        return None
    if value.isdigit():
        return _numeric_id(value, "gid")
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValueError(f"no such group {value!r}") from None


def _id_list(value: str) -> tuple[int, ...]:
    ids = tuple(int(part, 10) for part in _str_list(value))
    if any(not 0 <= i < 2**32 - 1 for i in ids):
        raise ValueError(f"{value!r} holds an id out of range")
    return ids


def _str_list(value: str) -> tuple[str, ...]:
    return tuple(part for part in re.split(r"[,\s]+", value.strip()) if part)


def _transport(value: str) -> Transport:
    try:
        return Transport(value.strip().lower())
    except ValueError:
        choices = "|".join(t.value for t in Transport)
        raise ValueError(f"{value!r} is not one of {choices}") from None


def _cred_spec_file(value: str) -> CredSpecFile | None:
    if not value:
        return None
    path, sep, lease_id = value.rpartition(":")
    if not sep or "/" in lease_id or not path:
        return CredSpecFile(Path(value))
    try:
        return CredSpecFile(Path(path), LeaseId(lease_id))
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from None


def _endpoint_url(value: str) -> str | None:
    if not value:
        return None
    if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError(f"{value!r} is not DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    parse: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("krb_dir", "CF_KRB_DIR", _path, "lease directories are created here"),
    Setting("socket_dir", "CF_UNIX_DOMAIN_SOCKET_DIR", _path, f"{SOCKET_NAME} is created here"),
    Setting("socket_group", "CF_SOCKET_GROUP", _opt_str, "group owning the socket (mode 0660)"),
    Setting(
        "allowed_uids",
        "CF_ALLOWED_UIDS",
        _id_list,
        "uids allowed to call, checked with SO_PEERCRED (root always; empty: no check)",
    ),
    Setting(
        "allowed_gids",
        "CF_ALLOWED_GIDS",
        _id_list,
        "primary gids allowed to call, checked with SO_PEERCRED (empty: no check)",
    ),
    Setting(
        "peer_max_connections",
        "CF_PEER_MAX_CONNECTIONS",
        _positive_int,
        "with an allow-list: connections relayed at once, all uids but root together",
    ),
    Setting(
        "peer_max_per_uid",
        "CF_PEER_MAX_PER_UID",
        _positive_int,
        "with an allow-list: connections relayed at once from one uid (root: no cap)",
    ),
    Setting(
        "peer_max_refused",
        "CF_PEER_MAX_REFUSED",
        _positive_int,
        "with an allow-list: refused callers answered PERMISSION_DENIED at once; more are "
        "closed unanswered",
    ),
    Setting(
        "peer_idle_timeout",
        "CF_PEER_IDLE_TIMEOUT",
        _positive_int,
        "with an allow-list: close a connection idle this long (s); gRPC clients reconnect",
    ),
    Setting(
        "cred_spec_file",
        "CF_CRED_SPEC_FILE",
        _cred_spec_file,
        "path[:lease_id] of a credspec leased at start-up (lease id default 'credspec')",
    ),
    Setting("gmsa_ou", "CF_GMSA_OU", _opt_str, "search base for gMSAs (default: domain root)"),
    Setting(
        "domain_controllers",
        "CF_DOMAIN_CONTROLLERS",
        parse_dc_list,
        "comma list of DC host names or ldap://, ldaps:// URLs (empty: DNS SRV discovery)",
    ),
    Setting("dns_nameservers", "CF_DNS_NAMESERVERS", _str_list, "DNS servers for DC discovery"),
    Setting("machine_keytab", "CF_MACHINE_KEYTAB", _path, "the host's keytab"),
    Setting(
        "machine_principal",
        "CF_MACHINE_PRINCIPAL",
        _opt_str,
        "NAME$ or NAME$@REALM (default: short host name, upper-cased, + $)",
    ),
    Setting("ldap_transport", "CF_LDAP_TRANSPORT", _transport, "auto | ldaps | ldap-seal"),
    Setting("ldap_ca_file", "CF_LDAP_CA_FILE", _path, "CA bundle for LDAPS"),
    Setting("ldap_tls_verify", "CF_LDAP_TLS_VERIFY", _bool, "verify LDAPS certificates"),
    Setting("ldap_timeout", "CF_LDAP_TIMEOUT", _positive_float, "seconds per LDAP operation"),
    Setting("ccache_owner", "CF_CCACHE_OWNER", _uid, "user owning each krb5cc (name or uid)"),
    Setting("ccache_group", "CF_CCACHE_GROUP", _gid, "group owning each krb5cc (name or gid)"),
    Setting("ccache_mode", "CF_CCACHE_MODE", _mode, "octal mode of each krb5cc, e.g. 0640"),
    Setting(
        "allow_world_readable",
        "CF_ALLOW_WORLD_READABLE",
        _bool,
        "allow ccache/keytab modes readable by every host user (e.g. 0644); logged when used",
    ),
    Setting("write_keytab", "CF_WRITE_KEYTAB", _bool, "also write krb5.keytab beside krb5cc"),
    Setting("enable_rc4", "CF_ENABLE_RC4", _bool, "add deprecated RC4-HMAC keys to keytabs"),
    Setting("ticket_lifetime", "CF_TICKET_LIFETIME", _positive_int, "requested TGT lifetime (s)"),
    Setting("renew_lifetime", "CF_RENEW_LIFETIME", _positive_int, "requested renewable life (s)"),
    Setting(
        "renew_margin",
        "CF_RENEW_MARGIN",
        _positive_int,
        "renew when less than this much life remains (s; half the life if over 90 % of it)",
    ),
    Setting(
        "orphan_after",
        "CF_ORPHAN_AFTER",
        _positive_int,
        "remove a lease that could not be renewed this long past its renew-until (s)",
    ),
    Setting(
        "rejected_password_retry",
        "CF_REJECTED_PASSWORD_RETRY",
        _positive_int,
        "retry a domainless password the DC refused no sooner than this (s; see below)",
    ),
    Setting("rpc_threads", "CF_RPC_THREADS", _positive_int, "concurrent RPC worker threads"),
    Setting("log_level", "CF_LOG_LEVEL", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    Setting(
        "aws_sm_secret_name",
        "CF_AWS_SM_SECRET_NAME",
        _opt_str,
        "Secrets Manager secret with the daemon-wide domainless identity",
    ),
    Setting(
        "aws_sm_refresh",
        "CF_AWS_SM_REFRESH",
        _positive_float,
        "re-read CF_AWS_SM_SECRET_NAME this often (s); every 30 s while its leases fail",
    ),
    Setting(
        "aws_endpoint_url",
        "CF_AWS_ENDPOINT_URL",
        _endpoint_url,
        "http(s) URL for S3, STS and Secrets Manager instead of AWS's (a local emulator in tests)",
    ),
    Setting(
        "metrics_address",
        "CF_METRICS_ADDRESS",
        _metrics_address,
        "serve Prometheus metrics on a loopback HOST:PORT or unix:/path (default: off)",
    ),
)
_BY_NAME = {s.name: s for s in SETTINGS}


def _toml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def load_config(
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Config:
    """Build the :class:`Config`; raise :class:`ConfigError` naming the first bad setting.

    ``flags`` maps setting names to command-line values (None = not given). The TOML file is
    ``config_file`` or ``/etc/credfetcher/credfetcher.toml`` when that exists.
    """
    environ = os.environ if environ is None else environ
    flags = flags or {}
    file_values: dict[str, Any] = {}
    path = config_file
    if path is None and DEFAULT_CONFIG_FILE.exists():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        try:
            with path.open("rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", setting="config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", setting="config") from exc
        unknown = sorted(set(file_values) - set(_BY_NAME))
        if unknown:
            raise ConfigError(
                f"{path}: unknown setting(s) {', '.join(unknown)}", setting=unknown[0]
            )

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        source: str | None = None
        raw: str | None = None
        if flags.get(setting.name) is not None:
            raw, source = flags[setting.name], setting.flag
        elif setting.env in environ:
            raw, source = environ[setting.env], setting.env
        elif setting.name in file_values:
            raw, source = _toml_text(file_values[setting.name]), f"{path}: {setting.name}"
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}", setting=setting.env) from exc
    config = Config(**values, config_file=path)
    _check_world_readable(config)
    if config.renew_lifetime < config.ticket_lifetime:
        raise ConfigError(
            "CF_RENEW_LIFETIME must be at least CF_TICKET_LIFETIME", setting="CF_RENEW_LIFETIME"
        )
    return config


def _check_world_readable(config: Config) -> None:
    try:
        check_mode(config.ccache_mode, allow_world_readable=config.allow_world_readable)
    except InvalidRequestError as exc:
        raise ConfigError(f"CF_CCACHE_MODE: {exc.message}", setting="CF_CCACHE_MODE") from None


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(env name, TOML key, value) rows for ``credfetcherd --check-config``; nothing secret here."""
    rows = []
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    for setting in SETTINGS:
        value = values[setting.name]
        if isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, Transport):
            text = value.value
        elif isinstance(value, CredSpecFile):
            text = f"{value.path}:{value.lease_id}"
        elif setting.name in {"ccache_mode", "socket_mode"}:
            text = f"0{value:o}"
        elif value is None:
            text = ""
        else:
            text = str(value)
        rows.append((setting.env, setting.name, text))
    return rows
