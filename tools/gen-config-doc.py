"""Writes docs/configuration.md from credfetcher.config.SETTINGS (tests/unit/test_config_doc.py
fails when the committed file is stale): python tools/gen-config-doc.py [OUT]."""

from __future__ import annotations

import sys
from pathlib import Path

from credfetcher.config import SETTINGS, Config, describe

HEADER = """# Configuration reference

Every setting can be given as a `credfetcherd` flag, an environment variable (systemd:
`/etc/sysconfig/credfetcher`), or a key in `/etc/credfetcher/credfetcher.toml` (`--config FILE`).
Flags win over the environment, the environment over the file, the file over the defaults.
`credfetcherd --check-config` prints the effective values and exits non-zero naming a bad one.
`KRB5_CONFIG` is read by libkrb5 itself.

| environment | TOML key / flag | default | meaning |
| --- | --- | --- | --- |
"""

FOOTER = """
Per-lease ownership: `AddKerberosLease` and `AddNonDomainJoinedKerberosLease` accept an optional
`ownership` field (`FileOwnership{uid, gid, mode}`, field 100) that overrides `CF_CCACHE_OWNER`,
`CF_CCACHE_GROUP` and `CF_CCACHE_MODE` for that lease; old clients never send it. The bundled
client sets it with `credfetcher add --uid N --gid N --mode 0440`.

Caller checks: the socket is created 0660 (group `CF_SOCKET_GROUP`). With `CF_ALLOWED_UIDS` or
`CF_ALLOWED_GIDS` set, the daemon also reads each connecting process's uid and gid from the kernel
(SO_PEERCRED) and answers callers outside the list PERMISSION_DENIED; root is always allowed.
"""


def render() -> str:
    defaults = {env: value for env, _, value in describe(Config())}
    rows = [
        f"| `{s.env}` | `{s.name}` / `{s.flag}` | `{defaults[s.env] or '(none)'}` | {s.help} |"
        for s in SETTINGS
    ]
    return HEADER + "\n".join(rows) + "\n" + FOOTER


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/configuration.md")
    out.write_text(render())
