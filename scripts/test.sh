#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, every test, and each benchmark once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Benchmarks compile and run one iteration each, so they cannot rot.
cargo bench --workspace -- --test
