"""The proto is wire-identical to credentials-fetcher's, and the committed stubs are current."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from tests.conftest import REPO

PROTO = REPO / "protos" / "credentialsfetcher.proto"

# From ../shared/reference/gmsa-field-notes.md: (message, field) -> (number, type, repeated).
S = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
M = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
EXPECTED_MESSAGES: dict[str, dict[str, tuple[int, int, bool]]] = {
    "CreateKerberosLeaseRequest": {"credspec_contents": (1, S, True)},
    "CreateKerberosLeaseResponse": {
        "lease_id": (1, S, False),
        "created_kerberos_file_paths": (2, S, True),
    },
    "CreateNonDomainJoinedKerberosLeaseRequest": {
        "credspec_contents": (1, S, True),
        "username": (2, S, False),
        "password": (3, S, False),
        "domain": (4, S, False),
    },
    "CreateNonDomainJoinedKerberosLeaseResponse": {
        "lease_id": (1, S, False),
        "created_kerberos_file_paths": (2, S, True),
    },
    "RenewNonDomainJoinedKerberosLeaseRequest": {
        "username": (1, S, False),
        "password": (2, S, False),
        "domain": (3, S, False),
    },
    "RenewNonDomainJoinedKerberosLeaseResponse": {"renewed_kerberos_file_paths": (1, S, True)},
    "DeleteKerberosLeaseRequest": {"lease_id": (1, S, False)},
    "DeleteKerberosLeaseResponse": {
        "lease_id": (1, S, False),
        "deleted_kerberos_file_paths": (2, S, True),
    },
    "HealthCheckRequest": {"service": (1, S, False)},
    "HealthCheckResponse": {"status": (1, S, False)},
    "KerberosArnLeaseRequest": {
        "credspec_arns": (1, S, True),
        "access_key_id": (2, S, False),
        "secret_access_key": (3, S, False),
        "session_token": (4, S, False),
        "region": (5, S, False),
    },
    "CreateKerberosArnLeaseResponse": {
        "lease_id": (1, S, False),
        "krb_ticket_response_map": (2, M, True),
    },
    "KerberosTicketArnResponse": {
        "credspec_arns": (1, S, False),
        "created_kerberos_file_paths": (2, S, False),
    },
    "RenewKerberosArnLeaseRequest": {
        "access_key_id": (1, S, False),
        "secret_access_key": (2, S, False),
        "session_token": (3, S, False),
        "region": (4, S, False),
    },
    "RenewKerberosArnLeaseResponse": {"status": (1, S, False)},
}
EXPECTED_METHODS = {
    "AddKerberosLease": ("CreateKerberosLeaseRequest", "CreateKerberosLeaseResponse"),
    "AddNonDomainJoinedKerberosLease": (
        "CreateNonDomainJoinedKerberosLeaseRequest",
        "CreateNonDomainJoinedKerberosLeaseResponse",
    ),
    "RenewNonDomainJoinedKerberosLease": (
        "RenewNonDomainJoinedKerberosLeaseRequest",
        "RenewNonDomainJoinedKerberosLeaseResponse",
    ),
    "DeleteKerberosLease": ("DeleteKerberosLeaseRequest", "DeleteKerberosLeaseResponse"),
    "HealthCheck": ("HealthCheckRequest", "HealthCheckResponse"),
    "AddKerberosArnLease": ("KerberosArnLeaseRequest", "CreateKerberosArnLeaseResponse"),
    "RenewKerberosArnLease": ("RenewKerberosArnLeaseRequest", "RenewKerberosArnLeaseResponse"),
}
# credfetcher's own additions must use numbers the original never had.
FIRST_ADDED_FIELD_NUMBER = 100


def compile_proto(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "set.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--descriptor_set_out={out}",
            PROTO.name,
        ],
        check=True,
        timeout=60,
    )
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fds.file) == 1
    return fds.file[0]


def test_package_service_and_methods_match(tmp_path: Path) -> None:
    fd = compile_proto(tmp_path)
    assert fd.package == "credentialsfetcher"
    assert fd.syntax == "proto3"
    services = {s.name: s for s in fd.service}
    assert set(services) == {"CredentialsFetcherService"}
    methods = {m.name: m for m in services["CredentialsFetcherService"].method}
    for name, (req, resp) in EXPECTED_METHODS.items():
        assert methods[name].input_type == f".credentialsfetcher.{req}", name
        assert methods[name].output_type == f".credentialsfetcher.{resp}", name
        assert not methods[name].client_streaming
        assert not methods[name].server_streaming
    # Only additive RPCs beyond the original seven.
    assert set(methods) - set(EXPECTED_METHODS) == {"ListLeases"}


def test_every_original_field_is_identical(tmp_path: Path) -> None:
    fd = compile_proto(tmp_path)
    messages = {m.name: m for m in fd.message_type}
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    for msg_name, fields in EXPECTED_MESSAGES.items():
        assert msg_name in messages, msg_name
        actual = {f.name: f for f in messages[msg_name].field}
        for field_name, (number, ftype, is_repeated) in fields.items():
            f = actual[field_name]
            assert (f.number, f.type, f.label == repeated) == (number, ftype, is_repeated), (
                msg_name,
                field_name,
            )
        for extra in set(actual) - set(fields):
            assert actual[extra].number >= FIRST_ADDED_FIELD_NUMBER, (msg_name, extra)
    arn_map = {f.name: f for f in messages["CreateKerberosArnLeaseResponse"].field}
    assert (
        arn_map["krb_ticket_response_map"].type_name
        == ".credentialsfetcher.KerberosTicketArnResponse"
    )


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    if shutil.which("bash") is None:  # pragma: no cover - bash is everywhere we run
        raise AssertionError("bash is required to regenerate stubs")
    subprocess.run(
        ["bash", str(REPO / "tools" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        timeout=120,
        env={"PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    generated = tmp_path / "credfetcher" / "_proto"
    committed = REPO / "credfetcher" / "_proto"
    names = sorted(p.name for p in generated.iterdir())
    assert names, "protoc generated nothing"
    for name in names:
        assert filecmp.cmp(generated / name, committed / name, shallow=False), (
            f"credfetcher/_proto/{name} is stale: run tools/gen-proto.sh"
        )
