"""The RPM's own credfetcherd, from its own tree only, serves a real lease against the test DC.

What can be proven without a Fedora or Amazon Linux 2023 machine (docs/install.md): the package
is installed into a scratch root with ``rpm --root --nodeps --noscripts`` (the scriptlets would
run systemctl in a chroot that has no systemd), and the packaged ``/usr/bin/credfetcherd`` runs
under /usr/bin/python3.11 -I -S exactly as its shebang says: nothing on sys.path but the standard
library and the package's private tree. Every module the daemon loads is checked to come from
there, and the daemon then makes a lease whose ccache klist reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import TestDC
from tests.integration.daemon import Daemon, daemon_env
from tests.rpmbuild import built_rpm, require

PYTHON = "/usr/bin/python3.11"
# The modules the daemon imports at start-up and on its first lease, and where each must live.
PROBE = """
import json, sys
import credfetcher.daemon, credfetcher.cli, credfetcher.directory, credfetcher.tickets
import grpc_health.v1.health, grpc_reflection.v1alpha.reflection, systemd.journal
import krb5, gssapi, ldap3, dns.resolver, Cryptodome.Hash, google.protobuf
files = {name: getattr(mod, "__file__", None) for name, mod in list(sys.modules.items())}
print(json.dumps({"path": sys.path, "files": files, "flags": [sys.flags.isolated,
                  sys.flags.no_site]}))
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root with the package installed by rpm itself."""
    if not Path(PYTHON).exists():
        pytest.fail(f"{PYTHON} (Debian's python3.11) is missing: tools/bootstrap.sh installs it")
    require("rpm")
    rpm_file = built_rpm()
    scratch = tmp_path_factory.mktemp("root")
    subprocess.run(["rpm", "--root", str(scratch), "--initdb"], check=True, timeout=60)
    proc = subprocess.run(
        ["rpm", "--root", str(scratch), "-i", "--nodeps", "--noscripts", str(rpm_file)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    verify = subprocess.run(
        ["rpm", "--root", str(scratch), "-V", "--nodeps", "--noscripts", "credfetcher"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr  # what rpm installed is intact
    return scratch


def test_nothing_outside_the_tree_is_imported(root: Path) -> None:
    launcher = root / "usr/bin/credfetcherd"
    assert launcher.read_text().splitlines()[0] == f"#!{PYTHON} -IS"
    # The launcher's own sys.path set-up, then the probe, in one interpreter run like the daemon.
    setup = launcher.read_text().split("from credfetcher.daemon import main")[0]
    tree = root / "usr/lib64/credfetcher"
    # Under ProtectSystem=strict the tree is read-only: the shipped bytecode must be used as is.
    pycs = {p: p.stat().st_mtime_ns for p in tree.rglob("*.pyc")}
    proc = subprocess.run(
        [PYTHON, "-I", "-S", "-c", setup.replace("__file__", repr(str(launcher))) + PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["flags"] == [1, 1]
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*.pyc")} == pycs
    stdlib = Path(sysconfig.get_path("stdlib", vars={"installed_base": "/usr", "base": "/usr"}))

    def inside(path: str) -> bool:
        return any(Path(path) == r or r in Path(path).parents for r in (tree, stdlib))

    assert report["path"][0] == str(tree)
    # (python311.zip is listed whether or not it exists; here it does not.)
    existing = [p for p in report["path"] if Path(p).exists()]
    assert all(inside(p) for p in existing), report["path"]
    outside = {
        name: path
        for name, path in report["files"].items()
        if path is not None and not inside(path)
    }
    assert not outside, outside
    # Compiled extensions and the daemon itself come from the package's tree.
    for name in ("credfetcher.daemon", "gssapi.raw.creds", "krb5._context", "systemd._journal",
                 "grpc._cython.cygrpc", "google._upb._message"):
        assert report["files"][name].startswith(str(tree) + "/"), name


class PackagedDaemon(Daemon):
    """tests.integration.daemon.Daemon, started from the installed launcher."""

    launcher: Path

    def command(self) -> list[str]:
        return [PYTHON, "-I", "-S", str(self.launcher)]


def test_packaged_daemon_serves_a_lease(root: Path, samba_dc: TestDC, tmp_path: Path) -> None:
    env = daemon_env(samba_dc, tmp_path)
    # Nothing from the test's virtualenv may leak in, even through the environment (-I ignores it).
    env.pop("VIRTUAL_ENV", None)
    env["PYTHONPATH"] = str(Path(sys.executable).parents[1])
    daemon = PackagedDaemon(samba_dc, tmp_path, env)
    daemon.launcher = root / "usr/bin/credfetcherd"
    daemon.start(timeout=60)
    try:
        gmsa = samba_dc.gmsas[0]
        resp = daemon.add(gmsa)
        (path,) = resp.created_kerberos_file_paths
        proc = daemon.klist(Path(path) / "krb5cc")
        assert proc.returncode == 0, proc.stderr + daemon.log()
        assert f"Default principal: {gmsa}$@{samba_dc.realm}" in proc.stdout
        cli = subprocess.run(
            [PYTHON, "-I", "-S", str(root / "usr/bin/credfetcher"),
             "--socket", str(daemon.socket_path), "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert resp.lease_id in cli.stdout
    finally:
        assert daemon.stop(timeout=20) == 0, daemon.log()
