#!/usr/bin/env bash
# Run one kernel-initiator scenario: the Linux kernel's iSCSI initiator
# (open-iscsi + sd) in a QEMU guest against target/release/gentgt.
#
#   tests/kernel/run-scenario.sh NAME     (NAME: a file tests/kernel/scenarios/NAME.sh)
#
# Prints the guest's console, ends with "SCENARIO PASS" (exit 0) or
# "SCENARIO FAIL reason" (exit 1); exit 2 when the harness itself could not
# run (missing tool, no kernel). Env: GENTGT_BIN (default
# target/release/gentgt), KERNEL_GUEST_ACCEL=kvm|tcg (default: probed once),
# KEEP_RUN=1 keeps the run directory (target/kernel-guest/runs/NAME.*).
#
# How it fits together (see README.md):
# - The guest runs Debian's own kernel, unpacked (not installed) from the
#   linux-image package into target/kernel-guest/, with a tiny initramfs
#   (busybox + 9p modules) that mounts the host's / read-only over virtio-9p
#   and switch_roots into tests/kernel/guest-init.sh. So the guest uses the
#   host's own iscsiadm, iscsid, fio, multipathd: nothing to build.
# - Its only network is QEMU user networking with restrict=on: the one way
#   out is a guestfwd per portal (10.0.2.100, 10.0.2.101, … port 3260),
#   each guest connection running tests/kernel/fwd.sh → socat to gentgt's
#   127.0.0.1 port (fwd.sh records its pid in RUN/block.N.pids).
# - Guest → host requests ("@@HOST action seq" on the console, e.g. restart
#   the target, block a portal, corrupt the LUN file) are run by the
#   scenario's host_action; the answer is a file in the run directory,
#   which the guest sees over a second, read-write 9p share (/run/xchg).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
KG=$REPO/target/kernel-guest
GENTGT_BIN=${GENTGT_BIN:-$REPO/target/release/gentgt}
IQN=iqn.2026-11.dev.gentgt:kernel

die() { echo "run-scenario: $*" >&2; exit 2; }
log() { echo "run-scenario: $*" >&2; }

[[ $# == 1 ]] || die "usage: $0 SCENARIO (one of: $(cd "$HERE/scenarios" && ls | sed 's/\.sh$//' | tr '\n' ' '))"
NAME=$1
SCEN=$HERE/scenarios/$NAME.sh
[[ -f $SCEN ]] || die "no scenario $SCEN"
for t in qemu-system-x86_64 socat dpkg-deb cpio busybox iscsiadm iscsid fio mkfs.ext4 multipathd; do
    command -v "$t" >/dev/null || die "$t is not installed (scripts/install-test-deps.sh installs it)"
done
[[ -x $GENTGT_BIN ]] || die "no $GENTGT_BIN (cargo build --release)"

# ---------------------------------------------------------------- kernel --
# Debian's kernel, unpacked once under target/kernel-guest/<version>/.
prepare_kernel() {
    mkdir -p "$KG"
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    [[ -n $pkg ]] || die "apt-cache knows no linux-image-amd64 (apt-get update?)"
    KROOT=$KG/$pkg
    if [[ ! -f $KROOT/.unpacked ]]; then
        log "fetching and unpacking $pkg (once)"
        rm -rf "$KROOT" "$KG/deb"
        mkdir -p "$KG/deb"
        # apt-get download writes as _apt when it can; the dir is root's.
        (cd "$KG/deb" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' ||
            true)
        ls "$KG"/deb/*.deb >/dev/null 2>&1 || die "apt-get download $pkg failed"
        dpkg-deb -x "$KG"/deb/*.deb "$KROOT"
        # The package ships no modules.dep (its postinst runs depmod):
        # make one for modprobe -d and for the initramfs' load order.
        depmod -b "$KROOT" "$(ls "$KROOT/lib/modules")"
        rm -rf "$KG/deb" # 70 MB we no longer need
        touch "$KROOT/.unpacked"
    fi
    KVER=$(ls "$KROOT/lib/modules")
    VMLINUZ=$KROOT/boot/vmlinuz-$KVER
    INITRD=$KROOT/initramfs.cpio.gz
    if [[ ! -f $INITRD || $INITRD -ot $HERE/initramfs-init || $INITRD -ot $0 ]]; then
        build_initramfs
    fi
}

# The modules (with their dependencies, first) that mounting the 9p root
# needs, in load order, from the package's modules.dep.
module_closure() {
    local dep=$KROOT/lib/modules/$KVER/modules.dep m line path deps d
    declare -A seen=()
    for m in "$@"; do
        line=$(grep -E "/${m}\.ko(\.[a-z]+)?:" "$dep") || die "module $m not in $dep"
        path=${line%%:*}
        deps=${line#*:}
        # modules.dep lists each module's dependencies deepest last: load
        # them in reverse.
        for d in $(echo $deps | tr ' ' '\n' | tac) "$path"; do
            [[ -n ${seen[$d]:-} ]] && continue
            seen[$d]=1
            echo "$d"
        done
    done
}

build_initramfs() {
    log "building the guest initramfs"
    local w=$KG/initramfs.work
    rm -rf "$w"
    mkdir -p "$w"/{bin,dev,proc,sys,newroot,lib/modules}
    cp /usr/bin/busybox "$w/bin/busybox" # busybox-static: no libraries needed
    cp "$HERE/initramfs-init" "$w/init"
    chmod 755 "$w/init"
    local m
    module_closure virtio_pci 9pnet_virtio 9p >"$w/modules.order"
    while read -r m; do
        mkdir -p "$w/lib/modules/$(dirname "$m")"
        cp "$KROOT/lib/modules/$KVER/$m" "$w/lib/modules/$m"
    done <"$w/modules.order"
    (cd "$w" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$w"
}

# -------------------------------------------------------------- QEMU ----
qemu_base() { # ACCEL
    local accel=$1
    QEMU=(qemu-system-x86_64 -nodefaults -no-user-config -display none
        -m 1024 -smp 1 -no-reboot
        -kernel "$VMLINUZ" -initrd "$INITRD")
    if [[ $accel == kvm ]]; then
        QEMU+=(-accel kvm -cpu host)
    else
        # -cpu max: SSE4.2 (crc32c-intel) and friends under TCG.
        QEMU+=(-accel tcg -cpu max)
    fi
}

# KVM when it can boot Debian's kernel, TCG otherwise. Some /dev/kvm
# (nested, paravirtual) open fine but cannot run a stock kernel, so boot
# the initramfs once with KVM and see whether it reaches its probe line.
# Cached per machine in target/kernel-guest/accel.
pick_accel() {
    if [[ -n ${KERNEL_GUEST_ACCEL:-} ]]; then
        ACCEL=$KERNEL_GUEST_ACCEL
        return
    fi
    if [[ -f $KG/accel ]]; then
        ACCEL=$(cat "$KG/accel")
        return
    fi
    ACCEL=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
        log "probing whether KVM boots Debian's kernel (once)"
        local out=$KG/accel-probe.log
        qemu_base kvm
        timeout 30 "${QEMU[@]}" -serial "file:$out" \
            -append "console=ttyS0 panic=-1 gentgt.probe=1" >/dev/null 2>&1 || true
        if grep -q GENTGT-PROBE-OK "$out" 2>/dev/null; then
            ACCEL=kvm
        fi
    fi
    echo "$ACCEL" >"$KG/accel"
    log "accelerator: $ACCEL"
}

# ------------------------------------------------------------- target ---
# Helpers the scenarios' host_action uses: target_start, target_stop SIG,
# target_restart SIG, portal_block N, portal_unblock N, lun_corrupt.
PORTS=()
target_start() {
    local listen=() i
    for ((i = 0; i < PORTALS; i++)); do
        listen+=(--listen "127.0.0.1:${PORTS[i]:-0}")
    done
    : >"$RUN/gentgt.out"
    "$GENTGT_BIN" serve --config "$RUN/gentgt.toml" --data-dir "$RUN/data" "${listen[@]}" \
        >>"$RUN/gentgt.out" 2>>"$RUN/gentgt.log" &
    TARGET_PID=$!
    local n
    for ((n = 0; n < 300; n++)); do
        if (($(grep -c '^  portal' "$RUN/gentgt.out") >= PORTALS)); then
            break
        fi
        kill -0 "$TARGET_PID" 2>/dev/null || { cat "$RUN/gentgt.log" >&2; die "gentgt serve exited"; }
        sleep 0.1
    done
    mapfile -t PORTS < <(awk '/^  portal/ {n=split($2, a, ":"); print a[n]}' "$RUN/gentgt.out")
    ((${#PORTS[@]} >= PORTALS)) || die "gentgt printed no portal"
    log "gentgt pid $TARGET_PID on ports ${PORTS[*]}"
}
target_stop() { # SIGNAL
    [[ -n ${TARGET_PID:-} ]] || return 0
    kill "-$1" "$TARGET_PID" 2>/dev/null || true
    # An orderly stop that hangs would hang the scenario: 15 s, then KILL.
    local n
    for ((n = 0; n < 150; n++)); do
        kill -0 "$TARGET_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$TARGET_PID" 2>/dev/null; then
        log "gentgt still running 15 s after SIG$1: KILL"
        kill -KILL "$TARGET_PID" 2>/dev/null || true
    fi
    wait "$TARGET_PID" 2>/dev/null || true
    TARGET_PID=
}
target_restart() { # SIGNAL [DOWNTIME_S]
    log "target: SIG$1, down ${2:-2} s, restart on the same ports"
    target_stop "$1"
    sleep "${2:-2}"
    target_start
}
# A blocked portal: fwd.sh refuses new guest connections, and the open ones
# (the socat children of this QEMU for that port) are killed.
portal_block() { # N (0-based)
    log "portal $1 (port ${PORTS[$1]}) blocked"
    touch "$RUN/block.$1"
    kill_forwarders "$RUN/block.$1.pids"
}
# The socat relays fwd.sh started (their pids in PIDFILE).
kill_forwarders() { # PIDFILE
    [[ -f $1 ]] || return 0
    local p
    for p in $(cat "$1"); do
        kill "$p" 2>/dev/null || true
    done
    rm -f "$1"
}
portal_unblock() {
    log "portal $1 unblocked"
    rm -f "$RUN/block.$1"
}
# Overwrite COUNT 4 KiB blocks of the LUN file, every STRIDE MiB from 1 MiB,
# with random bytes: the guest's next verify must notice.
lun_corrupt() { # COUNT STRIDE_MIB
    local i
    for ((i = 0; i < $1; i++)); do
        dd if=/dev/urandom of="$RUN/data/lun0.img" bs=4096 count=1 conv=notrunc status=none \
            seek=$(((1 + i * $2) * 256))
    done
    sync
    log "LUN file: $1 blocks overwritten"
}

# COUNT free 127.0.0.1 ports, one a line (bound once by the kernel's
# choice, then released for gentgt).
free_ports() { # COUNT
    python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
for s in socks:
    print(s.getsockname()[1])' "$1"
}

# RUN/gentgt.toml: the scenario's config_head (given "$@"), the target
# and its LUN. Host actions may rewrite it before a reload.
write_config() {
    {
        echo "# Written by tests/kernel/run-scenario.sh for scenario $NAME."
        config_head "$@"
        cat <<EOF
[[target]]
name = "$IQN"
alias = "kernel-$NAME"

[[target.lun]]
id = 0
backend = "file"
path = "lun0.img"
size = "$LUN_SIZE"
block_size = 512
EOF
    } >"$RUN/gentgt.toml.tmp"
    mv "$RUN/gentgt.toml.tmp" "$RUN/gentgt.toml"
}
# Re-read RUN/gentgt.toml: gentgt reload validates it, sends SIGHUP and
# prints the server's answer (the config_head must set pid_file).
target_reload() {
    local out
    out=$("$GENTGT_BIN" reload --pid-file "$RUN/gentgt.pid" --config "$RUN/gentgt.toml" 2>&1) || {
        log "reload failed: $out"
        return 1
    }
    log "reload: $out"
}

cleanup() {
    set +e
    [[ -n ${TAIL_PID:-} ]] && kill "$TAIL_PID" 2>/dev/null
    if [[ -n ${QEMU_PID:-} ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null
        sleep 0.5
        kill -9 "$QEMU_PID" 2>/dev/null
    fi
    # The relays (fwd.sh → socat) of this run; they end with QEMU's
    # sockets anyway.
    for f in "$RUN"/block.*.pids; do kill_forwarders "$f"; done
    target_stop TERM
    if [[ -n ${RUN:-} && -d $RUN ]]; then
        if [[ ${KEEP_RUN:-0} == 1 ]]; then
            log "run directory kept: $RUN"
        else
            rm -rf "$RUN"
        fi
    fi
}

# --------------------------------------------------------------- main ---
# Scenario defaults, which the scenario file may change (it is sourced here
# for its host side, and again in the guest for guest_run).
PORTALS=1
LUN_SIZE=256MiB
TIMEOUT=240
host_action() { echo "unknown host action $1" >&2; return 1; }
# Top-level configuration lines (before [[target]]) a scenario may add;
# with FIXED_PORTS=1 the ports are chosen up front so that it can name
# them (PORTS[i]).
config_head() { :; }
FIXED_PORTS=0
# shellcheck source=/dev/null
source "$SCEN"

prepare_kernel
pick_accel

mkdir -p "$KG/runs"
RUN=$(mktemp -d "$KG/runs/$NAME.XXXXXX")
trap cleanup EXIT
trap 'exit 1' INT TERM
mkdir -p "$RUN/data"
if ((FIXED_PORTS)); then
    mapfile -t PORTS < <(free_ports "$PORTALS")
fi
write_config
target_start

# What the guest reads from /run/xchg/guest.env.
{
    echo "SCENARIO=$NAME"
    echo "SCENARIO_FILE=$SCEN"
    echo "KROOT=$KROOT"
    echo "IQN=$IQN"
    echo "PORTALS=$PORTALS"
    echo "HOST_PORTS=\"${PORTS[*]}\""
} >"$RUN/guest.env"

qemu_base "$ACCEL"
netdev=user,id=n0,restrict=on
for ((i = 0; i < PORTALS; i++)); do
    # Portal i is 10.0.2.(100+i):3260 in the guest. The port is read by
    # fwd.sh at each connection, so a restarted target keeps working.
    netdev+=",guestfwd=tcp:10.0.2.$((100 + i)):3260-cmd:$HERE/fwd.sh ${PORTS[i]} $RUN/block.$i"
done
QEMU+=(-netdev "$netdev" -device virtio-net-pci,netdev=n0
    -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on"
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
    -fsdev "local,id=xchg,path=$RUN,security_model=none"
    -device virtio-9p-pci,fsdev=xchg,mount_tag=xchg
    -serial "file:$RUN/console.log"
    -append "console=ttyS0 loglevel=5 panic=-1 gentgt.init=$HERE/guest-init.sh")
: >"$RUN/console.log"
start=$SECONDS
log "booting the guest ($ACCEL) for scenario $NAME, timeout ${TIMEOUT} s"
"${QEMU[@]}" >"$RUN/qemu.log" 2>&1 &
QEMU_PID=$!

exec {CON}< <(tail -n +1 -F "$RUN/console.log" 2>/dev/null)
TAIL_PID=$!
result=
buf=
while :; do
    if IFS= read -r -t 1 -u "$CON" part; then
        line=${buf}${part}
        buf=
    else
        # Timed out: keep the partial line for the next read.
        buf+=$part
        line=
        if ! kill -0 "$QEMU_PID" 2>/dev/null; then
            # Guest gone and nothing more to read.
            [[ -n $result ]] || result="FAIL guest exited without a result"
            break
        fi
        if ((SECONDS - start > TIMEOUT)); then
            result="FAIL timeout after ${TIMEOUT} s"
            break
        fi
        continue
    fi
    line=${line%$'\r'}
    printf '  | %s\n' "$line"
    case $line in
    "@@HOST "*)
        read -r _ action seq <<<"$line"
        if host_action "$action"; then rc=0; else rc=$?; fi
        echo "$rc" >"$RUN/done.$seq.tmp" && mv "$RUN/done.$seq.tmp" "$RUN/done.$seq"
        ;;
    "SCENARIO PASS"*) result=PASS ;;
    "SCENARIO FAIL"*) result=${line#SCENARIO } ;;
    esac
    if [[ -n $result ]]; then
        # Let the guest power off (it does, right after its result line).
        for ((n = 0; n < 50; n++)); do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.1
        done
        break
    fi
    if ((SECONDS - start > TIMEOUT)); then
        result="FAIL timeout after ${TIMEOUT} s"
        break
    fi
done
took=$((SECONDS - start))
if [[ $result != PASS ]] && [[ -s $RUN/gentgt.log ]]; then
    echo "--- gentgt log (last 40 lines) ---"
    tail -n 40 "$RUN/gentgt.log"
fi
echo "SCENARIO $result ($NAME, $ACCEL, ${took} s)"
[[ $result == PASS ]]
