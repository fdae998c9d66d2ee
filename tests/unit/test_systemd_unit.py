"""systemd/credfetcher.service: `systemd-analyze verify` is clean and the exposure is at most 2.0.

Skipped with the reason where systemd-analyze is missing, except under CI=true (tools/bootstrap.sh
installs it), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "credfetcher.service"
TMPFILES = REPO / "systemd" / "credfetcher.tmpfiles"
MAX_EXPOSURE = 2.0


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required under CI=true (tools/bootstrap.sh installs systemd)")
        pytest.skip(f"{tool} is not installed (apt-get install systemd)")
    return path


def unit_lines() -> list[tuple[str, str]]:
    """(key, value) pairs in order; unit files repeat keys, so configparser does not fit."""
    pairs = []
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def unit_copy_with_existing_binary(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointed at a program that exists here.

    `verify` checks that ExecStart's binary is executable, and /usr/bin/credfetcherd exists only
    once the RPM is installed. Everything else in the copy is unchanged, and the file keeps its
    name because verify derives the unit's name and type from it.
    """
    text = UNIT.read_text()
    copy, count = re.subn(
        r"(?m)^ExecStart=/usr/bin/credfetcherd$", f"ExecStart={sys.executable}", text
    )
    assert count == 1
    path = tmp_path / UNIT.name
    path.write_text(copy)
    return path


def test_verify_is_clean(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    unit = unit_copy_with_existing_binary(tmp_path)
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""


def test_verify_of_the_original_only_misses_the_binary() -> None:
    analyze = require("systemd-analyze")
    if Path("/usr/bin/credfetcherd").exists():
        pytest.skip("credfetcherd is installed: test_verify_is_clean covers the original")
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line]
    assert lines == [
        "credfetcher.service: Command /usr/bin/credfetcherd is not executable: "
        "No such file or directory"
    ]


def test_exposure_at_most_two() -> None:
    analyze = require("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for credfetcher\.service: (\d+\.\d+)", proc.stdout + proc.stderr
    )
    assert match is not None, proc.stdout + proc.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_service_contract() -> None:
    """The settings the daemon and the packaging rely on."""
    settings = dict(unit_lines())
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["WatchdogSec"] == "30"
    assert settings["Restart"] == "on-failure"
    assert settings["ExecStart"] == "/usr/bin/credfetcherd"
    env_files = [v for k, v in unit_lines() if k == "EnvironmentFile"]
    assert env_files == ["-/etc/sysconfig/credfetcher", "-/etc/default/credfetcher"]
    # The daemon can reach DCs and write the API paths, and nothing else in /var.
    assert set(settings["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert settings["ReadWritePaths"] == "/var/credentials-fetcher"
    assert "CAP_CHOWN" in settings["CapabilityBoundingSet"].split()
    # The heap holds secrets: a watchdog SIGABRT must not write them to a core file.
    assert settings["LimitCORE"] == "0"
    # The graceful stop (10 s) fits before systemd escalates to SIGKILL.
    assert int(settings["TimeoutStopSec"].removesuffix("s")) > 10


def test_tmpfiles_creates_the_api_directories(tmp_path: Path) -> None:
    tmpfiles = require("systemd-tmpfiles")
    subprocess.run(
        [tmpfiles, "--create", f"--root={tmp_path}", str(TMPFILES)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for name in ("krbdir", "socket", "logging"):
        assert (tmp_path / "var" / "credentials-fetcher" / name).is_dir()
