#!/usr/bin/env bash
# Usage: packaging/rpm/build.sh OUTDIR
#
# Builds the credfetcher noarch RPM from this checkout and leaves it in OUTDIR. The source tarball
# holds the files git tracks, as they are in the work tree (uncommitted edits included, untracked
# files left out), so a tree with work in progress still builds. rpmbuild runs with a private
# _topdir in a temporary directory; nothing is written to the checkout or to ~/rpmbuild.
#
# On a host whose rpm database cannot satisfy BuildRequires (Debian: rpm is there, but the
# Python and systemd packages come from dpkg), rpmbuild runs with --nodeps and says so; the spec's
# fallbacks then use the host's python3 (with pip, setuptools and wheel).
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

for tool in git rpmbuild rpmspec tar; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is not installed" >&2; exit 1; }
done

# The fallback build (no pyproject macros) runs pip with this host's python3 and its setuptools
# and wheel (Debian: python3-pip python3-setuptools python3-wheel).
if ! rpm --eval '%{?pyproject_wheel:1}' | grep -q 1; then
    py=$(rpm --eval '%{?__python3}'); py=${py:-/usr/bin/python3}
    "$py" -c 'import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("pip", "setuptools", "wheel"))))' || {
        echo "build.sh: $py needs pip, setuptools and wheel to build the wheel" >&2
        exit 1
    }
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
    echo "build.sh: building with --nodeps (the spec's fallbacks use this host's tools)" >&2
    nodeps=(--nodeps)
fi

rpmbuild -bb "${nodeps[@]}" \
    --define "_topdir $top" \
    --define "_sourcedir $top/SOURCES" \
    "$spec"

mkdir -p "$outdir"
find "$top/RPMS" -name '*.rpm' -exec cp -p {} "$outdir/" \;
find "$outdir" -maxdepth 1 -name "$name-*.rpm" -newer "$top/SOURCES/$prefix.tar.gz" -print
