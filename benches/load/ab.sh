#!/usr/bin/env bash
# A/B of two weir binaries (before/after a change): layout A (weir and two demo upstreams on
# core 0, wrk on core 1), interleaved wrk rounds, req/s and weir's CPU µs per request (all, and
# its user part) each round, then each binary's medians.
#   usage: benches/load/ab.sh OLD_WEIR NEW_WEIR [ROUNDS=5] [SECONDS=4]
#   AB_H2=1: HTTP/2 downstream (h2load -c64 -m10, h2c) instead of wrk's HTTP/1.1.
#   AB_POST=1: wrk's requests are POSTs with a 512-byte body (Content-Length) instead of GETs.
#   AB_UP_H2=1: HTTP/2 upstreams (demo upstreams speaking h2c, pools with protocol = "h2").
#   WEIR_FORWARDING='': no `forwarding_headers` key (binaries older than it refuse it; weir-config.sh).
#   LAYOUT=B: weir alone on core 0, the upstreams beside the load tool on core 1 (compare.sh's
#     layout B) instead of layout A.
#   WORKERS=N: weir with `worker_threads = N` (a multi-thread runtime for N > 1), and nothing
#     pinned (weir, the upstreams, the load tool): the shape of a default multi-core install.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1; B=$2; R=${3:-5}; S=${4:-4}
source benches/load/bench-setup.sh
bench_setup wrk:wrk h2load:nghttp2-client
source benches/load/weir-config.sh
weir_toml "$W/a.toml" 18181 19911 "$PWD/plugins/dist" 19181 19182
weir_toml "$W/b.toml" 18182 19912 "$PWD/plugins/dist" 19181 19182
pin=(taskset -c 0); up_pin=(taskset -c 0)
[ "${LAYOUT:-A}" = B ] && up_pin=(taskset -c 1)
if [ -n "${WORKERS:-}" ]; then
  sed -i "s/^worker_threads = 1\$/worker_threads = $WORKERS/" "$W/a.toml" "$W/b.toml"
  pin=(); up_pin=(); export LOAD_CPU=
fi
if [ "${AB_UP_H2:-0}" = 1 ]; then
  sed -i '/^name = "app"$/a protocol = "h2"' "$W/a.toml" "$W/b.toml"
  export DEMO_H2=1
fi
"${up_pin[@]}" target/release/examples/demo_upstream 19181 a 100 2>/dev/null & pids+=($!)
"${up_pin[@]}" target/release/examples/demo_upstream 19182 b 100 2>/dev/null & pids+=($!)
WEIR_LOG=warn "${pin[@]}" "$A" run --config "$W/a.toml" & PA=$!; pids+=($PA)
WEIR_LOG=warn "${pin[@]}" "$B" run --config "$W/b.toml" & PB=$!; pids+=($PB)
for p in 18181 18182; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  ${LOAD_CPU:+taskset -c "$LOAD_CPU"} wrk -t1 -c64 -d2s "http://127.0.0.1:$p/" >/dev/null
done
load=h1; [ "${AB_H2:-0}" = 1 ] && load=h2c
for _ in $(seq "$R"); do
  for which in old new; do
    port=18181; pid=$PA; [ $which = new ] && { port=18182; pid=$PB; }
    read -r rps cpu _ user < <(load_round $load $port $pid "$S")
    echo "$which $rps $cpu $user"
  done
done | tee "$W/res"
awk '{r[$1] = r[$1] " " $2; c[$1] = c[$1] " " $3; u[$1] = u[$1] " " $4}
  END {for (k in r) print k, "req/s:" r[k], " cpu us/req:" c[k], " user us/req:" u[k]}' "$W/res"
med() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for which in old new; do
  echo "$which medians: $(awk -v w=$which '$1 == w {print $2}' "$W/res" | med) req/s," \
    "$(awk -v w=$which '$1 == w {print $3}' "$W/res" | med) cpu us/req," \
    "$(awk -v w=$which '$1 == w {print $4}' "$W/res" | med) user us/req"
done
