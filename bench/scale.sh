#!/usr/bin/env bash
# credfetcher's scale benchmark from a fresh clone, as root: install what it needs
# (tools/bootstrap.sh), bring the test DC up, print the table (bench/scale.py; ~10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.." && bash tools/bootstrap.sh && docker/samba-ad/samba-ad.sh up >/dev/null && exec "${CF_VENV:-$PWD/.venv}/bin/python" bench/scale.py "$@"
