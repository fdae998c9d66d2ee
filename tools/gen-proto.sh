#!/usr/bin/env bash
# Regenerates credfetcher/_proto/ from protos/credentialsfetcher.proto (grpcio-tools + mypy-protobuf).
# tests/unit/test_proto.py fails when the committed stubs are stale: run this after editing the proto.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
export PATH="$(dirname "$PY"):$PATH"  # protoc finds the protoc-gen-mypy plugins there
OUT=${1:-.}
mkdir -p "$OUT/credfetcher/_proto"
# The virtual include path makes the generated code import "credfetcher._proto.…", not a top-level module.
"$PY" -m grpc_tools.protoc -Icredfetcher/_proto=protos \
    --python_out="$OUT" --grpc_python_out="$OUT" --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
    credfetcher/_proto/credentialsfetcher.proto
