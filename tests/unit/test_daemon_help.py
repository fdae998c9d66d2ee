"""``credfetcherd --help`` and ``--version``: what an operator reads first."""

from __future__ import annotations

import pytest

from credfetcher import __version__, daemon
from credfetcher.config import SETTINGS


def test_help_lists_every_setting_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        daemon.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long help lines
    assert out.startswith("usage: credfetcherd")
    for setting in SETTINGS:
        assert setting.flag in out
        assert f"[{setting.env}]" in out
    assert "90 % of it" in out  # help texts are printed as written, not %-formatted
    assert "--check-config" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        daemon.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"credfetcherd {__version__}"
