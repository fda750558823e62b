#!/usr/bin/env bash
# The cost grid of benches/README.md: Rill against librdkafka on a fresh
# Tansu per cell, over partitions, value sizes and codecs. Writes
# target/grid/grid.md (the table) and target/grid/grid.json (every report).
# The RILL_GRID_* variables narrow it (see benches/benches/grid.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p rill-benches --bench grid
echo "tables: target/grid/grid.md, target/grid/grid.json" >&2
