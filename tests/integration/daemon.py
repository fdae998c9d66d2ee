"""Run the real ``credfetcherd`` against the test DC, as its own process, the way systemd would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
from credfetcher.credspec import make_credspec
from tests.conftest import TestDC


@dataclass
class Daemon:
    """One credfetcherd process, its directories, and a client stub."""

    dc: TestDC
    root: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    #: Run the daemon under this command (e.g. ``setpriv`` with the unit's capabilities).
    argv_prefix: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_path = self.root / "daemon.log"

    @property
    def krb_dir(self) -> Path:
        return Path(self.env["CF_KRB_DIR"])

    @property
    def socket_path(self) -> Path:
        return Path(self.env["CF_UNIX_DOMAIN_SOCKET_DIR"]) / "credentials_fetcher.sock"

    def command(self) -> list[str]:
        """How the daemon is started (the packaged launcher's test overrides it)."""
        return [*self.argv_prefix, sys.executable, "-m", "credfetcher.daemon"]

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"credfetcherd exited {self.proc.returncode}: {self.log()}")
            if self.socket_path.exists():
                try:
                    with self.channel() as ch:
                        pb_grpc.CredentialsFetcherServiceStub(ch).HealthCheck(
                            pb.HealthCheckRequest(), timeout=2
                        )
                except grpc.RpcError:
                    pass
                else:
                    return
            time.sleep(0.1)
        raise AssertionError(f"credfetcherd did not serve within {timeout} s: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.socket_path}")

    @contextmanager
    def client(self) -> Iterator[pb_grpc.CredentialsFetcherServiceStub]:
        with self.channel() as ch:
            yield pb_grpc.CredentialsFetcherServiceStub(ch)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The installed ``credfetcher`` client, pointed at this daemon's socket."""
        script = Path(sys.executable).with_name("credfetcher")
        argv = [str(script)] if script.exists() else [sys.executable, "-m", "credfetcher.cli"]
        return subprocess.run(
            [*argv, "--socket", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    def credspec(self, gmsa: str) -> str:
        return make_credspec(gmsa, self.dc.domain, self.dc.netbios)

    def add(self, *gmsas: str, timeout: float = 60) -> pb.CreateKerberosLeaseResponse:
        with self.client() as stub:
            return stub.AddKerberosLease(
                pb.CreateKerberosLeaseRequest(credspec_contents=[self.credspec(g) for g in gmsas]),
                timeout=timeout,
            )

    def klist(self, ccache: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["klist", "-c", f"FILE:{ccache}"],
            env=self.dc.krb5_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def daemon_env(dc: TestDC, root: Path, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CF_", "KRB5", "NOTIFY_", "WATCHDOG_"))
    }
    env.update(
        KRB5_CONFIG=str(dc.krb5_config),
        CF_KRB_DIR=str(root / "krbdir"),
        CF_UNIX_DOMAIN_SOCKET_DIR=str(root / "socket"),
        CF_DOMAIN_CONTROLLERS=dc.dc_fqdn,
        CF_MACHINE_KEYTAB=str(dc.host_keytab),
        CF_MACHINE_PRINCIPAL=dc.host_principal,
        CF_LDAP_CA_FILE=str(dc.ca_file),
        CF_LOG_LEVEL="DEBUG",
    )
    env.update(overrides)
    return env


@contextmanager
def running_daemon(dc: TestDC, root: Path, **overrides: str) -> Iterator[Daemon]:
    """A started daemon; stopped (SIGTERM, then SIGKILL) when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(dc, root, daemon_env(dc, root, **overrides))
    daemon.start()
    try:
        yield daemon
    finally:
        if daemon.proc is not None:
            try:
                daemon.stop(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
