#!/bin/sh
# QEMU runs this (guestfwd=…-cmd:) for each guest connection to a portal,
# with the connection on stdin/stdout: relay it to gentgt's 127.0.0.1 port.
# While the portal is blocked (the file BLOCK exists, run-scenario.sh's
# portal_block) the connection is dropped at once, as a dead path would be.
# fwd.sh PORT BLOCK
#
# slirp makes the connection this process's stderr too: socat's messages
# ("Connection refused" while the target restarts) must not go to the
# guest, whose initiator would read them as a PDU. They go to BLOCK.log.
exec 2>>"$2.log"
[ -e "$2" ] && exit 0
# QEMU's spawn detaches us (we are not its children): record the pid, which
# socat keeps, for portal_block and cleanup.
echo $$ >>"$2.pids"
exec socat - "TCP:127.0.0.1:$1"
