"""The shipped default configuration names only real settings, and every setting is documented.

/etc/sysconfig/credfetcher and /etc/credfetcher/credfetcher.toml are all comments; uncommented, they
must load: credfetcher.config rejects an unknown TOML key, so a typo here would stop the daemon as
soon as an administrator enabled the line.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSCONFIG = REPO / "systemd" / "credfetcher.sysconfig"
TOML = REPO / "packaging" / "credfetcher.toml"


@pytest.fixture(scope="module")
def config() -> ModuleType:
    module: ModuleType = pytest.importorskip("credfetcher.config")
    return module


def sysconfig_names() -> list[str]:
    return re.findall(r"(?m)^#?([A-Z][A-Z0-9_]*)=", SYSCONFIG.read_text())


def uncommented_toml() -> dict[str, object]:
    text = re.sub(r"(?m)^#([a-z][a-z0-9_]* = )", r"\1", TOML.read_text())
    return tomllib.loads(text)


def test_sysconfig_lists_every_setting(config: ModuleType) -> None:
    known = {s.env for s in config.SETTINGS} | {"KRB5_CONFIG"}
    names = sysconfig_names()
    assert set(names) <= known
    assert set(names) == known  # nothing undocumented either
    assert len(names) == len(set(names))


def test_toml_lists_every_setting(config: ModuleType) -> None:
    keys = set(uncommented_toml())
    assert keys == {s.name for s in config.SETTINGS}


def test_uncommented_defaults_load(config: ModuleType, tmp_path: Path) -> None:
    """Every example value in the TOML file parses (users and groups excepted: host-specific)."""
    values = uncommented_toml()
    for host_specific in ("ccache_owner", "ccache_group", "socket_group", "cred_spec_file"):
        values.pop(host_specific)
    # JSON's strings, numbers, booleans and arrays are valid TOML values.
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "credfetcher.toml"
    path.write_text("\n".join(lines) + "\n")
    cfg = config.load_config(environ={}, config_file=path)
    assert str(cfg.krb_dir) == "/var/credentials-fetcher/krbdir"


def test_sysconfig_defaults_match_the_code(config: ModuleType) -> None:
    """The values shown as defaults in the environment file are what the code uses."""
    defaults = config.Config()
    shown = dict(re.findall(r"(?m)^#(CF_[A-Z0-9_]+)=(.*)$", SYSCONFIG.read_text()))
    assert shown["CF_KRB_DIR"] == str(defaults.krb_dir)
    assert shown["CF_UNIX_DOMAIN_SOCKET_DIR"] == str(defaults.socket_dir)
    assert shown["CF_MACHINE_KEYTAB"] == str(defaults.machine_keytab)
    assert shown["CF_CCACHE_MODE"] == f"0{defaults.ccache_mode:o}"
    assert int(shown["CF_TICKET_LIFETIME"]) == defaults.ticket_lifetime
    assert int(shown["CF_RENEW_LIFETIME"]) == defaults.renew_lifetime
    assert int(shown["CF_RENEW_MARGIN"]) == defaults.renew_margin
    assert int(shown["CF_RPC_THREADS"]) == defaults.rpc_threads
    assert shown["CF_LOG_LEVEL"] == defaults.log_level
