"""A private two-DC Samba domain on a shared fake clock, where gMSA passwords really rotate.

Samba 4.22 derives a gMSA's password from the KDS root key, the account's SID and the time (a
change every ``msDS-ManagedPasswordInterval`` x 24 h, on a 10-hour boundary): the only way to see a
rotation within a test is to move the clock. Both DCs, every ``samba-tool`` call, the MIT tools
and the daemon run under libfaketime reading one clock file (``FAKETIME_TIMESTAMP_FILE``, re-read
at every call); :meth:`FakeClock.jump_to` writes ``+<seconds>`` into it. Monotonic clocks stay
real (the daemon's pools and timeouts use them).

The domain is not the shared test DC: realm ROTATE.TEST on 127.0.0.21 (dc1) and 127.0.0.22 (dc2),
state under :data:`ROOT`. It is provisioned once and kept between runs (provisioning and the
join take over a minute): the clock file lives beside it and only ever moves forward, so the
domain's own history stays consistent. When the fake clock has run more than
:data:`MAX_OFFSET` ahead (replication metadata would age towards the tombstone lifetime) or the
state is unusable, it is provisioned again. The DCs are stopped when the test session ends.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SAMBA_AD, TestDC, _dc_unavailable, load_test_dc
from tests.integration.daemon import Daemon, daemon_env

ROOT = Path(os.environ.get("CF_ROTATION_STATE", "/var/tmp/credfetcher-rotate"))
DC1_IP = "127.0.0.21"
DC2_IP = "127.0.0.22"
REALM = "ROTATE.TEST"
NETBIOS = "ROTATE"
MAX_OFFSET = 60 * 86_400.0
NT_EPOCH_OFFSET = 11_644_473_600  # seconds from 1601-01-01 to 1970-01-01


def faketime_library() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


@dataclass(frozen=True)
class FakeClock:
    """The clock file shared by the DCs, samba-tool, MIT tools and the daemon."""

    path: Path
    library: str

    def offset(self) -> float:
        text = self.path.read_text().strip() if self.path.exists() else "+0"
        return float(text.lstrip("+") or 0)

    def now(self) -> float:
        return time.time() + self.offset()

    def jump_to(self, when: float) -> None:
        """Move the fake clock to ``when`` (Unix time); it never goes back."""
        offset = when - time.time()
        if offset < self.offset():
            raise AssertionError(f"the fake clock would go back by {self.offset() - offset:.0f} s")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"+{offset:.0f}\n")
        tmp.replace(self.path)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            LD_PRELOAD=self.library,
            FAKETIME_TIMESTAMP_FILE=str(self.path),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            DONT_FAKE_MONOTONIC="1",
        )
        return env


@dataclass(frozen=True)
class RotationDomain:
    """The private domain: its first DC as a :class:`TestDC`, the second DC, the clock."""

    dc: TestDC
    clock: FakeClock
    dc2_ip: str
    dc2_fqdn: str
    dc2_state: Path
    ca_bundle: Path

    def script_env(self) -> dict[str, str]:
        return dict(
            os.environ,
            CF_SAMBA_STATE=str(self.dc.state),
            CF_SAMBA_IP=DC1_IP,
            CF_SAMBA_DC2_IP=DC2_IP,
            CF_SAMBA_REALM=REALM,
            CF_SAMBA_NETBIOS=NETBIOS,
            CF_SAMBA_FAKETIME=str(self.clock.path),
            CF_SAMBA_NO_GMSAS="1",
        )

    def samba_tool(self, *args: str, dc: int = 1) -> str:
        """samba-tool on dc1's (or dc2's) local database, on the fake clock."""
        state = self.dc.state if dc == 1 else self.dc2_state
        proc = subprocess.run(
            ["samba-tool", *args, "-H", str(state / "private" / "sam.ldb"),
             "-s", str(state / "etc" / "smb.conf")],
            env=self.clock.env(), capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, f"samba-tool {args[:2]}: {proc.stderr[-2000:]}"
        return proc.stdout

    def krb5_env(self, ccache: str | None = None) -> dict[str, str]:
        """MIT tools pointed at this domain, on the fake clock (the KDC checks skew)."""
        return self.clock.env(self.dc.krb5_env(ccache))

    def _samba_python(self, script: str, *args: str, stdin: str = "") -> str:
        """Samba's own Python (SamDB on dc1's local database), on the fake clock."""
        prelude = (
            "import sys\n"
            "from samba.samdb import SamDB\nfrom samba.param import LoadParm\n"
            "from samba.auth import system_session\n"
            "lp = LoadParm(); lp.load(sys.argv[1])\n"
            "db = SamDB(url=sys.argv[2], session_info=system_session(), lp=lp)\n"
        )
        proc = subprocess.run(
            ["/usr/bin/python3", "-c", prelude + script,
             str(self.dc.state / "etc" / "smb.conf"),
             str(self.dc.state / "private" / "sam.ldb"), *args],
            input=stdin, env=self.clock.env(), capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    def new_gmsas(self, *prefixes: str) -> list[str]:
        """Fresh gMSAs changing every 20 h (interval 1 day), AES only, readable by CFHOST$.

        Created with one samba-tool call each (membership given as SDDL), then enabled and
        given AES enctypes (without them Samba issues RC4 service tickets to the account) in one
        Samba Python call, then replicated to dc2 at once.
        """
        sid = self._samba_python(
            "from samba.ndr import ndr_unpack\nfrom samba.dcerpc import security\n"
            "m = db.search(expression='(sAMAccountName=CFHOST$)', attrs=['objectSid'])[0]\n"
            "print(ndr_unpack(security.dom_sid, m['objectSid'][0]))\n"
        ).strip()
        stamp = int(self.clock.now()) % 10**7
        names = [f"{prefix}{stamp:07d}"[:15] for prefix in prefixes]
        assert len(set(names)) == len(names), names
        ldif = []
        for name in names:
            self.samba_tool(
                "service-account", "create", f"--name={name}",
                f"--dns-host-name={name}.{self.dc.domain}", "--managed-password-interval=1",
                f"--group-msa-membership=O:BAD:(A;;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;{sid})",
            )
            ldif.append(f"CN={name},CN=Managed Service Accounts,{self.dc.base_dn}")
        self._samba_python(
            "import ldb\n"
            "for dn in sys.stdin.read().splitlines():\n"
            "    m = db.search(base=dn, scope=ldb.SCOPE_BASE, attrs=['userAccountControl'])[0]\n"
            "    uac = int(m['userAccountControl'][0]) & ~2  # UF_ACCOUNTDISABLE\n"
            "    db.modify_ldif(f'dn: {dn}\\nchangetype: modify\\n'\n"
            "        f'replace: userAccountControl\\nuserAccountControl: {uac}\\n-\\n'\n"
            "        'replace: msDS-SupportedEncryptionTypes\\n'\n"
            "        'msDS-SupportedEncryptionTypes: 24\\n')\n",
            stdin="\n".join(ldif),
        )
        self.replicate()
        return names

    def new_gmsa(self, prefix: str) -> str:
        return self.new_gmsas(prefix)[0]

    def replicate(self) -> None:
        """Have dc2 pull the domain partition from dc1 now (not at its next periodic pull).

        ``--local``: into dc2's database by this process (a DsReplicaSync asked of dc2 right
        after its join fails with WERR_FILE_NOT_FOUND until its KCC has run).
        """
        proc = subprocess.run(
            ["samba-tool", "drs", "replicate", self.dc2_fqdn, self.dc.dc_fqdn, self.dc.base_dn,
             "--local", "-A", str(self.dc.state / "admin.auth"), "--use-kerberos=off",
             "-s", str(self.dc2_state / "etc" / "smb.conf")],
            env=self.clock.env(), capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, f"drs replicate: {proc.stderr[-2000:]}"

    def _attributes(self, gmsa: str, *attrs: str, dc: int = 1) -> dict[str, str]:
        out = self.samba_tool("user", "getpassword", f"{gmsa}$", f"--attributes={','.join(attrs)}",
                              dc=dc)
        values: dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                values[key] = value
        return values

    def next_change(self, gmsa: str) -> float:
        """When the gMSA's password changes next (Unix time on the fake clock)."""
        nt = int(self._attributes(gmsa, "virtualManagedPasswordQueryTime")[
            "virtualManagedPasswordQueryTime"])
        return nt / 10**7 - NT_EPOCH_OFFSET

    def change_ahead(self, gmsa: str, lead: float) -> float:
        """The next change at least ``lead`` seconds ahead (jumping past a nearer one)."""
        change = self.next_change(gmsa)
        if change - self.clock.now() < lead:
            self.clock.jump_to(change + 60)
            change = self.next_change(gmsa)
        return change

    def kvno(self, gmsa: str, *, dc: int = 1) -> int:
        """msDS-KeyVersionNumber on dc1 (or dc2), read twice (the first may roll keys over)."""
        self._attributes(gmsa, "msDS-KeyVersionNumber", dc=dc)
        return int(self._attributes(gmsa, "msDS-KeyVersionNumber", dc=dc)[
            "msDS-KeyVersionNumber"])

    def pid(self, which: int) -> int:
        state = self.dc.state if which == 1 else self.dc2_state
        return int((state / "samba.pid").read_text())

    def up(self) -> None:
        """Start whichever DC is down (samba-ad.sh up is idempotent)."""
        proc = subprocess.run([str(SAMBA_AD), "up"], env=self.script_env(), capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]


def _script(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SAMBA_AD), action], env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="session")
def rotation_domain() -> Iterator[RotationDomain]:
    """The private two-DC domain on its fake clock; its DCs stop when the session ends."""
    if os.geteuid() != 0:
        _dc_unavailable("the rotation domain needs root (loopback addresses, ports 88/389)")
    library = faketime_library()
    if library is None:
        _dc_unavailable("libfaketime is not installed (run: docker/samba-ad/samba-ad.sh deps)")
        raise AssertionError("unreachable")
    ROOT.mkdir(parents=True, exist_ok=True)
    clock = FakeClock(ROOT / "clock", library)
    state = ROOT / "dc"
    env = dict(
        os.environ,
        CF_SAMBA_STATE=str(state),
        CF_SAMBA_IP=DC1_IP,
        CF_SAMBA_DC2_IP=DC2_IP,
        CF_SAMBA_REALM=REALM,
        CF_SAMBA_NETBIOS=NETBIOS,
        CF_SAMBA_FAKETIME=str(clock.path),
        CF_SAMBA_NO_GMSAS="1",
    )
    # Leftovers of an interrupted session (a DC may even be stopped by SIGSTOP): stop them.
    _script("stop", env)
    if clock.offset() > MAX_OFFSET or not (state / "dc2" / ".joined").exists():
        _script("down", env)
        clock.path.write_text("+0\n")
    proc = _script("up", env)
    if proc.returncode != 0:
        # A cached state that no longer starts: provision it again once.
        _script("down", env)
        clock.path.write_text("+0\n")
        proc = _script("up", env)
    if proc.returncode != 0:
        _dc_unavailable(f"samba-ad.sh up (rotation domain) failed: {proc.stderr[-2000:]}")
    env_file = Path(proc.stdout.strip().splitlines()[-1])
    values = {k: v.strip("'") for k, _, v in
              (line.partition("=") for line in env_file.read_text().splitlines()) if k}
    domain = RotationDomain(
        dc=load_test_dc(env_file),
        clock=clock,
        dc2_ip=values["CF_TEST_DC2_IP"],
        dc2_fqdn=values["CF_TEST_DC2_FQDN"],
        dc2_state=Path(values["CF_TEST_DC2_STATE"]),
        ca_bundle=Path(values["CF_TEST_CA_BUNDLE"]),
    )
    try:
        yield domain
    finally:
        _script("stop", env)


# -- the daemon and MIT's tools on the fake clock ----------------------------------------

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
            if sorted(set(versions)) == sorted(set(want)) and versions[0] == want[0]:
                return
        time.sleep(0.5)
    raise AssertionError(
        f"keytab holds kvno {versions}, want {want} (in effect first)\n{daemon.log()[-4000:]}"
    )


def wait_for_log(daemon: Daemon, text: str, count: int = 1) -> None:
    """Until the daemon's log holds ``text`` at least ``count`` times."""
    deadline = time.monotonic() + KEYTAB_WAIT
    while daemon.log().count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count}x {text!r} in the log\n{daemon.log()[-4000:]}")
        time.sleep(0.5)


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

    def check(self, *, earlier_tickets: tuple[Path, ...] = ()) -> None:
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
        # The keytab authenticates as the gMSA.
        self.n += 1
        env = self.domain.krb5_env(f"FILE:{self.scratch / f'kinit-{self.n}.cc'}")
        self._ok(["kinit", "-k", "-t", str(self.keytab), self.principal], env,
                 "kinit with the lease keytab")


def start_daemon(domain: RotationDomain, root: Path, **overrides: str) -> Daemon:
    """credfetcherd on the fake clock, writing keytabs, with 1-hour tickets."""
    settings = {
        "CF_LDAP_CA_FILE": str(domain.ca_bundle),
        "CF_WRITE_KEYTAB": "true",
        "CF_TICKET_LIFETIME": "3600",
        "CF_RENEW_MARGIN": "600",
    } | overrides
    env = daemon_env(domain.dc, root, **settings)
    root.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(domain.dc, root, domain.clock.env(env))
    daemon.start(timeout=60)
    return daemon
