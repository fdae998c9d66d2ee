"""The lease directory is hostile ground (issue 15): attacks performed for real against the daemon.

The attacker is a "container root": root in its own mount namespace (``unshare -m``) with one
lease's gMSA directory bind-mounted read-write, exactly what ``docker -v`` without ``:ro`` or a
Kubernetes hostPath gives a root app. Whatever it leaves at the lease's file names -- a symlink
to a decoy file, a dangling symlink, a FIFO, a socket, a directory, a hard link, a 1 GiB file --
the daemon must replace or report it, never follow it, never block on it, never truncate anything
else; the attacked lease shows the problem in ListLeases; every other lease keeps renewing.

Checked throughout: every file under a decoy root is hashed before and after (symlinks point
into it); HealthCheck is polled every 20 ms from a separate process and must always answer within
100 ms. Tickets are short (150 s, renewed 135 s before their end: every 7.5-15 s) so renewals
happen within each test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.leases import CCACHE_NAME, KEYTAB_NAME
from credfetcher.tickets import read_ticket_info
from tests.conftest import REPO, TestDC
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs root and unshare (util-linux)",
)

TICKET_LIFETIME = 150  # the test DC's shortest usable TGT (see the field notes)
RENEW_MARGIN = 135  # renewals every 7.5-15 s
HEALTH_LIMIT = 0.1
RACE_ATTEMPTS = 200

# Root in a private mount namespace with the lease's gMSA directory bind-mounted read-write at
# /mnt/lease (a tmpfs over /mnt keeps the host's /mnt untouched). $1 source, $2 the attack.
_CONTAINER = r"""
set -eu
mount -t tmpfs -o size=1m,mode=0755 cf-attacker /mnt
mkdir /mnt/lease
mount --bind "$1" /mnt/lease
cd /mnt/lease
eval "$2"
"""

# A separate process: HealthCheck every 20 ms until stdin closes, then the latencies as JSON.
_HEALTH_PROBE = r"""
import json, sys, threading, time
import grpc
from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher._proto import credentialsfetcher_pb2_grpc as pb_grpc
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
slow, count, worst = [], 0, 0.0
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    stub = pb_grpc.CredentialsFetcherServiceStub(ch)
    stub.HealthCheck(pb.HealthCheckRequest(), timeout=5)  # connected before measuring
    while not stop.is_set():
        start = time.monotonic()
        try:
            stub.HealthCheck(pb.HealthCheckRequest(), timeout=5)
            error = ""
        except grpc.RpcError as exc:
            error = exc.code().name
        took = time.monotonic() - start
        count += 1
        worst = max(worst, took)
        if took >= 0.1 or error:
            slow.append([time.time(), took, error])
        stop.wait(0.02)
print(json.dumps({"count": count, "worst": worst, "slow": slow}))
"""

# The keytab symlink-swap race, as the attacker ran it: inotify on the lease directory;
# a freshly installed krb5.keytab is deleted at once (so the daemon writes it again), and any
# daemon temp file that appears is replaced by a symlink to the victim. Prints its counts on
# SIGTERM. $1 the victim.
_RACER = r"""
import ctypes, os, signal, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
IN_CREATE, IN_MOVED_TO = 0x100, 0x80
if fd < 0 or libc.inotify_add_watch(fd, b".", IN_CREATE | IN_MOVED_TO) < 0:
    sys.exit("inotify failed")
victim = sys.argv[1]
counts = {"temps": 0, "swapped": 0, "deleted": 0}
def report(*_):
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, report)
try:
    os.unlink("krb5.keytab")
except FileNotFoundError:
    pass
print("ready", flush=True)
while True:
    buf = os.read(fd, 65536)
    i = 0
    while i < len(buf):
        _, mask, _, size = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16 : i + 16 + size].rstrip(b"\0").decode()
        i += 16 + size
        if mask & IN_CREATE and name.startswith(".cf-tmp-krb5.keytab"):  # not our own renames
            counts["temps"] += 1
            try:
                os.symlink(victim, ".swap")
                os.rename(".swap", name)
                counts["swapped"] += 1
            except OSError:
                pass
        elif name == "krb5.keytab":
            try:
                os.unlink(name)
                counts["deleted"] += 1
            except OSError:
                pass
"""


def as_container_root(source: Path, attack: str) -> None:
    """Run the shell ``attack`` as root in its own mount namespace, inside ``source``."""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _CONTAINER, "attacker",
         str(source), attack],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def tree_hashes(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a symlink's target, a directory's name."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@dataclass
class HealthProbe:
    proc: subprocess.Popen[str]

    def finish(self) -> dict[str, object]:
        out, err = self.proc.communicate(input="", timeout=30)
        assert self.proc.returncode == 0, err
        result: dict[str, object] = json.loads(out)
        return result


@contextlib.contextmanager
def health_probe(daemon: Daemon) -> Iterator[HealthProbe]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HEALTH_PROBE, str(daemon.socket_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    probe = HealthProbe(proc)
    try:
        yield probe
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def assert_never_blocked(result: dict[str, object]) -> None:
    count = result["count"]
    assert isinstance(count, int)
    assert count > 20, result
    worst = result["worst"]
    assert isinstance(worst, float)
    assert worst < HEALTH_LIMIT, f"HealthCheck took {worst:.3f} s: {result['slow']}"


@dataclass
class Seen:
    """What ListLeases showed of one lease over time."""

    states: list[tuple[float, str, str, int]] = field(default_factory=list)

    def errors(self) -> str:
        return "\n".join(error for _, _, error, _ in self.states if error)


class ListWatcher:
    """Polls ListLeases every 100 ms in a thread, keeping every (state, error) transition."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.seen: dict[str, Seen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.daemon.client() as stub:
            while not self._stop.is_set():
                with contextlib.suppress(Exception):
                    self.record(stub.ListLeases(pb.ListLeasesRequest(), timeout=5))
                self._stop.wait(0.1)

    def record(self, response: pb.ListLeasesResponse) -> None:
        now = time.time()
        for lease in response.leases:
            seen = self.seen.setdefault(lease.lease_id, Seen())
            error = "; ".join(t.last_error for t in lease.tickets if t.last_error)
            expires = min((t.expires_at for t in lease.tickets), default=0)
            entry = (now, lease.state, error, expires)
            if not seen.states or seen.states[-1][1:] != entry[1:]:
                seen.states.append(entry)

    def __enter__(self) -> ListWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_for(self, lease_id: str, predicate: str, timeout: float) -> None:
        """Wait until the lease's error contains ``predicate`` ("" = active and error-free)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.seen.get(lease_id, Seen()).states
            if predicate and any(predicate in error for _, _, error, _ in states):
                return
            if not predicate and states and states[-1][1:3] == ("active", ""):
                return
            time.sleep(0.1)
        raise AssertionError(
            f"lease {lease_id} never showed {predicate or 'active'!r}: "
            f"{self.seen.get(lease_id)}\n{self.daemon.log()[-4000:]}"
        )


def list_leases(daemon: Daemon) -> dict[str, pb.LeaseInfo]:
    with daemon.client() as stub:
        response = stub.ListLeases(pb.ListLeasesRequest(), timeout=10)
    return {lease.lease_id: lease for lease in response.leases}


def expires(daemon: Daemon, lease_id: str) -> int:
    return min(t.expires_at for t in list_leases(daemon)[lease_id].tickets)


def wait_renewed(daemon: Daemon, lease_id: str, old_expiry: int, timeout: float = 30) -> None:
    """The lease got a later ticket than ``old_expiry`` and is active (it kept renewing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = list_leases(daemon)[lease_id]
        if lease.state == "active" and expires(daemon, lease_id) > old_expiry:
            return
        time.sleep(0.5)
    raise AssertionError(f"lease {lease_id} stopped renewing: {list_leases(daemon)[lease_id]}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def daemon(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        samba_dc,
        tmp_path_factory.mktemp("hostile"),
        CF_WRITE_KEYTAB="1",
        CF_TICKET_LIFETIME=str(TICKET_LIFETIME),
        CF_RENEW_MARGIN=str(RENEW_MARGIN),
    ) as started:
        yield started


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """Files an attacker would like root to write: their hashes must never change."""
    root = tmp_path / "decoy"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "victim").write_bytes(b"root's precious file\n" * 100)
    (root / "etc" / "race-victim").write_bytes(b"another precious file\n" * 100)
    (root / "etc" / "shadow").write_bytes(b"root:$6$not-a-real-hash:19000::::::\n")
    return root


def gmsa_dir(daemon: Daemon, lease_id: str) -> Path:
    (entry,) = [p for p in (daemon.krb_dir / lease_id).iterdir() if p.is_dir()]
    return entry


# --------------------------------------------------------------------------- tests


ATTACKS = {
    # name: (shell run in the lease's gMSA directory, what ListLeases must name)
    "symlink": ('ln -s "$VICTIM" .x && mv -T .x krb5cc', "found a symlink"),
    "dangling symlink": ('ln -s "$DANGLING" .x && mv -T .x krb5.keytab', "found a symlink"),
    "fifo": ("mkfifo .x && mv -T .x krb5.keytab", "found a FIFO"),
    "socket": (
        "python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\".x\")' "
        "&& mv -T .x krb5cc",
        "found a socket",
    ),
    "directory": ("rm krb5cc && mkdir -p krb5cc/inside && echo mine > krb5cc/inside/f",
                  "a directory sits there"),
    "hard link": ("echo mine > mine && ln mine .x && mv -T .x krb5cc", "found a hard link"),
    "1 GiB file": ("truncate -s 1G .x && mv -T .x krb5cc", "found a 1073741824-byte file"),
}


def test_whatever_sits_at_a_lease_file_name_is_replaced_or_reported(
    daemon: Daemon, samba_dc: TestDC, decoy: Path
) -> None:
    g1, g2, g3 = samba_dc.gmsas
    attacked = {name: daemon.add((g1, g2, g3)[i % 3]).lease_id for i, name in enumerate(ATTACKS)}
    bystanders = [daemon.add(g1).lease_id, daemon.add(g2).lease_id]
    before = tree_hashes(decoy)
    first_expiry = {lid: expires(daemon, lid) for lid in bystanders}
    env = {
        "VICTIM": str(decoy / "etc" / "victim"),
        "DANGLING": str(decoy / "etc" / "created-by-root"),
    }
    with ListWatcher(daemon) as watcher, health_probe(daemon) as probe:
        for name, lease_id in attacked.items():
            script, _ = ATTACKS[name]
            exports = "".join(f"export {k}='{v}'; " for k, v in env.items())
            as_container_root(gmsa_dir(daemon, lease_id), exports + script)
        # One renewal cycle (<= 15 s) writes every lease's files: each attack is met.
        for name, lease_id in attacked.items():
            watcher.wait_for(lease_id, ATTACKS[name][1], timeout=40)
        # Replaced things are gone at the next renewal; the directory is still refused.
        for name, lease_id in attacked.items():
            if name != "directory":
                watcher.wait_for(lease_id, "", timeout=40)
        health = probe.finish()

    assert_never_blocked(health)
    assert tree_hashes(decoy) == before, "a file outside the lease directory changed"
    assert not (decoy / "etc" / "created-by-root").exists()
    for name, lease_id in attacked.items():
        directory = gmsa_dir(daemon, lease_id)
        if name == "directory":
            assert (directory / "krb5cc" / "inside" / "f").read_text() == "mine\n"
            lease = list_leases(daemon)[lease_id]
            assert lease.state == "failing"
            assert "a directory sits there" in lease.tickets[0].last_error
            continue
        for file_name in (CCACHE_NAME, KEYTAB_NAME):
            st = (directory / file_name).lstat()
            assert st.st_nlink == 1, (name, file_name)
            assert st.st_size < 1 << 20, (name, file_name)
        info = read_ticket_info(directory / CCACHE_NAME)
        assert info is not None, name
        if name == "hard link":
            assert (directory / "mine").read_text() == "mine\n"  # not truncated, not replaced
    for lease_id in bystanders:
        wait_renewed(daemon, lease_id, first_expiry[lease_id])
        assert watcher.seen[lease_id].errors() == ""


def test_keytab_symlink_swap_race(daemon: Daemon, samba_dc: TestDC, decoy: Path) -> None:
    """The issue's race, >= 200 times: delete krb5.keytab, wait (inotify) for the daemon's temp
    file, rename a symlink to a victim over it. The daemon's temp files never appear in the
    lease directory, so there is nothing to swap, and the victim never changes."""
    user = pb.RenewNonDomainJoinedKerberosLeaseRequest(
        username=samba_dc.user, password=samba_dc.user_password, domain=samba_dc.domain
    )
    with daemon.client() as stub:
        lease_id = stub.AddNonDomainJoinedKerberosLease(
            pb.CreateNonDomainJoinedKerberosLeaseRequest(
                credspec_contents=[daemon.credspec(samba_dc.gmsas[2])],
                username=samba_dc.user,
                password=samba_dc.user_password,
                domain=samba_dc.domain,
            ),
            timeout=60,
        ).lease_id
    bystander = daemon.add(samba_dc.gmsas[0]).lease_id
    bystander_expiry = expires(daemon, bystander)
    directory = gmsa_dir(daemon, lease_id)
    before = tree_hashes(decoy)
    racer = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", _CONTAINER, "attacker",
         str(directory), f'exec {sys.executable} -c "$RACER" "$VICTIM"'],
        env={**os.environ, "RACER": _RACER, "VICTIM": str(decoy / "etc" / "race-victim")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert racer.stdout is not None
        assert racer.stdout.readline().strip() == "ready", racer.stderr
        with health_probe(daemon) as probe, daemon.client() as stub:
            for _ in range(RACE_ATTEMPTS + 20):
                # Each call renews the lease now and writes its keytab again (it is missing).
                stub.RenewNonDomainJoinedKerberosLease(user, timeout=30)
                time.sleep(0.005)  # let the racer see the install and delete it
            health = probe.finish()
    finally:
        racer.terminate()
        out, err = racer.communicate(timeout=30)
    counts = dict(item.split("=") for item in out.split())
    assert tree_hashes(decoy) == before, f"the victim changed: {counts}"
    assert counts["temps"] == "0", f"a daemon temp file appeared in the lease dir: {counts}"
    # Every call wrote the keytab again and the racer was there to meet it: >= 200 attempts.
    assert int(counts["deleted"]) >= RACE_ATTEMPTS, (counts, err)
    assert_never_blocked(health)
    wait_renewed(daemon, bystander, bystander_expiry)


def _domainless_lease(daemon: Daemon, samba_dc: TestDC, gmsa: str) -> str:
    with daemon.client() as stub:
        return stub.AddNonDomainJoinedKerberosLease(
            pb.CreateNonDomainJoinedKerberosLeaseRequest(
                credspec_contents=[daemon.credspec(gmsa)],
                username=samba_dc.user,
                password=samba_dc.user_password,
                domain=samba_dc.domain,
            ),
            timeout=60,
        ).lease_id


FIFO = "mkfifo .x && mv -T .x krb5cc"


def test_fifo_at_the_ccache_does_not_block_a_renewal_call(
    daemon: Daemon, samba_dc: TestDC
) -> None:
    """mkfifo at a domainless lease's krb5cc, then RenewNonDomainJoinedKerberosLease: the call
    answers at once, HealthCheck never waits, the FIFO is reported and replaced."""
    domainless = _domainless_lease(daemon, samba_dc, samba_dc.gmsas[1])
    bystander = daemon.add(samba_dc.gmsas[2]).lease_id
    as_container_root(gmsa_dir(daemon, domainless), FIFO)
    user = pb.RenewNonDomainJoinedKerberosLeaseRequest(
        username=samba_dc.user, password=samba_dc.user_password, domain=samba_dc.domain
    )
    with ListWatcher(daemon) as watcher, health_probe(daemon) as probe:
        with daemon.client() as stub:
            # today's main: blocks in open() of the FIFO (read_ticket_info), DEADLINE_EXCEEDED
            stub.RenewNonDomainJoinedKerberosLease(user, timeout=20)
        watcher.wait_for(domainless, "found a FIFO", timeout=10)
        time.sleep(1)  # and a while after it
        health = probe.finish()
    assert_never_blocked(health)
    ccache = gmsa_dir(daemon, domainless) / CCACHE_NAME
    assert ccache.is_file()
    assert read_ticket_info(ccache) is not None
    assert list_leases(daemon)[bystander].state == "active"


def test_fifo_at_the_ccache_does_not_block_start_up(daemon: Daemon, samba_dc: TestDC) -> None:
    """mkfifo at krb5cc, then restart the daemon: it comes up and serves; the FIFO is reported
    and replaced by the start-up renewal."""
    joined = daemon.add(samba_dc.gmsas[0]).lease_id
    bystander = daemon.add(samba_dc.gmsas[2]).lease_id
    as_container_root(gmsa_dir(daemon, joined), FIFO)

    daemon.stop()
    started = time.monotonic()
    daemon.start(timeout=20)  # today's main: never serves (open() of the FIFO blocks)
    assert time.monotonic() - started < 20
    with ListWatcher(daemon) as watcher:
        watcher.wait_for(joined, "found a FIFO", timeout=10)
    ccache = gmsa_dir(daemon, joined) / CCACHE_NAME
    assert ccache.is_file()
    assert read_ticket_info(ccache) is not None
    assert list_leases(daemon)[bystander].state == "active"
