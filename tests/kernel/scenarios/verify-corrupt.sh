# Proof that the fio checks can fail: fio writes, the host overwrites a few
# 4 KiB blocks of the LUN file behind the target's back, and the
# verify-only pass must notice. This scenario is EXPECTED TO FAIL (with
# "fio verify-only … exited"); tests/kernel_initiator.rs asserts that it
# does. The same steps without the corruption are digests.sh/r2t.sh.
LUN_SIZE=256MiB
TIMEOUT=200

host_action() {
    case $1 in
    corrupt) lun_corrupt 4 8 ;; # 4 blocks, at 1, 9, 17, 25 MiB
    *) return 1 ;;
    esac
}

guest_run() {
    guest_setup
    iscsi_login 0
    local dev
    dev=/dev/$(session_disks 1)
    fio_write_only "$dev" 32M
    host_do corrupt
    fio_verify_only "$dev" 32M
}
