#!/usr/bin/env bash
# End-to-end throughput of weir with the Wasm round-robin balancer vs the native one, measured
# side by side in one run: rounds interleaved (wasm, native, wasm, native, ...), medians
# reported with their ratio. Two demo upstreams and weir on loopback; wrk as the client.
#   usage: benches/load/wasm-vs-native.sh [ROUNDS=5] [SECONDS=5] [CONNECTIONS=64]
# weir gets core 0 with the upstreams, wrk core 1 (layout A of issue 6) when taskset exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-5}; SECS=${2:-5}; CONNS=${3:-64}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
bash scripts/build-plugins.sh >/dev/null 2>&1
cargo build --release --bin weir --example demo_upstream >/dev/null 2>&1

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM
pin() { if command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
# Starts a pinned background process and records its PID (taskset execs the program).
spawn() {
  local core=$1; shift
  if command -v taskset >/dev/null; then taskset -c "$core" "$@" & else "$@" & fi
  pids+=($!)
}

spawn 0 target/release/examples/demo_upstream 19081 a
spawn 0 target/release/examples/demo_upstream 19082 b
source benches/load/weir-config.sh
mkdir -p "$work/no-plugins"
for kind in wasm native; do
  dir=$PWD/plugins/dist; [ "$kind" = native ] && dir=$work/no-plugins
  port=18080; [ "$kind" = native ] && port=18090
  admin=19901; [ "$kind" = native ] && admin=19902
  weir_toml "$work/$kind.toml" "$port" "$admin" "$dir" 19081 19082
  WEIR_LOG=warn spawn 0 target/release/weir run --config "$work/$kind.toml"
done
for admin in 19901 19902; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
done
curl -sf http://127.0.0.1:19901/api/v1/status | grep -q '"sha256"' || { echo "weir (wasm) is not using the Wasm plugin" >&2; exit 1; }
curl -sf http://127.0.0.1:19902/api/v1/status | grep -q '"native":true' || { echo "weir (native) is not using the native balancer" >&2; exit 1; }

# One discarded warm-up round each (caches, allocator, upstream connection pools).
for port in 18080 18090; do pin 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null; done
declare -A results
for r in $(seq "$ROUNDS"); do
  for kind in wasm native; do
    port=18080; [ "$kind" = native ] && port=18090
    rps=$(pin 1 wrk -t1 -c"$CONNS" -d"${SECS}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    results[$kind]+="$rps "
    echo "round $r $kind: $rps req/s" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
w=$(echo "${results[wasm]}" | median); n=$(echo "${results[native]}" | median)
echo "weir wasm round-robin:   $w req/s (median of $ROUNDS)"
echo "weir native round-robin: $n req/s (median of $ROUNDS)"
awk -v w="$w" -v n="$n" 'BEGIN { printf "wasm / native: %.3f\n", w / n }'
