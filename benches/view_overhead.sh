#!/usr/bin/env bash
# What a CBT point-in-time view costs the write path (issue 12).
#
# Starts `gentgt serve` on a file LUN (tmpfs by default, views on: the
# defaults of a file LUN, persistent tracking, view_space = the LUN size)
# and drives it with benches/view_overhead.rs: 4 KiB random writes at
# --qd QD on one session in three states, REPS times (a fresh target and
# LUN each run):
#   none         no view
#   first_touch  a view just opened and every write a first touch (each
#                write to an extent not kept yet: the view is re-opened,
#                untimed, whenever every extent has been touched)
#   kept         a view whose every extent is kept already (the whole LUN
#                written once with it open), so writes copy nothing
#   none_after   no view again, after the release (a second baseline: how
#                far the shared machine drifted during the run)
# The LUN is filled with non-zero data first, so a first touch copies a 4 KiB
# piece (a piece of zeros would stay a hole). Prints per-run figures, then the
# medians and the ratios against no view.
#
# Environment knobs (defaults in brackets):
#   GENTGT [target/release/gentgt]  DIR [/dev/shm]  SIZE [1GiB]
#   SECONDS_PER_RUN [5]  REPS [3]  QD [32]
#   TARGET_CPU [0]  LOAD_CPU [1]  (taskset cores; pinning skipped if absent)
set -euo pipefail

cd "$(dirname "$0")/.."
GENTGT=${GENTGT:-target/release/gentgt}
BASE=${DIR:-/dev/shm}
SIZE=${SIZE:-1GiB}
SECS=${SECONDS_PER_RUN:-5}
REPS=${REPS:-3}
QD=${QD:-32}
TARGET_CPU=${TARGET_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
IQN=iqn.2026-11.dev.gentgt:viewbench

cargo build --release --quiet --bin gentgt
# The driver: a harness-less bench target; ask cargo where it put it.
DRIVER=$(cargo bench --quiet --bench view_overhead --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "view_overhead" and m.get("executable"):
        print(m["executable"])')
[[ -x $DRIVER ]] || { echo "cannot build benches/view_overhead.rs" >&2; exit 1; }

WORK=$(mktemp -d "$BASE/gentgt-viewbench.XXXXXX")
PID=
cleanup() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PIN_TARGET=()
PIN_LOAD=()
if command -v taskset >/dev/null; then
    PIN_TARGET=(taskset -c "$TARGET_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
fi

cat >"$WORK/view.toml" <<CFG
listen = ["127.0.0.1:0"]
max_view_lease_ms = 600000

[[target]]
name = "$IQN"

[[target.lun]]
id = 0
backend = "file"
path = "lun.img"
size = "$SIZE"
block_size = 512
CFG

RESULTS="$WORK/results"
one_run() {
    local log="$WORK/serve.log" portal=""
    rm -rf "$WORK/lun.img" "$WORK/lun.img".*
    "${PIN_TARGET[@]}" "$GENTGT" serve --config "$WORK/view.toml" --data-dir "$WORK" \
        >"$log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        portal=$(awk '/portal/ { print $2; exit }' "$log")
        [[ -n $portal ]] && break
        sleep 0.1
    done
    if [[ -z $portal ]]; then
        echo "target did not start:" >&2
        cat "$log" >&2
        exit 1
    fi
    "${PIN_LOAD[@]}" "$DRIVER" "$portal" "$IQN" "$SECS" "$QD"
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
}

echo "gentgt $($GENTGT version | awk '{print $2}'): 4KiB random write, qd $QD, ${SECS} s per state," \
    "$REPS runs, LUN $SIZE file in $BASE (64 KiB extents, views on)"
echo "target on core $TARGET_CPU, load on core $LOAD_CPU; $(nproc) cores"
echo
for rep in $(seq "$REPS"); do
    one_run | tee -a "$RESULTS"
done

echo
echo "medians of $REPS runs"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
med = {}
for st in ("none", "first_touch", "kept", "none_after"):
    rs = [r for r in rows if r["state"] == st]
    med[st] = {k: statistics.median(r[k] for r in rs) for k in ("iops", "p50_us", "p99_us", "p999_us")}
# The baseline pools both no-view measurements of every run (before the
# views and after them), so drift on a shared machine weighs on it evenly.
pooled = [r for r in rows if r["state"] in ("none", "none_after")]
base = {k: statistics.median(r[k] for r in pooled) for k in ("iops", "p50_us", "p99_us", "p999_us")}
print(f"baseline (median of none and none_after, {len(pooled)} values):"
      f" {base['iops']:.0f} IOPS, p50 {base['p50_us']:.1f} us, p99 {base['p99_us']:.1f} us, p99.9 {base['p999_us']:.1f} us")
print(f"{'state':<12} {'IOPS':>9} {'p50_us':>8} {'p99_us':>8} {'p99.9_us':>9} {'IOPS/base':>10} {'p50/base':>9} {'p99/base':>9} {'p99.9/base':>11}")
for st, m in med.items():
    print(f"{st:<12} {m['iops']:>9.0f} {m['p50_us']:>8.1f} {m['p99_us']:>8.1f} {m['p999_us']:>9.1f}"
          f" {m['iops'] / base['iops']:>10.3f} {m['p50_us'] / base['p50_us']:>9.2f} {m['p99_us'] / base['p99_us']:>9.2f} {m['p999_us'] / base['p999_us']:>11.2f}")
print()
print("goal (issue 12): IOPS/base >= 0.5 while first touches happen, >= 0.95 once kept")
PY
