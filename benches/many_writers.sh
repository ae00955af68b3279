#!/usr/bin/env bash
# Memory of the target under many sessions doing large writes: starts the
# release binary on a sparse file LUN, runs SESSIONS `gentgt bench`
# processes at once (one session each, distinct initiator names) writing
# BS-sized random blocks at queue depth QD for SECONDS, and samples the
# target's RSS from /proc every 0.2 s. Prints idle, peak, final and settled
# RSS and
# the aggregate write rate. The bound to compare against: SESSIONS x the
# per-session write-buffer budget (16 MiB) + FirstBurstLength x the command
# window of unsolicited data.
#
#   benches/many_writers.sh [SESSIONS=64] [QD=32] [BS=1MiB] [SECONDS=20] [DIR=target/many-writers]
set -euo pipefail
sessions=${1:-64} qd=${2:-32} bs=${3:-1MiB} seconds=${4:-20}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir=${5:-$here/target/many-writers}
bin="$here/target/release/gentgt"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
rm -rf "$dir" && mkdir -p "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iqn=iqn.2026-11.dev.gentgt:writers
cat > "$dir/gentgt.toml" <<TOML
listen = ["127.0.0.1:$port"]
[[target]]
name = "$iqn"
[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "8GiB"
block_size = 512
TOML
"$bin" serve --config "$dir/gentgt.toml" --data-dir "$dir" > "$dir/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q ready "$dir/serve.log" && break; sleep 0.1; done
rss() { awk '/^VmRSS/ {print $2}' /proc/$pid/status; }
idle=$(rss)
peak=$idle
for i in $(seq "$sessions"); do
    "$bin" bench --portal "127.0.0.1:$port" --target "$iqn" --initiator "iqn.2026-11.dev.gentgt:w$i" \
        --rw write --bs "$bs" --qd "$qd" --seconds "$seconds" --warmup 0 --json > "$dir/bench-$i.json" 2>&1 &
done
while [ "$(jobs -r | wc -l)" -gt 1 ]; do
    r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
final=$(rss)
sleep 6 # the target trims its allocator every 5 s
settled=$(rss)
mibs=$(python3 - "$dir" <<'PY'
import json, pathlib, sys
tot = 0.0
for p in pathlib.Path(sys.argv[1]).glob("bench-*.json"):
    try:
        tot += json.loads(p.read_text().strip().splitlines()[-1])["mib_s"]
    except Exception as e:
        print(f"{p}: {e}", file=sys.stderr)
print(f"{tot:.0f}")
PY
)
echo "sessions=$sessions qd=$qd bs=$bs seconds=$seconds: target RSS idle $((idle/1024)) MiB, peak $((peak/1024)) MiB, at the end $((final/1024)) MiB, 6 s later $((settled/1024)) MiB; writes ${mibs} MiB/s in all"
