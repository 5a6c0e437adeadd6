#!/usr/bin/env bash
# Installs what building and testing weir needs, idempotently: the Rust components and targets.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is not installed; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for component in rustfmt clippy; do
    grep -q "^${component}" <<<"$installed" || rustup component add "$component"
  done
  # Plugins are WebAssembly components: rustc emits them directly for this target.
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi
