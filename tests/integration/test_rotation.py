"""A lease's ccache and keytab through real gMSA password changes on Samba, on a fake clock.

One gMSA of the private rotation domain (:mod:`tests.integration.rotation_domain`), one daemon
with ``CF_WRITE_KEYTAB=true``, and MIT's own tools as judges at each moment of the timeline
``docs/rotation.md`` describes: 10 minutes before a change, inside the five-minute window before
it, right after it, the same for a second change, and a daemon restart inside the window. At
each one: ``kvno`` with the lease's ccache, ``kvno -k`` and (outside the window) ``kinit -k -t``
with its keytab, and the keytab's versions against the DC's ``msDS-KeyVersionNumber``. A service
ticket issued before each change must still decrypt with the keytab written after it.
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
)


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
