"""credfetcher.systemd: sd_notify messages on a datagram socket the test owns, and log fields."""

from __future__ import annotations

import io
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from credfetcher import systemd as cfsd

try:
    import systemd.daemon  # noqa: F401 - only probing for the optional extra

    HAVE_SYSTEMD_PYTHON = True
except ImportError:  # pragma: no cover
    HAVE_SYSTEMD_PYTHON = False


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound AF_UNIX datagram socket playing the service manager's part."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """The same on an abstract name, as systemd's own $NOTIFY_SOCKET values often are."""
    name = f"credfetcher-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        yield "@" + name, sock


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards (configure_logging changes it process-wide)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_fallback_sends_each_message(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    with cfsd.Notifier(socket_path=path) as n:
        assert n.enabled
        assert n.backend == "socket"
        assert n.ready()
        assert recv(sock) == "READY=1"
        assert n.status("2 leases, last renewal 12:00:01")
        assert recv(sock) == "STATUS=2 leases, last renewal 12:00:01"
        assert n.watchdog()
        assert recv(sock) == "WATCHDOG=1"
        assert n.stopping("draining 1 call")
        assert recv(sock) == "STOPPING=1\nSTATUS=draining 1 call"


def test_ready_with_status_is_one_datagram(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    with cfsd.Notifier(socket_path=path) as n:
        n.ready("serving on /var/credentials-fetcher/socket/credentials_fetcher.sock")
    assert recv(sock) == (
        "READY=1\nSTATUS=serving on /var/credentials-fetcher/socket/credentials_fetcher.sock"
    )


def test_status_newline_cannot_inject_an_assignment(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    with cfsd.Notifier(socket_path=path) as n:
        n.status("bad\nREADY=1")
    assert recv(sock) == "STATUS=bad READY=1"


def test_abstract_socket_name(abstract_socket: tuple[str, socket.socket]) -> None:
    name, sock = abstract_socket
    with cfsd.Notifier(environ={"NOTIFY_SOCKET": name}) as n:
        assert n.backend == "socket"  # an explicit environment never goes through libsystemd
        assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"


@pytest.mark.skipif(not HAVE_SYSTEMD_PYTHON, reason="systemd-python (the systemd extra) missing")
def test_systemd_python_backend_uses_process_environment(
    notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with cfsd.Notifier() as n:
        assert n.backend == "systemd-python"
        assert n.ready()
        assert recv(sock) == "READY=1"
        assert n.stopping()
        assert recv(sock) == "STOPPING=1"


def test_process_environment_without_the_extra(
    notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with cfsd.Notifier(use_systemd_python=False) as n:
        assert n.backend == "socket"
        assert n.ready()
    assert recv(sock) == "READY=1"


def test_disabled_without_notify_socket() -> None:
    n = cfsd.Notifier(environ={})
    assert not n.enabled
    assert n.backend == "none"
    assert not n.ready()
    assert not n.watchdog()
    assert n.watchdog_interval() is None


def test_vanished_manager_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        cfsd.Notifier(socket_path=str(tmp_path / "gone.sock")) as n,
        caplog.at_level(logging.WARNING, logger="credfetcher.systemd"),
    ):
        assert not n.watchdog()
        assert not n.watchdog()
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "1000000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    n = cfsd.Notifier(environ={"NOTIFY_SOCKET": "@unused", **env})
    assert n.watchdog_interval() == expected


# --- logging ---------------------------------------------------------------------------------


def test_stderr_format_carries_fields(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    cfsd.configure_logging("info", journald=False, stream=out)
    log = logging.getLogger("credfetcher.test")
    log.info(
        "lease created", extra={"LEASE_ID": "0123456789abcdef0123", "GMSA": "webapp01", "DC": "dc1"}
    )
    log.debug("not shown at info")
    log.warning("path with space", extra={"PATH": "/var/a b"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(
        "INFO credfetcher.test: lease created LEASE_ID=0123456789abcdef0123 GMSA=webapp01 DC=dc1"
    )
    assert lines[1].endswith('WARNING credfetcher.test: path with space PATH="/var/a b"')


def test_reconfiguring_replaces_the_handler(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    first = cfsd.configure_logging("debug", journald=False, stream=out)
    second = cfsd.configure_logging("error", journald=False, stream=out)
    assert first not in root_logger.handlers
    assert second in root_logger.handlers
    assert root_logger.level == logging.ERROR
    logging.getLogger("credfetcher.test").warning("dropped")
    assert out.getvalue() == ""


def test_adapter_binds_and_merges_fields(root_logger: logging.Logger) -> None:
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    cfsd.configure_logging("debug", journald=False, stream=io.StringIO())
    root_logger.addHandler(Capture())
    log = cfsd.FieldsAdapter(logging.getLogger("credfetcher.test"), LEASE_ID="abc")
    log.bind(GMSA="webapp01").info("renewed", extra={"DC": "dc2"})
    log.info("override", extra={"LEASE_ID": "def"})
    assert cfsd.record_fields(records[0]) == {"LEASE_ID": "abc", "GMSA": "webapp01", "DC": "dc2"}
    assert cfsd.record_fields(records[1]) == {"LEASE_ID": "def"}


def test_adapter_rejects_non_journal_names() -> None:
    with pytest.raises(ValueError, match="journal field name"):
        cfsd.FieldsAdapter(logging.getLogger("x"), lease_id="abc")


@pytest.mark.skipif(not HAVE_SYSTEMD_PYTHON, reason="systemd-python (the systemd extra) missing")
def test_journal_fields_and_priorities(root_logger: logging.Logger) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # journal.send names it so
        sent.append((MESSAGE, fields))

    handler = cfsd.configure_logging("debug", journald=True, journal_sender=sender)
    assert type(handler).__name__ == "JournalHandler"
    log = logging.getLogger("credfetcher.test")
    log.info("lease created", extra={"LEASE_ID": "0123456789abcdef0123", "GMSA": "webapp01"})
    log.error("DC unreachable", extra={"DC": "dc1.example.com"})
    log.debug("detail")
    (m1, f1), (m2, f2), (m3, f3) = sent
    assert m1 == "lease created"  # the journal keeps time and level itself
    assert f1["LEASE_ID"] == "0123456789abcdef0123"
    assert f1["GMSA"] == "webapp01"
    assert f1["SYSLOG_IDENTIFIER"] == "credfetcherd"
    assert f1["PRIORITY"] == "6"  # LOG_INFO
    assert not [k for k in f1 if not k.isupper()]  # msg, args... are not sent
    assert (m2, f2["DC"], f2["PRIORITY"]) == ("DC unreachable", "dc1.example.com", "3")  # LOG_ERR
    assert (m3, f3["PRIORITY"]) == ("detail", "7")  # LOG_DEBUG


@pytest.mark.skipif(not HAVE_SYSTEMD_PYTHON, reason="systemd-python (the systemd extra) missing")
def test_journal_chosen_only_when_stderr_is_the_journal_stream(
    root_logger: logging.Logger, tmp_path: Path
) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        mine = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
        h = cfsd.configure_logging("info", stream=stream, environ=mine)
        assert type(h).__name__ == "JournalHandler"
        # Inherited by a child whose stderr went elsewhere: plain stderr.
        h = cfsd.configure_logging("info", stream=stream, environ=other)
        assert isinstance(h, logging.StreamHandler)
        h = cfsd.configure_logging("info", stream=stream, environ={})
        assert isinstance(h, logging.StreamHandler)


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", 10), ("INFO", 20), ("Warning", 30), ("warn", 30), ("error", 40), ("critical", 50)],
)
def test_parse_level(text: str, level: int) -> None:
    assert cfsd.parse_level(text) == level


def test_parse_level_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        cfsd.parse_level("verbose")
