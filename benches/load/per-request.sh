#!/usr/bin/env bash
# What each proxy costs per request, in layout A (proxy and two demo upstreams on core 0, wrk on
# core 1): syscalls by kind (perf tracepoints), TCP segments sent by the whole machine (nstat),
# user and system CPU of the proxy (/proc, clock ticks), and its context switches. weir (Wasm
# balancer), nginx and HAProxy, configured as compare.sh configures them (peer-configs.sh).
# LOAD=h2load measures at compare.sh's fixed rate instead (h2load --h1 -c50 at 5,000 req/s).
#   usage: [PERF=0] [LOAD=wrk|h2load] benches/load/per-request.sh [ROUNDS=2] [SECONDS=4]
# Needs perf (Debian: linux-perf) for the syscall counts; without it, or with PERF=0, those lines
# are skipped. The tracepoints cost every proxy alike, ~15% more CPU per request: read the CPU
# figures of a PERF=0 run.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-2}; S=${2:-4}
source benches/load/bench-setup.sh
LOAD=${LOAD:-wrk}
bench_setup wrk:wrk h2load:nghttp2-client nginx:nginx haproxy:haproxy nstat:iproute2
cargo build -q --release --bin weir
ulimit -n "$(ulimit -Hn)"  # as compare.sh: HAProxy (maxconn 12000) asks for as many as it may
source benches/load/weir-config.sh
source benches/load/peer-configs.sh
start_layout_a 18280 19921 19280
PN=$(pgrep -P "$PN" | head -1)  # nginx's worker
HZ=$(getconf CLK_TCK)
EV=(-e raw_syscalls:sys_enter)
for s in epoll_wait epoll_ctl recvfrom sendto read write readv writev getsockopt setsockopt futex io_uring_enter; do
  EV+=(-e "syscalls:sys_enter_$s")
done
perf_ok=0
[ "${PERF:-1}" != 0 ] && command -v perf >/dev/null && perf stat "${EV[@]}" -p "$PW" -o /dev/null -- sleep 0.1 2>/dev/null && perf_ok=1
cpu() { awk '{sub(/^.*\) /, ""); print $12, $13}' "/proc/$1/stat"; }
switches() { awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' "/proc/$1/status"; }
for round in $(seq "$R"); do
  for pair in weir:18281:$PW nginx:18283:$PN haproxy:18284:$PH; do
    IFS=: read -r name port pid <<<"$pair"
    taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$port/" >/dev/null
    [ $perf_ok = 1 ] && { perf stat "${EV[@]}" -p "$pid" -o "$W/perf.txt" & SP=$!; }
    nstat -n >/dev/null
    read -r u0 s0 < <(cpu "$pid"); read -r v0 n0 < <(switches "$pid")
    if [ "$LOAD" = h2load ]; then
      taskset -c 1 h2load --h1 -c 50 --rps 100 -D "$S" "http://127.0.0.1:$port/" > "$W/load.txt"
    else
      taskset -c 1 wrk -t1 -c64 -d"${S}s" "http://127.0.0.1:$port/" > "$W/load.txt"
    fi
    read -r u1 s1 < <(cpu "$pid"); read -r v1 n1 < <(switches "$pid")
    nstat > "$W/nstat.txt"
    [ $perf_ok = 1 ] && { kill -INT "$SP"; wait "$SP" || true; }
    if [ "$LOAD" = h2load ]; then
      n=$(awk '/^requests:/ {print $8}' "$W/load.txt")
      echo "== round $round: $name, $n requests in ${S} s at the fixed rate"
    else
      n=$(awk '/requests in/ {print $1}' "$W/load.txt")
      echo "== round $round: $name, $(awk '/Requests\/sec/ {print $2}' "$W/load.txt") req/s"
    fi
    awk -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$HZ" -v v=$((v1 - v0)) -v nv=$((n1 - n0)) 'BEGIN {
      printf "   CPU per request: user %.2f us, system %.2f us, total %.2f us; context switches %.3f voluntary, %.3f preempted\n",
        u * 1e6 / hz / n, s * 1e6 / hz / n, (u + s) * 1e6 / hz / n, v / n, nv / n }'
    awk -v n="$n" '$1 == "TcpOutSegs" || $1 == "TcpExtTCPPureAcks" || $1 == "TcpExtDelayedACKs" {printf "   %s per request: %.3f\n", $1, $2 / n}' "$W/nstat.txt"
    [ $perf_ok = 1 ] && awk -v n="$n" '/sys_enter/ {gsub(",", "", $1); if ($1 > 0) {sub(/^[a-z_]+:(sys_enter_)?/, "", $2); printf "   syscalls per request, %s: %.3f\n", $2, $1 / n}}' "$W/perf.txt"
  done
done
