#!/usr/bin/env bash
# Two gentgt binaries' targets side by side, interleaved (the order flips
# each repetition), one client for both (NEW's `gentgt bench`), target on
# CPU 1, client on CPU 0, default configuration on tmpfs, 5 s per run:
# 4K random read and write and 128K random read, QD32. Prints one line
# per run: repetition, binary, case, the target's CPU ticks, bench JSON.
#   benches/old_vs_new.sh OLD_BINARY NEW_BINARY
set -u
OLD=${1:?old gentgt binary}
NEW=${2:?new gentgt binary}
CLIENT=$NEW
declare -A BIN=([old]=$OLD [new]=$NEW)
IQN=iqn.2026-11.dev.gentgt:default
port=43261
for rep in 1 2 3; do
  for case in "read 4KiB" "write 4KiB" "read 128KiB"; do
    set -- $case
    order="old new"; [ $((rep % 2)) -eq 0 ] && order="new old"
    for v in $order; do
      d=/dev/shm/oldnew-$v; rm -rf $d; mkdir -p $d
      taskset -c 1 ${BIN[$v]} serve --listen 127.0.0.1:$port --data-dir $d >/dev/null 2>&1 &
      pid=$!
      for i in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
      t0=$(awk '{print $14+$15}' /proc/$pid/stat)
      out=$(taskset -c 0 $CLIENT bench --portal 127.0.0.1:$port --target $IQN --qd 32 --rw $1 --bs $2 --seconds 5 --json 2>&1)
      t1=$(awk '{print $14+$15}' /proc/$pid/stat)
      kill $pid; wait $pid 2>/dev/null
      echo "$rep $v $1 $2 ticks=$((t1-t0)) $out"
      port=$((port+1))
    done
  done
done
rm -rf /dev/shm/oldnew-*
