# (a) basic: discovery + login, mkfs.ext4 (which discards the whole disk),
# fsck, fio write+verify (crc32c) on a file of the mounted filesystem,
# fstrim, fsck again, blkdiscard.
LUN_SIZE=256MiB
TIMEOUT=200

guest_run() {
    guest_setup
    iscsi_login 0
    local dev
    dev=/dev/$(session_disks 1)
    local dmax
    dmax=$(cat "/sys/block/${dev#/dev/}/queue/discard_max_bytes")
    ((dmax > 0)) || fail "$dev has no discard support (discard_max_bytes 0)"
    say "disk $dev: $(($(blockdev --getsize64 "$dev") >> 20)) MiB, discard_max_bytes $dmax"
    mkfs.ext4 -q -F "$dev"
    fsck.ext4 -f -n "$dev" >/dev/null
    mkdir -p /tmp/mnt
    mount -t ext4 "$dev" /tmp/mnt
    fio_write_verify /tmp/mnt/fio.dat 48M
    rm /tmp/mnt/fio.dat
    say "fstrim: $(fstrim -v /tmp/mnt)"
    umount /tmp/mnt
    fsck.ext4 -f -n "$dev" >/dev/null
    say "fsck clean"
    blkdiscard -f -o 0 -l 16777216 "$dev"
    say "blkdiscard of 16 MiB done"
    iscsiadm -m node -T "$IQN" --logout >/dev/null
}
