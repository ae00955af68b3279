#!/bin/sh
# Peak and settled RSS of the release `gentgt serve` under 1,000 hostile
# connections (tests/hostile_rss.rs; goal: VmHWM <= 256 MiB).
set -e
cd "$(dirname "$0")/.."
# 1,000 client sockets plus the target's: lift the descriptor limit (the
# target lifts its own soft limit to the hard limit at start).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
HOSTILE_RSS_ROUNDS="${HOSTILE_RSS_ROUNDS:-8}" exec cargo test --release --test hostile_rss -- --nocapture
