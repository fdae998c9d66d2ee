"""credfetcher.values: the value types and the one mode rule that CLI, config and server share."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credfetcher import cli_parser, files, server
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.config import load_config
from credfetcher.errors import ConfigError, InvalidRequestError
from credfetcher.values import MAX_ID, GmsaName, LeaseId, Ownership, check_id, check_mode

# --- check_mode ------------------------------------------------------------------------------


def expected_ok(mode: int, allow_world_readable: bool) -> bool:
    """The daemon's rule, written out independently of the code under test."""
    return (0 < mode <= 0o777 and not mode & 0o002
            and (allow_world_readable or not mode & 0o004))


@given(st.integers(min_value=-8, max_value=0o7777), st.booleans())
def test_check_mode_follows_the_rule(mode: int, allow: bool) -> None:
    if expected_ok(mode, allow):
        assert check_mode(mode, allow_world_readable=allow) == mode
    else:
        with pytest.raises(InvalidRequestError):
            check_mode(mode, allow_world_readable=allow)


@pytest.mark.parametrize(
    ("mode", "allow", "reason"),
    [
        (0, True, "not a permission mode"),
        (0o1777, True, "not a permission mode"),
        (0o666, True, "world-writable"),
        (0o642, True, "world-writable"),
        (0o644, False, "CF_ALLOW_WORLD_READABLE=true"),
    ],
)
def test_refusals_name_the_mode_and_why(mode: int, allow: bool, reason: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_mode(mode, allow_world_readable=allow)
    assert f"mode 0{mode:03o} " in info.value.message
    assert reason in info.value.message


@given(st.integers(min_value=0, max_value=0o7777))
def test_the_cli_refuses_what_the_daemon_always_refuses(mode: int) -> None:
    # The CLI cannot see CF_ALLOW_WORLD_READABLE; it refuses every mode a daemon with it refuses.
    try:
        accepted = cli_parser._mode_type(f"0{mode:o}") == mode
    except argparse.ArgumentTypeError:
        accepted = False
    assert accepted == expected_ok(mode, allow_world_readable=True)


def test_the_cli_says_which_mode_and_why() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"mode 0666 is world-writable"):
        cli_parser._mode_type("0666")


def _environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "none.toml").touch()  # an empty TOML file: never /etc/credfetcher's
    return {"CF_KRB_DIR": str(tmp_path / "krb"), **extra}


@pytest.mark.parametrize(
    ("mode", "allow"), [("0666", "true"), ("0644", "false"), ("0000", "false")]
)
def test_the_config_refuses_the_same_modes(tmp_path: Path, mode: str, allow: str) -> None:
    environ = _environ(tmp_path, CF_CCACHE_MODE=mode, CF_ALLOW_WORLD_READABLE=allow)
    with pytest.raises(ConfigError, match=f"mode {mode}") as info:
        load_config(environ=environ, config_file=tmp_path / "none.toml")
    assert info.value.setting == "CF_CCACHE_MODE"


def test_the_config_takes_an_allowed_world_readable_mode(tmp_path: Path) -> None:
    environ = _environ(tmp_path, CF_CCACHE_MODE="0644", CF_ALLOW_WORLD_READABLE="true")
    assert load_config(environ=environ, config_file=tmp_path / "none.toml").ccache_mode == 0o644


def test_the_config_refuses_an_owner_chown_cannot_set(tmp_path: Path) -> None:
    environ = _environ(tmp_path, CF_CCACHE_OWNER=str(2**32 - 1))
    with pytest.raises(ConfigError, match="out of range"):
        load_config(environ=environ, config_file=tmp_path / "none.toml")


class _Service:
    """What server._ownership asks of the lease service: its setting, and the final merge."""

    def __init__(self, allow_world_readable: bool) -> None:
        self.config = SimpleNamespace(allow_world_readable=allow_world_readable)

    def ownership_for(self, uid: int | None, gid: int | None, mode: int | None) -> Ownership:
        return Ownership(uid, gid, mode or 0o600)


@pytest.mark.parametrize(("mode", "allow"), [(0o666, True), (0o644, False), (0o1440, True)])
def test_the_server_refuses_the_same_modes(mode: int, allow: bool) -> None:
    msg = pb.FileOwnership(mode=mode)
    with pytest.raises(InvalidRequestError, match=f"mode 0{mode:03o} "):
        server._ownership(_Service(allow), msg, True)  # type: ignore[arg-type]


def test_the_server_passes_allowed_ownership_on() -> None:
    msg = pb.FileOwnership(uid=1000, mode=0o644)
    own = server._ownership(_Service(True), msg, True)  # type: ignore[arg-type]
    assert own == Ownership(1000, None, 0o644)
    unset = server._ownership(_Service(False), pb.FileOwnership(), True)  # type: ignore[arg-type]
    assert unset == Ownership(None, None, 0o600)  # mode 0 is proto3's "not set"
    assert server._ownership(_Service(False), msg, False) is None  # type: ignore[arg-type]


# --- ids and Ownership -------------------------------------------------------------------------


@given(st.integers(min_value=-(2**33), max_value=2**33))
def test_check_id_bounds(value: int) -> None:
    if 0 <= value <= MAX_ID:
        assert check_id(value, "uid") == value
    else:
        with pytest.raises(InvalidRequestError, match=f"uid {value} is out of range"):
            check_id(value, "uid")


def test_ownership_is_validated_and_shared_with_files() -> None:
    assert files.Ownership is Ownership
    assert Ownership().expected_uid == os.geteuid()
    assert Ownership(uid=1000, gid=1000, mode=0o440).expected_uid == 1000
    assert Ownership(mode=0o644).mode == 0o644  # world-readable is the daemon's policy
    for bad in ({"mode": 0o666}, {"mode": 0}, {"uid": -1}, {"gid": 2**32 - 1}):
        with pytest.raises(InvalidRequestError):
            Ownership(**bad)


# --- LeaseId ---------------------------------------------------------------------------------

NAMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@given(st.text(max_size=70))
def test_lease_id_accepts_exactly_the_documented_forms(text: str) -> None:
    if NAMED.fullmatch(text):
        assert LeaseId(text) == text
    else:
        with pytest.raises(InvalidRequestError, match="is not a lease id"):
            LeaseId(text)


@pytest.mark.parametrize("text", ["", "..", "a/b", ".hidden", "-a", "a" * 65, "abc\n", "a.b"])
def test_lease_id_refusals(text: str) -> None:
    with pytest.raises(InvalidRequestError):
        LeaseId(text)


def test_new_lease_ids_are_random_hex() -> None:
    ids = {LeaseId.new() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{20}", i) for i in ids)
    assert all(isinstance(i, LeaseId) for i in ids)


# --- GmsaName --------------------------------------------------------------------------------


def old_normalize(name: str) -> str:
    """directory.normalize_gmsa_name as it was before GmsaName, the reference for parse."""
    bare = name.strip().removesuffix("$")
    if not bare or any(ord(c) < 0x20 for c in bare):
        raise InvalidRequestError(f"{name!r} is not a gMSA account name")
    return bare + "$"


@given(st.text(max_size=30))
def test_parse_keeps_the_old_normalisation(text: str) -> None:
    try:
        expected = old_normalize(text)
    except InvalidRequestError:
        with pytest.raises(InvalidRequestError):
            GmsaName.parse(text)
        return
    assert GmsaName.parse(text).sam == expected


@given(st.text(max_size=30))
def test_parse_is_idempotent_and_keys_ignore_case(text: str) -> None:
    try:
        name = GmsaName.parse(text)
    except InvalidRequestError:
        return
    assert GmsaName.parse(name.sam) == name
    assert GmsaName.parse(name.bare.upper()).key == GmsaName.parse(name.bare.lower()).key


@pytest.mark.parametrize(("text", "bare"), [("webapp01", "webapp01"), ("WebApp01$", "WebApp01"),
                                            (" webapp01$ ", "webapp01")])
def test_parse_forms(text: str, bare: str) -> None:
    name = GmsaName.parse(text)
    assert (name.bare, name.sam, name.key, str(name)) == (bare, bare + "$", bare.casefold(), bare)


@pytest.mark.parametrize("bare", ["", " webapp01", "web\x00app"])
def test_direct_construction_needs_the_parsed_form(bare: str) -> None:
    with pytest.raises(InvalidRequestError):
        GmsaName(bare)
