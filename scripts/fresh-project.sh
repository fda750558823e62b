#!/usr/bin/env bash
# A new cargo project that depends on `rill` by path compiles the README's
# processor example (the first Rust block under "## Processing") as it is
# written: what a newcomer pastes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
project=$(mktemp -d)
trap 'rm -rf "$project"' EXIT
mkdir -p "$project/src"
awk '/^## Processing/ { on = 1 } on && /^```rust/ { grab = 1; next } grab && /^```/ { exit } grab { print }' \
  "$repo/README.md" >"$project/src/main.rs"
[ -s "$project/src/main.rs" ] || { echo "no Rust example under ## Processing in README.md" >&2; exit 1; }
cat >"$project/Cargo.toml" <<TOML
[package]
name = "fresh-rill-user"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
rill = { path = "$repo/processor" }
tokio = { version = "1", features = ["macros", "rt-multi-thread", "signal"] }

[workspace]
TOML
# The workspace's lock pins the same versions (what it lacks is resolved).
cp "$repo/Cargo.lock" "$project/Cargo.lock"
CARGO_TARGET_DIR="$repo/target/fresh-project" cargo check --quiet --manifest-path "$project/Cargo.toml"
echo "a fresh project compiles the README's processor example ($(wc -l <"$project/src/main.rs") lines)"
