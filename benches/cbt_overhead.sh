#!/usr/bin/env bash
# What changed-block tracking costs the write path (issue 4).
#
# Starts `gentgt serve` on a file LUN (tmpfs by default) with tracking
# off, volatile and persistent, drives each with `gentgt bench` (4 KiB
# random writes, --qd 32), REPS times, modes interleaved so slow drift on a
# shared machine hits all three alike. Prints per-run figures, then a table
# of medians, the persistent/off and volatile/off ratios, and the target's
# CPU time per I/O (utime+stime from /proc/<pid>/stat, sampled just before
# and after each bench run, divided by every I/O of that run, warm-up
# included).
#
# Environment knobs (defaults in brackets):
#   GENTGT [target/release/gentgt]  DIR [/dev/shm]  SIZE [1GiB]
#   SECONDS_PER_RUN [10]  REPS [3]  QD [32]  RW [write]  BS [4KiB]
#   TARGET_CPU [0]  LOAD_CPU [1]  (taskset cores; pinning skipped if absent)
set -euo pipefail

cd "$(dirname "$0")/.."
GENTGT=${GENTGT:-target/release/gentgt}
BASE=${DIR:-/dev/shm}
SIZE=${SIZE:-1GiB}
SECS=${SECONDS_PER_RUN:-10}
REPS=${REPS:-3}
QD=${QD:-32}
RW=${RW:-write}
BS=${BS:-4KiB}
TARGET_CPU=${TARGET_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
IQN=iqn.2026-11.dev.gentgt:cbtbench
MODES=(off volatile persistent)

if [[ ! -x $GENTGT ]]; then
    cargo build --release --quiet
fi
WORK=$(mktemp -d "$BASE/gentgt-cbtbench.XXXXXX")
PID=
cleanup() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Command prefixes pinning to one core (empty without taskset). Arrays, not
# a function: a backgrounded function would run in a subshell and $! would
# be that subshell, not the target whose CPU time we read.
PIN_TARGET=()
PIN_LOAD=()
if command -v taskset >/dev/null; then
    PIN_TARGET=(taskset -c "$TARGET_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
fi

for mode in "${MODES[@]}"; do
    cat >"$WORK/$mode.toml" <<EOF
listen = ["127.0.0.1:0"]

[[target]]
name = "$IQN"

[[target.lun]]
id = 0
backend = "file"
path = "lun-$mode.img"
size = "$SIZE"
block_size = 512
tracking = "$mode"
EOF
done

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# One run: start the target, bench it, stop it cleanly (SIGTERM).
# Prints "mode iops p50_us p99_us cpu_us_per_io".
one_run() {
    local mode=$1 log="$WORK/$1.log" portal="" json t0 t1
    "${PIN_TARGET[@]}" "$GENTGT" serve --config "$WORK/$mode.toml" --data-dir "$WORK" \
        >"$log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        portal=$(awk '/portal/ { print $2; exit }' "$log")
        [[ -n $portal ]] && break
        sleep 0.1
    done
    if [[ -z $portal ]]; then
        echo "target did not start ($mode):" >&2
        cat "$log" >&2
        exit 1
    fi
    t0=$(cpu_ticks "$PID")
    json=$("${PIN_LOAD[@]}" "$GENTGT" bench --portal "$portal" --target "$IQN" --lun 0 \
        --qd "$QD" --rw "$RW" --bs "$BS" --seconds "$SECS" --json)
    t1=$(cpu_ticks "$PID")
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
    # Pull numbers out of the one-line JSON without needing jq.
    field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$json"; }
    awk -v m="$mode" -v iops="$(field iops)" -v p50="$(field p50_us)" \
        -v p99="$(field p99_us)" -v n="$(field ios_total)" -v dt=$((t1 - t0)) -v hz="$HZ" \
        'BEGIN { printf "%s %.0f %.1f %.1f %.2f\n", m, iops, p50, p99, dt * 1e6 / hz / n }'
}

echo "gentgt $($GENTGT version | awk '{print $2}'): $RW $BS random, qd $QD, ${SECS} s per run," \
    "$REPS runs per mode, LUN $SIZE file in $BASE"
echo "target on core $TARGET_CPU, load on core $LOAD_CPU; $(nproc) cores"
echo
printf '%-11s %9s %9s %9s %12s\n' mode IOPS p50_us p99_us cpu_us/IO
RESULTS="$WORK/results"
for rep in $(seq "$REPS"); do
    for mode in "${MODES[@]}"; do
        one_run "$mode" | tee -a "$RESULTS" |
            awk '{ printf "%-11s %9s %9s %9s %12s\n", $1, $2, $3, $4, $5 }'
    done
done

echo
echo "medians of $REPS runs"
printf '%-11s %9s %9s %9s %12s %9s\n' mode IOPS p50_us p99_us cpu_us/IO IOPS/off
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
off_iops=$(awk '$1 == "off" { print $2 }' "$RESULTS" | median)
for mode in "${MODES[@]}"; do
    row=()
    for col in 2 3 4 5; do
        row+=("$(awk -v m="$mode" -v c="$col" '$1 == m { print $c }' "$RESULTS" | median)")
    done
    printf '%-11s %9s %9s %9s %12s %9s\n' "$mode" "${row[@]}" \
        "$(awk -v a="${row[0]}" -v b="$off_iops" 'BEGIN { printf "%.3f", a / b }')"
done
echo
echo "goal: persistent tracking costs <= 5 % (IOPS/off >= 0.95)"
