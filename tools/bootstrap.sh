#!/usr/bin/env bash
# Installs everything credfetcher's tests and demo need on a fresh Debian 12 machine, as root:
# the MIT client tools and Samba AD DC (docker/samba-ad/samba-ad.sh deps), the headers our
# compiled dependencies build against, and the project's virtualenv in .venv (or $CF_VENV).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${CF_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}

[ "$(id -u)" = 0 ] || { echo "bootstrap: run as root (installs packages, provisions a test DC)" >&2; exit 1; }

docker/samba-ad/samba-ad.sh deps
# rpm/rpmlint/cpio, binutils (readelf) and the system Python 3.11 with its headers, pip and venv:
# packaging/rpm/build.sh compiles the RPM's private tree with /usr/bin/python3.11, and its tests.
build_pkgs=(libkrb5-dev libsystemd-dev pkg-config gcc binutils systemd rpm rpmlint cpio util-linux
    python3-dev python3-venv python3-pip python3-setuptools python3-wheel python3-packaging)
missing=()
for p in "${build_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

stamp="$VENV/.credfetcher-deps"
want=$(cat pyproject.toml tools/constraints.txt | sha256sum | cut -c1-16)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel
# gssapi and krb5 (pykrb5) ship only as sources for Linux and take minutes each to compile at -O2
# on two cores. Built here in parallel at -O1: they are thin Cython wrappers over the system's
# libkrb5, whose own optimised code does the work, so the tests lose nothing. pip's wheel cache
# makes the next run instant.
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
pids=()
for pkg in gssapi krb5 systemd-python; do
    CFLAGS="-O1" "$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps \
        -c tools/constraints.txt -w "$wheels" "$pkg" >"$wheels/$pkg.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || { cat "$wheels"/*.log >&2; echo "bootstrap: building a wheel failed" >&2; exit 1; }
done
"$VENV/bin/pip" install -q --disable-pip-version-check --find-links "$wheels" \
    -c tools/constraints.txt -e ".[dev,systemd,aws]" >"$wheels/install.log" 2>&1 \
    || { cat "$wheels/install.log" >&2; echo "bootstrap: pip install failed" >&2; exit 1; }
"$VENV/bin/python" -c "import credfetcher, gssapi, krb5, ldap3, grpc" \
    || { echo "bootstrap: the virtualenv in $VENV is incomplete" >&2; exit 1; }
echo "$want" >"$stamp"
