"""``credfetcherd``: the daemon. Runs in the foreground; systemd (Type=notify) supervises it.

Start-up order matters to callers: configuration is parsed and checked, krbdir is listed (and
the leftovers of interrupted writes removed), the gRPC socket is bound, a HealthCheck call is
made through the socket itself, and only then is READY=1 sent (sd_notify(3)), so a unit ordered
after credfetcher.service can call it at once. The leases on disk load in the background after
that (a call that names one first loads it itself; :mod:`credfetcher.lease_index`), and their
missing or expired caches are renewed once every lease is in. WATCHDOG=1 is sent only while the
renewal loop is alive. SIGTERM sends STOPPING=1, lets in-flight calls finish and exits 0 within
10 seconds.

The process holds passwords and keys in memory, so before anything else it makes itself
non-dumpable (prctl(2) PR_SET_DUMPABLE 0: no core dump, no ptrace by other users, /proc/<pid>/mem
root-only) and sets its core size limit to 0 (which systemd-coredump honours too). The watchdog
kills with SIGABRT: without this, that would write every secret in the heap to disk.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import logging
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import grpc

from credfetcher import __version__, gcpolicy
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.config import SETTINGS, Config, describe, load_config, parse_metrics_address
from credfetcher.directory import check_ldap_transport
from credfetcher.errors import ConfigError, CredfetcherError
from credfetcher.exporter import MetricsServer
from credfetcher.server import Server
from credfetcher.service import LeaseService
from credfetcher.systemd import Notifier, configure_logging

log = logging.getLogger("credfetcher")

STOP_GRACE = 8.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credfetcherd",
        description=(
            "Serve gMSA Kerberos leases for containers over gRPC on a Unix socket "
            "(credentials-fetcher compatible). Settings come from flags, then CF_* environment "
            "variables, then the TOML file, then defaults."
        ),
        epilog=(
            "examples:\n"
            "  credfetcherd --check-config\n"
            "  CF_DOMAIN_CONTROLLERS=dc1.corp.example.com credfetcherd\n"
            "  credfetcherd --config /etc/credfetcher/credfetcher.toml --log-level DEBUG\n"
            "docs: /usr/share/doc/credfetcher/ (configuration.md lists every setting)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, help="TOML file (default /etc/credfetcher/credfetcher.toml)"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective configuration and exit (non-zero when invalid)",
    )
    parser.add_argument("--version", action="version", version=f"credfetcherd {__version__}")
    group = parser.add_argument_group("settings (each also an environment variable)")
    for setting in SETTINGS:
        # argparse %-formats help texts: a literal "90 %" would break --help.
        text = f"{setting.help} [{setting.env}]".replace("%", "%%")
        group.add_argument(setting.flag, dest=setting.name, metavar="VALUE", help=text)
    return parser


def check_config(config: Config) -> int:
    width = max(len(env) for env, _, _ in describe(config))
    for env, _, value in describe(config):
        print(f"{env.ljust(width)}  {value}")
    if config.config_file is not None:
        print(f"# file: {config.config_file}")
    return 0


def wait_until_serving(socket_path: Path, timeout: float = 10.0) -> None:
    """Make a real HealthCheck call through the socket: proof it accepts calls."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = pb_grpc.CredentialsFetcherServiceStub(channel)
        stub.HealthCheck(pb.HealthCheckRequest(service="startup"), timeout=timeout)


def start_credspec_lease(service: LeaseService, config: Config) -> None:
    """CF_CRED_SPEC_FILE: create its lease once; later starts keep (and renew) it."""
    spec = config.cred_spec_file
    if spec is None:
        return
    if service.store.exists(spec.lease_id):
        log.info("start-up lease %s already exists; keeping it fresh", spec.lease_id)
        return
    try:
        text = spec.path.read_text()
        service.add_lease([text], lease_id=spec.lease_id)
    except OSError as exc:
        log.exception("CF_CRED_SPEC_FILE %s: %s", spec.path, exc.strerror)
    except CredfetcherError as exc:
        log.exception("CF_CRED_SPEC_FILE %s: %s", spec.path, exc.message)


def start_metrics(service: LeaseService, config: Config) -> MetricsServer | None:
    """The Prometheus endpoint, when CF_METRICS_ADDRESS is set (the address is checked by
    config). A port that cannot be bound stops the start: the operator asked for metrics."""
    if config.metrics_address is None:
        return None
    gid = grp.getgrnam(config.socket_group).gr_gid if config.socket_group else None
    exporter = MetricsServer(
        parse_metrics_address(config.metrics_address), service.metrics_state, socket_gid=gid
    )
    exporter.start()
    return exporter


# prctl(2) options (linux/prctl.h).
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4


def disable_core_dumps() -> bool:
    """Make this process non-dumpable and its core limit 0; True when both hold afterwards.

    A failure is logged as a warning and the daemon goes on: refusing to start would turn a
    missing hardening into an outage, and the unit's LimitCORE=0 still stops core files.
    """
    ok = True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        zero = ctypes.c_ulong(0)
        if libc.prctl(PR_SET_DUMPABLE, zero, zero, zero, zero) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    except (OSError, AttributeError) as exc:
        ok = False
        log.warning("cannot make the process non-dumpable; a crash may dump secrets: %s", exc)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if soft != 0:
            # Lowering needs no privilege; under the unit (LimitCORE=0) there is nothing to do,
            # which matters because its seccomp filter refuses setrlimit (@resources).
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (OSError, ValueError) as exc:
        ok = False
        log.warning("cannot set the core size limit to 0: %s", exc)
    return ok


def block_stop_signals() -> None:
    """Leave SIGTERM and SIGINT pending for :func:`wait_for_stop_signal` (this thread and every
    thread it starts from now on)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def wait_for_stop_signal(timeout: float) -> int | None:
    """The stop signal that is or becomes pending within ``timeout`` seconds, else None."""
    info = signal.sigtimedwait(STOP_SIGNALS, timeout)
    return None if info is None else info.si_signo


def run(config: Config, notifier: Notifier) -> int:
    # SIGTERM and SIGINT are taken by the main loop with sigtimedwait(2), never by a handler: a
    # Python handler runs on the main thread between bytecodes, and one that set a
    # threading.Event could interrupt that Event's own wait() while it holds the Event's lock and
    # deadlock (seen once in CI: "received SIGTERM" logged, then a hang). Blocked before any
    # thread starts, so every thread inherits the mask and the signal waits for the main loop.
    block_stop_signals()

    # The background threads (recovery, renewal, CF_AWS_SM_SECRET_NAME's first read and its
    # refresh) start here and stop in service.stop() (credfetcher.supervisor).
    service = LeaseService(config)
    serving = threading.Event()
    service.start(serving)
    start_credspec_lease(service, config)
    # Before the socket: once HealthCheck answers, the metrics endpoint answers too.
    exporter = start_metrics(service, config)
    server = Server(service)
    server.start()
    wait_until_serving(config.socket_path)
    serving.set()
    log.info("serving on unix:%s (krbdir %s)", config.socket_path, config.krb_dir)
    notifier.ready(f"serving {service.scheduler.lease_count()} lease(s)")
    gc_stop = threading.Event()
    gcpolicy.start(gc_stop, loaded=service.index.wait_loaded)

    interval = notifier.watchdog_interval() or 10.0
    while (received := wait_for_stop_signal(min(interval, 10.0))) is None:
        ok = server.update_health()
        if service.scheduler.alive(max_age=60.0):
            notifier.watchdog()
        leases = service.scheduler.lease_count()
        notifier.status(f"{leases} lease(s); {'healthy' if ok else 'degraded'}")

    log.info("received %s, stopping", signal.Signals(received).name)
    notifier.stopping("stopping")
    started = time.monotonic()
    server.stop(STOP_GRACE)
    if exporter is not None:
        exporter.stop()
    gc_stop.set()
    service.stop()
    log.info("stopped in %.1f s", time.monotonic() - started)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    try:
        config = load_config(flags, config_file=args.config)
        # A transport this ldap3 cannot provide is a configuration error, not a failed request.
        check_ldap_transport(config.ldap_transport, config.domain_controllers)
    except ConfigError as exc:
        print(f"credfetcherd: invalid configuration: {exc.message}", file=sys.stderr)
        return 2
    if args.check_config:
        return check_config(config)
    configure_logging(config.log_level)
    disable_core_dumps()
    notifier = Notifier()
    try:
        return run(config, notifier)
    except CredfetcherError as exc:
        log.critical("cannot start: %s", exc.message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
