#!/usr/bin/env bash
# A throw-away one-node Ceph cluster for the RBD tests, on 127.0.0.1 only:
# one ceph-mon, one ceph-osd on memstore (data in RAM), no mgr, pool `rbd`
# of size 1. Everything lives in DIR (config, keyring, daemon data, logs,
# sockets); nothing outside it is touched.
#
#   scripts/ceph-one-node.sh start DIR [--owner PID]
#                                        start (or find running) and wait
#                                        until an image can be created;
#                                        prints the ceph.conf path. With
#                                        --owner, the cluster stops by
#                                        itself once PID has exited (test
#                                        binaries have no "after all").
#   scripts/ceph-one-node.sh stop DIR    stop the daemons, remove DIR
#   scripts/ceph-one-node.sh env DIR     print CEPH_CONF=… for a shell
#
# Clients need only the printed ceph.conf: it names the monitor and the
# client.admin keyring.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|env DIR" >&2
    exit 2
}
[[ $# == 2 || ($# == 4 && $3 == --owner) ]] || usage
cmd=$1
dir=$2
owner=${4:-}
conf=$dir/ceph.conf

need() {
    local b
    for b in ceph-mon ceph-osd ceph monmaptool ceph-authtool rbd python3; do
        command -v "$b" >/dev/null || {
            echo "ceph-one-node: $b not found; run scripts/install-test-deps.sh" >&2
            exit 1
        }
    done
}

# A free TCP port on 127.0.0.1 for the monitor (OSDs pick their own in
# 6800-7300, skipping ports in use).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Running, and not a zombie waiting for its (here slow) reaper.
running() { # PID
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

pid_alive() { # NAME
    local f=$dir/run/$1.pid
    [[ -s $f ]] && running "$(cat "$f")"
}

write_conf() { # PORT
    cat >"$conf" <<EOF
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = v2:127.0.0.1:$1
public addr = 127.0.0.1
cluster addr = 127.0.0.1
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
# Proposals every 0.1 s instead of 1 s: a usable pool ~1.5 s after start
# instead of 7-8 s.
paxos propose interval = 0.1
# A missing or dead monitor fails a client in seconds, not 300 s.
client mount timeout = 10
rados mon op timeout = 15
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# /tmp may be fuller than the monitor's 5 % default tolerates.
mon data avail crit = 1
mon data avail warn = 2
# Clean health with cephx (no insecure reclaim warning).
auth allow insecure global id reclaim = false

[mon]
mon data = $dir/mon/\$name

[osd]
osd data = $dir/osd/\$name
osd objectstore = memstore
# What memstore reports as its capacity (the data is in RAM, about twice
# the bytes written); big enough that the full ratios never trigger.
memstore device bytes = 8589934592
keyring = $dir/keyring
# Two cores are shared with builds: few threads.
osd op num shards = 2
osd op num threads per shard = 1

[client]
# Here, not under [global]: the daemons keep their own keyrings.
keyring = $dir/keyring
# Many clients at once (targets, rbd commands): one shared log, no admin
# sockets (they would collide on \$name).
log file = $dir/log/client.log
admin socket =
EOF
}

make_keyring() {
    local k=$dir/keyring
    ceph-authtool --create-keyring "$k" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$k" --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap osd 'allow *' >/dev/null
}

start_mon() {
    local port
    port=$(sed -n 's/^mon host = v2:127.0.0.1:\([0-9]*\)$/\1/p' "$conf")
    if [[ ! -d $dir/mon/mon.a ]]; then
        monmaptool --create --fsid "$(sed -n 's/^fsid = //p' "$conf")" \
            --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
        ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
    fi
    ceph-mon -c "$conf" -i a
}

start_osd() {
    if [[ ! -f $dir/osd/uuid ]]; then
        local uuid
        uuid=$(cat /proc/sys/kernel/random/uuid)
        # osd.0's key is in the monitor's auth database already (mkfs
        # imported the keyring).
        ceph -c "$conf" osd new "$uuid" 0 >/dev/null
        mkdir -p "$dir/osd/osd.0"
        ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" 2>"$dir/log/osd-mkfs.err" >/dev/null
        echo "$uuid" >"$dir/osd/uuid"
    fi
    ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd-start.err"
}

make_pool() {
    [[ -f $dir/pool-ready ]] && return
    ceph -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
    ceph -c "$conf" osd pool application enable rbd rbd >/dev/null 2>&1
    touch "$dir/pool-ready"
}

# Until an image can be created and removed (the OSD is up and its PGs
# are active), at most 60 s.
wait_usable() {
    local i
    for ((i = 0; i < 600; i++)); do
        if rbd -c "$conf" create --size 1M rbd/.probe 2>/dev/null; then
            rbd -c "$conf" rm rbd/.probe >/dev/null 2>&1 || true
            return 0
        fi
        sleep 0.1
    done
    echo "ceph-one-node: cluster in $dir not usable after 60 s; logs in $dir/log" >&2
    return 1
}

start() {
    need
    mkdir -p "$dir"/{run,log,mon,osd}
    [[ -f $conf ]] || write_conf "$(free_port)"
    [[ -f $dir/keyring ]] || make_keyring
    pid_alive mon.a || start_mon
    pid_alive osd.0 || start_osd
    make_pool
    wait_usable
    [[ -z $owner ]] || watch_owner
    echo "$conf"
}

# A detached watcher: stop the cluster when the owner process is gone.
watch_owner() {
    local self
    self=$(realpath "$0")
    setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 0.5; done; exec '$self' stop '$dir'" \
        </dev/null >/dev/null 2>&1 &
}

stop_daemon() { # NAME SIGNAL
    local f=$dir/run/$1.pid p i
    [[ -s $f ]] || return 0
    p=$(cat "$f")
    kill "-$2" "$p" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        running "$p" || return 0
        sleep 0.05
    done
    kill -9 "$p" 2>/dev/null || true
}

stop() {
    [[ -d $dir ]] || return 0
    # Their data is thrown away with DIR: no clean shutdown needed (it
    # takes the OSD ~1.5 s, the monitor 2 s).
    stop_daemon osd.0 KILL
    stop_daemon mon.a KILL
    # Only a directory this script made: never rm -rf something else.
    if [[ -f $conf ]] && grep -q '^osd objectstore = memstore$' "$conf"; then
        rm -rf "$dir"
    fi
}

case $cmd in
start) start ;;
stop) stop ;;
env) echo "CEPH_CONF=$conf" ;;
*) usage ;;
esac
