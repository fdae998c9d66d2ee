"""packaging/rpm/build.sh builds a noarch RPM that holds the unit and both console scripts, and
rpmlint (with packaging/rpm/rpmlint.toml) reports no errors.

Skipped with the reason where rpmbuild or rpmlint is missing, except under CI=true, where that is
a failure. The build takes a few seconds and is done once for the module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "packaging" / "rpm" / "build.sh"
SPEC = REPO / "packaging" / "rpm" / "credfetcher.spec"
RPMLINT_CONFIG = REPO / "packaging" / "rpm" / "rpmlint.toml"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required under CI=true (tools/bootstrap.sh installs it)")
        pytest.skip(f"{tool} is not installed (apt-get install rpm rpmlint)")
    return path


@pytest.fixture(scope="module")
def rpm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("rpmbuild")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("build.sh packages the files git tracks: needs git and a checkout")
    out = tmp_path_factory.mktemp("rpms")
    proc = subprocess.run(
        ["bash", str(BUILD), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (rpm,) = out.glob("credfetcher-*.noarch.rpm")
    return rpm


def query(rpm_file: Path, *args: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", *args, str(rpm_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_file_list(rpm_file: Path) -> None:
    files = set(query(rpm_file, "-l").splitlines())
    assert {
        "/usr/bin/credfetcherd",
        "/usr/bin/credfetcher",
        "/usr/lib/systemd/system/credfetcher.service",
        "/usr/lib/tmpfiles.d/credfetcher.conf",
        "/etc/sysconfig/credfetcher",
        "/etc/credfetcher/credfetcher.toml",
        "/var/credentials-fetcher/krbdir",
        "/var/credentials-fetcher/socket",
        "/var/credentials-fetcher/logging",
    } <= files
    assert any(f.endswith("/site-packages/credfetcher/__init__.py") for f in files)
    assert any(f.endswith("/LICENSE") for f in files)


def test_configuration_is_noreplace(rpm_file: Path) -> None:
    flags = dict(
        line.split(" ", 1)
        for line in query(rpm_file, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
    )
    for path in ("/etc/sysconfig/credfetcher", "/etc/credfetcher/credfetcher.toml"):
        assert "c" in flags[path], path  # %config
        assert "n" in flags[path], path  # (noreplace)


def test_metadata(rpm_file: Path) -> None:
    arch, version = query(rpm_file, "--qf", "%{ARCH} %{VERSION}").split()
    assert arch == "noarch"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'(?m)^version = "{re.escape(version)}"$', pyproject)
    requires = query(rpm_file, "--requires")
    for dep in ("python3-grpcio", "python3-gssapi", "python3-ldap3", "python3-dns"):
        assert dep in requires.split()
    scripts = query(rpm_file, "--scripts")
    assert "credfetcher.service" in scripts
    assert "credfetcher.conf" in scripts  # tmpfiles run at install


def test_payload(rpm_file: Path, tmp_path: Path) -> None:
    """The packaged unit is the repository's, and the scripts start the declared entry points."""
    require("rpm2cpio")
    require("cpio")
    rpm2cpio = subprocess.Popen(["rpm2cpio", str(rpm_file)], stdout=subprocess.PIPE)
    subprocess.run(
        ["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=tmp_path, check=True, timeout=60
    )
    assert rpm2cpio.stdout is not None
    rpm2cpio.stdout.close()
    assert rpm2cpio.wait(timeout=60) == 0
    unit = tmp_path / "usr/lib/systemd/system/credfetcher.service"
    assert unit.read_text() == (REPO / "systemd" / "credfetcher.service").read_text()
    daemon = (tmp_path / "usr/bin/credfetcherd").read_text()
    assert daemon.startswith("#!/usr/bin/python3")
    assert "from credfetcher.daemon import main" in daemon
    assert "from credfetcher.cli import main" in (tmp_path / "usr/bin/credfetcher").read_text()


def test_rpmlint_has_no_errors(rpm_file: Path) -> None:
    rpmlint = require("rpmlint")
    proc = subprocess.run(
        [rpmlint, "-c", str(RPMLINT_CONFIG), str(rpm_file), str(SPEC)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    match = re.search(r"(\d+) errors, (\d+) warnings", proc.stdout)
    assert match is not None, proc.stdout + proc.stderr
    assert match.group(1) == "0", proc.stdout
