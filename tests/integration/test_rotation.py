"""A lease's ccache and keytab through real gMSA password changes on Samba, on a fake clock.

One gMSA of the private rotation domain (:mod:`tests.integration.rotation_domain`), one daemon
with ``CF_WRITE_KEYTAB=true``, and MIT's own tools as judges at each moment of the timeline
``docs/rotation.md`` describes: 10 minutes before a change, inside the five-minute window before
it, right after it, the same for a second change, and a daemon restart inside the window. At
each one: ``kvno`` with the lease's ccache, ``kvno -k`` and ``kinit -k -t`` with its keytab, and
the keytab's versions against the DC's ``msDS-KeyVersionNumber``: inside the window only what the
KDC takes until the change (the next password would be the highest kvno, which ``kinit -k``
picks), after it the new kvno and the one before. A service ticket issued before each change must
still decrypt with the keytab written after it.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.rotation_domain import (
    Judge,
    RotationDomain,
    keytab_versions,
    start_daemon,
    wait_for_keytab,
    wait_for_log,
)

WINDOW_READ = "next password known"


def test_keytab_and_ccache_through_two_rotations_and_a_restart(
    rotation_domain: RotationDomain, tmp_path: Path
) -> None:
    domain, clock = rotation_domain, rotation_domain.clock
    gmsa = domain.new_gmsa("rot")
    change1 = domain.change_ahead(gmsa, 700)
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
        versions = keytab_versions(judge.keytab)
        assert versions[0] == kvno
        judge.check()
        before_window = judge.service_ticket()

        # Inside the five-minute window: the DC hands out the next password already; the keytab
        # keeps what the KDC takes until the change.
        clock.jump_to(change1 - 290)
        wait_for_log(daemon, WINDOW_READ)
        wait_for_keytab(judge.keytab, versions, daemon)
        assert keytab_versions(judge.keytab) == versions
        assert domain.kvno(gmsa) == kvno
        judge.check(earlier_tickets=(before_window,))
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
        ticket = judge.ccache.read_bytes()
        clock.jump_to(change2 - 600)
        # A renewal on the new time (the tickets of the first change have expired meanwhile).
        deadline = time.monotonic() + 30
        while judge.ccache.read_bytes() == ticket and time.monotonic() < deadline:
            time.sleep(0.5)
        assert judge.ccache.read_bytes() != ticket, daemon.log()[-4000:]
        wait_for_keytab(judge.keytab, [kvno + 1, kvno], daemon)
        judge.check()
        before_window = judge.service_ticket()

        clock.jump_to(change2 - 290)
        assert daemon.stop() == 0
        window_reads = daemon.log().count(WINDOW_READ)
        daemon.start(timeout=60)
        # A fresh start reads only the window's blob: next and in effect, not the one before.
        wait_for_log(daemon, WINDOW_READ, window_reads + 1)
        wait_for_keytab(judge.keytab, [kvno + 1], daemon)
        judge.check(earlier_tickets=(before_window,))
        in_window = judge.service_ticket()

        clock.jump_to(change2 + 15)
        wait_for_keytab(judge.keytab, [kvno + 2, kvno + 1], daemon)
        assert domain.kvno(gmsa) == kvno + 2
        judge.check(earlier_tickets=(before_window, in_window))
    finally:
        if daemon.proc is not None:
            daemon.stop()
