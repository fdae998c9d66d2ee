"""One RPM build per pytest run, shared by tests/unit/test_rpm.py and the install-root check.

packaging/rpm/build.sh takes ~1 minute with pip's cache warm (minutes more the first time, to
compile gssapi, krb5 and systemd-python), so every module that needs the package gets the same
file. Skipped with the reason where a tool is missing, except under CI=true, where that fails.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "packaging" / "rpm" / "build.sh"
SPEC = REPO / "packaging" / "rpm" / "credfetcher.spec"
LOCK = REPO / "packaging" / "rpm" / "requirements.lock"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required under CI=true (tools/bootstrap.sh installs it)")
        pytest.skip(f"{tool} is not installed (tools/bootstrap.sh installs it)")
    return path


@functools.cache
def _build() -> Path | str:
    """The RPM's path, or the reason it could not be built (cached, failures included).

    ``CF_TEST_RPM`` names an RPM built earlier by build.sh, to check it without rebuilding.
    """
    prebuilt = os.environ.get("CF_TEST_RPM")
    if prebuilt:
        return Path(prebuilt)
    out = Path(tempfile.mkdtemp(prefix="credfetcher-rpm-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    proc = subprocess.run(
        ["bash", str(BUILD), str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    if proc.returncode != 0:
        return f"build.sh failed ({proc.returncode}): {proc.stderr[-4000:]}"
    (rpm,) = out.glob("credfetcher-*.rpm")
    return rpm


def built_rpm() -> Path:
    require("rpmbuild")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("build.sh packages the files git tracks: needs git and a checkout")
    result = _build()
    if isinstance(result, str):
        pytest.fail(result)
    return result


def query(rpm_file: Path, *args: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", *args, str(rpm_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def extract(rpm_file: Path, dest: Path) -> Path:
    """The payload unpacked under ``dest`` with rpm2cpio | cpio (no rpm database needed)."""
    require("rpm2cpio")
    require("cpio")
    rpm2cpio = subprocess.Popen(["rpm2cpio", str(rpm_file)], stdout=subprocess.PIPE)
    subprocess.run(
        ["cpio", "-idm", "--quiet"], stdin=rpm2cpio.stdout, cwd=dest, check=True, timeout=120
    )
    assert rpm2cpio.stdout is not None
    rpm2cpio.stdout.close()
    assert rpm2cpio.wait(timeout=60) == 0
    return dest
