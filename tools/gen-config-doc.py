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
A flood of connections cannot exhaust the daemon: one thread relays every connection, at most
`CF_PEER_MAX_CONNECTIONS` at once (`CF_PEER_MAX_PER_UID` per uid; root is not capped), refused
callers are answered at most `CF_PEER_MAX_REFUSED` at a time and closed after 5 s, and anything
over a cap is closed as soon as it is accepted. Each relayed connection costs two descriptors,
so keep `2 x CF_PEER_MAX_CONNECTIONS` plus about 100 under the daemon's `LimitNOFILE` (systemd's
default soft limit is 1024).

Refused passwords and account lockout (`CF_REJECTED_PASSWORD_RETRY`): every Kerberos
pre-authentication with a wrong password counts towards the account's lockout in AD
(`badPwdCount`); the account locks once the count reaches the lockout threshold within the
observation window ("Reset account lockout counter after"), and the count restarts only when a
whole window has passed since the last failure. Defaults: Windows Server's built-in policy has no
threshold, Microsoft's security baseline uses 10 attempts in 15 minutes (Windows 11 22H2 and
later: 10 in 10 minutes), CIS benchmarks at most 5 in 15 minutes, and Samba a 30-minute window.
So a domainless password that the DC or KDC refused (RenewNonDomainJoinedKerberosLease moved the
user's leases to it, or it was changed in AD afterwards) is retried no sooner than every 1,860 s
(31 minutes, longer than every default window) and once per user for all its gMSAs, instead of
the ordinary backoff (2 s doubling to 30 s), so credfetcher alone never adds more than one failed
attempt to a window. Set it above your domain's observation window if that is longer.
RenewNonDomainJoinedKerberosLease itself proves new credentials (a TGT and a read of every
affected gMSA's password) before any lease moves to them: a wrong password answers
UNAUTHENTICATED and changes nothing. The same holds for a changed `CF_AWS_SM_SECRET_NAME` secret:
its leases keep the identity that works until the new one proves itself, and a refused secret is
not tried again for `CF_REJECTED_PASSWORD_RETRY`.
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
