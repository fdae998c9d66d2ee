"""A lease's ccache and keytab through real gMSA password changes on Samba, on a fake clock.

One gMSA of the private rotation domain (:mod:`tests.integration.rotation_domain`), one daemon
with ``CF_WRITE_KEYTAB=true``, and MIT's own tools as judges at each moment of the timeline
``docs/rotation.md`` describes: 10 minutes before a change, inside the five-minute window before
it, right after it, the same for a second change, and a daemon restart inside the window. At
each one: ``kvno`` with the lease's ccache, ``kvno -k`` and ``kinit -k -t`` with its keytab, and
the keytab's versions against the DC's ``msDS-KeyVersionNumber``. A service ticket issued before
each change must still decrypt with the keytab written after it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.integration.daemon import Daemon, daemon_env
from tests.integration.rotation_domain import RotationDomain

# Renewals are due at the latest when the keys must be read again; the loop wakes every 10 s.
KEYTAB_WAIT = 40.0


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def keytab_versions(keytab: Path) -> list[int]:
    """The kvno of each entry, in file order (``klist -k``)."""
    out = run(["klist", "-k", str(keytab)], {"PATH": "/usr/bin:/bin"}).stdout
    return [int(m.group(1)) for m in re.finditer(r"^\s*(\d+) \S+@", out, re.MULTILINE)]


def wait_for_keytab(keytab: Path, want: list[int], daemon: Daemon) -> None:
    """Until the keytab holds exactly the versions ``want`` (in effect first)."""
    deadline = time.monotonic() + KEYTAB_WAIT
    versions: list[int] = []
    while time.monotonic() < deadline:
        if keytab.exists():
            versions = keytab_versions(keytab)
            if sorted(set(versions)) == sorted(want) and versions[0] == want[0]:
                return
        time.sleep(0.5)
    raise AssertionError(
        f"keytab holds kvno {versions}, want {want} (in effect first)\n{daemon.log()[-4000:]}"
    )


class Judge:
    """MIT's tools on the fake clock, for one gMSA's lease files."""

    def __init__(self, domain: RotationDomain, gmsa: str, lease_dir: Path, scratch: Path) -> None:
        self.domain = domain
        self.principal = f"{gmsa}$@{domain.dc.realm}"
        self.ccache = lease_dir / "krb5cc"
        self.keytab = lease_dir / "krb5.keytab"
        self.scratch = scratch
        self.n = 0

    def _ok(self, argv: list[str], env: dict[str, str], what: str) -> str:
        proc = run(argv, env)
        assert proc.returncode == 0, f"{what}: {' '.join(argv)}: {proc.stderr.strip()}"
        return proc.stdout

    def service_ticket(self) -> Path:
        """A copy of the lease ccache holding a service ticket to the gMSA issued now."""
        self.n += 1
        copy = self.scratch / f"issued-{self.n}.cc"
        shutil.copyfile(self.ccache, copy)
        env = self.domain.krb5_env(f"FILE:{copy}")
        self._ok(["kvno", self.principal], env, "service ticket with the lease ccache")
        return copy

    def check(self, *, earlier_tickets: tuple[Path, ...] = (), kinit: bool = True) -> None:
        # The lease's ccache gets a service ticket, which the lease's keytab decrypts.
        ticket = self.service_ticket()
        env = self.domain.krb5_env(f"FILE:{ticket}")
        self._ok(["kvno", "-k", str(self.keytab), self.principal], env,
                 "keytab decrypts a service ticket issued now")
        # Tickets issued before (e.g. before the change) still decrypt with today's keytab.
        for old in earlier_tickets:
            env = self.domain.krb5_env(f"FILE:{old}")
            self._ok(["kvno", "-k", str(self.keytab), self.principal], env,
                     f"keytab decrypts a service ticket issued earlier ({old.name})")
        if not kinit:
            return
        # The keytab authenticates as the gMSA.
        self.n += 1
        env = self.domain.krb5_env(f"FILE:{self.scratch / f'kinit-{self.n}.cc'}")
        self._ok(["kinit", "-k", "-t", str(self.keytab), self.principal], env,
                 "kinit with the lease keytab")


def start_daemon(domain: RotationDomain, root: Path) -> Daemon:
    env = daemon_env(
        domain.dc, root,
        CF_LDAP_CA_FILE=str(domain.ca_bundle),
        CF_WRITE_KEYTAB="true",
        CF_TICKET_LIFETIME="3600",
        CF_RENEW_MARGIN="600",
    )
    root.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(domain.dc, root, domain.clock.env(env))
    daemon.start(timeout=60)
    return daemon


def test_keytab_and_ccache_through_two_rotations_and_a_restart(
    rotation_domain: RotationDomain, tmp_path: Path
) -> None:
    domain, clock = rotation_domain, rotation_domain.clock
    gmsa = domain.new_gmsa("rot")
    change1 = domain.next_change(gmsa)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    # 10 minutes before the first change (and past one interval of the account's life is not
    # needed: the blob of the window already carries the password in effect as "previous").
    clock.jump_to(change1 - 600)
    kvno = domain.kvno(gmsa)
    daemon = start_daemon(domain, tmp_path / "d")
    try:
        lease = daemon.add(gmsa)
        judge = Judge(domain, gmsa, Path(lease.created_kerberos_file_paths[0]), scratch)
        assert keytab_versions(judge.keytab)[0] == kvno
        judge.check()
        before_window = judge.service_ticket()

        # Inside the five-minute window: the DC hands out the next password already.
        clock.jump_to(change1 - 290)
        wait_for_keytab(judge.keytab, [kvno, kvno + 1], daemon)
        assert domain.kvno(gmsa) == kvno
        # No kinit -k here: MIT takes the highest kvno of a keytab for an AS request (the KDC's
        # ETYPE-INFO2 names no kvno), and that is the next password, which the KDC refuses until
        # the change (docs/rotation.md, "kinit -k in the window").
        judge.check(earlier_tickets=(before_window,), kinit=False)
        in_window = judge.service_ticket()

        # Right after the change: the new password at the DC's new kvno, the previous beside it.
        clock.jump_to(change1 + 15)
        wait_for_keytab(judge.keytab, [kvno + 1, kvno], daemon)
        assert domain.kvno(gmsa) == kvno + 1
        judge.check(earlier_tickets=(before_window, in_window))
        assert f"changed on {domain.dc.dc_fqdn}: kvno {kvno} -> {kvno + 1}" in daemon.log()

        # The second change, with a daemon restart inside its window.
        change2 = domain.next_change(gmsa)
        assert change2 > change1
        clock.jump_to(change2 - 600)
        time.sleep(11)  # a renewal pass on the new time (tickets of the first change expired)
        wait_for_keytab(judge.keytab, [kvno + 1, kvno], daemon)
        judge.check()
        before_window = judge.service_ticket()

        clock.jump_to(change2 - 290)
        assert daemon.stop() == 0
        daemon.start(timeout=60)
        wait_for_keytab(judge.keytab, [kvno + 1, kvno + 2], daemon)
        judge.check(earlier_tickets=(before_window,), kinit=False)
        in_window = judge.service_ticket()

        clock.jump_to(change2 + 15)
        wait_for_keytab(judge.keytab, [kvno + 2, kvno + 1], daemon)
        assert domain.kvno(gmsa) == kvno + 2
        judge.check(earlier_tickets=(before_window, in_window))
    finally:
        if daemon.proc is not None:
            daemon.stop()
