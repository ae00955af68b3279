#!/usr/bin/env bash
# Build fio with its libiscsi engine from Debian's source package (Debian's
# binary fio is built without it) into target/fio/fio, for
# `benches/compare.sh --tools fio,...`. Nothing of fio is committed here.
#
# Needs: deb-src lines in the apt sources, dpkg-dev, libiscsi-dev and
# zlib1g-dev (apt-get install dpkg-dev libiscsi-dev zlib1g-dev).
# Takes a few CPU-minutes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/target/fio"
pkg-config --exists libiscsi || { echo "build_fio.sh: install libiscsi-dev" >&2; exit 2; }
command -v dpkg-source >/dev/null || { echo "build_fio.sh: install dpkg-dev" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source fio >/dev/null
cd fio-*/
./configure --disable-native --enable-libiscsi | grep -E "^iscsi engine"
make -j"$(nproc)" fio >/dev/null
./fio --enghelp | grep -qw libiscsi || { echo "build_fio.sh: no libiscsi engine" >&2; exit 1; }
mkdir -p "$out"
cp fio "$out/fio"
echo "built $out/fio ($("$out/fio" --version), libiscsi engine)"
