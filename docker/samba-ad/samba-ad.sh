#!/usr/bin/env bash
# A real Samba AD domain controller for credfetcher's tests and demo, run natively (no Docker engine
# needed); docker/samba-ad/Dockerfile runs the same script inside a container.
#
#   samba-ad.sh deps   install Samba >= 4.21 (bookworm-backports) and the MIT client tools if missing
#   samba-ad.sh up     provision (first time) and start the DC; idempotent; prints the env file's path
#   samba-ad.sh env    print the env file (realm, DC address and name, base DN, principals, paths)
#   samba-ad.sh down   stop every process this script started (by pid) and remove all state
#   samba-ad.sh stop   stop those processes, keep the state (the next `up` starts it again)
#   samba-ad.sh status exit 0 when the DC is up and answering (both DCs with CF_SAMBA_DC2_IP)
#
# Settings (environment): CF_SAMBA_STATE (state folder, default /var/tmp/credfetcher-samba-ad),
# CF_SAMBA_IP (loopback alias, default 127.0.0.10), CF_SAMBA_REALM (default CREDFETCHER.TEST),
# CF_SAMBA_NETBIOS (default CREDFETCH).
#   CF_SAMBA_DC2_IP  a second, replicating DC "dc2" on that loopback alias: `up` joins it to the
#                    domain (samba-tool domain join ... DC, state in $CF_SAMBA_STATE/dc2), adds its
#                    DNS SRV records and lists both KDCs in krb5.conf; `up` restarts either DC
#                    when it is down.
#   CF_SAMBA_NO_GMSAS=1 provision none of the gMSAs below (a private domain whose tests make
#                    their own): saves some 20 samba-tool calls, half of the provisioning time.
#   CF_SAMBA_FAKETIME a libfaketime clock file (e.g. "+0"; write "+<seconds>" to jump): every
#                    Samba process and samba-tool call of this script runs on that fake clock
#                    (LD_PRELOAD of libfaketimeMT, monotonic clock left real). For tests that make
#                    gMSA passwords rotate; only ever for a private test domain.
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
DC2_IP=${CF_SAMBA_DC2_IP:-}
DC2_NAME=dc2
DC2_FQDN="$DC2_NAME.$DOMAIN_LC"
DC2_STATE="$STATE/dc2"
DC2_HOSTS_TAG="# credfetcher-samba-ad $DC2_IP"
FAKETIME_FILE=${CF_SAMBA_FAKETIME:-}

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
    # faketime: rotation tests run a private DC on a fake clock (CF_SAMBA_FAKETIME).
    local pkgs=(krb5-user ldap-utils libsasl2-modules-gssapi-mit iproute2 faketime)
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

faketime_lib() {
    local lib
    for lib in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
        [ -f "$lib" ] && { echo "$lib"; return 0; }
    done
    die "libfaketimeMT.so.1 not found (run: $0 deps)"
}

# The environment that puts a process on the fake clock of CF_SAMBA_FAKETIME (empty when unset).
fake_env() {
    [ -n "$FAKETIME_FILE" ] || return 0
    [ -f "$FAKETIME_FILE" ] || die "CF_SAMBA_FAKETIME=$FAKETIME_FILE does not exist (write +0 into it)"
    printf '%s\n' "LD_PRELOAD=$(faketime_lib)" "FAKETIME_TIMESTAMP_FILE=$FAKETIME_FILE" \
        FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1 DONT_FAKE_MONOTONIC=1
}

# Runs "$@" on that fake clock when set, else as is.
faked() {
    local vars
    mapfile -t vars < <(fake_env)
    env "${vars[@]}" "$@"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# dc_ready_at IP STATE_DIR: that DC's samba runs and answers Kerberos and LDAP.
dc_ready_at() {
    pid_alive "$2/samba.pid" && port_open "$1" 88 && port_open "$1" 389 && port_open "$1" 636 \
        && ldapsearch -LLL -x -H "ldap://$1" -b '' -s base defaultNamingContext >/dev/null 2>&1
}

dc_ready() {
    dc_ready_at "$IP" "$STATE" || return 1
    [ -z "$DC2_IP" ] || dc_ready_at "$DC2_IP" "$DC2_STATE"
}

ensure_ip() {
    local a have
    # Read the list first: `ip | grep -q` fails under pipefail when grep stops ip early.
    for a in "$IP" $DC2_IP; do
        have=$(ip -o addr show dev lo)
        grep -q " $a/" <<<"$have" || ip addr add "$a/8" dev lo
    done
}

ensure_hosts() {
    # The DC's SPN is ldap/<fqdn>: clients must reach it by that name.
    if ! grep -q "^$IP[[:space:]].*$DC_FQDN" /etc/hosts; then
        printf '%s %s %s %s\n' "$IP" "$DC_FQDN" "$DC_NAME" "$HOSTS_TAG" >>/etc/hosts
    fi
    if [ -n "$DC2_IP" ] && ! grep -q "^$DC2_IP[[:space:]].*$DC2_FQDN" /etc/hosts; then
        printf '%s %s %s %s\n' "$DC2_IP" "$DC2_FQDN" "$DC2_NAME" "$DC2_HOSTS_TAG" >>/etc/hosts
    fi
}

# Output is shown only on failure: on success samba-tool just warns about its own argv.
st() {
    local out
    # -s: without the DC's own smb.conf, samba-tool knows no realm and stores Kerberos salts
    # unlike AD's (e.g. "hostNAME." for a gMSA instead of "REALMhostname.realm").
    if ! out=$(faked samba-tool "$@" -H "$STATE/private/sam.ldb" -s "$STATE/etc/smb.conf" 2>&1); then
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
    faked samba-tool domain provision --realm="$REALM" --domain="$NETBIOS" --server-role=dc \
        --dns-backend=SAMBA_INTERNAL --targetdir="$STATE" --host-ip="$IP" --host-name="$DC_NAME" \
        --function-level=2016 --adminpass="$admin_pw" \
        --option="interfaces=$IP" --option="bind interfaces only=yes" \
        --option="ad dc functional level = 2016" --option="pid directory=$STATE/run" \
        --option="log file = $STATE/log/%m.log" --option="dns forwarder = 127.0.0.1" \
        --option="tls enabled = yes"  >"$STATE/log/provision.log" 2>&1 \
        || { tail -20 "$STATE/log/provision.log" >&2; die "provision failed"; }
    umask 077
    printf '%s\n' "$admin_pw" >"$STATE/admin.password"
    # samba-tool's authentication file (-A): the join of dc2 and its DNS records, no argv secret.
    printf 'username = Administrator\npassword = %s\ndomain = %s\n' "$admin_pw" "$NETBIOS" \
        >"$STATE/admin.auth"
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
    local g gmsas=("${GMSAS[@]}" "$OU_GMSA")
    [ -z "${CF_SAMBA_NO_GMSAS:-}" ] || gmsas=()
    for g in "${gmsas[@]}"; do
        st service-account create --name="$g" --dns-host-name="$g.$DOMAIN_LC"
        st service-account group-msa-membership add --name="$g\$" --principal='CFHOST$'
        st service-account group-msa-membership add --name="$g\$" --principal=cfreader
        st service-account group-msa-membership add --name="$g\$" --principal=cfreader2
        # samba-tool creates gMSAs disabled (UF_ACCOUNTDISABLE): the KDC would say "revoked".
        st user enable "$g\$"
    done
    [ -n "${CF_SAMBA_NO_GMSAS:-}" ] || st computer move "$OU_GMSA\$" "$OU_DN"
    local acct
    for acct in CFHOST CFOTHER; do
        st user setpassword "$acct\$" --newpassword="$(random_pw)"
        st user enable "$acct\$"
        # exportkeytab needs the DC's smb.conf (-s): with -H alone it writes an empty keytab.
        faked samba-tool domain exportkeytab "$STATE/${acct,,}.keytab" --principal="$acct\$" \
            -s "$STATE/etc/smb.conf" >/dev/null 2>&1
        [ -s "$STATE/${acct,,}.keytab" ] || die "keytab for $acct\$ is empty"
    done
    chmod 0600 "$STATE"/*.keytab
}

write_env() {
    local listed="${GMSAS[*]}"
    [ -z "${CF_SAMBA_NO_GMSAS:-}" ] || listed=""
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
        kdc = $IP${DC2_IP:+
        kdc = $DC2_IP}
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
CF_TEST_GMSAS='$listed'
CF_TEST_OU_GMSA='$OU_GMSA'
CF_TEST_OU_DN='$OU_DN'
EOF
    if [ -n "$DC2_IP" ]; then
        cat >>"$STATE/env" <<EOF
CF_TEST_DC2_IP='$DC2_IP'
CF_TEST_DC2_NAME='$DC2_NAME'
CF_TEST_DC2_FQDN='$DC2_FQDN'
CF_TEST_DC2_STATE='$DC2_STATE'
CF_TEST_CA_BUNDLE='$STATE/ca-bundle.pem'
EOF
    fi
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
    local vars
    mapfile -t vars < <(fake_env)
    setsid env "${vars[@]}" samba -s "$STATE/etc/smb.conf" -i -M single \
        </dev/null >"$STATE/log/samba.out" 2>&1 9>&- &
    echo $! >"$STATE/samba.pid"
}

# The second DC: joined to the running first one (replicates the whole domain, gMSAs and KDS
# root key included), on its own loopback alias, state folder and pid directory.
join_dc2() {
    log "joining $DC2_FQDN ($DC2_IP) to $REALM"
    rm -rf "$DC2_STATE"
    mkdir -p "$DC2_STATE/run" "$DC2_STATE/log"
    faked samba-tool domain join "$DOMAIN_LC" DC --server="$DC_FQDN" -A "$STATE/admin.auth" \
        --use-kerberos=off --realm="$REALM" --dns-backend=SAMBA_INTERNAL --targetdir="$DC2_STATE" \
        --option="netbios name=${DC2_NAME^^}" --option="workgroup=$NETBIOS" \
        --option="interfaces=$DC2_IP" --option="bind interfaces only=yes" \
        --option="pid directory=$DC2_STATE/run" --option="log file = $DC2_STATE/log/%m.log" \
        --option="dns forwarder = 127.0.0.1" --option="tls enabled = yes" \
        --option="ad dc functional level = 2016" \
        >"$DC2_STATE/log/join.log" 2>&1 || { tail -20 "$DC2_STATE/log/join.log" >&2; die "join of dc2 failed"; }
    dns_dc2
    # dc2 would see its own records only at its next periodic pull: copy them over now (in full:
    # an incremental pull right after the join believes it is up to date).
    local nc
    for nc in "DC=DomainDnsZones,$BASE_DN" "DC=ForestDnsZones,$BASE_DN"; do
        faked samba-tool drs replicate "$DC2_FQDN" "$DC_FQDN" "$nc" --local --full-sync \
            -A "$STATE/admin.auth" --use-kerberos=off -s "$DC2_STATE/etc/smb.conf" \
            >>"$DC2_STATE/log/join.log" 2>&1 || die "replicating $nc to dc2 failed"
    done
}

# DC locator records for dc2 on dc1's DNS (replicated to dc2's): what a real DC registers.
dns_dc2() {
    local rec zone name port out
    for rec in "$DOMAIN_LC _ldap._tcp 389" "$DOMAIN_LC _kerberos._tcp 88" \
               "$DOMAIN_LC _kerberos._udp 88" "_msdcs.$DOMAIN_LC _ldap._tcp.dc 389" \
               "_msdcs.$DOMAIN_LC _kerberos._tcp.dc 88" "$DOMAIN_LC $DC2_NAME A"; do
        set -- $rec
        zone=$1 name=$2 port=$3
        if [ "$port" = A ]; then
            set -- A "$DC2_IP"
        else
            set -- SRV "$DC2_FQDN $port 0 100"
        fi
        if ! out=$(faked samba-tool dns add "$IP" "$zone" "$name" "$@" -A "$STATE/admin.auth" \
                --use-kerberos=off 2>&1) && ! grep -q "ALREADY_EXISTS" <<<"$out"; then
            printf '%s\n' "$out" >&2
            die "cannot add DNS record $name.$zone for dc2"
        fi
    done
}

start_dc2() {
    if pid_alive "$DC2_STATE/samba.pid"; then return 0; fi
    log "starting samba on $DC2_IP"
    local vars
    mapfile -t vars < <(fake_env)
    setsid env "${vars[@]}" samba -s "$DC2_STATE/etc/smb.conf" -i -M single \
        </dev/null >"$DC2_STATE/log/samba.out" 2>&1 9>&- &
    echo $! >"$DC2_STATE/samba.pid"
}

# wait_ready [IP STATE_DIR]: the DC there (default: the first) answers, within 30 s.
wait_ready() {
    local ip=${1:-$IP} dir=${2:-$STATE} i
    for i in $(seq 1 120); do
        if dc_ready_at "$ip" "$dir"; then return 0; fi
        pid_alive "$dir/samba.pid" || { tail -20 "$dir/log/samba.out" >&2; die "samba exited"; }
        sleep 0.25
    done
    tail -20 "$dir/log/samba.out" >&2
    die "DC did not answer on $ip within 30 s"
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
    if [ -n "$FAKETIME_FILE" ] && [ ! -f "$FAKETIME_FILE" ]; then
        die "CF_SAMBA_FAKETIME=$FAKETIME_FILE does not exist (write +0 into it)"
    fi
    write_env
    start_dc
    wait_ready
    log "DC $DC_FQDN ($IP) is up, realm $REALM"
    if [ -n "$DC2_IP" ]; then
        ensure_ip
        ensure_hosts
        if [ ! -f "$DC2_STATE/.joined" ]; then
            join_dc2
            echo "$LAYOUT" >"$DC2_STATE/.joined"
        fi
        start_dc2
        wait_ready "$DC2_IP" "$DC2_STATE"
        # Each DC made its own CA for its LDAPS certificate: clients get both.
        cat "$STATE/private/tls/ca.pem" "$DC2_STATE/private/tls/ca.pem" >"$STATE/ca-bundle.pem"
        log "DC $DC2_FQDN ($DC2_IP) is up, replicating $REALM"
    fi
    echo "$STATE/env"
}

stop_processes() {
    local pidfile
    for pidfile in "$STATE/samba.pid" "$DC2_STATE/samba.pid"; do
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            # samba -M single still forks helpers (e.g. samba-dcerpcd): stop the whole session.
            # SIGCONT: a test may have left it stopped (SIGSTOP), which would ignore SIGTERM.
            kill -CONT -- "-$pid" 2>/dev/null || true
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            local i
            for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    done
    # Any process still using the state folder was started for this DC.
    local p
    for p in $(pgrep -f -- "$STATE/" 2>/dev/null || true); do
        [ "$p" != "$$" ] && kill -KILL "$p" 2>/dev/null || true
    done
}

down() {
    need_root
    stop_processes
    local tag
    for tag in "$HOSTS_TAG" ${DC2_IP:+"$DC2_HOSTS_TAG"}; do
        if [ -f /etc/hosts ] && grep -q "$tag\$" /etc/hosts; then
            grep -v "$tag\$" /etc/hosts >/etc/hosts.credfetcher.tmp || true
            cat /etc/hosts.credfetcher.tmp >/etc/hosts
            rm -f /etc/hosts.credfetcher.tmp
        fi
    done
    ip addr del "$IP/8" dev lo 2>/dev/null || true
    [ -z "$DC2_IP" ] || ip addr del "$DC2_IP/8" dev lo 2>/dev/null || true
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
    stop) need_root; with_lock stop_processes ;;
    env) [ -f "$STATE/env" ] || die "no DC state in $STATE (run: $0 up)"; cat "$STATE/env" ;;
    status) dc_ready ;;
    *) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
