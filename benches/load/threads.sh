#!/usr/bin/env bash
# weir's CPU time and context switches per request, thread by thread (the worker, the epoch
# ticker), at compare.sh's fixed rate (h2load --h1 -c50 --rps 100: 5,000 req/s) in layout A,
# with the Wasm balancer and with the native one. LOAD=wrk saturates instead (wrk -t1 -c64).
#   usage: [LOAD=h2load|wrk] benches/load/threads.sh [SECONDS=8] [WEIR=target/release/weir]
set -euo pipefail
cd "$(dirname "$0")/../.."
S=${1:-8}
WEIR=${2:-target/release/weir}
source benches/load/bench-setup.sh
LOAD=${LOAD:-h2load}
bench_setup h2load:nghttp2-client wrk:wrk
[ "$WEIR" != target/release/weir ] || cargo build -q --release --bin weir
source benches/load/weir-config.sh
mkdir -p "$W/no-plugins"
taskset -c 0 target/release/examples/demo_upstream 19481 a 100 2>/dev/null & pids+=($!)
taskset -c 0 target/release/examples/demo_upstream 19482 b 100 2>/dev/null & pids+=($!)
# Per thread name: "name cpu-ticks switches", summed over threads of that name.
threads() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm") $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "$t/stat") $(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$t/status")"
  done | awk '{c[$1] += $2; s[$1] += $3} END {for (k in c) print k, c[k], s[k]}' | sort
}
HZ=$(getconf CLK_TCK)
for balancer in wasm native; do
  dir=$PWD/plugins/dist; [ $balancer = native ] && dir=$W/no-plugins
  weir_toml "$W/$balancer.toml" 18481 19941 "$dir" 19481 19482
  WEIR_LOG=warn taskset -c 0 "$WEIR" run --config "$W/$balancer.toml" & pid=$!; pids+=($pid)
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:18481/" && break; sleep 0.1; done
  threads "$pid" > "$W/before"
  if [ "$LOAD" = wrk ]; then
    taskset -c 1 wrk -t1 -c64 -d"${S}s" "http://127.0.0.1:18481/" > "$W/load.out"
    n=$(awk '/requests in/ {print $1}' "$W/load.out")
  else
    taskset -c 1 h2load --h1 -c 50 --rps 100 -D "$S" "http://127.0.0.1:18481/" > "$W/load.out"
    n=$(awk '/^requests:/ {print $8}' "$W/load.out")
  fi
  threads "$pid" > "$W/after"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  join "$W/before" "$W/after" | awk -v n="$n" -v hz="$HZ" -v b="$balancer" \
    '{printf "%-6s %-12s CPU %6.2f us/request, %.3f context switches/request\n", b, $1, ($4 - $2) * 1e6 / hz / n, ($5 - $3) / n}'
done
