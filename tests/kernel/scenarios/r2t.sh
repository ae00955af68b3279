# (c) InitialR2T=Yes, ImmediateData=No and small bursts: every write's data
# comes in R2T-solicited Data-Out sequences of at most 8 KiB (many R2Ts per
# 64 KiB write), under fio write+verify and a verify-only pass.
LUN_SIZE=256MiB
TIMEOUT=200

guest_run() {
    guest_setup
    iscsi_login 0 \
        node.session.iscsi.InitialR2T=Yes \
        node.session.iscsi.ImmediateData=No \
        node.session.iscsi.FirstBurstLength=4096 \
        node.session.iscsi.MaxBurstLength=8192 \
        node.conn[0].iscsi.MaxRecvDataSegmentLength=4096
    expect_negotiated "InitialR2T: Yes" "ImmediateData: No" \
        "FirstBurstLength: 4096" "MaxBurstLength: 8192"
    local dev
    dev=/dev/$(session_disks 1)
    fio_write_verify "$dev" 32M
    fio_verify_only "$dev" 32M
    iscsiadm -m node -T "$IQN" --logout >/dev/null
}
