"""packaging/rpm/build.sh builds an RPM that installs on Fedora 41+ and Amazon Linux 2023.

What is checked here, without either platform (docs/install.md, "What was verified where"):
the payload (unit, launchers, private tree), that every ELF object needs only sonames and symbol
versions the platforms' base packages provide (glibc at most 2.34, AL2023's), that every
``Requires`` is a capability both platforms have, that the bundled() Provides match the lock
file, and that rpmlint reports no errors. tests/integration/test_rpm_install.py runs the
installed daemon against the test DC.

Skipped with the reason where rpmbuild or rpmlint is missing, except under CI=true, where that is
a failure. The package is built once per test run (tests/rpmbuild.py).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.rpmbuild import LOCK, REPO, SPEC, built_rpm, extract, query, require

RPMLINT_CONFIG = REPO / "packaging" / "rpm" / "rpmlint.toml"
TREE = "usr/lib64/credfetcher"

# soname -> the package that provides it on Fedora 41+ and on AL2023 (same names on both; AL2023
# is derived from Fedora 34-36). docs/install.md lists the versions and the evidence.
PLATFORM_SONAMES = {
    "libc.so.6": "glibc",
    "libm.so.6": "glibc",
    "libpthread.so.0": "glibc",
    "libdl.so.2": "glibc",
    "librt.so.1": "glibc",
    "ld-linux-x86-64.so.2": "glibc",
    "ld-linux-aarch64.so.1": "glibc",
    "libgcc_s.so.1": "libgcc",
    "libstdc++.so.6": "libstdc++",
    "libgssapi_krb5.so.2": "krb5-libs",
    "libkrb5.so.3": "krb5-libs",
    "libk5crypto.so.3": "krb5-libs",
    "libkrb5support.so.0": "krb5-libs",
    "libcom_err.so.2": "libcom_err",
    "libsystemd.so.0": "systemd-libs",
}
# The oldest version on either platform: AL2023's glibc 2.34 and systemd 252.
MAX_VERSION = {"GLIBC": (2, 34), "LIBSYSTEMD": (252,)}
# Capabilities outside the soname ones, and where each comes from on both platforms.
PLATFORM_CAPABILITIES = {
    "python3.11": "package python3.11",
    "/usr/bin/python3.11": "package python3.11",
    "/bin/sh": "package bash",
    "rtld(GNU_HASH)": "package glibc",
}


@pytest.fixture(scope="module")
def rpm_file() -> Path:
    return built_rpm()


@pytest.fixture(scope="module")
def payload(rpm_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract(rpm_file, tmp_path_factory.mktemp("payload"))


def elf_objects(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def test_file_list(rpm_file: Path) -> None:
    files = set(query(rpm_file, "-l").splitlines())
    assert {
        "/usr/bin/credfetcherd",
        "/usr/bin/credfetcher",
        "/usr/lib/systemd/system/credfetcher.service",
        "/usr/lib/tmpfiles.d/credfetcher.conf",
        "/etc/sysconfig/credfetcher",
        "/etc/credfetcher/credfetcher.toml",
        "/var/credentials-fetcher/krbdir",
        "/var/credentials-fetcher/socket",
        "/var/credentials-fetcher/logging",
        f"/{TREE}/credfetcher/__init__.py",
        f"/{TREE}/grpc_health/v1/health.py",
        f"/{TREE}/grpc_reflection/v1alpha/reflection.py",
    } <= files
    assert any(f.endswith("/LICENSE") for f in files)
    # Nothing in the platform's site-packages, where its own python3 modules live.
    assert not [f for f in files if "site-packages" in f or "dist-packages" in f]


def test_configuration_is_noreplace(rpm_file: Path) -> None:
    flags = dict(
        line.split(" ", 1)
        for line in query(rpm_file, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines()
    )
    for path in ("/etc/sysconfig/credfetcher", "/etc/credfetcher/credfetcher.toml"):
        assert "c" in flags[path], path  # %config
        assert "n" in flags[path], path  # (noreplace)


def test_metadata(rpm_file: Path) -> None:
    arch, version = query(rpm_file, "--qf", "%{ARCH} %{VERSION}").split()
    assert arch in ("x86_64", "aarch64")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'(?m)^version = "{re.escape(version)}"$', pyproject)
    scripts = query(rpm_file, "--scripts")
    assert "credfetcher.service" in scripts
    assert "credfetcher.conf" in scripts  # tmpfiles run at install


def test_requires_exist_on_both_platforms(rpm_file: Path) -> None:
    unknown = []
    for cap in query(rpm_file, "--requires").splitlines():
        name = cap.split(" ", 1)[0].strip()
        if name.startswith(("rpmlib(", "config(credfetcher)")):
            # rpm's own features (rpm 4.16 on AL2023 has every one rpmbuild 4.18 writes here),
            # and the package's own config() capability.
            continue
        match = re.fullmatch(r"([^()]+)\(([^()]*)\)(\(64bit\))?", name)
        if match and match.group(1) in PLATFORM_SONAMES:
            tag = re.fullmatch(r"([A-Z]+)_([\d.]+)", match.group(2))
            if tag and tag.group(1) in MAX_VERSION:
                version = tuple(int(p) for p in tag.group(2).split("."))
                assert version <= MAX_VERSION[tag.group(1)], cap
            continue
        if name not in PLATFORM_CAPABILITIES:
            unknown.append(cap)
    assert not unknown, f"Requires that Fedora 41+ and AL2023 may not provide: {unknown}"
    assert "python3.11" in query(rpm_file, "--requires").split()


def test_elf_objects_need_only_platform_libraries(payload: Path) -> None:
    objects = elf_objects(payload)
    assert objects, "no compiled extension in the payload"
    # The three compiled here, from source, against the build host's krb5 and libsystemd.
    names = {p.name.split(".")[0] for p in objects}
    assert {"creds", "_context", "_journal", "cygrpc", "_message"} <= names
    problems = []
    for obj in objects:
        dynamic = subprocess.run(
            ["readelf", "-dW", str(obj)], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic):
            if soname not in PLATFORM_SONAMES:
                problems.append(f"{obj.relative_to(payload)} needs {soname}")
        if re.search(r"\((RPATH|RUNPATH)\)", dynamic):
            problems.append(f"{obj.relative_to(payload)} has an RPATH/RUNPATH")
        versions = subprocess.run(
            ["readelf", "-VW", str(obj)], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        needed = versions.split("Version needs section", 1)[-1]
        for prefix, number in re.findall(r"Name: ([A-Z]+)_([\d.]+)", needed):
            if prefix in MAX_VERSION:
                version = tuple(int(p) for p in number.split("."))
                if version > MAX_VERSION[prefix]:
                    problems.append(f"{obj.relative_to(payload)} needs {prefix}_{number}")
    assert not problems, "\n".join(problems)


def test_launchers_run_the_private_tree(payload: Path) -> None:
    launchers = (("credfetcherd", "credfetcher.daemon"), ("credfetcher", "credfetcher.cli"))
    for name, module in launchers:
        text = (payload / "usr/bin" / name).read_text()
        assert text.startswith("#!/usr/bin/python3.11 -IS\n"), name
        assert "../lib64/credfetcher" in text
        assert f"from {module} import main" in text
    unit = payload / "usr/lib/systemd/system/credfetcher.service"
    assert unit.read_text() == (REPO / "systemd" / "credfetcher.service").read_text()
    assert "ExecStart=/usr/bin/credfetcherd" in unit.read_text()
    # Byte-compiled for python3.11 at build time: /usr is read-only under ProtectSystem=strict.
    assert list((payload / TREE / "credfetcher/__pycache__").glob("daemon.cpython-311.pyc"))


def test_bundled_provides_match_the_lock(rpm_file: Path) -> None:
    locked = dict(re.findall(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text()))
    provided = dict(
        re.findall(r"bundled\(python3dist\(([^)]+)\)\) = (\S+)", query(rpm_file, "--provides"))
    )
    assert set(provided) == set(locked)
    for name, version in locked.items():
        # rpm's form of a Python version: trailing .0 dropped, rc as a ~ pre-release.
        expected = re.sub(r"(\.0)+$", "", version.replace("rc", "~rc"))
        assert provided[name] == expected, name


def test_lock_pins_what_pyproject_requires() -> None:
    """Every runtime dependency of the wheel is in the lock, at a version pyproject allows."""
    packaging_version = pytest.importorskip("packaging.version")
    packaging_req = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = dict(re.findall(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text()))
    wanted = [packaging_req.Requirement(r) for r in project["dependencies"]]
    wanted += [packaging_req.Requirement(r) for r in project["optional-dependencies"]["systemd"]]
    for req in wanted:
        assert req.name in locked, req.name
        version = packaging_version.Version(locked[req.name])
        assert req.specifier.contains(version, prereleases=True), (req, version)


def test_rpmlint_has_no_errors(rpm_file: Path) -> None:
    rpmlint = require("rpmlint")
    proc = subprocess.run(
        [rpmlint, "-c", str(RPMLINT_CONFIG), str(rpm_file), str(SPEC)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    match = re.search(r"(\d+) errors, (\d+) warnings", proc.stdout)
    assert match is not None, proc.stdout + proc.stderr
    assert match.group(1) == "0", proc.stdout
