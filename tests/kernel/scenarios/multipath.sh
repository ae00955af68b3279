# (e) dm-multipath over two portals: two gentgt --listen portals, one
# guestfwd each, one session each, one multipath map. Under fio
# write+verify on the map, portal 0 fails (blocked: its connections cut and
# refused) and comes back, then portal 1 does the same; each time dm
# must fail over without an I/O error reaching fio and reinstate the path.
PORTALS=2
LUN_SIZE=256MiB
TIMEOUT=300

host_action() {
    case $1 in
    block0) portal_block 0 ;;
    unblock0) portal_unblock 0 ;;
    block1) portal_block 1 ;;
    unblock1) portal_unblock 1 ;;
    *) return 1 ;;
    esac
}

# Paths of the map in dm's view: "sda active", "sdb failed", …
mp_paths() { multipathd show paths raw format "%d %t" 2>/dev/null; }
wait_paths() { # ACTIVE_COUNT FAILED_COUNT WITHIN_S
    local n a f
    for ((n = 0; n < $3 * 2; n++)); do
        a=$(mp_paths | grep -c ' active$' || true)
        f=$(mp_paths | grep -c ' failed$' || true)
        if ((a == $1 && f == $2)); then
            say "paths: $(mp_paths | tr '\n' ' ')"
            return 0
        fi
        sleep 0.5
    done
    iscsiadm -m session -P1 | grep -E 'Current Portal|Session State|Internal' >/dev/console || true
    fail "expected $1 active and $2 failed paths within $3 s, have: $(mp_paths | tr '\n' ' ')"
}

guest_run() {
    cat >/etc/multipath.conf <<'CONF'
defaults {
    user_friendly_names yes
    find_multipaths no
    polling_interval 2
    # Queue for a while if every path is down rather than fail I/O at once;
    # not meant to happen here (one path always stays).
    no_path_retry 12
}
CONF
    guest_setup
    multipath_two_portals
    wait_paths 2 0 30
    local map dev pid
    map=$(multipathd show maps raw format "%n" | head -n 1)
    [[ -n $map ]] || fail "no multipath map"
    dev=/dev/mapper/$map
    [[ -b $dev ]] || dev=/dev/$(multipathd show maps raw format "%d" | head -n 1)
    say "map $map: $dev"
    # Writes capped at 2 MB/s: at least 48 s of them however fast the
    # machine is, enough for both path failures and reinstatements.
    fio_write_verify "$dev" 96M --rate=,2m &
    pid=$!
    sleep 4
    local p
    for p in 0 1; do
        kill -0 "$pid" 2>/dev/null || fail "fio ended before path $p failed: make it bigger"
        host_do "block$p"
        wait_paths 1 1 40
        host_do "unblock$p"
        wait_paths 2 0 60
    done
    kill -0 "$pid" 2>/dev/null || say "note: fio ended before the last reinstatement"
    # fio verifies everything it wrote after its writes, i.e. mostly after
    # the path events (a separate verify-only pass would add ~30 s).
    wait "$pid"
}
