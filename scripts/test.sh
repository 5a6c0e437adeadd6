#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the plugins (built for wasm32-wasip2,
# and their decision logic tested natively), every test, and each benchmark once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The property tests (proptest) draw the same cases on every run, so CI is repeatable; set
# another seed (or PROPTEST_CASES=20000) to explore further.
export PROPTEST_RNG_SEED="${PROPTEST_RNG_SEED:-20261205}"
cargo fmt --all -- --check
bash scripts/build-plugins.sh
cargo test --manifest-path plugins/Cargo.toml --lib --target-dir plugins/target
cargo test --manifest-path crates/weir-plugin-sdk/Cargo.toml --lib --target-dir plugins/target
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Benchmarks compile and run one iteration each, so they cannot rot (criterion's test mode,
# built with the test profile: no second, optimised build of wasmtime just for this).
cargo test --workspace --benches
