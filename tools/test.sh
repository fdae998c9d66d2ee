#!/usr/bin/env bash
# The README's test command: on a fresh Debian 12 machine, as root, installs what the suite needs
# (tools/bootstrap.sh), then runs lint, types, and every test — unit, integration against a real
# Samba AD DC that this script starts, and reliability. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
VENV=${CF_VENV:-$PWD/.venv}

echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy (strict)"
"$VENV/bin/mypy"
echo "== test DC"
docker/samba-ad/samba-ad.sh up >/dev/null
echo "== pytest"
# CI=true turns a skipped integration test into a failure (tests/conftest.py); pytest's own exit
# code 5 ("no tests ran") fails this script like any other failure.
exec "$VENV/bin/pytest" -p no:cacheprovider "$@"
