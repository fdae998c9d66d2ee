"""MIT's own client tools as the judges of what the DC and credfetcher produce.

Each call runs with an environment from :meth:`TestDC.krb5_env`: the test DC's krb5.conf and a
ccache of the test's own, never the caller's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import TestDC


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def kinit_keytab(dc: TestDC, ccache: str, keytab: Path, principal: str) -> dict[str, str]:
    """``kinit -k`` as ``principal`` into ``ccache``; the environment that uses it."""
    env = dc.krb5_env(ccache)
    proc = run(["kinit", "-k", "-t", str(keytab), principal], env)
    assert proc.returncode == 0, proc.stderr
    return env


def ldapsearch_account(dc: TestDC, env: dict[str, str], account: str, *attrs: str) -> str:
    """The LDIF ``ldapsearch -Y GSSAPI`` (sealed, port 389) returns for one sAMAccountName."""
    proc = run(
        [
            "ldapsearch", "-LLL", "-Q", "-o", "ldif-wrap=no", "-Y", "GSSAPI",
            "-H", f"ldap://{dc.dc_fqdn}", "-b", dc.base_dn,
            f"(sAMAccountName={account})", *attrs,
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout
