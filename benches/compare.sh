#!/usr/bin/env bash
# gentgt vs tgt on loopback, same LUNs, same load generators; prints the
# table (see BENCHMARKS.md, section "gentgt vs tgt"). Options go to
# benches/compare.py (--help lists them). Builds nothing: run
# `cargo build --release` first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for tool in tgtd tgtadm iscsi-perf qemu-img taskset python3; do
    command -v "$tool" >/dev/null || { echo "compare.sh: missing $tool" >&2; exit 2; }
done
# qemu-img needs the iscsi block driver (Debian: qemu-block-extra, same
# version as qemu-utils).
if ! qemu-img --help | grep -qw iscsi; then
    echo "compare.sh: qemu-img has no iscsi driver (install qemu-block-extra)" >&2
    exit 2
fi
exec python3 "$here/compare.py" "$@"
