#!/usr/bin/env bash
# What the fixed-rate phase's p99 is made of. compare.sh's fixed rate is h2load --h1 -c50
# --rps 100: every client's timer fires together, so the load is a burst of 50 requests every
# 10 ms. This runs that load against direct (no proxy), weir (Wasm round-robin), nginx and
# HAProxy in layout A (proxy and two demo upstreams on core 0, h2load on core 1), interleaved
# rounds, and reads h2load's per-request log: the bursts (requests grouped by start time), each
# burst's completion (its first start to its last answer), the mean latency by position in the
# burst, the run's first burst (the one that opens the connections), and the p50/p99 of all
# requests as compare.sh computes them.
#   usage: benches/load/bursts.sh [ROUNDS=2] [SECONDS=4]
#   SPREAD=1: the same rate without bursts: h2load opens one connection a millisecond, and each
#     client asks 99 times a second, so the 50 clients' timers fall ~0.2 ms apart (4,950 req/s,
#     evenly spaced). Prints only each run's p50/p90/p99 (there are no bursts to group).
#   LAYOUT=B: the upstreams on core 1 with h2load, the proxy alone on core 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-2}; S=${2:-4}
source benches/load/bench-setup.sh
bench_setup wrk:wrk h2load:nghttp2-client nginx:nginx haproxy:haproxy
cargo build -q --release --bin weir
ulimit -n "$(ulimit -Hn)"
source benches/load/weir-config.sh
source benches/load/peer-configs.sh
[ "${LAYOUT:-A}" = B ] && export UPCORE=1
start_layout_a 18580 19951 19580
declare -A port=([direct]=19581 [weir]=18581 [nginx]=18583 [haproxy]=18584)
systems="direct weir nginx haproxy"
for s in $systems; do
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:${port[$s]}/" > /dev/null
done
# One h2load log -> "bursts size p50 p90 p99 first first10 last10 p50all p99all" (µs).
summarise() {
  sort -n -k1 "$1" | awk -F'\t' '
    $2 < 200 || $2 >= 400 { next }
    NR == 1 || $1 - prev > 1000 { b++; t0[b] = $1; pos = 0 }
    { prev = $1; pos++; n[b] = pos; e = $1 + $3 - t0[b]; if (e > end[b]) end[b] = e
      if (pos <= 10) { f += $3; nf++ } else if (pos > 40) { l += $3; nl++ } print $3 > "'"$W/all"'" }
    END { for (i = 1; i <= b; i++) { print end[i] > "'"$W/ends"'"; sizes[n[i]]++ }
      for (k in sizes) if (sizes[k] > best) { best = sizes[k]; size = k }
      printf "%d %d %d %.0f %.0f\n", b, size, end[1], (nf ? f / nf : 0), (nl ? l / nl : 0) }'
}
pct() { sort -n "$1" | awk -v p="$2" '{a[NR] = $1} END {i = int(NR * p); if (i < 1) i = 1; print a[i]}'; }
if [ "${SPREAD:-0}" = 1 ]; then
  printf "%-8s %-5s %8s %8s %8s\n" system round p50 p90 p99
  for r in $(seq "$R"); do
    for s in $systems; do
      rm -f "$W/h2load.log" "$W/all"
      timeout $((S + 30)) taskset -c 1 h2load --h1 -c 50 --rps 99 -r 1 --rate-period 1ms -n $((S * 4950)) \
        --log-file="$W/h2load.log" "http://127.0.0.1:${port[$s]}/" > /dev/null 2>&1 || true
      awk -F'\t' '$2 >= 200 && $2 < 400 {print $3}' "$W/h2load.log" > "$W/all"
      printf "%-8s %-5s %8s %8s %8s\n" "$s" "$r" "$(pct "$W/all" 0.5)" "$(pct "$W/all" 0.9)" "$(pct "$W/all" 0.99)"
    done
  done
  echo "(microseconds, all requests of the run)"
  exit 0
fi
printf "%-8s %-5s %7s %5s %8s %8s %8s %9s %9s %9s %8s %8s\n" system round bursts size "burst50" "burst90" "burst99" "first" "pos1-10" "pos41-50" "p50" "p99"
for r in $(seq "$R"); do
  for s in $systems; do
    rm -f "$W/h2load.log" "$W/all" "$W/ends"
    timeout $((S + 30)) taskset -c 1 h2load --h1 -c 50 --rps 100 -D "$S" --log-file="$W/h2load.log" \
      "http://127.0.0.1:${port[$s]}/" > /dev/null 2>&1 || true
    read -r bursts size first f10 l10 < <(summarise "$W/h2load.log")
    printf "%-8s %-5s %7s %5s %8s %8s %8s %9s %9s %9s %8s %8s\n" "$s" "$r" "$bursts" "$size" \
      "$(pct "$W/ends" 0.5)" "$(pct "$W/ends" 0.9)" "$(pct "$W/ends" 0.99)" "$first" "$f10" "$l10" \
      "$(pct "$W/all" 0.5)" "$(pct "$W/all" 0.99)"
  done
done
echo "(microseconds; burstNN: percentiles of the bursts' completion; first: the run's first burst;"
echo " posA-B: mean latency of the requests at those positions in their burst; p50/p99: all requests)"
