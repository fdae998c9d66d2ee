"""systemd glue: readiness and watchdog notifications, and logging to the journal.

Notifications follow sd_notify(3): newline-separated ``KEY=VALUE`` assignments (``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``) sent as one datagram to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``). The watchdog timeout
comes from ``$WATCHDOG_USEC`` / ``$WATCHDOG_PID`` as in sd_watchdog_enabled(3); the service should
ping at half of it.

systemd-python (the ``systemd`` extra) is used when importable and when the target is the socket in
this process's environment, since that is all ``sd_notify`` can address. Otherwise a few lines of
stdlib do the same, so the daemon notifies correctly without the extra, and tests can point a
:class:`Notifier` at a socket they own.

Logging goes to the journal with structured fields (``LEASE_ID``, ``GMSA``, ``DC``, ...) when the
process runs under systemd with its stderr connected to journald (systemd.exec(5),
``$JOURNAL_STREAM``), and as plain lines on stderr otherwise, where the same fields are appended as
``KEY=value``. Fields are passed with ``extra=`` (any name: ``extra={"dc": ...}`` becomes ``DC``)
or bound once through :class:`FieldsAdapter`.

Messages and field values carry text from callers and domain controllers (user names, DNs, error
texts), so both handlers escape control characters in them (a newline becomes a backslash and
an ``n``): no caller can start a forged line in the stderr log or smuggle terminal escapes.
A traceback keeps its lines, each continuation indented, so every line of the stderr log either
starts a record with its timestamp or continues the one above.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final, Literal, TextIO

__all__ = [
    "FIELD_NAMES",
    "EscapingFormatter",
    "FieldsAdapter",
    "KeyValueFormatter",
    "Notifier",
    "configure_logging",
    "escape_controls",
    "parse_level",
    "record_fields",
]

_log = logging.getLogger(__name__)

# The fields the daemon attaches to its records, in the order the stderr format shows them. Any
# other upper-case record attribute that is a valid journal field name is passed through too.
FIELD_NAMES: Final = ("LEASE_ID", "GMSA", "DC", "PRINCIPAL", "PATH")

# journald's rule for user fields (sd_journal_print(3)): upper-case letters, digits and "_", not
# starting with "_" (those are trusted fields that journald sets itself), at most 64 characters.
_FIELD_RE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")

# Upper-case attributes the logging machinery or JournalHandler set themselves: never "fields".
_RESERVED_FIELDS: Final = frozenset(
    {
        "MESSAGE",
        "PRIORITY",
        "LOGGER",
        "THREAD_NAME",
        "PROCESS_NAME",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "CODE_ARGS",
        "EXCEPTION_TEXT",
        "EXCEPTION_INFO",
        "SYSLOG_IDENTIFIER",
    }
)

SYSLOG_IDENTIFIER: Final = "credfetcherd"

# What every LogRecord has (and what Formatter.format adds): anything else came with extra=.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``...)."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        named = _NAMED_ESCAPES.get(char)
        if named is not None:
            return named
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL_RE.sub(one, text)


def _field_name(key: str) -> str | None:
    """The journal field name for a record attribute ``key``, or None when it is none."""
    if key in _RECORD_ATTRIBUTES or key.startswith("_"):
        return None
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper())
    if not _FIELD_RE.fullmatch(name) or name in _RESERVED_FIELDS:
        return None
    return name

try:  # the optional "systemd" extra
    import systemd.daemon as _sd_daemon
    import systemd.journal as _sd_journal
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    _sd_daemon = None
    _sd_journal = None

Backend = Literal["systemd-python", "socket", "none"]


def _socket_address(name: str) -> str | bytes:
    """The sockaddr for a ``$NOTIFY_SOCKET`` value: ``@name`` is in the abstract namespace."""
    if name.startswith("@"):
        # Abstract names start with a NUL byte and are not NUL-terminated (unix(7)).
        return b"\0" + name[1:].encode()
    return name


class Notifier:
    """Sends sd_notify(3) messages to the service manager; does nothing when not under systemd.

    ``Notifier()`` reads ``$NOTIFY_SOCKET`` and the watchdog variables from ``os.environ``;
    ``Notifier(socket_path=..., environ=...)`` targets another socket (tests, or a supervisor
    that is not systemd). Each method returns whether a message was sent; failures are logged,
    never raised: a lost notification must not take the daemon down.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        use_systemd_python: bool = True,
    ) -> None:
        env = os.environ if environ is None else environ
        from_process_env = socket_path is None and environ is None
        self._socket_path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET")
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._backend: Backend
        if not self._socket_path:
            self._backend = "none"
        elif use_systemd_python and from_process_env and _sd_daemon is not None:
            # libsystemd reads $NOTIFY_SOCKET itself, so it can only serve the process's own.
            self._backend = "systemd-python"
        else:
            self._backend = "socket"
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (the process runs as a Type=notify service)."""
        return self._backend != "none"

    @property
    def backend(self) -> Backend:
        """Which sender is in use: systemd-python, the stdlib fallback, or none."""
        return self._backend

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings, half the manager's timeout; None when disabled.

        As sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` must be a positive integer and, when
        ``$WATCHDOG_PID`` is set, name this process (the variables may have been inherited by a
        child that is not the one being watched).
        """
        if not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            _log.warning("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                return None
            if pid != os.getpid():
                return None
        return usec / 1_000_000 / 2

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is complete (only once the gRPC socket answers calls)."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """``STATUS=``: a one-line state shown by ``systemctl status`` (leases, last renewal)."""
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the renewal loop is alive. Send every :meth:`watchdog_interval`."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun (on SIGTERM, before draining calls)."""
        return self.notify("STOPPING=1", *self._status(status))

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one message; False when disabled or on failure."""
        if self._backend == "none" or not assignments:
            return False
        message = "\n".join(assignments)
        try:
            if self._backend == "systemd-python":
                assert _sd_daemon is not None  # noqa: S101 - chosen only when importable
                return bool(_sd_daemon.notify(message))
            self._send(message.encode())
        except OSError as exc:
            self._warn_once(exc)
            return False
        return True

    def close(self) -> None:
        """Close the fallback's socket (it is reopened on the next message)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(socket_path={self._socket_path!r}, backend={self._backend!r})"

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        # A newline would end the assignment and let the rest be read as another one.
        return ("STATUS=" + " ".join(text.splitlines()),)

    def _send(self, payload: bytes) -> None:
        assert self._socket_path  # noqa: S101 - "socket" backend implies a path
        with self._lock:
            if self._sock is None:
                # One socket for the life of the notifier: the watchdog pings every few seconds.
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, _socket_address(self._socket_path))

    def _warn_once(self, exc: OSError) -> None:
        # A vanished manager socket would otherwise log on every watchdog ping.
        if not self._warned:
            self._warned = True
            _log.warning("cannot notify the service manager at %s: %s", self._socket_path, exc)


# --- logging ---------------------------------------------------------------------------------

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def parse_level(level: str) -> int:
    """``"debug"``/``"INFO"``/... or a number to a logging level; ValueError for anything else."""
    text = level.strip().lower()
    if text in _LEVELS:
        return _LEVELS[text]
    if text.isdigit():
        return int(text)
    raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(_LEVELS)}")


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The structured fields on ``record``: whatever came with ``extra=``, under its journal name
    (``dc`` as ``DC``), values with control characters escaped. An upper-case key wins over a
    lower-case one with the same journal name."""
    return {name: escape_controls(value) for name, value in _raw_fields(record).items()}


def _raw_fields(record: logging.LogRecord) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in vars(record).items():
        name = _field_name(key)
        if name is None or value is None or (name in found and key != name):
            continue
        found[name] = str(value)
    order = {name: i for i, name in enumerate(FIELD_NAMES)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


class EscapingFormatter(logging.Formatter):
    """A Formatter whose message has no raw control characters and whose traceback lines are
    indented, so a record can never look like more than one record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Formatter.format has just set record.message from getMessage(); escape that copy.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        first, sep, rest = text.partition("\n")
        if not sep:
            return text
        lines = [escape_controls(line) for line in rest.split("\n")]
        return first + "\n" + "\n".join(
            line if line[:1] in (" ", "") else "    " + line for line in lines
        )


class KeyValueFormatter(EscapingFormatter):
    """The stderr format: the usual line followed by each structured field as ``KEY=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _raw_fields(record)
        if not fields:
            return line
        pairs = " ".join(f"{key}={_quote(value)}" for key, value in fields.items())
        # Fields go on the first line so a traceback below does not separate them from the message.
        first, sep, rest = line.partition("\n")
        return f"{first} {pairs}{sep}{rest}"


def _quote(value: str) -> str:
    """``value`` bare when it can be, else in double quotes with ``\\``, ``"`` and control
    characters escaped: a value can neither end its field early nor start a line."""
    if value and not any(c.isspace() or c in '"=\\' or _CONTROL_RE.match(c) for c in value):
        return value
    return '"' + escape_controls(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger with fields bound once: ``FieldsAdapter(log, LEASE_ID=lid).info("renewed")``.

    Unlike the stdlib adapter, per-call ``extra=`` is merged with (and overrides) the bound fields
    instead of being dropped. Field names must be journal field names (upper case).
    """

    def __init__(self, logger: logging.Logger, **fields: object) -> None:
        for name in fields:
            if not _FIELD_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not a journal field name (A-Z, 0-9, _)")
        super().__init__(logger, fields)

    def bind(self, **fields: object) -> FieldsAdapter:
        """A new adapter with more fields (``GMSA=`` for each account in a lease)."""
        return FieldsAdapter(self.logger, **{**(self.extra or {}), **fields})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def _journal_stream_is_stderr(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Whether ``stream`` is the journald connection named by ``$JOURNAL_STREAM`` (dev:inode).

    systemd.exec(5): compare with the descriptor itself, because the variable is inherited by
    children whose stderr may have been redirected elsewhere.
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def _journal_fields_only(send: Callable[..., object]) -> Callable[..., object]:
    """Wrap journal.send so only fields travel, under journal names, values escaped.

    JournalHandler passes every attribute of the record (``msg``, ``args``, ``exc_info``...) and
    its own upper-case fields; journald would drop lower-case names on arrival, so the record's
    own attributes are not sent and ``extra=`` keys are renamed (``dc`` to ``DC``).
    """

    def sender(MESSAGE: str, **fields: object) -> object:  # journal.send names it so
        out: dict[str, object] = {}
        for key, value in fields.items():
            if _FIELD_RE.fullmatch(key):
                out[key] = escape_controls(value) if isinstance(value, str) else value
                continue
            name = _field_name(key)
            if name is not None and name not in fields and value is not None:
                out[name] = escape_controls(str(value))
        return send(MESSAGE, **out)

    return sender


# Marks the handler configure_logging installed, so a second call replaces it instead of
# doubling every line.
_HANDLER_MARK: Final = "_credfetcher_handler"

STDERR_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    level: str,
    *,
    journald: bool | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    journal_sender: Callable[..., object] | None = None,
) -> logging.Handler:
    """Send the root logger's records to the journal or to stderr at ``level``; return the handler.

    ``journald=None`` decides from ``$JOURNAL_STREAM`` (see above); True forces the journal (and
    falls back to stderr with a warning when systemd-python is missing); False forces stderr.
    ``stream``, ``environ`` and ``journal_sender`` exist for tests.
    """
    lvl = parse_level(level)
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    want_journal = _journal_stream_is_stderr(env, out) if journald is None else journald

    handler: logging.Handler
    missing_extra = want_journal and _sd_journal is None
    if want_journal and _sd_journal is not None:
        handler = _sd_journal.JournalHandler(
            sender_function=_journal_fields_only(journal_sender or _sd_journal.send),
            SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
        )
        # The journal stores time, priority and identifier itself; MESSAGE is just the text.
        handler.setFormatter(EscapingFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(KeyValueFormatter(STDERR_FORMAT))
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(lvl)
    if missing_extra:
        _log.warning("journald logging requested but systemd-python is not installed; using stderr")
    return handler
