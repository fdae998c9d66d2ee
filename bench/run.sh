#!/usr/bin/env bash
# credfetcher's benchmark from a fresh clone, as root: install what it needs (tools/bootstrap.sh),
# bring the test DC up (docker/samba-ad/samba-ad.sh up), print the table (bench/run.py).
set -euo pipefail
cd "$(dirname "$0")/.." && bash tools/bootstrap.sh && docker/samba-ad/samba-ad.sh up >/dev/null && exec "${CF_VENV:-$PWD/.venv}/bin/python" bench/run.py "$@"
