#!/usr/bin/env bash
# Usage: packaging/rpm/build.sh OUTDIR
#
# Builds the credfetcher RPM for this host's architecture (x86_64 or aarch64: the spec carries
# compiled extensions, so there is no cross build) and leaves it in OUTDIR. The source tarball
# holds the files git tracks, as they are in the work tree (uncommitted edits included, untracked
# files left out), so a tree with work in progress still builds. rpmbuild runs with a private
# _topdir in a temporary directory; nothing is written to the checkout or to ~/rpmbuild.
#
# The spec installs the private dependency tree with pip from packaging/rpm/requirements.lock,
# using the platform's python3.11 (Debian 12: /usr/bin/python3.11, the system Python; never a
# pyenv or virtualenv one, whose builds would carry its RUNPATH). gssapi, krb5 and systemd-python
# are compiled from source on the first build; pip keeps those builds in its wheel cache,
# $CF_RPM_PIP_CACHE (default /var/cache/credfetcher-rpm/pip, or ~/.cache/credfetcher-rpm/pip for
# a user who cannot write there), used only by this script so no other Python's builds mix in.
#
# On a host whose rpm database cannot satisfy BuildRequires (Debian: rpm is there, but Python,
# the compiler and the headers come from dpkg), rpmbuild runs with --nodeps and says so.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
outdir=$1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
spec=$here/credfetcher.spec
name=credfetcher

for tool in git rpmbuild rpmspec tar gcc pkg-config; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is not installed" >&2; exit 1; }
done

arch=$(rpm --eval '%{_arch}')
case $arch in
    x86_64|aarch64) ;;
    *) echo "build.sh: no wheels are locked for $arch (requirements.lock: x86_64, aarch64)" >&2
       exit 1 ;;
esac

py=$(rpm --eval '%{_bindir}')/python3.11
[ -x "$py" ] || {
    echo "build.sh: $py is not installed (Debian: python3.11-dev; Fedora, AL2023: python3.11-devel)" >&2
    exit 1
}
"$py" -Ic '
import importlib.util as u, os, sys, sysconfig
mods = all(map(u.find_spec, ("pip", "setuptools", "wheel")))
sys.exit(not (mods and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))))
' || { echo "build.sh: $py needs pip, setuptools, wheel and its C headers" >&2; exit 1; }
for pc in krb5-gssapi libsystemd; do
    pkg-config --exists "$pc" || {
        echo "build.sh: no $pc headers (Debian: libkrb5-dev libsystemd-dev; Fedora, AL2023: krb5-devel systemd-devel)" >&2
        exit 1
    }
done

cache=${CF_RPM_PIP_CACHE:-}
if [ -z "$cache" ]; then
    cache=/var/cache/credfetcher-rpm/pip
    { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; } || cache=${XDG_CACHE_HOME:-$HOME/.cache}/credfetcher-rpm/pip
fi
mkdir -p "$cache"
export PIP_CACHE_DIR=$cache

# The pip that installs the tree: a virtualenv of $py beside the cache (so builds use $py's own
# compiler flags and no RUNPATH), with a pip recent enough to reuse its cached builds of hashed
# sources in --require-hashes mode (pip >= 23.1; Debian 12 has 23.0.1 and recompiles each time).
tools=$(dirname "$cache")/tools-py311
tool_pins=(pip==26.3 setuptools==84.2.1 wheel==0.48.0)
if [ "$(cat "$tools/.pins" 2>/dev/null)" != "${tool_pins[*]}" ]; then
    rm -rf "$tools"
    "$py" -m venv "$tools"
    "$tools/bin/python" -m pip install -q --disable-pip-version-check "${tool_pins[@]}"
    echo "${tool_pins[*]}" >"$tools/.pins"
fi

# One version, kept in pyproject.toml: the spec must agree with it.
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n1)
spec_version=$(rpmspec -q --srpm --qf '%{VERSION}\n' "$spec" 2>/dev/null | head -n1)
if [ "$version" != "$spec_version" ]; then
    echo "build.sh: pyproject.toml says version $version, the spec says $spec_version" >&2
    exit 1
fi

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{BUILD,BUILDROOT,RPMS,SOURCES,SPECS,SRPMS}

# Tracked files that exist in the work tree (a tracked file deleted but not yet committed is
# skipped), NUL-separated so no file name can break the list.
prefix=$name-$version
(
    cd "$repo"
    git ls-files -z --cached | while IFS= read -r -d '' f; do
        [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"
    done
) | tar -C "$repo" --null -T - --transform "s,^,$prefix/," --owner=0 --group=0 --numeric-owner \
    --sort=name --mtime="@$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)" \
    -czf "$top/SOURCES/$prefix.tar.gz"

missing=()
while IFS= read -r dep; do
    [ -n "$dep" ] || continue
    rpm -q --whatprovides "$dep" >/dev/null 2>&1 || missing+=("$dep")
done < <(rpmspec -q --buildrequires "$spec" 2>/dev/null)
nodeps=()
if [ ${#missing[@]} -gt 0 ]; then
    echo "build.sh: build dependencies not in the rpm database: ${missing[*]}" >&2
    echo "build.sh: building with --nodeps (with this host's python3.11, compiler and headers)" >&2
    nodeps=(--nodeps)
fi

rpmbuild -bb "${nodeps[@]}" \
    --define "cf_pip $tools/bin/python -m pip" \
    --define "_topdir $top" \
    --define "_sourcedir $top/SOURCES" \
    "$spec"

mkdir -p "$outdir"
find "$top/RPMS" -name '*.rpm' -exec cp -p {} "$outdir/" \;
find "$outdir" -maxdepth 1 -name "$name-*.rpm" -newer "$top/SOURCES/$prefix.tar.gz" -print
