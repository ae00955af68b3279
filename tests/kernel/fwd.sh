#!/bin/sh
# QEMU runs this (guestfwd=…-cmd:) for each guest connection to a portal,
# with the connection on stdin/stdout: relay it to gentgt's 127.0.0.1 port.
# fwd.sh PORT BLOCK
#
# slirp makes the connection this process's stderr too: socat's messages
# ("Connection refused" while the target restarts) must not go to the
# guest, whose initiator would read them as a PDU. They go to BLOCK.log.
exec 2>>"$2.log"
# QEMU's spawn detaches us (we are not its children): record the pid, which
# socat keeps, for portal_block and cleanup.
echo $$ >>"$2.pids"
# While the portal is blocked (the file BLOCK exists: run-scenario.sh's
# portal_block) the path is a black hole: the connection is held, unanswered,
# until the portal is unblocked. (Refusing at once instead, by exiting, makes
# iscsid reconnect in a tight loop, and QEMU 10.0's slirp was seen to stop running
# this command: every later connection closes at once, even once unblocked.)
while [ -e "$2" ]; do
    sleep 0.2
done
# While the target restarts its port refuses connections: keep retrying
# (up to 15 s) with the guest's connection held rather than closing it at
# once. A refusal ends this command, and a quick run of them is what
# QEMU 10.0's slirp was seen to stop spawning this command after (above);
# once seen in the restart scenario, whose device then went offline.
exec socat - "TCP:127.0.0.1:$1,retry=75,interval=0.2"
