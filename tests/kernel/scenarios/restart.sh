# (d) The target restarted under fio write+verify: SIGTERM (orderly stop),
# then SIGKILL, each followed by a new gentgt on the same ports after ~2 s.
# The kernel initiator must reconnect and re-issue what was in flight
# (replacement_timeout 120 s, open-iscsi's default, covers the downtime),
# so no I/O error reaches fio, and what fio wrote before each restart must
# read back from the file LUN afterwards.
LUN_SIZE=256MiB
TIMEOUT=300

host_action() {
    case $1 in
    restart-term) target_restart TERM 2 ;;
    restart-kill) target_restart KILL 2 ;;
    *) return 1 ;;
    esac
}

guest_run() {
    guest_setup
    iscsi_login 0
    local dev pid
    dev=/dev/$(session_disks 1)
    # Writes capped at 2 MB/s: they last at least 32 s however fast the
    # machine is, so both restarts land while fio is writing.
    fio_write_verify "$dev" 64M --rate=,2m &
    pid=$!
    sleep 6
    kill -0 "$pid" 2>/dev/null || fail "fio ended before the first restart: make it bigger"
    host_do restart-term
    sleep 8
    kill -0 "$pid" 2>/dev/null || fail "fio ended before the second restart: make it bigger"
    host_do restart-kill
    say "target restarted twice under fio; waiting for fio"
    wait "$pid"
    iscsiadm -m session -P1 | grep -q "iSCSI Session State: LOGGED_IN" ||
        fail "session not logged in after the restarts"
    fio_verify_only "$dev" 64M
}
