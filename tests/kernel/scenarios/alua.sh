# (f) ALUA: two portals in two portal groups (tag 1 active/optimized, tag
# 2 active/non-optimized), one session each, dm-multipath with prio alua
# and group_by_prio. multipath -ll must show two path groups with the
# optimized one active. Under fio write+verify a reload swaps the two
# states: the kernel sees ASYMMETRIC ACCESS STATE CHANGED, multipathd the
# new priorities, and I/O must move to the new optimized path with no
# error reaching fio.
PORTALS=2
LUN_SIZE=256MiB
TIMEOUT=360
FIXED_PORTS=1

config_head() { # [STATE_OF_TAG_1 STATE_OF_TAG_2]
    cat <<EOF
listen = ["127.0.0.1:${PORTS[0]}", "127.0.0.1:${PORTS[1]}"]
pid_file = "$RUN/gentgt.pid"

[[portal_group]]
tag = 1
portals = ["127.0.0.1:${PORTS[0]}"]
alua_state = "${1:-active/optimized}"

[[portal_group]]
tag = 2
portals = ["127.0.0.1:${PORTS[1]}"]
alua_state = "${2:-active/non-optimized}"

EOF
}

host_action() {
    case $1 in
    swap)
        write_config active/non-optimized active/optimized
        target_reload
        ;;
    *) return 1 ;;
    esac
}

# "DEV PRIO STATUS" for every path of the map, from multipath -ll (the
# status is the path group's: active, enabled).
mp_groups() {
    multipath -ll 2>/dev/null | awk '
        /status=/ {
            match($0, /prio=[0-9]+/); p = substr($0, RSTART + 5, RLENGTH - 5)
            match($0, /status=[a-z]+/); s = substr($0, RSTART + 7, RLENGTH - 7)
            next
        }
        / [0-9]+:[0-9]+:[0-9]+:[0-9]+ / {
            for (i = 1; i <= NF; i++) if ($i ~ /^sd[a-z]+$/) print $i, p, s
        }'
}
# The sd disk logged in through portal N (10.0.2.(100+N)).
disk_of_portal() { # N
    iscsiadm -m session -P3 | awk -v p="10.0.2.$((100 + $1)):3260" '
        /Current Portal:/ { cur = ($3 ~ "^" p) }
        /Attached scsi disk/ && cur { print $4; exit }'
}
# Wait until DEV is the only path of the active group, with priority 50
# (active/optimized) and OTHER in an enabled group with priority 10.
wait_optimized() { # DEV OTHER WITHIN_S
    local n g
    for ((n = 0; n < $3 * 2; n++)); do
        g=$(mp_groups | sort | tr '\n' ' ')
        if grep -q "$1 50 active" <<<"$g" && grep -q "$2 10 enabled" <<<"$g"; then
            say "paths: $g"
            return 0
        fi
        sleep 0.5
    done
    multipath -ll >/dev/console 2>&1 || true
    fail "expected $1 optimized (prio 50, active group) and $2 non-optimized within $3 s, have: $g"
}
# Reads + writes completed by an sd disk so far.
ios() { awk '{print $1 + $5}' "/sys/block/$1/stat"; }

guest_run() {
    cat >/etc/multipath.conf <<'CONF'
defaults {
    user_friendly_names yes
    find_multipaths no
    polling_interval 2
    no_path_retry 12
    path_grouping_policy group_by_prio
    prio alua
    failback immediate
}
CONF
    guest_setup
    multipath_two_portals
    local d0 d1 map dev pid
    d0=$(disk_of_portal 0)
    d1=$(disk_of_portal 1)
    [[ -n $d0 && -n $d1 ]] || fail "no disk per portal: '$d0' '$d1'"
    say "portal 0 (tag 1): $d0, portal 1 (tag 2): $d1"
    wait_optimized "$d0" "$d1" 40
    say "multipath -ll:"
    multipath -ll >/dev/console 2>&1
    map=$(multipathd show maps raw format "%n" | head -n 1)
    dev=/dev/mapper/$map
    [[ -b $dev ]] || fail "no multipath map device $dev"
    # Writes capped at 2 MB/s: at least 32 s of them.
    fio_write_verify "$dev" 64M --rate=,2m &
    pid=$!
    sleep 4
    kill -0 "$pid" 2>/dev/null || fail "fio ended before the swap: make it bigger"
    host_do swap || fail "reload (swap) failed"
    wait_optimized "$d1" "$d0" 40
    say "multipath -ll after the swap:"
    multipath -ll >/dev/console 2>&1
    # I/O now goes through portal 1 only.
    sleep 2
    local a0 a1 b0 b1
    a0=$(ios "$d0") a1=$(ios "$d1")
    sleep 3
    b0=$(ios "$d0") b1=$(ios "$d1")
    say "I/O in 3 s: $d0 $((b0 - a0)), $d1 $((b1 - a1))"
    kill -0 "$pid" 2>/dev/null || fail "fio ended before the I/O check: make it bigger"
    ((b1 > a1)) || fail "no I/O on the new optimized path $d1"
    ((b0 == a0)) || fail "I/O still on the non-optimized path $d0"
    say "kernel: $(dmesg | grep -i alua | tail -n 4 | tr '\n' ' ')"
    wait "$pid"
}
