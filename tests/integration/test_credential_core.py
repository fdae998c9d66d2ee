"""The credential core against the real Samba AD DC, judged by Samba's keys and MIT's tools.

Blobs are read with ``ldapsearch -Y GSSAPI`` as the host account (the directory module is tested
on its own); keys are compared with ``samba-tool domain exportkeytab``; our keytabs and ccaches are
handed to ``kinit``, ``klist`` and ``ldapwhoami``.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import krb5
import pytest

from credfetcher import metrics
from credfetcher.blob import ManagedPassword, parse_managed_password, password_for_authentication
from credfetcher.errors import KerberosError, KeyRejectedError
from credfetcher.files import PRIVATE_DIR, TEMP_PREFIX, Ownership
from credfetcher.keys import derive_keys, gmsa_salt, password_to_utf8
from credfetcher.keytab import keys_for_keytab, write_keytab
from credfetcher.tickets import (
    TicketInfo,
    acquire_tgt,
    gmsa_principal,
    kdc_salt,
    read_ticket_info,
    store_tgt,
)
from tests.conftest import TestDC
from tests.integration.mit import kinit_keytab, ldapsearch_account, run

pytestmark = pytest.mark.usefixtures("krb5_config")

GMSA_INDEXES = [0, 1, 2]  # webapp01..03 on the test DC
NOBODY = 65534


@dataclass(frozen=True)
class Gmsa:
    name: str
    principal: str
    kvno: int
    password: ManagedPassword


@pytest.fixture(scope="module")
def host_ccache(samba_dc: TestDC, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ccache for the host account, which may read the gMSAs' passwords."""
    ccache = f"FILE:{tmp_path_factory.mktemp('host') / 'krb5cc'}"
    kinit_keytab(samba_dc, ccache, samba_dc.host_keytab, samba_dc.host_principal)
    return ccache


def fetch_gmsa(samba_dc: TestDC, host_ccache: str, name: str) -> Gmsa:
    ldif = ldapsearch_account(
        samba_dc, samba_dc.krb5_env(host_ccache), f"{name}$",
        "msDS-ManagedPassword", "msDS-KeyVersionNumber",
    )
    attrs: dict[str, str] = {}
    for line in ldif.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            attrs[key.rstrip(":")] = value
    return Gmsa(
        name=name,
        principal=gmsa_principal(name, samba_dc.realm),
        kvno=int(attrs["msDS-KeyVersionNumber"]),
        password=parse_managed_password(base64.b64decode(attrs["msDS-ManagedPassword"])),
    )


@pytest.fixture(scope="module", params=GMSA_INDEXES, ids=lambda i: f"gmsa{i}")
def gmsa(request: pytest.FixtureRequest, samba_dc: TestDC, host_ccache: str) -> Gmsa:
    index: int = request.param
    if index >= len(samba_dc.gmsas):
        pytest.skip(f"the test DC has only {len(samba_dc.gmsas)} gMSAs")
    return fetch_gmsa(samba_dc, host_ccache, samba_dc.gmsas[index])


def keytab_keys(path: Path) -> dict[tuple[int, int], bytes]:
    """(kvno, enctype) -> key of every entry, read with MIT's keytab code."""
    ctx = krb5.init_context()
    return {
        (entry.kvno, entry.key.enctype): entry.key.data
        for entry in krb5.kt_resolve(ctx, b"FILE:" + bytes(path))
    }


def test_keys_equal_samba_exportkeytab(samba_dc: TestDC, gmsa: Gmsa, tmp_path: Path) -> None:
    ours = derive_keys(
        password_for_authentication(gmsa.password),
        samba_dc.realm,
        gmsa.name,
        gmsa.kvno,
        rc4=True,
    )
    samba = keytab_keys(samba_dc.export_keytab(f"{gmsa.name}$", tmp_path / "samba.keytab"))
    assert {(k.kvno, k.enctype): k.contents for k in ours} == samba


def test_kdc_salt_follows_the_computer_account_rule(samba_dc: TestDC, gmsa: Gmsa) -> None:
    assert kdc_salt(gmsa.principal) == gmsa_salt(samba_dc.realm, gmsa.name)


def test_keytab_kinit(samba_dc: TestDC, gmsa: Gmsa, tmp_path: Path) -> None:
    keytab = tmp_path / "keytab"
    keys = keys_for_keytab(gmsa.password, samba_dc.realm, gmsa.name, gmsa.kvno)
    write_keytab(keytab, gmsa.principal, keys, Ownership(mode=0o600))
    listing = run(["klist", "-k", "-e", str(keytab)], samba_dc.krb5_env())
    assert listing.returncode == 0, listing.stderr
    assert f"{gmsa.principal} (aes256-cts-hmac-sha1-96)" in listing.stdout
    assert f"{gmsa.principal} (aes128-cts-hmac-sha1-96)" in listing.stdout
    ccache = f"FILE:{tmp_path / 'cc'}"
    proc = run(["kinit", "-k", "-t", str(keytab), gmsa.principal], samba_dc.krb5_env(ccache))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("source", ["password", "keys"])
def test_ccache_works_for_mit_tools_and_ldap(
    samba_dc: TestDC, gmsa: Gmsa, tmp_path: Path, source: str
) -> None:
    if source == "password":
        tgt = acquire_tgt(
            gmsa.principal, password=password_to_utf8(password_for_authentication(gmsa.password))
        )
    else:
        keys = derive_keys(
            password_for_authentication(gmsa.password),
            samba_dc.realm,
            gmsa.name,
            gmsa.kvno,
        )
        tgt = acquire_tgt(gmsa.principal, keys=keys)
    lease_dir = tmp_path / "lease" / gmsa.name
    lease_dir.mkdir(parents=True)
    ccache = lease_dir / "krb5cc"
    info = store_tgt(tgt, ccache, Ownership(uid=NOBODY, gid=NOBODY, mode=0o640))
    assert info.principal == gmsa.principal
    assert read_ticket_info(ccache) == info
    st = ccache.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o640)
    assert [p for p in lease_dir.iterdir() if p.name.startswith(TEMP_PREFIX)] == []

    env = samba_dc.krb5_env(f"FILE:{ccache}")
    klist = run(["klist", "-c", str(ccache)], env)
    assert klist.returncode == 0, klist.stderr
    assert f"Default principal: {gmsa.principal}" in klist.stdout
    assert f"krbtgt/{samba_dc.realm}@{samba_dc.realm}" in klist.stdout

    whoami = run(["ldapwhoami", "-Q", "-Y", "GSSAPI", "-H", f"ldap://{samba_dc.dc_fqdn}"], env)
    assert whoami.returncode == 0, whoami.stderr
    assert f"\\{gmsa.name}$".lower() in whoami.stdout.lower()


def test_requested_lifetimes_are_honoured(gmsa: Gmsa) -> None:
    password = password_to_utf8(password_for_authentication(gmsa.password))
    now = int(time.time())
    tgt = acquire_tgt(gmsa.principal, password=password, lifetime=600, renew_lifetime=3 * 3600)
    assert abs(tgt.info.endtime - (now + 600)) <= 5
    assert abs(tgt.info.endtime - tgt.info.starttime - 600) <= 1
    assert abs(tgt.info.renew_till - (now + 3 * 3600)) <= 5


def test_metrics_count_one_as_exchange(samba_dc: TestDC, gmsa: Gmsa) -> None:
    keys = derive_keys(
        password_for_authentication(gmsa.password), samba_dc.realm, gmsa.name, gmsa.kvno
    )
    before = metrics.get(metrics.AS_EXCHANGES, gmsa.principal)
    acquire_tgt(gmsa.principal, keys=keys)
    assert metrics.get(metrics.AS_EXCHANGES, gmsa.principal) == before + 1


def test_wrong_key_is_rejected(samba_dc: TestDC, gmsa: Gmsa) -> None:
    keys = derive_keys(gmsa.password.current, samba_dc.realm, gmsa.name, gmsa.kvno, salt=b"wrong")
    with pytest.raises(KeyRejectedError) as info:
        acquire_tgt(gmsa.principal, keys=keys)
    assert info.value.principal == gmsa.principal
    assert isinstance(info.value.__cause__, krb5.Krb5Error)


def test_wrong_password_is_rejected(gmsa: Gmsa) -> None:
    with pytest.raises(KeyRejectedError):
        acquire_tgt(gmsa.principal, password=b"not the password")


def test_unknown_principal(samba_dc: TestDC) -> None:
    principal = gmsa_principal("nosuchgmsa", samba_dc.realm)
    with pytest.raises(KerberosError, match="unknown to the KDC") as info:
        acquire_tgt(principal, password=b"x")
    assert not isinstance(info.value, KeyRejectedError)


def test_reader_never_sees_a_partial_ccache(
    samba_dc: TestDC, host_ccache: str, tmp_path: Path
) -> None:
    """A reader polling the ccache while it is replaced 500 times always parses a whole TGT."""
    gmsa = fetch_gmsa(samba_dc, host_ccache, samba_dc.gmsas[0])
    reader_target = tmp_path / "krb5cc"
    password = password_to_utf8(password_for_authentication(gmsa.password))
    tgts = [acquire_tgt(gmsa.principal, password=password, lifetime=life) for life in (600, 900)]
    expected = {tgt.info for tgt in tgts}
    store_tgt(tgts[0], reader_target, Ownership(mode=0o644))
    stop = threading.Event()
    seen: list[TicketInfo | None] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(read_ticket_info(reader_target))
            time.sleep(0)  # let the writer have the GIL back as soon as its I/O returns

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(500):
            store_tgt(tgts[i % 2], reader_target, Ownership(mode=0o644))
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 50
    assert set(seen) <= expected, "the reader saw a missing or unparsable ccache"
    assert set(seen) == expected
    # Staged in the private directory, which is left empty.
    assert sorted(os.listdir(reader_target.parent)) == [PRIVATE_DIR, "krb5cc"]
    assert os.listdir(reader_target.parent / PRIVATE_DIR) == []
