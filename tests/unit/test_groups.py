"""GroupIndex: the groups and their indexes stay in step whatever order targets come and go."""

from __future__ import annotations

from pathlib import Path

from credfetcher.groups import GroupIndex, Target
from credfetcher.testing import FakeAccount, FakeClock, target_in

NOW = 1_800_000_000.0


def consistent(index: GroupIndex) -> None:
    """Every view agrees with the groups themselves."""
    placed = {tk: key for key, g in index.groups.items() for tk in g.targets}
    assert placed == index.where  # each target in exactly one group, and indexed there
    leases: dict[str, set[str]] = {}
    for lease, gmsa in placed:
        leases.setdefault(lease, set()).add(gmsa)
    assert leases == index.by_lease
    assert set(index.ticket_times) <= set(placed)
    assert set(index.write_failures) <= set(placed)
    for group in index.groups.values():
        assert group.targets  # an empty group is dropped
        assert group.keytabs == sum(t.keytab is not None for t in group.targets.values())


def test_attach_move_and_detach_keep_every_view_consistent(tmp_path: Path) -> None:
    index = GroupIndex()
    clock = FakeClock(NOW)
    accounts = [FakeAccount(f"gmsa{i}", clock) for i in range(3)]
    targets: list[Target] = []
    for n in range(30):
        for account in accounts[: 1 + n % 3]:  # leases of one, two and three gMSAs
            target = target_in(tmp_path, f"lease{n:02}", account.gmsa, keytab=n % 2 == 0)
            targets.append(target)
            index.attach(account.gmsa, account, target, NOW)
            index.ticket_times[target.key] = account.ticket().info
    consistent(index)
    assert len(index.by_lease) == 30

    # Attached again under another key, a target moves: it is never in two groups.
    moved = targets[5]
    group, joined = index.attach("other-key", accounts[0], moved, NOW)
    assert not joined
    assert index.group_of(moved.key) is group
    # Attached again without its keytab, the count follows.
    index.attach("other-key", accounts[0], target_in(tmp_path, *moved.key), NOW)
    consistent(index)

    index.record_write(targets[7].key, "cannot write", True, None, NOW)
    for n in range(0, 30, 2):
        index.detach_lease(f"lease{n:02}")
    index.detach_lease("lease99")  # unknown: nothing happens
    consistent(index)
    assert len(index.by_lease) == 15
    for n in range(1, 30, 2):
        index.detach_lease(f"lease{n:02}")
    assert index == GroupIndex()


def test_a_write_is_recorded_only_for_a_registered_target(tmp_path: Path) -> None:
    index = GroupIndex()
    account = FakeAccount("webapp", FakeClock(NOW))
    target = target_in(tmp_path, "lease", "webapp")
    info = account.ticket().info
    assert index.record_write(target.key, "cannot write", True, info, NOW) is None
    assert index.ticket_times == {}

    index.attach("webapp", account, target, NOW)
    failure = index.record_write(target.key, "cannot write", True, None, NOW)
    assert failure is not None
    assert failure.failures == 1
    again = index.record_write(target.key, "found a FIFO", False, info, NOW + 5)
    assert again is failure
    assert (failure.failures, failure.error, failure.retry, failure.since) == (
        2, "found a FIFO", False, NOW
    )
    assert index.ticket_times[target.key] == info
    assert index.record_write(target.key, None, False, info, NOW + 10) is None
    assert index.write_failures == {}
