#!/usr/bin/env bash
# Side-by-side load benchmark of weir against nginx and HAProxy, in one run on this machine.
#
#   usage: benches/load/compare.sh [ROUNDS=3] [SECONDS=5]
#   env:   LAYOUTS="A B"  PHASES="throughput fixed h2 tls"  MEMORY=1  OUT=benches/load/RESULTS.md
#          PGO=1: weir and weir-native run the profile-guided build of scripts/build-pgo.sh
#          instead of the plain release build (built first, unless target/pgo/release/weir is
#          newer than every source)
#
# Systems: direct (wrk to one upstream), weir (default Wasm round-robin), weir-native (native
# round-robin), nginx, HAProxy; each tuned fairly: one worker on the proxy's core, upstream
# keep-alive, access logs off, X-Forwarded-For added by all three proxies.
# Layouts: A = proxy and both upstreams on core 0, load generator on core 1;
#          B = proxy alone on core 0, upstreams and load generator on core 1.
# Phases:  throughput (wrk -c64, saturating), fixed (h2load --h1 at 5,000 req/s: p50/p99),
#          h2 (h2load -c64 -m10, h2c downstream), tls (wrk -c64 over TLS, keep-alive).
# Rounds are interleaved (A B C A B C ...) and medians reported. A round is re-run (twice at
# most) when CPU time outside the processes under test exceeds DISTURB% of one core.
# Memory: RSS idle and with 10,000 idle keep-alive client connections, per connection.
# Every process started is recorded and stopped by PID; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECS=${2:-5}
LAYOUTS=${LAYOUTS:-"A B"}
PHASES=${PHASES:-"throughput fixed h2 tls"}
MEMORY=${MEMORY:-1}
OUT=${OUT:-benches/load/RESULTS.md}
DISTURB=${DISTURB:-15}
CONNS=64
IDLE=10000
COMMAND="benches/load/compare.sh $ROUNDS $SECS (LAYOUTS=\"$LAYOUTS\" PHASES=\"$PHASES\" MEMORY=$MEMORY PGO=${PGO:-0})"
# The commit measured: read before the build, as edits made while the rounds run are not in it.
COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!benches/load/RESULTS.md' || echo '+changes')"
SYSTEMS="direct weir weir-native nginx haproxy"

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "building weir (release) and the plugins" >&2
bash scripts/build-plugins.sh >/dev/null 2>&1
cargo build -q --release --example demo_upstream --example idle_conns
WEIR_BIN=target/release/weir
if [ "${PGO:-0}" = 1 ]; then
  WEIR_BIN=target/pgo/release/weir
  # The profile-guided build (~12 minutes) is redone only when a source is newer than it.
  if [ ! -x "$WEIR_BIN" ] || [ -n "$(find crates src vendor Cargo.toml Cargo.lock -newer "$WEIR_BIN" -type f -print -quit)" ]; then
    bash scripts/build-pgo.sh >/dev/null
  else
    echo "reusing $WEIR_BIN: no source is newer" >&2
  fi
else
  cargo build -q --release --bin weir
fi
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
results=$work/results.txt
: > "$results"
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  pids=()
}
# KEEP_WORK=1 keeps the work directory (configs, logs of every process) for a look afterwards.
cleanup() { stop_all; if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work directory kept: $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT INT TERM

# --- process accounting ------------------------------------------------------------------------
declare -A PID            # system -> main pid
tree() { echo "$1"; pgrep -P "$1" || true; }
jiffies() { # utime+stime of the given pids and their children processes
  local total=0 p
  for p in $(for q in "$@"; do tree "$q"; done); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo "$total"
}
rss_kib() { local total=0 p; for p in $(tree "$1"); do total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$total"; }
hwm_kib() { local total=0 p; for p in $(tree "$1"); do total=$((total + $(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo "$total"; }
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# Connections the kernel dropped because a listening socket's accept queue was full (host-wide,
# TcpExtListenOverflows): a round with some measured the upstreams' accept speed as well.
listen_overflows() { awk '/^TcpExt:/ {if (!n) {for (i = 1; i <= NF; i++) if ($i == "ListenOverflows") n = i} else print $n}' /proc/net/netstat; }
HZ=$(getconf CLK_TCK)

spawn() { # core, command...: start pinned in the background, record the PID
  local core=$1; shift
  taskset -c "$core" "$@" >>"$work/stdout.log" 2>>"$work/stderr.log" &
  pids+=($!)
  LAST=$!
}
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not answering: $1" >&2; return 1; }

# --- configs ------------------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -days 2 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
mkdir -p "$work/no-plugins"

source benches/load/weir-config.sh
weir_config() { # name http-port tls-port admin-port plugins-dir
  weir_toml "$work/$1.toml" "$2" "$4" "$5" 19081 19082 "[listener.limits]
max_connections = 50000
[[listener]]
name = \"tls\"
bind = \"127.0.0.1:$3\"
pool = \"app\"
[listener.tls]
cert = \"$work/cert.pem\"
key = \"$work/key.pem\""
}
weir_config weir 18081 18441 19901 "$PWD/plugins/dist"
weir_config weir-native 18082 18442 19902 "$work/no-plugins"

source benches/load/peer-configs.sh
nginx_conf "$work/nginx.conf" "$work" 18083 19081 19082 "    listen 127.0.0.1:18093 http2;
    listen 127.0.0.1:18443 ssl http2;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;"
haproxy_cfg "$work/haproxy.cfg" 18084 19081 19082 "  bind 127.0.0.1:18094 proto h2
  bind 127.0.0.1:18444 ssl crt $work/haproxy.pem alpn h2,http/1.1"

declare -A H1=([direct]=19081 [weir]=18081 [weir-native]=18082 [nginx]=18083 [haproxy]=18084)
declare -A H2=([weir]=18081 [weir-native]=18082 [nginx]=18093 [haproxy]=18094)
declare -A TLS=([weir]=18441 [weir-native]=18442 [nginx]=18443 [haproxy]=18444)

start_all() { # proxy-core upstream-core
  spawn "$2" target/release/examples/demo_upstream 19081 a 100; PID[direct]=$LAST
  spawn "$2" target/release/examples/demo_upstream 19082 b 100; PID[upstream-b]=$LAST
  WEIR_LOG=warn spawn "$1" "$WEIR_BIN" run --config "$work/weir.toml"; PID[weir]=$LAST
  WEIR_LOG=warn spawn "$1" "$WEIR_BIN" run --config "$work/weir-native.toml"; PID[weir-native]=$LAST
  spawn "$1" nginx -c "$work/nginx.conf" -e "$work/nginx-error.log"; PID[nginx]=$LAST
  spawn "$1" haproxy -db -f "$work/haproxy.cfg"; PID[haproxy]=$LAST
  for s in $SYSTEMS; do wait_http "http://127.0.0.1:${H1[$s]}/"; done
  curl -sf http://127.0.0.1:19901/api/v1/status | grep -q '"sha256"' || { echo "weir is not using the Wasm plugin" >&2; exit 1; }
  curl -sf http://127.0.0.1:19902/api/v1/status | grep -q '"native":true' || { echo "weir-native is not native" >&2; exit 1; }
}
known_pids() { echo "${PID[direct]} ${PID[upstream-b]} ${PID[weir]} ${PID[weir-native]} ${PID[nginx]} ${PID[haproxy]}"; }

# --- one measurement -----------------------------------------------------------------------------
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }
percentiles() { # file of microseconds (column 3) -> "p50_ms p99_ms"
  awk -F'\t' '$2 >= 200 && $2 < 400 {print $3}' "$1" | sort -n | awk '{a[NR]=$1} END {if (NR == 0) {print "- -"; exit} i50=int(NR*0.50); i99=int(NR*0.99); if (i50<1) i50=1; if (i99<1) i99=1; printf "%.3f %.3f\n", a[i50]/1000, a[i99]/1000}'
}
# Runs the phase's tool against one system; prints "requests errors p50_ms p99_ms".
drive() { # phase system core
  local phase=$1 sys=$2 core=$3 out=$work/tool.out log=$work/h2load.log
  rm -f "$log"
  case $phase in
    throughput|tls)
      local url="http://127.0.0.1:${H1[$sys]}/"
      [ "$phase" = tls ] && url="https://127.0.0.1:${TLS[$sys]}/"
      timeout $((SECS + 30)) taskset -c "$core" wrk -t1 -c$CONNS -d"${SECS}s" --latency "$url" > "$out" 2>&1 || true
      local n err p50 p99
      n=$(awk '/requests in/ {print $1}' "$out"); n=${n:-0}
      err=$(awk '/Non-2xx/ {e+=$NF} /Socket errors/ {gsub(/,/,""); e+=$4+$6+$8+$10} END {print e+0}' "$out")
      p50=$(awk '$1 == "50%" {print $2}' "$out" | to_ms); p99=$(awk '$1 == "99%" {print $2}' "$out" | to_ms)
      echo "$n $err ${p50:--} ${p99:--}" ;;
    fixed|h2)
      local url="http://127.0.0.1:${H1[$sys]}/" args=(--h1 -c 50 --rps 100)
      [ "$phase" = h2 ] && { url="http://127.0.0.1:${H2[$sys]}/"; args=(-c $CONNS -m 10); }
      timeout $((SECS + 30)) taskset -c "$core" h2load "${args[@]}" -D "$SECS" --log-file="$log" "$url" > "$out" 2>&1 || true
      local ok failed
      ok=$(awk '/^requests:/ {print $8}' "$out"); failed=$(awk '/^requests:/ {print $10 + $12}' "$out")
      echo "${ok:-0} ${failed:-0} $(percentiles "$log")" ;;
  esac
}
measure() { # layout phase system round gen-core
  local layout=$1 phase=$2 sys=$3 round=$4 core=$5 attempt
  for attempt in 1 2 3; do
    local known proxy_pid=${PID[$sys]} c0 k0 b0 t0 o0 c1 k1 b1 t1 o1 res rss_file=$work/rss.sample
    known=$(known_pids)
    echo 0 > "$rss_file"
    ( sleep "$(awk -v s="$SECS" 'BEGIN {print s / 2}')"; rss_kib "$proxy_pid" > "$rss_file" ) &
    local sampler=$!
    c0=$(jiffies "$proxy_pid"); k0=$(jiffies $known); b0=$(busy); t0=$(date +%s.%N); o0=$(listen_overflows)
    local times=$work/times
    { TIMEFORMAT='%U %S'; time drive "$phase" "$sys" "$core" > "$work/drive.out"; } 2> "$times"
    c1=$(jiffies "$proxy_pid"); k1=$(jiffies $known); b1=$(busy); t1=$(date +%s.%N); o1=$(listen_overflows)
    wait "$sampler" 2>/dev/null || true
    res=$(cat "$work/drive.out")
    local client foreign
    client=$(awk -v hz="$HZ" '{print int(($1 + $2) * hz)}' "$times")
    foreign=$(awk -v b=$((b1 - b0)) -v k=$((k1 - k0)) -v c="$client" -v t0="$t0" -v t1="$t1" -v hz="$HZ" \
      'BEGIN {f = b - k - c; if (f < 0) f = 0; printf "%.1f", 100 * f / ((t1 - t0) * hz)}')
    if awk -v f="$foreign" -v d="$DISTURB" 'BEGIN {exit !(f > d)}' && [ "$attempt" -lt 3 ]; then
      echo "  $layout $phase $sys round $round: ${foreign}% of a core outside the processes under test; re-running" >&2
      continue
    fi
    local n err p50 p99 secs rps cpu
    read -r n err p50 p99 <<< "$res"
    # Errors are kept with what the tool said of them (status codes, socket errors).
    if [ "${err:-0}" != 0 ]; then
      { echo "== $layout $phase $sys round $round: $err errors; $((o1 - o0)) connections dropped by full accept queues"; grep -E '^(requests|status codes):|Non-2xx|Socket errors' "$work/tool.out"; tail -n 5 "$work/stderr.log"; } | tee -a "$work/errors.log" >&2
    fi
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
    rps=$(awk -v n="$n" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
    cpu=$(awk -v d=$((c1 - c0)) -v n="$n" -v hz="$HZ" 'BEGIN {if (n > 0) printf "%.2f", d * 1e6 / hz / n; else print "-"}')
    [ "$sys" = direct ] && cpu=-
    echo "$layout $phase $sys $round $rps $p50 $p99 $cpu $(cat "$rss_file") $err $foreign $((o1 - o0))" >> "$results"
    echo "  $layout $phase $sys round $round: $rps req/s p50 $p50 ms p99 $p99 ms cpu $cpu us/req errors $err foreign ${foreign}% accept-queue drops $((o1 - o0))" >&2
    return 0
  done
}

# --- the run ------------------------------------------------------------------------------------
declare -A HWM
for layout in $LAYOUTS; do
  case $layout in
    A) pcore=0; ucore=0; gcore=1 ;;
    B) pcore=0; ucore=1; gcore=1 ;;
    *) echo "unknown layout $layout" >&2; exit 2 ;;
  esac
  echo "layout $layout: proxy on core $pcore, upstreams on $ucore, load generator on $gcore" >&2
  start_all "$pcore" "$ucore"
  for sys in $SYSTEMS; do taskset -c "$gcore" wrk -t1 -c$CONNS -d2s "http://127.0.0.1:${H1[$sys]}/" >/dev/null; done
  for phase in $PHASES; do
    for round in $(seq "$ROUNDS"); do
      for sys in $SYSTEMS; do
        case $phase in h2|tls) [ "$sys" = direct ] && continue ;; esac
        measure "$layout" "$phase" "$sys" "$round" "$gcore"
      done
    done
  done
  for sys in weir weir-native nginx haproxy; do HWM[$layout,$sys]=$(hwm_kib "${PID[$sys]}"); done
  fallbacks=$(curl -sf http://127.0.0.1:19901/metrics | awk '/^weir_plugin_calls_total/ && /result="(timeout|trap|oom|invalid)"/ {s += $NF} END {print s + 0}')
  echo "$layout fallbacks $fallbacks" >> "$work/notes.txt"
  stop_all
done

if [ "$MEMORY" = 1 ]; then
  echo "memory: $IDLE idle keep-alive connections per proxy" >&2
  start_all 0 0
  for sys in weir weir-native nginx haproxy; do
    taskset -c 1 wrk -t1 -c8 -d1s "http://127.0.0.1:${H1[$sys]}/" >/dev/null
    idle=$(rss_kib "${PID[$sys]}")
    fifo=$work/idle.fifo; rm -f "$fifo"; mkfifo "$fifo"
    taskset -c 1 target/release/examples/idle_conns "127.0.0.1:${H1[$sys]}" "$IDLE" < "$fifo" > "$work/idle.out" &
    holder=$!; pids+=($holder)
    exec 9> "$fifo"
    for _ in $(seq 600); do grep -q ready "$work/idle.out" 2>/dev/null && break; sleep 0.1; done
    held=$(awk '/ready/ {print $2}' "$work/idle.out"); held=${held:-0}
    # Idle means idle for a while: weir parks a connection after 1 s without a request and hands
    # the freed memory back within another second (crates/weir-core/src/parking.rs). The
    # peers' figures do not move with the wait.
    sleep 3
    loaded=$(rss_kib "${PID[$sys]}")
    exec 9>&-
    wait "$holder" 2>/dev/null || true
    echo "$sys $idle $loaded $held" >> "$work/memory.txt"
    echo "  $sys: idle $idle KiB, with $held idle connections $loaded KiB" >&2
  done
  stop_all
fi

# --- report -------------------------------------------------------------------------------------
{
  echo "# Load benchmark: weir vs nginx vs HAProxy"
  echo
  echo "Generated by \`$COMMAND\` on $(date -u +%Y-%m-%dT%H:%MZ), weir commit $COMMIT, $([ "$WEIR_BIN" = target/release/weir ] && echo "the plain release build" || echo "the profile-guided build of \`scripts/build-pgo.sh\` (weir and weir-native)")."
  echo
  echo "Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)."
  echo "Tools: $(nginx -v 2>&1 | sed 's/nginx version: //'), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), $(wrk -v 2>&1 | awk 'NR==1 {print $1, $2}'), h2load $(h2load --version | awk '{print $NF}'); upstreams: two \`examples/demo_upstream\` (hyper, ~100-byte 200)."
  echo
  echo "Medians of $ROUNDS interleaved rounds of ${SECS} s. CPU is the proxy process's user+system time per request (from /proc, all its processes);"
  echo "RSS is the proxy's resident memory sampled mid-round. Ratios: req/s as system ÷ peer (higher is better); p99, CPU and RSS as system ÷ peer (lower is better)."
  echo "weir runs one worker thread (\`runtime.worker_threads = 1\`), nginx one worker process, HAProxy one thread; all keep upstream connections alive and add X-Forwarded-For; no access logs."
  echo "Layout A: proxy and upstreams share core 0, the load generator has core 1. Layout B: the proxy alone on core 0, upstreams and load generator on core 1."
  echo
  awk -v rounds="$ROUNDS" '
    function median(key,   n, i, j, t, v) {
      n = split(vals[key], v, " "); if (n == 0 || v[1] == "-") return "-"
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
      return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function ratio(a, b) { return (a == "-" || b == "-" || b + 0 == 0) ? "-" : sprintf("%.2f", a / b) }
    {
      k = $1 SUBSEP $2 SUBSEP $3
      if (!(($1 SUBSEP $2) in seen)) { seen[$1 SUBSEP $2] = 1; order[++no] = $1 SUBSEP $2 }
      if (!(k in has)) { has[k] = 1; syslist[$1 SUBSEP $2] = syslist[$1 SUBSEP $2] " " $3 }
      vals[k "rps"] = vals[k "rps"] " " $5; vals[k "p50"] = vals[k "p50"] " " $6; vals[k "p99"] = vals[k "p99"] " " $7
      vals[k "cpu"] = vals[k "cpu"] " " $8; vals[k "rss"] = vals[k "rss"] " " $9; err[k] += $10
      if ($11 > disturbed[k]) disturbed[k] = $11
      drops[k] += $12
    }
    END {
      names["A" SUBSEP "throughput"] = "Layout A, throughput (wrk -t1 -c64, keep-alive, HTTP/1.1)"
      names["A" SUBSEP "fixed"] = "Layout A, fixed rate (h2load --h1 -c50 at 5,000 req/s)"
      names["A" SUBSEP "h2"] = "Layout A, HTTP/2 downstream (h2load -c64 -m10, h2c)"
      names["A" SUBSEP "tls"] = "Layout A, TLS (wrk -t1 -c64 over TLS 1.3, keep-alive)"
      names["B" SUBSEP "throughput"] = "Layout B, throughput (wrk -t1 -c64, keep-alive, HTTP/1.1)"
      names["B" SUBSEP "fixed"] = "Layout B, fixed rate (h2load --h1 -c50 at 5,000 req/s)"
      names["B" SUBSEP "h2"] = "Layout B, HTTP/2 downstream (h2load -c64 -m10, h2c)"
      names["B" SUBSEP "tls"] = "Layout B, TLS (wrk -t1 -c64 over TLS 1.3, keep-alive)"
      for (o = 1; o <= no; o++) {
        lp = order[o]
        print "## " names[lp]; print ""
        print "| system | req/s | ×HAProxy | ×nginx | p50 ms | p99 ms | p99 ×HAProxy | p99 ×nginx | CPU µs/req | CPU ×HAProxy | CPU ×nginx | RSS MiB | RSS ×HAProxy | errors | accept-queue drops | max foreign CPU % |"
        print "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        h = lp SUBSEP "haproxy"; g = lp SUBSEP "nginx"
        hr = median(h "rps"); gr = median(g "rps"); hp = median(h "p99"); gp = median(g "p99")
        hc = median(h "cpu"); gc = median(g "cpu"); hm = median(h "rss")
        n = split(syslist[lp], ss, " ")
        for (i = 1; i <= n; i++) {
          k = lp SUBSEP ss[i]
          r = median(k "rps"); p99 = median(k "p99"); c = median(k "cpu"); m = median(k "rss")
          mib = (m == "-" || ss[i] == "direct") ? "-" : sprintf("%.1f", m / 1024)
          printf "| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %d | %s |\n", ss[i], r, ratio(r, hr), ratio(r, gr), median(k "p50"), p99, ratio(p99, hp), ratio(p99, gp), c, ratio(c, hc), ratio(c, gc), mib, (mib == "-") ? "-" : ratio(m, hm), err[k], drops[k], disturbed[k]
        }
        print ""
        wr = median(lp SUBSEP "weir" "rps"); nr = median(lp SUBSEP "weir-native" "rps")
        printf "Wasm balancer ÷ native balancer, req/s: %s\n\n", ratio(wr, nr)
      }
    }' "$results"
  if [ -s "$work/memory.txt" ]; then
    echo "## Memory: $IDLE idle keep-alive client connections"
    echo
    echo "| system | RSS idle MiB | RSS with connections MiB | connections held | bytes per connection | ×nginx | ×HAProxy |"
    echo "|---|---|---|---|---|---|---|"
    awk '{idle[$1]=$2; load[$1]=$3; held[$1]=$4; order[NR]=$1}
      END {
        for (i = 1; i <= NR; i++) { s = order[i]; per[s] = (held[s] > 0) ? (load[s] - idle[s]) * 1024 / held[s] : 0 }
        for (i = 1; i <= NR; i++) { s = order[i]
          printf "| %s | %.1f | %.1f | %d | %.0f | %s | %s |\n", s, idle[s] / 1024, load[s] / 1024, held[s], per[s],
            (per["nginx"] > 0) ? sprintf("%.2f", per[s] / per["nginx"]) : "-", (per["haproxy"] > 0) ? sprintf("%.2f", per[s] / per["haproxy"]) : "-" }
      }' "$work/memory.txt"
    echo
  fi
  echo "## Peak RSS (VmHWM) over each layout's phases, MiB"
  echo
  echo "| layout | weir | weir-native | nginx | HAProxy |"
  echo "|---|---|---|---|---|"
  for layout in $LAYOUTS; do
    printf "| %s | %.1f | %.1f | %.1f | %.1f |\n" "$layout" "$(awk -v k="${HWM[$layout,weir]}" 'BEGIN {print k/1024}')" \
      "$(awk -v k="${HWM[$layout,weir-native]}" 'BEGIN {print k/1024}')" "$(awk -v k="${HWM[$layout,nginx]}" 'BEGIN {print k/1024}')" \
      "$(awk -v k="${HWM[$layout,haproxy]}" 'BEGIN {print k/1024}')"
  done
  echo
  echo "Wasm plugin calls that fell back to the native policy (timeout, trap, oom, invalid), per layout: $(tr '\n' ';' < "$work/notes.txt" 2>/dev/null)"
  echo
  echo "Raw rounds (layout phase system round req/s p50 p99 cpu-us/req rss-KiB errors foreign-cpu-% accept-queue-drops):"
  echo
  echo '```'
  cat "$results"
  echo '```'
} > "$OUT"
echo "wrote $OUT" >&2
