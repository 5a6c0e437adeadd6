#!/usr/bin/env bash
# Runs weir on config/weir.toml in front of two demo upstreams it starts itself
# (127.0.0.1:9081 "alpha", 127.0.0.1:9082 "beta"). Then: curl localhost:8080/
# Ctrl-C stops weir (gracefully) and the upstreams.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh

bash scripts/build-plugins.sh
cargo build --release --bin weir --example demo_upstream

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
target/release/examples/demo_upstream 9081 alpha & pids+=($!)
target/release/examples/demo_upstream 9082 beta & pids+=($!)

echo "weir: http://localhost:8080/  admin: http://127.0.0.1:9901/readyz" >&2
target/release/weir run --config config/weir.toml
