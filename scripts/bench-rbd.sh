#!/usr/bin/env bash
# Side-by-side on one one-node Ceph cluster, in one run: gentgt's RBD LUN
# and tgtd's bs_rbd (Debian's tgt-rbd), both driven over iSCSI on
# 127.0.0.1 by `gentgt bench`, and `rbd bench` (librbd with no iSCSI in
# between: the limit). 4 KiB random read and write at QD32, then 1 MiB
# (random for gentgt bench, which has no sequential mode; sequential for
# rbd bench) at QD32. Prints one line per figure: IOPS and the target
# process's (for rbd bench: the client's) CPU per I/O.
#
#   scripts/bench-rbd.sh [SECONDS]     (default 10 s per figure)
#
# Needs: target/release/gentgt (cargo build --release), ceph-mon/osd,
# tgt and tgt-rbd (scripts/install-test-deps.sh). Everything it starts
# (cluster, targets) is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
bin=target/release/gentgt
work=$(mktemp -d /tmp/gentgt-bench-rbd.XXXXXX)
ceph_dir=$work/ceph
pids=()
cport=$((20000 + RANDOM % 10000))

cleanup() {
    local p
    # SIGKILL, before the cluster goes: the figures are taken, and a
    # graceful stop would flush to a cluster that is about to vanish
    # (gentgt waits for it; tgtd ignores SIGTERM anyway).
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -f "/var/run/tgtd/socket.$cport" "/var/run/tgtd/socket.$cport.lock"
    scripts/ceph-one-node.sh stop "$ceph_dir" || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system) of a process so far.
cpu_of() {
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"
}

conf=$(scripts/ceph-one-node.sh start "$ceph_dir")
size=256 # MiB per image: reads must hit written objects
for img in g t r; do
    rbd -c "$conf" create --size "${size}M" "rbd/bench-$img"
    rbd -c "$conf" bench --io-type write --io-pattern seq --io-size 4M \
        --io-total "${size}M" "rbd/bench-$img" >/dev/null
done

gport=$(free_port)
cat >"$work/gentgt.toml" <<EOF
[[target]]
name = "iqn.2026-11.dev.gentgt:bench-rbd"
[[target.lun]]
id = 0
backend = "rbd"
pool = "rbd"
image = "bench-g"
ceph_conf = "$conf"
tracking = "off"
EOF
"$bin" serve --listen "127.0.0.1:$gport" --data-dir "$work/data" --config "$work/gentgt.toml" \
    >"$work/gentgt.log" 2>&1 &
gpid=$!
pids+=("$gpid")

tport=$(free_port)
tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$tport" >"$work/tgtd.log" 2>&1 &
tpid=$!
pids+=("$tpid")
for _ in $(seq 50); do
    tgtadm -C "$cport" --op show --mode system >/dev/null 2>&1 && break
    sleep 0.1
done
tgtadm -C "$cport" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.dev.gentgt:bench-tgt
tgtadm -C "$cport" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 \
    --bstype rbd --backing-store rbd/bench-t --bsopts "conf=$conf;id=admin"
tgtadm -C "$cport" --lld iscsi --op bind --mode target --tid 1 -I ALL
sleep 1

# gentgt bench against PORT/IQN/LUN; prints "NAME RW iops=… cpu_us_per_io=…"
# with CPU of the target process PID.
iscsi_figure() { # NAME PID PORT IQN LUN RW BS
    local before after json iops
    before=$(cpu_of "$2")
    json=$("$bin" bench --portal "127.0.0.1:$3" --target "$4" --lun "$5" --qd 32 \
        --rw "$6" --bs "$7" --seconds "$secs" --warmup 1 --json)
    after=$(cpu_of "$2")
    iops=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["iops"]))' "$json")
    python3 -c 'import sys; n,rw,bs,i,c=sys.argv[1:]; i=float(i); c=float(c)
print(f"{n:<12} rand{rw:<5} {bs:<5} QD32  iops={i:>8.0f}  target_cpu_us_per_io={1e6*c/max(i,1):.1f}")' \
        "$1" "$6" "$7" "$iops" "$(python3 -c "print(($after - $before) / ($secs + 1))")"
}

rbd_figure() { # RW SIZE PATTERN TOTAL_MIB
    local out
    # A fixed amount of I/O (rbd bench stops by bytes, not time).
    out=$(/usr/bin/time -f 'cpu %U %S' rbd -c "$conf" bench --io-type "$1" --io-pattern "$3" \
        --io-size "$2" --io-threads 32 --io-total "${4}M" rbd/bench-r 2>&1)
    python3 - "$1" "$out" "$2" "$3" <<'PY'
import re, sys
rw, out, size, pattern = sys.argv[1:5]
m = re.search(r"elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops/sec:\s*([\d.]+)", out)
c = re.search(r"^cpu ([\d.]+) ([\d.]+)", out, re.M)
ops, iops = int(m.group(2)), float(m.group(3))
cpu = float(c.group(1)) + float(c.group(2))
print(f"{'rbd bench':<12} {pattern}{rw:<5} {size:<5} QD32  iops={iops:>8.0f}  client_cpu_us_per_io={1e6 * cpu / ops:.1f}")
PY
}

for rw in read write; do
    iscsi_figure gentgt-rbd "$gpid" "$gport" iqn.2026-11.dev.gentgt:bench-rbd 0 "$rw" 4KiB
    iscsi_figure tgt-rbd "$tpid" "$tport" iqn.2026-11.dev.gentgt:bench-tgt 1 "$rw" 4KiB
    rbd_figure "$rw" 4K rand "$((secs * 20))"
done
for rw in read write; do
    iscsi_figure gentgt-rbd "$gpid" "$gport" iqn.2026-11.dev.gentgt:bench-rbd 0 "$rw" 1MiB
    iscsi_figure tgt-rbd "$tpid" "$tport" iqn.2026-11.dev.gentgt:bench-tgt 1 "$rw" 1MiB
    rbd_figure "$rw" 1M seq "$((secs * 100))"
done
