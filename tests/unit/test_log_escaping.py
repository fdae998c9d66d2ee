"""Log lines carry callers' and DCs' text escaped, and every extra= field (issues 15 and 17)."""

from __future__ import annotations

import io
import logging
import re
from typing import Any

import pytest

from credfetcher import systemd as cfsd
from tests.unit.test_systemd_notify import (  # noqa: F401 - root_logger is a fixture
    HAVE_SYSTEMD_PYTHON,
    root_logger,
)

pytestmark = pytest.mark.usefixtures("root_logger")

FORGED = "evil\n2026-11-28 10:00:00,000 INFO credfetcher: forged line\r\x1b[31mred\u2028x"
# A record's first line starts with the timestamp of STDERR_FORMAT; a continuation with a space.
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def stderr_lines(emit: Any) -> list[str]:
    out = io.StringIO()
    cfsd.configure_logging("debug", journald=False, stream=out)
    emit(logging.getLogger("credfetcher.test"))
    return out.getvalue().split("\n")[:-1]


def assert_no_forged_line(lines: list[str]) -> None:
    for line in lines:
        assert RECORD_START.match(line) or line[:1] == " ", f"forged or stray line: {line!r}"
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), repr(line)
        assert "forged line" not in line or not line.startswith("2026-11-28 10:00:00")


def test_message_arguments_are_escaped() -> None:
    lines = stderr_lines(lambda log: log.warning("cannot authenticate as %s", FORGED))
    assert len(lines) == 1
    assert_no_forged_line(lines)
    assert "evil\\n2026-11-28" in lines[0]
    assert "\\r\\x1b[31mred\\u2028x" in lines[0]


def test_field_values_are_escaped() -> None:
    lines = stderr_lines(lambda log: log.info("bound", extra={"PRINCIPAL": FORGED}))
    assert len(lines) == 1
    assert_no_forged_line(lines)
    assert 'PRINCIPAL="evil\\n2026-11-28' in lines[0]


def test_a_traceback_cannot_start_a_record() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError(FORGED)
        except ValueError:
            log.exception("failed for %s", "user")

    lines = stderr_lines(emit)
    assert len(lines) > 3
    assert_no_forged_line(lines)
    assert lines[1] == "    Traceback (most recent call last):"
    assert any(line.startswith("    ValueError: evil") for line in lines)


def test_lower_case_extra_keys_reach_the_stderr_line() -> None:
    """directory.py's failed-attempt warning: its DC and reason were dropped (issue 17)."""
    lines = stderr_lines(
        lambda log: log.warning(
            "domain controller attempt failed",
            extra={"dc": "ldaps://dc2.example.test:636", "identity": "HOST$@EXAMPLE.TEST",
                   "reason": "timed out after 5 s"},
        )
    )
    assert lines[0].endswith(
        "domain controller attempt failed DC=ldaps://dc2.example.test:636 "
        'IDENTITY=HOST$@EXAMPLE.TEST REASON="timed out after 5 s"'
    )


def test_record_fields_names() -> None:
    record = logging.LogRecord("x", logging.INFO, "f.py", 1, "m", None, None)
    record.dc = "dc1"
    record.GMSA = "webapp01"
    record.reason = "refused\nby DC"
    record.lease_id = "ignored: LEASE_ID below wins"
    record.LEASE_ID = "abc"
    record._private = "not a field"
    assert cfsd.record_fields(record) == {
        "LEASE_ID": "abc",
        "GMSA": "webapp01",
        "DC": "dc1",
        "REASON": "refused\\nby DC",
    }


@pytest.mark.skipif(not HAVE_SYSTEMD_PYTHON, reason="systemd-python (the systemd extra) missing")
def test_journal_gets_every_field_escaped() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def sender(MESSAGE: str, **fields: Any) -> None:  # journal.send names it so
        sent.append((MESSAGE, fields))

    cfsd.configure_logging("debug", journald=True, journal_sender=sender)
    logging.getLogger("credfetcher.directory").warning(
        "domain controller attempt failed for %s",
        FORGED,
        extra={"dc": "dc2.example.test", "reason": "connection refused\nagain"},
    )
    ((message, fields),) = sent
    assert "\n" not in message
    assert "\x1b" not in message
    assert fields["DC"] == "dc2.example.test"
    assert fields["REASON"] == "connection refused\\nagain"
    assert not [k for k in fields if not k.isupper()]
