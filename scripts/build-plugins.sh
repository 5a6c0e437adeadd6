#!/usr/bin/env bash
# Builds every plugin of plugins/ for wasm32-wasip2 into plugins/dist/<name>.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
fi
cargo build --manifest-path plugins/Cargo.toml --release --target wasm32-wasip2 --target-dir plugins/target
mkdir -p plugins/dist
for dir in plugins/*/; do
  name=$(basename "$dir")
  [ -f "$dir/Cargo.toml" ] || continue
  artifact="plugins/target/wasm32-wasip2/release/${name//-/_}.wasm"
  [ -f "$artifact" ] || { echo "error: $artifact was not built" >&2; exit 1; }
  # Copy then rename: a running weir watching plugins/dist never sees a half-written file.
  cp "$artifact" "plugins/dist/.$name.wasm.tmp"
  mv -f "plugins/dist/.$name.wasm.tmp" "plugins/dist/$name.wasm"
done
ls -l plugins/dist >&2
