#!/usr/bin/env bash
# The README's demo: on a fresh Debian 12 machine, as root, start the local test DC, start
# credfetcherd against it, make a lease for a gMSA through the bundled client, and show the
# resulting ccache with MIT's klist. Leaves the DC and the daemon running; prints how to stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash tools/bootstrap.sh
VENV=${CF_VENV:-$ROOT/.venv}
ENV_FILE=$(docker/samba-ad/samba-ad.sh up)
# shellcheck disable=SC1090
. "$ENV_FILE"

DEMO=${CF_DEMO_DIR:-/var/tmp/credfetcher-demo}
mkdir -p "$DEMO"
export KRB5_CONFIG=$CF_TEST_KRB5_CONFIG
export CF_KRB_DIR=$DEMO/krbdir CF_UNIX_DOMAIN_SOCKET_DIR=$DEMO/socket
export CF_DOMAIN_CONTROLLERS=$CF_TEST_DC_FQDN CF_LDAP_CA_FILE=$CF_TEST_CA_FILE
export CF_MACHINE_KEYTAB=$CF_TEST_HOST_KEYTAB CF_MACHINE_PRINCIPAL=$CF_TEST_HOST_PRINCIPAL
SOCK=$CF_UNIX_DOMAIN_SOCKET_DIR/credentials_fetcher.sock

if [ -f "$DEMO/credfetcherd.pid" ] && kill -0 "$(cat "$DEMO/credfetcherd.pid")" 2>/dev/null; then
    kill "$(cat "$DEMO/credfetcherd.pid")"
    sleep 1
fi
echo "== starting credfetcherd (log: $DEMO/credfetcherd.log)"
setsid "$VENV/bin/credfetcherd" </dev/null >"$DEMO/credfetcherd.log" 2>&1 &
echo $! >"$DEMO/credfetcherd.pid"
for _ in $(seq 1 100); do
    "$VENV/bin/credfetcher" --socket "$SOCK" health >/dev/null 2>&1 && break
    sleep 0.2
done
"$VENV/bin/credfetcher" --socket "$SOCK" health

GMSA=${CF_TEST_GMSAS%% *}
echo "== credspec for $GMSA (what New-CredentialSpec writes)"
"$VENV/bin/credfetcher" credspec --gmsa "$GMSA" --domain "$CF_TEST_DOMAIN" >"$DEMO/$GMSA.json"
cat "$DEMO/$GMSA.json"; echo
echo "== credfetcher add --credspec $DEMO/$GMSA.json"
"$VENV/bin/credfetcher" --socket "$SOCK" add --credspec "$DEMO/$GMSA.json" | tee "$DEMO/lease.txt"
LEASE_DIR=$(grep -o "$CF_KRB_DIR/[0-9a-f]*/$GMSA" "$DEMO/lease.txt" | head -n1)
echo "== klist -c $LEASE_DIR/krb5cc"
klist -c "FILE:$LEASE_DIR/krb5cc"
echo
echo "== credfetcher list"
"$VENV/bin/credfetcher" --socket "$SOCK" list
cat <<EOF2

The daemon keeps this lease fresh until it is deleted:
  $VENV/bin/credfetcher --socket $SOCK delete <lease id>
Stop everything:
  kill \$(cat $DEMO/credfetcherd.pid); docker/samba-ad/samba-ad.sh down
EOF2
