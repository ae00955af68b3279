#!/bin/bash
# PID 1 of the guest once the initramfs has switch_rooted into the host's
# (read-only, 9p) root. Runs the scenario's guest_run, prints
# "SCENARIO PASS" or "SCENARIO FAIL reason" on the console (which
# run-scenario.sh waits for) and powers the guest off. Must never exit:
# PID 1 exiting panics the kernel (panic=-1 then ends QEMU, a fallback).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C
# udev refuses to run when it thinks it is in a chroot; the 9p root looks
# like one to systemd's heuristics.
export SYSTEMD_IGNORE_CHROOT=1
cd /tmp

# shellcheck source=/dev/null
source /run/xchg/guest.env
# shellcheck source=guest-lib.sh
source "$(dirname "$0")/guest-lib.sh"
PORTALS=1
# shellcheck source=/dev/null
source "$SCENARIO_FILE"
# The host's copy of this file was read for its host side; here only
# guest_run matters.
source /run/xchg/guest.env

# Any unexpected failing command ends the scenario with its line.
set -eE
trap 'fail "line $LINENO: $BASH_COMMAND (exit $?)"' ERR
started=$SECONDS
guest_run
set +eE
trap - ERR
pass
