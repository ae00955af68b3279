#!/usr/bin/env bash
# What the tests need beyond Rust, installed with apt-get on Debian 12
# (bookworm) when missing; quick when everything is there. ./test.sh runs
# it first. Needs root (or sudo) only when something is missing.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [[ $(id -u) != 0 ]]; then
    SUDO=(sudo)
fi
apt_get() { "${SUDO[@]}" apt-get "$@"; }

installed() { # PKG [VERSION]
    local s
    s=$(dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null) || return 1
    [[ $s == "install ok installed "* ]] || return 1
    [[ -z ${2:-} || $s == "install ok installed $2" ]]
}

updated=0
apt_update() {
    if [[ $updated == 0 ]]; then
        apt_get update -q
        updated=1
    fi
}

apt_deps() {
    local need=() p
    # libiscsi-bin: iscsi-test-cu, iscsi-ls, iscsi-inq. python3 runs
    # conformance/run (standard library only). tgt: the reference target our
    # own initiator is also tested against (tests/initiator_tgt.rs).
    # strace: the power-loss harness records the target's syscalls with it
    # (tests/power_loss.rs). e2fsprogs, util-linux: mkfs.ext4 and losetup
    # for the restore and fault tests on loop devices.
    # ceph-mon, ceph-osd, ceph-common: the one-node cluster of the RBD
    # tests (scripts/ceph-one-node.sh); librbd1/librados2 come with them
    # (gentgt loads librbd at run time). tgt-rbd: tgtd's RBD backing
    # store, the side-by-side peer of the RBD benchmarks.
    for p in libiscsi-bin python3 tgt strace e2fsprogs util-linux \
        ceph-mon ceph-osd ceph-common tgt-rbd; do
        installed "$p" || need+=("$p")
    done
    if ((${#need[@]})); then
        apt_update
        apt_get install -y -q --no-install-recommends "${need[@]}"
    fi

    # qemu-img iscsi:// needs qemu-block-extra at exactly qemu-utils'
    # version. The image's qemu-utils may come from bookworm-backports
    # (…~bpo12+1) without that suite in its sources: add it then.
    if ! installed qemu-utils; then
        apt_update
        apt_get install -y -q --no-install-recommends qemu-utils
    fi
    local qv
    qv=$(dpkg-query -W -f='${Version}' qemu-utils)
    if [[ $qv == *bpo12* ]] &&
        ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # Same mirror as the machine's own Debian source.
        local uri
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
            true)
        [[ -n $uri ]] || uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
        echo "deb $uri bookworm-backports main" |
            "${SUDO[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
        updated=0
    fi
    if ! installed qemu-block-extra "$qv"; then
        apt_update
        apt_get install -y -q --no-install-recommends "qemu-block-extra=$qv"
    fi
}

# The kernel-initiator harness (tests/kernel/, tests/kernel_initiator.rs):
# gating, like every other test, so a failure to install fails the run.
kernel_deps() {
    local need=() p qv
    # These run in a QEMU guest whose root is this machine's filesystem:
    # open-iscsi (iscsiadm, iscsid), multipath-tools (with udev), fio,
    # e2fsprogs; and on the host socat (one per guest connection),
    # busybox-static + cpio + kmod (the guest's tiny initramfs, depmod).
    # Debian's kernel (linux-image-amd64) is not installed:
    # tests/kernel/run-scenario.sh downloads and unpacks it under
    # target/kernel-guest/.
    for p in open-iscsi multipath-tools udev fio e2fsprogs socat busybox-static cpio kmod; do
        installed "$p" || need+=("$p")
    done
    if ((${#need[@]})); then
        apt_update
        apt_get install -y -q --no-install-recommends "${need[@]}" || return 1
    fi
    qv=$(dpkg-query -W -f='${Version}' qemu-utils)
    # The guest's QEMU, at qemu-utils' version (qemu-utils'
    # qemu-system-common would otherwise conflict); -t lets apt take its
    # dependencies from backports too.
    if ! installed qemu-system-x86 "$qv"; then
        local suite=()
        [[ $qv == *bpo12* ]] && suite=(-t bookworm-backports)
        apt_update
        apt_get install -y -q --no-install-recommends "${suite[@]}" "qemu-system-x86=$qv" || return 1
    fi
    # run-scenario.sh asks apt which kernel linux-image-amd64 is.
    if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
        apt_update
    fi
}

apt_deps
kernel_deps
