"""What the reliability tests share: on-disk lease invariants, process probes, retrying calls."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from credfetcher.files import PRIVATE_DIR, TEMP_PREFIX
from credfetcher.leases import CCACHE_NAME, KEYTAB_NAME, decode_metadata
from credfetcher.tickets import read_ticket_info

T = TypeVar("T")

SPAWN_HOOK_DIR = Path(__file__).resolve().parent / "spawnhook"


@dataclass(frozen=True)
class LeaseOnDisk:
    lease_id: str
    gmsas: tuple[str, ...]
    domainless_user: str | None


def check_store(krb_dir: Path, realm: str, *, allow_temp: bool) -> dict[str, LeaseOnDisk]:
    """Assert the lease store's invariants on disk and return the leases found.

    Every lease directory has readable metadata naming it; every gMSA the metadata lists has its
    directory and a ccache holding a TGT for ``NAME$@REALM``; every gMSA directory is listed by the
    metadata; metadata lives only inside its own lease directory. ``.cf-tmp-*`` leftovers are
    tolerated only when ``allow_temp`` (a crashed daemon before its recovery ran).
    """
    leases: dict[str, LeaseOnDisk] = {}
    private = krb_dir / PRIVATE_DIR
    if private.exists():
        assert not private.is_symlink(), f"{private} is a symlink"
        assert private.is_dir(), f"{private} is not a directory"
        assert private.stat().st_mode & 0o777 == 0o700, f"{private} is not 0700"
        assert allow_temp or not any(private.iterdir()), f"leftovers in {private}"
    for path in krb_dir.rglob("*"):
        if private in path.parents:
            continue
        if path.name.startswith(TEMP_PREFIX):
            assert allow_temp, f"temporary file left after recovery: {path}"
        if path.name.endswith("_metadata.json") and not any(
            p.name.startswith(TEMP_PREFIX) for p in path.relative_to(krb_dir).parents
        ):
            assert path.parent.parent == krb_dir, f"metadata outside its lease directory: {path}"
            assert path.name == f"{path.parent.name}_metadata.json", f"stray metadata: {path}"
    for entry in sorted(krb_dir.iterdir()):
        if entry.name.startswith(TEMP_PREFIX) or entry.name == PRIVATE_DIR:
            continue
        assert entry.is_dir(), f"not a lease directory: {entry}"
        assert not entry.is_symlink(), f"symlink in krbdir: {entry}"
        assert entry.stat().st_mode & 0o002 == 0, f"world-writable lease directory {entry}"
        meta = entry / f"{entry.name}_metadata.json"
        assert meta.is_file(), f"lease directory without metadata: {entry}"
        record = decode_metadata(meta.read_bytes())
        assert record.lease_id == entry.name, f"{meta} names lease {record.lease_id}"
        names = {e.gmsa_name for e in record.entries}
        assert names, f"{meta} lists no gMSA"
        for name in names:
            ccache = entry / name / CCACHE_NAME
            info = read_ticket_info(ccache)
            assert info is not None, f"metadata without a valid ccache: {ccache}"
            assert info.principal == f"{name}$@{realm}", f"{ccache} holds {info.principal}"
        for sub in entry.iterdir():
            if sub.is_dir():
                assert sub.name in names, f"gMSA directory {sub} is not in the metadata"
                extra = {
                    p.name for p in sub.iterdir() if not p.name.startswith(TEMP_PREFIX)
                } - {CCACHE_NAME, KEYTAB_NAME}
                assert not extra, f"unexpected files in {sub}: {sorted(extra)}"
        leases[entry.name] = LeaseOnDisk(
            entry.name, tuple(sorted(names)), record.domainless_user
        )
    return leases


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def child_pids(pid: int) -> list[int]:
    """Live children of ``pid`` (every thread's children file)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        children.extend(int(c) for c in text.split())
    return children


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


def call_with_retry(
    fn: Callable[[], T],
    *,
    deadline: float,
    retries: list[str] | None = None,
    also_retry: Callable[[grpc.StatusCode], bool] = lambda code: False,
) -> T:
    """Call ``fn`` until it succeeds, retrying on UNAVAILABLE (daemon restarting) and on what
    ``also_retry`` accepts."""
    end = time.monotonic() + deadline
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code()
            if (code not in RETRYABLE and not also_retry(code)) or time.monotonic() > end:
                raise
            if retries is not None:
                retries.append(f"{code.name}: {exc.details()}")
            time.sleep(0.05)
