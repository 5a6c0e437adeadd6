#!/usr/bin/env bash
# HTTP/2 to the upstreams (`protocol = "h2"`): weir against HAProxy (`server ... proto h2`), both
# in front of two demo upstreams speaking h2c, and for reference both in front of two HTTP/1.1
# demo upstreams (weir's default pool, HAProxy's default server line); layout A (proxies and
# upstreams on core 0, the load generator on core 1), interleaved rounds; HTTP/1.1 clients
# (wrk -c64) and h2c clients (h2load -c64 -m10). Prints req/s, the proxy's CPU µs per request
# and non-2xx answers each round, then the medians. nginx is left out: it speaks HTTP/2 to
# upstreams only for gRPC (grpc_pass).
#   usage: benches/load/h2-upstream.sh [ROUNDS=5] [SECONDS=4] [WEIR=target/release/weir]
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-5}; S=${2:-4}; WEIR=${3:-target/release/weir}
source benches/load/bench-setup.sh
bench_setup wrk:wrk h2load:nghttp2-client haproxy:haproxy
source benches/load/weir-config.sh
source benches/load/peer-configs.sh
[ -x "$WEIR" ] || cargo build -q --release --bin weir
weir_toml "$W/weir.toml" 18281 19921 "$PWD/plugins/dist" 19281 19282
sed -i '/^name = "app"$/a protocol = "h2"' "$W/weir.toml"
haproxy_cfg "$W/haproxy.cfg" 18282 19281 19282
sed -i 's/^\(  server [ab] 127.0.0.1:[0-9]*\)$/\1 proto h2/' "$W/haproxy.cfg"
grep -q 'protocol = "h2"' "$W/weir.toml" && grep -q 'proto h2' "$W/haproxy.cfg"
weir_toml "$W/weir-h1.toml" 18283 19922 "$PWD/plugins/dist" 19283 19284
haproxy_cfg "$W/haproxy-h1.cfg" 18284 19283 19284
DEMO_H2=1 taskset -c 0 target/release/examples/demo_upstream 19281 a 100 2>/dev/null & pids+=($!)
DEMO_H2=1 taskset -c 0 target/release/examples/demo_upstream 19282 b 100 2>/dev/null & pids+=($!)
taskset -c 0 target/release/examples/demo_upstream 19283 a 100 2>/dev/null & pids+=($!)
taskset -c 0 target/release/examples/demo_upstream 19284 b 100 2>/dev/null & pids+=($!)
declare -A PORT PID
WEIR_LOG=warn taskset -c 0 "$WEIR" run --config "$W/weir.toml" & PID[weir-h2up]=$!; pids+=($!)
taskset -c 0 haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & PID[haproxy-h2up]=$!; pids+=($!)
WEIR_LOG=warn taskset -c 0 "$WEIR" run --config "$W/weir-h1.toml" & PID[weir-h1up]=$!; pids+=($!)
taskset -c 0 haproxy -f "$W/haproxy-h1.cfg" -db >/dev/null 2>&1 & PID[haproxy-h1up]=$!; pids+=($!)
PORT=([weir-h2up]=18281 [haproxy-h2up]=18282 [weir-h1up]=18283 [haproxy-h1up]=18284)
for p in 18281 18282 18283 18284; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$p/" | grep -q "hello from" || { echo "port $p does not proxy" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:$p/" >/dev/null
done
for _ in $(seq "$R"); do
  for load in h1 h2c; do
    for sys in weir-h2up haproxy-h2up weir-h1up haproxy-h1up; do
      echo "$load-$sys $(load_round $load "${PORT[$sys]}" "${PID[$sys]}" "$S")"
    done
  done
done | tee "$W/res"
echo "medians (req/s, CPU µs/req, non-2xx in all rounds):"
sort "$W/res" | awk '{k=$1; r[k]=r[k] " " $2; c[k]=c[k] " " $3; b[k]+=$4}
  END {for (k in r) print k, r[k] "|" c[k] "|" b[k]}' | while IFS='|' read -r head cpus bad; do
  key=${head%% *}; rates=${head#* }
  med() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
  echo "$key req/s $(echo "$rates" | med) cpu_us $(echo "$cpus" | med) non2xx $bad"
done
