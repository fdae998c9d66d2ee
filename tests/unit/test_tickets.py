"""tickets.py without a DC: names, argument checks, error mapping when no KDC answers, parsing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import krb5
import pytest

from credfetcher import metrics
from credfetcher.errors import KerberosError, KeyRejectedError
from credfetcher.keys import KerberosKey
from credfetcher.tickets import Tgt, TicketInfo, acquire_tgt, gmsa_principal, read_ticket_info

KRB5_CONF = """\
[libdefaults]
    default_realm = NOWHERE.TEST
    dns_lookup_kdc = false
    dns_lookup_realm = false
[realms]
    NOWHERE.TEST = {
        kdc = 127.0.0.1:9
    }
"""


@pytest.fixture
def no_kdc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A realm whose KDC port is closed: libkrb5 fails fast with "cannot contact any KDC"."""
    conf = tmp_path / "krb5.conf"
    conf.write_text(KRB5_CONF)
    monkeypatch.setenv("KRB5_CONFIG", str(conf))


@pytest.mark.parametrize(
    ("name", "realm"),
    [("webapp01", "CREDFETCHER.TEST"), ("webapp01$", "credfetcher.test")],
)
def test_gmsa_principal(name: str, realm: str) -> None:
    assert gmsa_principal(name, realm) == "webapp01$@CREDFETCHER.TEST"


def test_needs_exactly_one_secret() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        acquire_tgt("x$@R")
    with pytest.raises(ValueError, match="exactly one"):
        acquire_tgt("x$@R", password=b"p", keys=[])


@pytest.mark.usefixtures("no_kdc")
@pytest.mark.parametrize("realm", ["NOWHERE.TEST", "UNCONFIGURED.TEST"])
def test_unreachable_kdc(realm: str) -> None:
    principal = f"webapp01$@{realm}"
    before = metrics.get(metrics.AS_EXCHANGES, principal)
    with pytest.raises(KerberosError, match="no KDC") as info:
        acquire_tgt(principal, password=b"secret-password")
    assert not isinstance(info.value, KeyRejectedError)
    assert info.value.principal == principal
    assert info.value.code is not None
    assert isinstance(info.value.__cause__, krb5.Krb5Error)
    assert "secret-password" not in str(info.value)
    assert metrics.get(metrics.AS_EXCHANGES, principal) == before + 1


@pytest.mark.usefixtures("no_kdc")
def test_unreachable_kdc_from_keys() -> None:
    keys = [KerberosKey(enctype=18, kvno=1, contents=b"\x01" * 32)]
    with pytest.raises(KerberosError, match="no KDC"):
        acquire_tgt("webapp01$@NOWHERE.TEST", keys=keys)


def test_read_ticket_info_missing(tmp_path: Path) -> None:
    assert read_ticket_info(tmp_path / "nope") is None


@pytest.mark.parametrize("content", [b"", b"\x05\x04", b"\x05\x04\x00\x0c" + b"\xff" * 40])
def test_read_ticket_info_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "krb5cc"
    path.write_bytes(content)
    assert read_ticket_info(path) is None


def test_read_ticket_info_cache_without_tgt(tmp_path: Path) -> None:
    path = tmp_path / "krb5cc"
    ctx = krb5.init_context()
    ccache = krb5.cc_resolve(ctx, b"FILE:" + bytes(path))
    krb5.cc_initialize(ctx, ccache, krb5.parse_name_flags(ctx, b"webapp01$@R.TEST"))
    assert path.stat().st_size > 0
    assert read_ticket_info(path) is None


def test_tgt_repr_hides_the_credential() -> None:
    info = TicketInfo(principal="webapp01$@R", starttime=1, endtime=2, renew_till=3)
    tgt = Tgt(info=info, marshalled=b"SESSION-KEY-AND-TICKET")
    assert "SESSION-KEY" not in repr(tgt)
    assert "marshalled" not in repr(tgt)
    assert tgt.principal == "webapp01$@R"


def test_read_ticket_info_never_waits_on_a_fifo_or_follows_a_symlink(tmp_path: Path) -> None:
    fifo = tmp_path / "krb5cc"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert read_ticket_info(fifo) is None  # open() of a FIFO would wait for a writer
    assert time.monotonic() - started < 1
    link = tmp_path / "link"
    link.symlink_to(fifo)
    assert read_ticket_info(link) is None


def test_read_ticket_info_ignores_a_lock_held_on_the_file(tmp_path: Path) -> None:
    """MIT takes a blocking read lock on a FILE ccache it opens: a process holding a write lock
    on a lease's krb5cc (a container root can) must not make the daemon wait. libkrb5 reads a
    private copy instead."""
    path = tmp_path / "krb5cc"
    ctx = krb5.init_context()
    ccache = krb5.cc_resolve(ctx, b"FILE:" + bytes(path))
    krb5.cc_initialize(ctx, ccache, krb5.parse_name_flags(ctx, b"webapp01$@R.TEST"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'r+b'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(30)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        assert read_ticket_info(path) is None  # parsed (no TGT in it), not waited on
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.communicate()
