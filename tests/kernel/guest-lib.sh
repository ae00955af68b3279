# Helpers for the scenarios' guest_run (sourced by guest-init.sh, in the
# guest). Portal i of the target is 10.0.2.(100+i):3260 (a guestfwd).

say() { echo "guest[$((SECONDS - ${started:-0}))s]: $*" >/dev/console; }

power_off() {
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
pass() {
    echo "SCENARIO PASS"
    power_off
}
fail() {
    trap - ERR
    set +eE
    # To the console even from inside $(…).
    {
        # What the kernel said about the sessions helps most when a run fails.
        dmesg | grep -iE 'iscsi|connection|sd [0-9]|I/O error|device-mapper|multipath' | tail -n 30
        echo "SCENARIO FAIL $*"
    } >/dev/console 2>&1
    power_off
}

# Ask the host to do ACTION (the scenario's host_action) and wait for it;
# returns the host action's exit status.
HOST_SEQ=0
host_do() { # ACTION
    HOST_SEQ=$((HOST_SEQ + 1))
    local f=/run/xchg/done.$HOST_SEQ n
    echo "@@HOST $1 $HOST_SEQ"
    for ((n = 0; n < 1200; n++)); do
        if [[ -f $f ]]; then
            return "$(cat "$f")"
        fi
        sleep 0.1
    done
    fail "host action $1 not done within 120 s"
}

# Modules from the unpacked kernel package (not under the host's
# /lib/modules, so modprobe -d); network on the user-net NIC; iscsid.
# scsi_dh_alua too: gentgt reports TPGS (implicit ALUA), so multipathd
# asks for the alua hardware handler; a real host's kernel loads it on
# demand, but its request_module here looks in the host's /lib/modules and
# fails, and dm then refuses the table (-EINVAL).
guest_setup() {
    local m
    for m in virtio_net iscsi_tcp sd_mod crc32c_generic crc32c-intel ext4 \
        dm_multipath dm_round_robin dm_service_time dm_queue_length scsi_dh_alua; do
        modprobe -d "$KROOT" "$m" 2>/dev/null || say "modprobe $m failed"
    done
    ip link set lo up
    local nic
    nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    ip link set "$nic" up
    ip addr add 10.0.2.15/24 dev "$nic"
    echo "InitiatorName=iqn.2026-11.dev.gentgt:guest-$SCENARIO" >/etc/iscsi/initiatorname.iscsi
    mkdir -p /run/lock/iscsi
    # In the foreground, its log in the run directory (there is no syslog).
    iscsid -f -d "${ISCSID_DEBUG:-1}" >/run/xchg/iscsid.log 2>&1 &
    for ((m = 0; m < 50; m++)); do
        # 21: no sessions (iscsid answers); anything else: not up yet.
        iscsiadm -m session >/dev/null 2>&1 && break
        [[ $? == 21 ]] && break
        sleep 0.1
    done
    say "setup done: $(uname -r), nic $nic"
}

# Discover through portal N and log in to the target through that same
# forwarded address. SendTargets answers gentgt's 127.0.0.1 ports, which
# mean nothing in the guest, so the discovered records are dropped and a
# record for 10.0.2.(100+N):3260 is made by hand. Extra NAME=VALUE
# arguments are node settings (iscsiadm -o update).
iscsi_login() { # N [node.setting=value ...]
    local portal=10.0.2.$((100 + $1)):3260 kv out
    shift
    out=$(iscsiadm -m discovery -t sendtargets -p "$portal")
    say "SendTargets via $portal: $(echo $out)"
    [[ $out == *"$IQN"* ]] || fail "SendTargets via $portal did not return $IQN"
    iscsiadm -m node -T "$IQN" -o delete >/dev/null 2>&1 || true
    iscsiadm -m node -T "$IQN" -p "$portal" -o new >/dev/null
    for kv in "$@"; do
        iscsiadm -m node -T "$IQN" -p "$portal" -o update -n "${kv%%=*}" -v "${kv#*=}"
    done
    iscsiadm -m node -T "$IQN" -p "$portal" --login >/dev/null
    say "logged in via $portal"
}
# Like iscsi_login but keeps other portals' records (multipath).
iscsi_login_more() { # N [settings]
    local portal=10.0.2.$((100 + $1)):3260 kv
    shift
    iscsiadm -m node -T "$IQN" -p "$portal" -o new >/dev/null
    for kv in "$@"; do
        iscsiadm -m node -T "$IQN" -p "$portal" -o update -n "${kv%%=*}" -v "${kv#*=}"
    done
    iscsiadm -m node -T "$IQN" -p "$portal" --login >/dev/null
    say "logged in via $portal"
}

# The sd disks of the logged-in sessions, one per line (waits for them).
session_disks() { # COUNT
    local n d x ready
    for ((n = 0; n < 100; n++)); do
        d=$(iscsiadm -m session -P3 2>/dev/null | awk '/Attached scsi disk/ {print $4}')
        if (($(echo $d | wc -w) >= $1)); then
            ready=1
            for x in $d; do
                [[ -b /dev/$x ]] || ready=0
            done
            if ((ready)); then
                echo "$d"
                return 0
            fi
        fi
        sleep 0.2
    done
    fail "no disk for the iSCSI session(s)"
}

# Negotiated parameters, as iscsiadm reports them, must include each
# "Key: Value" given.
expect_negotiated() { # "Key: Value" ...
    local p2 kv
    p2=$(iscsiadm -m session -P2)
    for kv in "$@"; do
        grep -qF "$kv" <<<"$p2" || fail "negotiated parameters lack \"$kv\": $(grep -E 'Digest|R2T|Immediate|Burst' <<<"$p2" | tr -s ' \t' ' ')"
    done
    say "negotiated: $*"
}

# fio's job: random writes of 4-64 KiB (each block once: fio's random map),
# every block with a crc32c verify header. The same arguments with
# --verify_only re-read and check what an earlier run wrote. Never with
# --verify_backlog: fio 3.33 with verify_only + verify_backlog reads nothing
# and passes even over corrupted data.
FIO_ARGS=(--direct=1 --ioengine=libaio --iodepth=16 --rw=randwrite --bsrange=4k-64k
    --verify=crc32c --verify_fatal=1 --randrepeat=1 --group_reporting
    --output-format=terse --terse-version=3)
fio_run() { # WHAT DEV SIZE [fio args]: fails the scenario on any error
    local what=$1 dev=$2 size=$3 out rc=0 t=$SECONDS
    shift 3
    out=$(fio --name=kernel --filename="$dev" --size="$size" "${FIO_ARGS[@]}" "$@" 2>&1) || rc=$?
    if ((rc != 0)); then
        echo "$out" | tail -n 20
        fail "fio $what on $dev exited $rc"
    fi
    # terse v3: field 5 is the job's error, 6 the KiB read.
    local err rkb
    err=$(echo "$out" | awk -F';' '$1 == 3 {print $5}' | tail -n 1)
    rkb=$(echo "$out" | awk -F';' '$1 == 3 {print $6}' | tail -n 1)
    [[ $err == 0 ]] || fail "fio $what on $dev: error $err"
    say "fio $what on $dev $size ok (read back ${rkb} KiB) in $((SECONDS - t)) s"
}
fio_write_verify() { fio_run "write+verify" "$@"; }
fio_write_only() { fio_run "write" "$@" --do_verify=0; }
fio_verify_only() { fio_run "verify-only" "$@" --verify_only; }

# udev and multipathd up, then one session through each of the two portals
# (replacement_timeout 5 s: a failed path must reach dm quickly, as the
# kernel holds I/O that long for a reconnecting session), both disks seen
# and the maps rebuilt. For the multipath and alua scenarios.
multipath_two_portals() {
    /lib/systemd/systemd-udevd --daemon
    udevadm trigger
    udevadm settle -t 20 || true
    multipathd
    local opts=(node.session.timeo.replacement_timeout=5)
    iscsi_login 0 "${opts[@]}"
    iscsi_login_more 1 "${opts[@]}"
    session_disks 2 >/dev/null
    udevadm settle -t 20 || true
    multipath -r >/dev/null 2>&1 || true
}
