#!/usr/bin/env bash
# Usage: packaging/rpm/lock.sh > packaging/rpm/requirements.lock
#
# Writes the RPM's hash-pinned lock from the versions below (keep them equal to
# tools/constraints.txt, which the test suite runs): for CPython 3.11, the manylinux wheels for
# x86_64 and aarch64 (glibc <= 2.34, AL2023's), pure wheels, and the sources of gssapi, krb5 and
# systemd-python, which PyPI has no Linux wheels for. Downloads with pip, hashes with sha256.
set -euo pipefail
wheels=(grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 protobuf==7.36.2
    decorator==5.3.1 ldap3==2.10.2rc4 pyasn1==0.6.5 dnspython==2.9.2 pycryptodomex==3.24.2
    typing-extensions==4.16.0 prometheus-client==0.26.0)
sdists=(gssapi==1.12.0 krb5==0.10.0 systemd-python==235)
py=${PYTHON:-/usr/bin/python3.11}
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
for arch in x86_64 aarch64; do
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "manylinux2014_$arch" --platform "manylinux_2_28_$arch" \
        --platform "manylinux_2_34_$arch" --python-version 3.11 --implementation cp \
        -d "$dl/$arch" "${wheels[@]}" >&2
done
"$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: \
    -d "$dl/sdist" "${sdists[@]}" >&2
sed -n '1,/Regenerate with/p' "$(dirname "$0")/requirements.lock"
"$py" - "$dl" <<'PY'
import collections, hashlib, pathlib, re, sys
files = collections.defaultdict(list)
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/*")):
    m = re.match(r"(.+?)-(\d[^-]*?)(?:-|\.tar\.gz$)", p.name)
    key = (m.group(1).replace("_", "-").lower(), m.group(2))
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    if digest not in [d for d, _ in files[key]]:
        files[key].append((digest, p.name))
for (name, version), found in sorted(files.items()):
    print("# " + ", ".join(n for _, n in found))
    print(f"{name}=={version}" + "".join(f" \\\n    --hash=sha256:{d}" for d, _ in found))
PY
