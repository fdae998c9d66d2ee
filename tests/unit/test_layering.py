"""The package's layers, pinned: the core loads no RPC library, the store and the CLI no LDAP.

Each check imports modules in a fresh interpreter and looks at ``sys.modules``, so what any
transitive import pulls in counts, not only the module's own import lines.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Everything that does a lease's work: it must run (and be tested) without grpc loaded. Only the
# gRPC face (server, wire, peercred), the daemon that starts it and the client may load grpc.
CORE = [
    "credfetcher.accounts",
    "credfetcher.aws",
    "credfetcher.batchwrite",
    "credfetcher.blob",
    "credfetcher.config",
    "credfetcher.credentials",
    "credfetcher.credspec",
    "credfetcher.directory",
    "credfetcher.discovery",
    "credfetcher.errors",
    "credfetcher.exporter",
    "credfetcher.files",
    "credfetcher.gmsasearch",
    "credfetcher.groups",
    "credfetcher.identity",
    "credfetcher.keys",
    "credfetcher.keytab",
    "credfetcher.ldapchannel",
    "credfetcher.lease_index",
    "credfetcher.leasefiles",
    "credfetcher.leases",
    "credfetcher.lockout",
    "credfetcher.metrics",
    "credfetcher.names",
    "credfetcher.publish",
    "credfetcher.rebind",
    "credfetcher.removal",
    "credfetcher.renewal",
    "credfetcher.secret_source",
    "credfetcher.service",
    "credfetcher.supervisor",
    "credfetcher.systemd",
    "credfetcher.testing",
    "credfetcher.tickets",
    "credfetcher.tlsbinding",
    "credfetcher.values",
    "credfetcher.views",
]


def loaded_after_import(module: str) -> set[str]:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(proc.stdout))


@pytest.mark.parametrize("module", CORE)
def test_core_modules_load_no_grpc(module: str) -> None:
    assert "grpc" not in loaded_after_import(module)


@pytest.mark.parametrize(
    "module",
    [
        "credfetcher.leases",
        "credfetcher.config",
        "credfetcher.cli",
        "credfetcher.credspec",
        "credfetcher.values",
    ],
)
def test_store_config_and_cli_load_no_directory_libraries(module: str) -> None:
    loaded = loaded_after_import(module)
    assert not loaded & {"ldap3", "dns", "gssapi"}, loaded & {"ldap3", "dns", "gssapi"}
