#!/usr/bin/env bash
# What each proxy costs while nobody uses it: context switches (all its threads and processes)
# and CPU time over SECONDS of idleness, after a second of load so every lazy structure exists.
# weir with the Wasm balancer, nginx and HAProxy, configured as compare.sh configures them.
#   usage: benches/load/idle.sh [SECONDS=5] [WEIR=target/release/weir]
set -euo pipefail
cd "$(dirname "$0")/../.."
S=${1:-5}
WEIR=${2:-target/release/weir}
source benches/load/bench-setup.sh
bench_setup wrk:wrk nginx:nginx haproxy:haproxy
[ "$WEIR" != target/release/weir ] || cargo build -q --release --bin weir
ulimit -n "$(ulimit -Hn)"
source benches/load/weir-config.sh
source benches/load/peer-configs.sh
start_layout_a 18380 19931 19380 "$WEIR"
for port in 18381 18383 18384; do
  taskset -c 1 wrk -t1 -c16 -d1s "http://127.0.0.1:$port/" >/dev/null
done
procs() { echo "$1"; pgrep -P "$1" || true; }  # nginx's worker is its master's child
switches() {
  local p t total=0
  for p in $(procs "$1"); do
    for t in /proc/"$p"/task/*; do
      total=$((total + $(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$t/status" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}
ticks() { local p total=0; for p in $(procs "$1"); do total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done; echo "$total"; }
HZ=$(getconf CLK_TCK)
declare -A S0 T0
for name in weir nginx haproxy; do
  pid=$PW; [ $name = nginx ] && pid=$PN; [ $name = haproxy ] && pid=$PH
  S0[$name]=$(switches "$pid"); T0[$name]=$(ticks "$pid")
done
sleep "$S"
label="$WEIR"; [ "$WEIR" != target/release/weir ] || label="weir at $(git rev-parse --short HEAD)"
echo "Idle for $S s after 1 s of wrk -c16 each ($label, Wasm round-robin):"
for name in weir nginx haproxy; do
  pid=$PW; [ $name = nginx ] && pid=$PN; [ $name = haproxy ] && pid=$PH
  s=$(( $(switches "$pid") - S0[$name] )); t=$(( $(ticks "$pid") - T0[$name] ))
  echo "  $name: $s context switches ($(awk -v s="$s" -v d="$S" 'BEGIN {printf "%.1f", s / d}')/s), $(awk -v t="$t" -v hz="$HZ" 'BEGIN {printf "%.0f", t * 1000 / hz}') ms CPU"
done
