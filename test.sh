#!/usr/bin/env bash
# The project's test command: install what the tests need (apt-get, when
# missing), build, run every cargo test, then libiscsi's
# iscsi-test-cu against the release binary, on file LUNs and again on
# RBD LUNs of a one-node Ceph cluster (~1 min; conformance/expectations.txt
# says what must pass on both). Extra arguments go to conformance/run,
# e.g. ./test.sh --filter Read10
set -euo pipefail
cd "$(dirname "$0")"

timed() {
    local t=$SECONDS
    echo "==> $*"
    "$@"
    echo "==> $1 took $((SECONDS - t)) s"
}

timed scripts/install-test-deps.sh
# `--features fuzz`: the test targets turn the fuzz module on (a self
# dev-dependency), so building the binary with it too lets `cargo test`
# reuse this build instead of compiling the library a second time.
timed cargo build --release --features fuzz
timed cargo test --release
timed conformance/run --bin target/release/gentgt \
    --expectations conformance/expectations.txt \
    --results target/conformance-results.tsv "$@"
timed conformance/run --rbd --bin target/release/gentgt \
    --expectations conformance/expectations.txt \
    --results target/conformance-rbd-results.tsv "$@"
