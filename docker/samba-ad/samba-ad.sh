#!/usr/bin/env bash
# A real Samba AD domain controller for credfetcher's tests and demo, run natively (no Docker engine
# needed); docker/samba-ad/Dockerfile runs the same script inside a container.
#
#   samba-ad.sh deps   install Samba >= 4.21 (bookworm-backports) and the MIT client tools if missing
#   samba-ad.sh up     provision (first time) and start the DC; idempotent; prints the env file's path
#   samba-ad.sh env    print the env file (realm, DC address and name, base DN, principals, paths)
#   samba-ad.sh down   stop every process this script started (by pid) and remove all state
#   samba-ad.sh status exit 0 when the DC is up and answering
#
# Settings (environment): CF_SAMBA_STATE (state folder, default /var/tmp/credfetcher-samba-ad),
# CF_SAMBA_IP (loopback alias, default 127.0.0.10), CF_SAMBA_REALM (default CREDFETCHER.TEST).
#
# What it creates (names also in the env file):
#   CFHOST$     machine account with keytab host.keytab: the domain-joined host; may read every gMSA
#   CFOTHER$    machine account with keytab other.keytab: may read no gMSA password
#   cfreader    domain user (password in user.password, mode 0600) allowed to read every gMSA password
#   cfreader2   a second such user (user2.password): the new identity when a test rotates a secret
#   webapp01$, webapp02$, webapp03$   enabled gMSAs under CN=Managed Service Accounts
#   ouapp01$    enabled gMSA moved to OU=Apps,OU=Services,<base DN>
set -euo pipefail

STATE=${CF_SAMBA_STATE:-/var/tmp/credfetcher-samba-ad}
IP=${CF_SAMBA_IP:-127.0.0.10}
REALM=${CF_SAMBA_REALM:-CREDFETCHER.TEST}
REALM=${REALM^^}
DOMAIN_LC=${REALM,,}
NETBIOS=${CF_SAMBA_NETBIOS:-CREDFETCH}
DC_NAME=dc1
DC_FQDN="$DC_NAME.$DOMAIN_LC"
BASE_DN="DC=${DOMAIN_LC//./,DC=}"
GMSAS=(webapp01 webapp02 webapp03)
OU_GMSA=ouapp01
OU_DN="OU=Apps,OU=Services,$BASE_DN"
HOSTS_TAG="# credfetcher-samba-ad $IP"
# What create_accounts_offline makes; bump it when that changes, and `up` provisions state of an
# older layout again instead of serving a DC that lacks accounts the tests expect.
LAYOUT=2

log() { printf 'samba-ad: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it provisions a DC and adds a loopback address)"; }

samba_version_ok() {
    command -v samba >/dev/null 2>&1 || return 1
    local v
    v=$(samba --version | sed -n 's/^Version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    set -- $v
    [ "${1:-0}" -gt 4 ] || { [ "${1:-0}" -eq 4 ] && [ "${2:-0}" -ge 21 ]; }
}

# The backports suite is added with the URI of the machine's own Debian source, so no mirror host
# name is written anywhere by this script.
add_backports() {
    local src=/etc/apt/sources.list.d/debian.sources uri codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release"
    if grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then return 0; fi
    if [ -f "$src" ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' "$src")
    else
        uri=$(awk '$1=="deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [ -n "$uri" ] || die "no Debian archive URI found in the machine's apt sources"
    cat >/etc/apt/sources.list.d/credfetcher-backports.sources <<EOF
Types: deb
URIs: $uri
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

deps() {
    need_root
    local pkgs=(krb5-user ldap-utils libsasl2-modules-gssapi-mit iproute2)
    local missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if samba_version_ok && [ ${#missing[@]} -eq 0 ]; then return 0; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! samba_version_ok; then
        add_backports
        apt-get update -qq
        local codename
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        apt-get install -y -q -t "${codename}-backports" samba-ad-dc "${pkgs[@]}" >/dev/null
    else
        apt-get install -y -q "${missing[@]}" >/dev/null
    fi
    samba_version_ok || die "Samba >= 4.21 could not be installed ($(samba --version 2>&1 || true))"
    # The distribution's own units would fight ours for ports 53/88/389 on a real host.
    systemctl disable --now samba-ad-dc smbd nmbd winbind >/dev/null 2>&1 || true
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/$IP/$1") 2>/dev/null; }

dc_ready() {
    pid_alive "$STATE/samba.pid" && port_open 88 && port_open 389 && port_open 636 \
        && ldapsearch -LLL -x -H "ldap://$IP" -b '' -s base defaultNamingContext >/dev/null 2>&1
}

ensure_ip() {
    ip -o addr show dev lo | grep -q " $IP/" || ip addr add "$IP/8" dev lo
}

ensure_hosts() {
    # The DC's SPN is ldap/<fqdn>: clients must reach it by that name.
    if ! grep -q "^$IP[[:space:]].*$DC_FQDN" /etc/hosts; then
        printf '%s %s %s %s\n' "$IP" "$DC_FQDN" "$DC_NAME" "$HOSTS_TAG" >>/etc/hosts
    fi
}

# Output is shown only on failure: on success samba-tool just warns about its own argv.
st() {
    local out
    # -s: without the DC's own smb.conf, samba-tool knows no realm and stores Kerberos salts
    # unlike AD's (e.g. "hostNAME." for a gMSA instead of "REALMhostname.realm").
    if ! out=$(samba-tool "$@" -H "$STATE/private/sam.ldb" -s "$STATE/etc/smb.conf" 2>&1); then
        printf '%s\n' "$out" >&2
        die "samba-tool $1 $2 failed"
    fi
}

provision() {
    log "provisioning $REALM in $STATE"
    rm -rf "$STATE"
    mkdir -p "$STATE/run" "$STATE/log"
    chmod 0755 "$STATE"
    local admin_pw
    admin_pw="Adm1n-$(head -c 12 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    # Provision reads the admin password from its own option only; this runs as root on a throwaway
    # test DC whose state folder is 0700-protected below.
    samba-tool domain provision --realm="$REALM" --domain="$NETBIOS" --server-role=dc \
        --dns-backend=SAMBA_INTERNAL --targetdir="$STATE" --host-ip="$IP" --host-name="$DC_NAME" \
        --function-level=2016 --adminpass="$admin_pw" \
        --option="interfaces=$IP" --option="bind interfaces only=yes" \
        --option="ad dc functional level = 2016" --option="pid directory=$STATE/run" \
        --option="log file = $STATE/log/%m.log" --option="dns forwarder = 127.0.0.1" \
        --option="tls enabled = yes"  >"$STATE/log/provision.log" 2>&1 \
        || { tail -20 "$STATE/log/provision.log" >&2; die "provision failed"; }
    umask 077
    printf '%s\n' "$admin_pw" >"$STATE/admin.password"
    umask 022
    create_accounts_offline
}

random_pw() { printf 'Cf-%s-9a' "$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"; }

# Accounts are created against the local sam.ldb before the DC starts: no network round trips and
# no Kerberos needed, which keeps `up` well under 30 s on two cores.
create_accounts_offline() {
    local user_pw
    user_pw=$(random_pw)
    st computer add CFHOST
    st computer add CFOTHER
    st user add cfreader "$user_pw" --given-name=credfetcher --surname=reader
    umask 077
    printf '%s' "$user_pw" >"$STATE/user.password"
    umask 022
    user_pw=$(random_pw)
    st user add cfreader2 "$user_pw" --given-name=credfetcher --surname=reader2
    umask 077
    printf '%s' "$user_pw" >"$STATE/user2.password"
    umask 022
    st ou add "OU=Services,$BASE_DN"
    st ou add "$OU_DN"
    local g
    for g in "${GMSAS[@]}" "$OU_GMSA"; do
        st service-account create --name="$g" --dns-host-name="$g.$DOMAIN_LC"
        st service-account group-msa-membership add --name="$g\$" --principal='CFHOST$'
        st service-account group-msa-membership add --name="$g\$" --principal=cfreader
        st service-account group-msa-membership add --name="$g\$" --principal=cfreader2
        # samba-tool creates gMSAs disabled (UF_ACCOUNTDISABLE): the KDC would say "revoked".
        st user enable "$g\$"
    done
    st computer move "$OU_GMSA\$" "$OU_DN"
    local acct
    for acct in CFHOST CFOTHER; do
        st user setpassword "$acct\$" --newpassword="$(random_pw)"
        st user enable "$acct\$"
        # exportkeytab needs the DC's smb.conf (-s): with -H alone it writes an empty keytab.
        samba-tool domain exportkeytab "$STATE/${acct,,}.keytab" --principal="$acct\$" \
            -s "$STATE/etc/smb.conf" >/dev/null 2>&1
        [ -s "$STATE/${acct,,}.keytab" ] || die "keytab for $acct\$ is empty"
    done
    chmod 0600 "$STATE"/*.keytab
}

write_env() {
    cat >"$STATE/krb5.conf" <<EOF
[libdefaults]
    default_realm = $REALM
    dns_lookup_realm = false
    dns_lookup_kdc = false
    rdns = false
    dns_canonicalize_hostname = false
    ticket_lifetime = 10h
    renew_lifetime = 7d
    forwardable = true

[realms]
    $REALM = {
        kdc = $IP
        admin_server = $IP
    }

[domain_realm]
    .$DOMAIN_LC = $REALM
    $DOMAIN_LC = $REALM
EOF
    cat >"$STATE/env" <<EOF
# credfetcher test DC (docker/samba-ad/samba-ad.sh); source it, or read KEY='VALUE' lines.
CF_TEST_REALM='$REALM'
CF_TEST_DOMAIN='$DOMAIN_LC'
CF_TEST_NETBIOS='$NETBIOS'
CF_TEST_DC_IP='$IP'
CF_TEST_DC_NAME='$DC_NAME'
CF_TEST_DC_FQDN='$DC_FQDN'
CF_TEST_BASE_DN='$BASE_DN'
CF_TEST_STATE='$STATE'
CF_TEST_KRB5_CONFIG=$STATE/krb5.conf
CF_TEST_CA_FILE='$STATE/private/tls/ca.pem'
CF_TEST_SAM_LDB='$STATE/private/sam.ldb'
CF_TEST_HOST_PRINCIPAL='CFHOST\$@$REALM'
CF_TEST_HOST_KEYTAB='$STATE/cfhost.keytab'
CF_TEST_OTHER_PRINCIPAL='CFOTHER\$@$REALM'
CF_TEST_OTHER_KEYTAB='$STATE/cfother.keytab'
CF_TEST_USER='cfreader'
CF_TEST_USER_PASSWORD_FILE='$STATE/user.password'
CF_TEST_USER2='cfreader2'
CF_TEST_USER2_PASSWORD_FILE='$STATE/user2.password'
CF_TEST_GMSAS='${GMSAS[*]}'
CF_TEST_OU_GMSA='$OU_GMSA'
CF_TEST_OU_DN='$OU_DN'
EOF
}

start_dc() {
    ensure_ip
    ensure_hosts
    if pid_alive "$STATE/samba.pid"; then return 0; fi
    log "starting samba on $IP"
    mkdir -p /run/samba
    # -i keeps samba in the foreground so the pid we record is the one to stop; setsid detaches it
    # from the caller's terminal and process group.
    # 9>&-: samba must not inherit the lock of with_lock, or it would hold it for its lifetime.
    setsid samba -s "$STATE/etc/smb.conf" -i -M single </dev/null >"$STATE/log/samba.out" 2>&1 9>&- &
    echo $! >"$STATE/samba.pid"
}

wait_ready() {
    local i
    for i in $(seq 1 120); do
        if dc_ready; then return 0; fi
        pid_alive "$STATE/samba.pid" || { tail -20 "$STATE/log/samba.out" >&2; die "samba exited"; }
        sleep 0.25
    done
    tail -20 "$STATE/log/samba.out" >&2
    die "DC did not answer on $IP within 30 s"
}

up() {
    need_root
    deps
    if [ -f "$STATE/.provisioned" ] && [ "$(cat "$STATE/.provisioned")" != "$LAYOUT" ]; then
        log "$STATE holds an older layout of the test DC: provisioning it again"
        stop_processes
        rm -f "$STATE/.provisioned"
    fi
    if [ -f "$STATE/env" ] && dc_ready; then
        echo "$STATE/env"
        return 0
    fi
    mkdir -p "$(dirname "$STATE")"
    if [ ! -f "$STATE/.provisioned" ]; then
        ensure_ip
        provision
        echo "$LAYOUT" >"$STATE/.provisioned"
    fi
    write_env
    start_dc
    wait_ready
    log "DC $DC_FQDN ($IP) is up, realm $REALM"
    echo "$STATE/env"
}

stop_processes() {
    if [ -f "$STATE/samba.pid" ]; then
        local pid
        pid=$(cat "$STATE/samba.pid")
        if kill -0 "$pid" 2>/dev/null; then
            # samba -M single still forks helpers (e.g. samba-dcerpcd): stop the whole session.
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            local i
            for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    fi
    # Any process still using the state folder was started for this DC.
    local p
    for p in $(pgrep -f -- "$STATE/" 2>/dev/null || true); do
        [ "$p" != "$$" ] && kill -KILL "$p" 2>/dev/null || true
    done
}

down() {
    need_root
    stop_processes
    if [ -f /etc/hosts ] && grep -q "$HOSTS_TAG" /etc/hosts; then
        grep -v "$HOSTS_TAG" /etc/hosts >/etc/hosts.credfetcher.tmp || true
        cat /etc/hosts.credfetcher.tmp >/etc/hosts
        rm -f /etc/hosts.credfetcher.tmp
    fi
    ip addr del "$IP/8" dev lo 2>/dev/null || true
    rm -rf "$STATE" "$STATE.lock"
    log "stopped and removed $STATE"
}

# One up/down at a time per state folder: parallel test sessions share one DC.
with_lock() {
    mkdir -p "$(dirname "$STATE")"
    exec 9>"$STATE.lock"
    flock -w 300 9 || die "another samba-ad.sh holds $STATE.lock"
    "$@"
}

case "${1:-}" in
    deps) deps ;;
    up) with_lock up ;;
    down) with_lock down ;;
    env) [ -f "$STATE/env" ] || die "no DC state in $STATE (run: $0 up)"; cat "$STATE/env" ;;
    status) dc_ready ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
