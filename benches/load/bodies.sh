#!/usr/bin/env bash
# Large bodies through two weir binaries (before/after a change) and, beside them, nginx and
# HAProxy tuned to stream bodies as weir does: every proxy and two demo upstreams on core 0,
# curl on core 1. Per round and system, interleaved: 10 uploads of 20 MB with Content-Length,
# 10 chunked, 10 downloads of 10 MiB. Reports the proxy's CPU milliseconds for each set of 10
# (user + system, its worker processes included) and the set's wall time in seconds.
#   usage: benches/load/bodies.sh OLD_WEIR NEW_WEIR [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1; B=$2; R=${3:-3}
source benches/load/bench-setup.sh
bench_setup curl:curl nginx:nginx haproxy:haproxy
source benches/load/weir-config.sh
source benches/load/peer-configs.sh
weir_toml "$W/a.toml" 18181 19911 "$PWD/plugins/dist" 19181 19182
weir_toml "$W/b.toml" 18182 19912 "$PWD/plugins/dist" 19181 19182
# nginx buffers request bodies to disk and caps them at 1 MB unless told; weir streams them.
nginx_conf "$W/nginx.conf" "$W" 18183 19181 19182 "    client_max_body_size 0; proxy_request_buffering off;"
haproxy_cfg "$W/haproxy.cfg" 18184 19181 19182
head -c 20000000 /dev/urandom > "$W/body"
taskset -c 0 target/release/examples/demo_upstream 19181 a 2>/dev/null & pids+=($!)
taskset -c 0 target/release/examples/demo_upstream 19182 b 2>/dev/null & pids+=($!)
WEIR_LOG=warn taskset -c 0 "$A" run --config "$W/a.toml" & PA=$!; pids+=($PA)
WEIR_LOG=warn taskset -c 0 "$B" run --config "$W/b.toml" & PB=$!; pids+=($PB)
taskset -c 0 nginx -c "$W/nginx.conf" -e "$W/nginx-error.log" 2>/dev/null & PN=$!; pids+=($PN)
taskset -c 0 haproxy -f "$W/haproxy.cfg" -q & PH=$!; pids+=($PH)
for p in 18181 18182 18183 18184; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
done
# A process's CPU jiffies with its children's (nginx's worker).
jiffies() {
  local p t=0
  for p in $1 $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo $t
}
HZ=$(getconf CLK_TCK)
# set_of PORT PID NAME PATH CURL_ARGS...: 10 transfers; prints "NAME cpu_ms wall_s"
set_of() {
  local port=$1 pid=$2 name=$3 path=$4; shift 4
  local c0 c1 t0 t1
  c0=$(jiffies "$pid"); t0=$(date +%s%N)
  for _ in $(seq 10); do
    taskset -c 1 curl -sf -o /dev/null "$@" "http://127.0.0.1:$port$path" || echo "$name: curl failed" >&2
  done
  c1=$(jiffies "$pid"); t1=$(date +%s%N)
  echo "$name $(( (c1 - c0) * 1000 / HZ )) $(awk -v n=$((t1 - t0)) 'BEGIN {printf "%.2f", n / 1e9}')"
}
for _ in $(seq "$R"); do
  for which in old new nginx haproxy; do
    case $which in
      old) port=18181; pid=$PA ;; new) port=18182; pid=$PB ;;
      nginx) port=18183; pid=$PN ;; haproxy) port=18184; pid=$PH ;;
    esac
    echo "$which $(set_of $port $pid up /upload --data-binary "@$W/body") $(set_of $port $pid chunked /upload -H 'Transfer-Encoding: chunked' --data-binary "@$W/body") $(set_of $port $pid down /bytes/10485760)"
  done
done | tee "$W/res"
echo "CPU ms per set of 10 (rounds in order):"
awk '{u[$1] = u[$1] " " $3; c[$1] = c[$1] " " $6; d[$1] = d[$1] " " $9}
     END {for (k in u) printf "%-8s upload:%s  chunked:%s  download:%s\n", k, u[k], c[k], d[k]}' "$W/res" | sort
