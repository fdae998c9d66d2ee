"""A ccache or keytab readable by every host user needs CF_ALLOW_WORLD_READABLE, and is logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from credfetcher.config import load_config
from credfetcher.errors import ConfigError, InvalidRequestError
from credfetcher.files import Ownership
from credfetcher.service import LeaseService


def _config(tmp_path: Path, **env: str) -> dict[str, str]:
    (tmp_path / "x").touch()  # an empty TOML file: never /etc/credfetcher's
    return {"CF_KRB_DIR": str(tmp_path / "krbdir"), **env}


def test_daemon_wide_world_readable_mode_is_refused_without_the_opt_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CF_ALLOW_WORLD_READABLE") as info:
        load_config(environ=_config(tmp_path, CF_CCACHE_MODE="0644"), config_file=tmp_path / "x")
    assert info.value.setting == "CF_CCACHE_MODE"
    # Group-readable needs nothing.
    load_config(environ=_config(tmp_path, CF_CCACHE_MODE="0640"), config_file=tmp_path / "x")


def test_daemon_wide_opt_in_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(
        environ=_config(tmp_path, CF_CCACHE_MODE="0644", CF_ALLOW_WORLD_READABLE="true"),
        config_file=tmp_path / "x",
    )
    with caplog.at_level(logging.WARNING):
        LeaseService(config)
    assert "readable by every user" in caplog.text


def test_per_request_world_readable_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    strict = LeaseService(load_config(environ=_config(tmp_path), config_file=tmp_path / "x"))
    with pytest.raises(InvalidRequestError, match="CF_ALLOW_WORLD_READABLE"):
        strict.ownership_for(1000, 1000, 0o444)
    assert strict.ownership_for(1000, 1000, 0o440) == Ownership(1000, 1000, 0o440)

    lenient = LeaseService(
        load_config(
            environ=_config(tmp_path, CF_ALLOW_WORLD_READABLE="1"), config_file=tmp_path / "x"
        )
    )
    with caplog.at_level(logging.WARNING):
        assert lenient.ownership_for(None, None, 0o644).mode == 0o644
    assert "readable by every user" in caplog.text
