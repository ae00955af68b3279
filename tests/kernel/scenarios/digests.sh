# (b) CRC32C header and data digests (the kernel initiator computes data
# digests; libiscsi 1.19 cannot), checked as negotiated, under fio
# write+verify and a separate verify-only pass over the raw disk.
LUN_SIZE=256MiB
TIMEOUT=200

guest_run() {
    guest_setup
    iscsi_login 0 \
        node.conn[0].iscsi.HeaderDigest=CRC32C \
        node.conn[0].iscsi.DataDigest=CRC32C
    expect_negotiated "HeaderDigest: CRC32C" "DataDigest: CRC32C"
    local dev
    dev=/dev/$(session_disks 1)
    fio_write_verify "$dev" 48M
    fio_verify_only "$dev" 48M
    iscsiadm -m node -T "$IQN" --logout >/dev/null
}
