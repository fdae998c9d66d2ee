"""The container's view of a lease: a read-only bind mount used by a non-root app, across renewals.

No container engine runs here, but the kernel gives the same thing: a private mount namespace
(``unshare -m --propagation private``) in which the lease's gMSA directory is bind-mounted
read-only at ``/var/credentials-fetcher/krbdir``, and an app that drops to another uid/gid
(``setpriv``) before it runs. The mount's source, target and ``KRB5CCNAME`` come from
``credfetcher mount-args --format json``, exactly what a Docker/Podman wrapper would use.

Inside the namespace ``/var`` is a fresh tmpfs (the app image's own ``/var``), so the mount point
can be created without touching the host; the namespace, its tmpfs and its bind mount vanish
when its last process exits. The app gets its own copy of the DC's krb5.conf (mode 0644) there.
Everything the app does goes through MIT krb5 and Cyrus SASL, as a real app's libraries would:
``klist``, ``ldapwhoami -Y GSSAPI`` (an LDAP bind as the gMSA) and ``kvno cifs/<DC>`` (the
service ticket an SMB or SQL Server client asks for first).

Tickets are short here (``CF_TICKET_LIFETIME=150``, see :data:`TICKET_LIFETIME`), so the renewal
test sees the daemon replace the ccache twice while one long-running app process keeps
authenticating through the same, never remounted, directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from credfetcher._proto import credentialsfetcher_pb2 as pb
from credfetcher.tickets import TicketInfo, read_ticket_info
from tests.conftest import TestDC
from tests.integration.daemon import Daemon, running_daemon

pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("setpriv") is None,
    reason="needs unshare and setpriv (util-linux)",
)

# The test DC refuses a service ticket ("Ticket expired") once the TGT has less than 120 s left
# (measured: kvno with a 150 s TGT works for its first 30 s only). An app that authenticates at any
# moment therefore needs the daemon to renew while more than that is left: 150 s tickets renewed
# 135 s before they end (the daemon honours a margin up to 90 % of the life) never drop under
# 135 s, and two renewals take well under a minute.
KDC_MIN_TGT_LIFE = 120
TICKET_LIFETIME = 150
RENEW_MARGIN = 135

APP_UID = 4242  # the per-request owner: what the app in the container runs as
GROUP_ONLY_UID = 4244  # reads through the group only (daemon-wide CF_CCACHE_GROUP)
STRANGER = 4343  # granted nothing by any setting
CONTAINER_TARGET = "/var/credentials-fetcher/krbdir"

# Run as root inside the new mount namespace, then exec the app as uid:gid.
# $1 source  $2 target  $3 krb5.conf to copy  $4 uid  $5 gid  $6... the app's argv
_NAMESPACE_SETUP = r"""
set -eu
umask 022  # the image's own files, whatever umask the test runs with
src=$1 target=$2 conf=$3 uid=$4 gid=$5
shift 5
case $target in
    /var/*) ;;
    *) echo "container setup: target $target is not under /var" >&2; exit 90 ;;
esac
# Read what the app needs from the host before /var is covered (the DC's files live there).
[ -d "$src" ] || { echo "container setup: no directory $src" >&2; exit 91; }
app_conf=$(cat "$conf")
mount -t tmpfs -o mode=0755,size=4m credfetcher-test-var /var
mkdir -m 1777 /var/tmp
ln -s /run /var/run
mkdir -p "$target" /var/app
printf '%s\n' "$app_conf" > /var/app/krb5.conf
chmod 0644 /var/app/krb5.conf
mount --bind -o ro "$src" "$target"
case ,$(findmnt -n -o OPTIONS --target "$target"), in
    *,ro,*) ;;
    *) echo "container setup: $target is not mounted read-only" >&2; exit 92 ;;
esac
export KRB5_CONFIG=/var/app/krb5.conf HOME=/var/tmp
exec setpriv --reuid "$uid" --regid "$gid" --clear-groups -- "$@"
"""

# One long-running app process: every few seconds an LDAP bind and a service ticket.
_AUTH_LOOP = r"""
dir=$(dirname "${KRB5CCNAME#FILE:}")
i=0
while :; do
    i=$((i + 1))
    start=$(date +%s.%N)
    ino=$(stat -c %i "$dir/krb5cc" 2>&1)
    who=$(ldapwhoami -Q -Y GSSAPI -H "ldap://$DC" 2>&1); ldap=$?
    kv=$(kvno "cifs/$DC" 2>&1); kvrc=$?
    printf 'ITER\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$$" "$start" "$ino" "$ldap" "$kvrc"
    if [ "$ldap" -ne 0 ] || [ "$kvrc" -ne 0 ]; then
        printf 'ERR\t%s\t%s\n' "$i" "$(printf '%s | %s' "$who" "$kv" | tr '\n' ' ')"
    fi
    sleep "$PAUSE"
done
"""


# What the app runs for the one-shot checks; each command's status is printed, not fatal.
_APP_CHECKS = r"""
cc=${KRB5CCNAME#FILE:}
id
[ -e "$cc" ] && echo "EXISTS yes" || echo "EXISTS no"
err=$(head -c 1 "$cc" 2>&1 >/dev/null) && echo "READ ok" || echo "READ $err"
klist; echo "KLIST_RC $?"
who=$(ldapwhoami -Q -Y GSSAPI -H "ldap://$DC"); rc=$?; echo "LDAPWHOAMI $who"; echo "LDAP_RC $rc"
kvno "cifs/$DC"; echo "KVNO_RC $?"
echo "AFTER-KVNO"; klist; echo "KLIST2_RC $?"
"""


@dataclass(frozen=True)
class MountArgs:
    """What ``credfetcher mount-args --format json`` prints."""

    source: Path
    target: str
    readonly: bool
    ccname: str


@dataclass(frozen=True)
class AppRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class Iteration:
    """One pass of :data:`_AUTH_LOOP` inside the namespace."""

    number: int
    pid: int
    started: float
    inode: int
    ldap_rc: int
    kvno_rc: int

    @property
    def ok(self) -> bool:
        return self.ldap_rc == 0 and self.kvno_rc == 0


# --------------------------------------------------------------------------- helpers


def mount_args(daemon: Daemon, lease_id: str, *extra: str) -> MountArgs:
    proc = daemon.cli("mount-args", lease_id, *extra, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return MountArgs(
        source=Path(data["source"]),
        target=data["target"],
        readonly=data["readonly"],
        ccname=data["env"]["KRB5CCNAME"],
    )


def app_argv(mount: MountArgs, conf: Path, uid: int, gid: int, script: str) -> list[str]:
    """``unshare`` … ``setpriv`` … ``sh -c script``: the app in its own mount namespace."""
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        _NAMESPACE_SETUP,
        "container-setup",
        str(mount.source),
        mount.target,
        str(conf),
        str(uid),
        str(gid),
        "sh",
        "-c",
        script,
    ]


def app_env(mount: MountArgs, dc: TestDC, **extra: str) -> dict[str, str]:
    """A bare environment, as a container's: PATH, the locale, KRB5CCNAME from mount-args."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "KRB5CCNAME": mount.ccname,
        "DC": dc.dc_fqdn,
        **extra,
    }


def run_app(
    mount: MountArgs, dc: TestDC, conf: Path, *, uid: int, gid: int, script: str = ""
) -> AppRun:
    """Run ``script`` (default: the one-shot checks) as the app, to completion."""
    script = script or _APP_CHECKS
    proc = subprocess.run(
        app_argv(mount, conf, uid, gid, script),
        env=app_env(mount, dc),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return AppRun(proc.returncode, proc.stdout, proc.stderr)


def add_lease(daemon: Daemon, gmsa: str, ownership: pb.FileOwnership | None) -> str:
    request = pb.CreateKerberosLeaseRequest(credspec_contents=[daemon.credspec(gmsa)])
    if ownership is not None:
        request.ownership.CopyFrom(ownership)
    with daemon.client() as stub:
        response = stub.AddKerberosLease(request, timeout=60)
    return response.lease_id


def assert_app_has_ticket(run: AppRun, dc: TestDC, gmsa: str) -> None:
    principal = f"{gmsa}$@{dc.realm}"
    assert run.returncode == 0, run.output
    # klist: the ccache through the bind mount holds the gMSA's TGT.
    assert f"Ticket cache: FILE:{CONTAINER_TARGET}/krb5cc" in run.stdout, run.output
    assert f"Default principal: {principal}" in run.stdout, run.output
    assert f"krbtgt/{dc.realm}@{dc.realm}" in run.stdout, run.output
    # ldapwhoami -Y GSSAPI: the DC authenticated the bind as the gMSA (SASL authzid u:DOMAIN\name$).
    assert f"LDAPWHOAMI u:{dc.netbios}\\{gmsa}$" in run.stdout, run.output
    # kvno: the KDC issued a service ticket for the DC's cifs/ SPN.
    assert f"cifs/{dc.dc_fqdn}@{dc.realm}: kvno = " in run.stdout, run.output


def assert_app_denied(run: AppRun, dc: TestDC) -> None:
    """The file is there but unreadable for this uid: a permission error, never a ticket."""
    assert run.returncode == 0, run.output  # the script itself records each rc
    assert "EXISTS yes" in run.stdout, run.output
    read = next(line for line in run.stdout.splitlines() if line.startswith("READ "))
    assert read.endswith(": Permission denied"), run.output  # EACCES from open(2)
    # MIT's message for EACCES on a FILE ccache (KRB5_FCC_PERM).
    assert "klist: Credentials cache permissions incorrect" in run.output, run.output
    assert "KLIST_RC 1" in run.stdout, run.output
    assert "LDAP_RC 0" not in run.stdout, run.output
    assert "KVNO_RC 0" not in run.stdout, run.output
    assert "krbtgt/" not in run.output, run.output
    assert "Default principal" not in run.output, run.output


def _ownership_of(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def host_untouched() -> Iterator[None]:
    """Nothing of the containers may leak onto the host: no mount, no /var/credentials-fetcher."""
    mountinfo = Path("/proc/self/mountinfo").read_text()
    existed = os.path.lexists("/var/credentials-fetcher")
    yield
    assert Path("/proc/self/mountinfo").read_text() == mountinfo
    assert os.path.lexists("/var/credentials-fetcher") == existed


@pytest.fixture(scope="module")
def app_krb5_conf(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DC's krb5.conf as the app image would carry it (copied again inside the namespace)."""
    path = tmp_path_factory.mktemp("app") / "krb5.conf"
    shutil.copyfile(samba_dc.krb5_config, path)
    path.chmod(0o644)
    return path


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def short_ticket_daemon(
    samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """Daemon-wide defaults (root 0600); ownership comes per request. Short tickets.

    Started with umask 027, as on hardened hosts (the shipped unit sets UMask=0022, a daemon
    started otherwise inherits whatever it gets): the lease directories must not depend on it.
    """
    with contextlib.ExitStack() as stack:
        with _umask(0o027):  # only while it starts: the daemon keeps the umask it inherited
            daemon = stack.enter_context(
                running_daemon(
                    samba_dc,
                    tmp_path_factory.mktemp("daemon-per-request"),
                    CF_TICKET_LIFETIME=str(TICKET_LIFETIME),
                    CF_RENEW_MARGIN=str(RENEW_MARGIN),
                )
            )
        yield daemon


@pytest.fixture(scope="module")
def group_daemon(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Daemon-wide ownership: every ccache root:4242 0440 unless a request says otherwise."""
    with running_daemon(
        samba_dc,
        tmp_path_factory.mktemp("daemon-wide"),
        CF_CCACHE_OWNER="0",
        CF_CCACHE_GROUP=str(APP_UID),
        CF_CCACHE_MODE="0440",
        CF_TICKET_LIFETIME=str(TICKET_LIFETIME),
        CF_RENEW_MARGIN=str(RENEW_MARGIN),
    ) as daemon:
        yield daemon


# --------------------------------------------------------------------------- tests


def test_per_request_owner_uses_the_lease_in_a_container(
    short_ticket_daemon: Daemon, samba_dc: TestDC, app_krb5_conf: Path
) -> None:
    gmsa = samba_dc.gmsas[0]
    lease_id = add_lease(
        short_ticket_daemon, gmsa, pb.FileOwnership(uid=APP_UID, gid=APP_UID, mode=0o440)
    )
    mount = mount_args(short_ticket_daemon, lease_id)

    run = run_app(mount, samba_dc, app_krb5_conf, uid=APP_UID, gid=APP_UID)

    assert f"uid={APP_UID} gid={APP_UID} groups={APP_UID}" in run.stdout, run.output
    assert "READ ok" in run.stdout, run.output
    assert_app_has_ticket(run, samba_dc, gmsa)
    # The ccache is read-only for the app (mode 0440, ro mount): kvno still got its service
    # ticket and simply could not cache it; the file still holds the TGT alone.
    after = run.stdout.split("AFTER-KVNO", 1)[1]
    assert "KLIST2_RC 0" in after, run.output
    assert f"krbtgt/{samba_dc.realm}@{samba_dc.realm}" in after, run.output
    assert "cifs/" not in after, run.output
    assert _ownership_of(mount.source / "krb5cc") == (APP_UID, APP_UID, 0o440)


def test_per_request_owner_denies_other_uids(
    short_ticket_daemon: Daemon, samba_dc: TestDC, app_krb5_conf: Path
) -> None:
    lease_id = add_lease(
        short_ticket_daemon,
        samba_dc.gmsas[0],
        pb.FileOwnership(uid=APP_UID, gid=APP_UID, mode=0o440),
    )
    mount = mount_args(short_ticket_daemon, lease_id)

    run = run_app(mount, samba_dc, app_krb5_conf, uid=STRANGER, gid=STRANGER)

    assert f"uid={STRANGER} gid={STRANGER} groups={STRANGER}" in run.stdout, run.output
    assert_app_denied(run, samba_dc)


def test_default_ownership_denies_a_non_root_app(
    short_ticket_daemon: Daemon, samba_dc: TestDC, app_krb5_conf: Path
) -> None:
    """An old client (no ownership field) gets the daemon's default, root 0600: no app reads it."""
    lease_id = add_lease(short_ticket_daemon, samba_dc.gmsas[1], None)
    mount = mount_args(short_ticket_daemon, lease_id)

    run = run_app(mount, samba_dc, app_krb5_conf, uid=APP_UID, gid=APP_UID)

    assert_app_denied(run, samba_dc)
    assert _ownership_of(mount.source / "krb5cc") == (0, 0, 0o600)


def test_daemon_wide_group_grants_the_app_group(
    group_daemon: Daemon, samba_dc: TestDC, app_krb5_conf: Path
) -> None:
    gmsa = samba_dc.gmsas[1]
    lease_id = group_daemon.add(gmsa).lease_id  # an old client: no ownership field
    mount = mount_args(group_daemon, lease_id)

    member = run_app(mount, samba_dc, app_krb5_conf, uid=GROUP_ONLY_UID, gid=APP_UID)
    stranger = run_app(mount, samba_dc, app_krb5_conf, uid=STRANGER, gid=STRANGER)

    assert f"uid={GROUP_ONLY_UID} gid={APP_UID} groups={APP_UID}" in member.stdout, member.output
    assert_app_has_ticket(member, samba_dc, gmsa)
    assert_app_denied(stranger, samba_dc)
    assert _ownership_of(mount.source / "krb5cc") == (0, APP_UID, 0o440)


def test_per_request_fields_fall_back_to_the_daemon_wide_ones(
    group_daemon: Daemon, samba_dc: TestDC, app_krb5_conf: Path
) -> None:
    """Only uid in the request: gid and mode still come from CF_CCACHE_GROUP / CF_CCACHE_MODE."""
    gmsa = samba_dc.gmsas[2]
    owner = 4245
    lease_id = add_lease(group_daemon, gmsa, pb.FileOwnership(uid=owner))
    mount = mount_args(group_daemon, lease_id)

    run = run_app(mount, samba_dc, app_krb5_conf, uid=owner, gid=STRANGER)

    assert_app_has_ticket(run, samba_dc, gmsa)
    assert _ownership_of(mount.source / "krb5cc") == (owner, APP_UID, 0o440)


def test_mount_args_names_the_lease_gmsa_directory(
    short_ticket_daemon: Daemon, samba_dc: TestDC
) -> None:
    first, second = samba_dc.gmsas[:2]
    response = short_ticket_daemon.add(first, second)
    lease_id = response.lease_id
    created = {Path(p).name.lower(): Path(p) for p in response.created_kerberos_file_paths}
    krb_dir = short_ticket_daemon.krb_dir

    for gmsa in (first, second):
        expected = krb_dir / lease_id / created[gmsa.lower()].name
        assert created[gmsa.lower()] == expected
        assert (expected / "krb5cc").is_file()

        docker = short_ticket_daemon.cli("mount-args", lease_id, gmsa)
        assert docker.returncode == 0, docker.stderr
        assert docker.stdout.split() == [
            "--mount",
            f"type=bind,source={expected},target={CONTAINER_TARGET},readonly",
            "-e",
            f"KRB5CCNAME=FILE:{CONTAINER_TARGET}/krb5cc",
        ]
        # The trailing '$' and case do not matter; json carries the same facts for tooling.
        as_json = mount_args(short_ticket_daemon, lease_id, f"{gmsa.upper()}$")
        assert as_json == MountArgs(
            expected, CONTAINER_TARGET, True, f"FILE:{CONTAINER_TARGET}/krb5cc"
        )

    custom = mount_args(short_ticket_daemon, lease_id, second, "--target", "/run/krb/")
    assert (custom.target, custom.ccname) == ("/run/krb", "FILE:/run/krb/krb5cc")

    ambiguous = short_ticket_daemon.cli("mount-args", lease_id)
    assert ambiguous.returncode == 2
    assert "name one" in ambiguous.stderr
    unknown = short_ticket_daemon.cli("mount-args", "0" * 20)
    assert unknown.returncode == 2
    assert "no lease" in unknown.stderr


@dataclass(frozen=True)
class Generation:
    """A ticket the daemon wrote, as the host saw it: when first seen, its times, its inode."""

    seen_at: float
    info: TicketInfo
    inode: int


def _watch_generations(ccache: Path, stop: threading.Event, seen: list[Generation]) -> None:
    """Append every new ticket generation in ``ccache`` to ``seen`` until ``stop`` is set."""
    while not stop.is_set():
        info = read_ticket_info(ccache)
        if info is not None and (not seen or info.endtime != seen[-1].info.endtime):
            seen.append(Generation(time.time(), info, ccache.stat().st_ino))
        stop.wait(0.25)


def _parse_iterations(lines: list[str]) -> list[Iteration]:
    iterations = []
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if fields[0] == "ITER":
            number, pid = int(fields[1]), int(fields[2])
            started = float(fields[3])
            inode, ldap_rc, kvno_rc = (int(f) for f in fields[4:])
            iterations.append(Iteration(number, pid, started, inode, ldap_rc, kvno_rc))
    return iterations


def _between(iterations: list[Iteration], start: float, end: float) -> list[Iteration]:
    return [it for it in iterations if start <= it.started < end]


def test_one_app_process_keeps_authenticating_across_renewals(
    short_ticket_daemon: Daemon, samba_dc: TestDC, app_krb5_conf: Path, tmp_path: Path
) -> None:
    gmsa = samba_dc.gmsas[2]
    lease_id = add_lease(
        short_ticket_daemon, gmsa, pb.FileOwnership(uid=APP_UID, gid=APP_UID, mode=0o440)
    )
    mount = mount_args(short_ticket_daemon, lease_id)
    ccache = mount.source / "krb5cc"
    generations: list[Generation] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_generations, args=(ccache, stop, generations), daemon=True
    )
    watcher.start()

    lines: list[str] = []
    stderr_path = tmp_path / "app.stderr"
    with stderr_path.open("w") as stderr:
        app = subprocess.Popen(
            app_argv(mount, app_krb5_conf, APP_UID, APP_UID, _AUTH_LOOP),
            env=app_env(mount, samba_dc, PAUSE="2"),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # its own process group: stopped as one below
        )
    out = app.stdout
    assert out is not None
    reader = threading.Thread(target=lambda: lines.extend(out), daemon=True)
    reader.start()
    # Two renewals (a 135 s margin on 150 s tickets: one every 7.5-15 s), then a few more app
    # iterations on the second renewal's ticket.
    deadline = time.monotonic() + 1.5 * TICKET_LIFETIME
    try:
        while time.monotonic() < deadline and app.poll() is None:
            time.sleep(1)
            if len(generations) >= 3:
                newest = _between(_parse_iterations(list(lines)), generations[2].seen_at + 1, 1e12)
                if len(newest) >= 3:
                    break
    finally:
        stop.set()
        watcher.join(5)
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)
        app.wait(10)
        reader.join(5)
        out.close()
    iterations = _parse_iterations(lines)
    report = (
        "".join(lines)
        + stderr_path.read_text()
        + f"\ngenerations: {generations}\n"
        + short_ticket_daemon.log()[-3000:]
    )

    # The host saw the daemon renew twice, each time a full-length ticket, owner kept.
    assert len(generations) >= 3, report
    for generation in generations:
        assert generation.info.principal == f"{gmsa}$@{samba_dc.realm}"
        # The KDC may round the end down by a second.
        assert generation.info.endtime - generation.info.starttime >= TICKET_LIFETIME - 1, report
    assert _ownership_of(ccache) == (APP_UID, APP_UID, 0o440)

    # One app process, one mount, the whole time; every single iteration authenticated.
    assert iterations, report
    # (unshare, sh, setpriv and sh exec one another: the loop is the process started above)
    assert {it.pid for it in iterations} == {app.pid}, report
    assert all(it.ok for it in iterations), report
    # ...and never met a TGT too close to its end for the KDC (the daemon renewed early enough).
    for it in iterations:
        in_force = [g for g in generations if g.info.starttime <= it.started]
        assert in_force, report
        assert in_force[-1].info.endtime - it.started > KDC_MIN_TGT_LIFE, (it, report)
    # Each renewal replaced the file by a rename (a new inode). The app's next iterations reached
    # the new file through the same directory mount and authenticated with the new ticket.
    # Judged: the two renewals the loop waited for. A third may land just before the loop stops,
    # with no iteration after it yet; it still bounds the second one's window.
    for previous, current, following in zip(
        generations[:2], generations[1:3], [*generations[2:], None], strict=False
    ):
        assert current.inode != previous.inode, f"renewal rewrote the ccache in place: {report}"
        end = following.seen_at - 1 if following is not None else 1e12
        window = _between(iterations, current.seen_at + 1, end)
        assert len(window) >= 2, report
        assert {it.inode for it in window} == {current.inode}, report
