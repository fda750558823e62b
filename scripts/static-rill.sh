#!/usr/bin/env bash
# Builds `rill` as one static binary (glibc with crt-static, as
# `cargo install` does it, so this also checks that `cargo install --path
# cli` works), checks that it links nothing dynamically, runs it against a
# local broker it starts itself (`rill broker`: produce, consume, metadata),
# and reports its size.
#
#   scripts/static-rill.sh [INSTALL_ROOT] [PROFILE]   # default target/static-rill, release
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-target/static-rill}
profile=${2:-release}
target=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo install --locked --quiet --path cli --root "$root" --target "$target" --profile "$profile" --force
bin="$root/bin/rill"

file "$bin"
if ! file "$bin" | grep -Eq 'statically linked|static-pie linked'; then
  echo "$bin is not statically linked" >&2
  exit 1
fi
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "$bin loads shared libraries:" >&2
  ldd "$bin" >&2
  exit 1
fi

# Tansu from the cache the tests use (installed there on first use).
export RILL_CACHE_DIR=${RILL_CACHE_DIR:-$PWD/target/rill-cache}
scratch=$(mktemp -d)
"$bin" broker >"$scratch/broker.out" 2>"$scratch/broker.err" &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; rm -rf "$scratch"' EXIT
for _ in $(seq 1 600); do
  [ -s "$scratch/broker.out" ] && break
  if ! kill -0 "$broker" 2>/dev/null; then
    cat "$scratch/broker.err" >&2
    exit 1
  fi
  sleep 0.2
done
address=$(head -n 1 "$scratch/broker.out")
[ -n "$address" ] || { echo "rill broker printed no address" >&2; cat "$scratch/broker.err" >&2; exit 1; }

"$bin" metadata -b "$address" | head -n 3
"$bin" topic create -b "$address" -p 3 static-check
seq 1 1000 | "$bin" produce -b "$address" -t static-check
"$bin" consume -b "$address" -t static-check --from beginning -e | sort -n >"$scratch/consumed"
if ! seq 1 1000 | diff -q - "$scratch/consumed" >/dev/null; then
  echo "the static rill did not read back what it wrote" >&2
  exit 1
fi
kill -TERM "$broker"
wait "$broker"
trap 'rm -rf "$scratch"' EXIT
echo "static rill ($profile): $(stat -c %s "$bin") bytes, round trip of 1000 records through $address"
