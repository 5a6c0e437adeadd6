# Sourced by the small load scripts (ab.sh, h2-upstream.sh, per-request.sh, idle.sh, threads.sh; compare.sh
# keeps its own, with per-system accounting): installs the tools they name, builds the demo
# upstream and the plugins, and gives them a scratch directory $W and a PID list `pids`, whose
# processes are all stopped (and $W removed) when the script exits.
#   bench_setup [COMMAND:DEBIAN_PACKAGE ...]
bench_setup() {
  local need=() tool
  for tool in "$@"; do command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}"); done
  [ ${#need[@]} -eq 0 ] || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
  cargo build -q --release --example demo_upstream
  bash scripts/build-plugins.sh >/dev/null 2>&1
  W=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT INT TERM
}
bench_cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }

# The CPU time (user + system, in clock ticks) of process $1 so far, and its user part.
jiffies() { awk '{sub(/^.*\) /, ""); print $12 + $13, $12}' "/proc/$1/stat"; }

# One round of load on core 1 against 127.0.0.1:PORT for SECONDS: wrk -c64 (HTTP/1.1) or, with
# LOAD=h2c, h2load -c64 -m10 (AB_POST=1: wrk's requests are POSTs with a 512-byte body). Prints "req/s CPU-µs-per-request non-2xx user-CPU-µs-per-request",
# the CPU being that of process PID during the round. The user part is what a change to weir's
# own code moves; the kernel's part is most of the total and moves with the machine's noise.
#   load_round h1|h2c PORT PID SECONDS   (the load tool on core $LOAD_CPU, default 1; empty: unpinned)
LOAD_CPU=${LOAD_CPU-1}
load_round() {
  local load=$1 port=$2 pid=$3 secs=$4 out c0 c1 u0 u1 n rps bad
  read -r c0 u0 < <(jiffies "$pid")
  if [ "$load" = h2c ]; then
    out=$(timeout $((secs + 30)) ${LOAD_CPU:+taskset -c "$LOAD_CPU"} h2load -c64 -m10 -D "$secs" "http://127.0.0.1:$port/")
    read -r c1 u1 < <(jiffies "$pid")
    n=$(echo "$out" | awk '/^requests:/ {print $8}'); rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    bad=$(echo "$out" | awk '/^status codes:/ {print $5 + $7 + $9}')
  else
    local post=()
    if [ "${AB_POST:-0}" = 1 ]; then
      printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 512)\n' > "$W/post.lua"
      post=(-s "$W/post.lua")
    fi
    out=$(${LOAD_CPU:+taskset -c "$LOAD_CPU"} wrk -t1 -c64 -d"${secs}s" "${post[@]}" "http://127.0.0.1:$port/")
    read -r c1 u1 < <(jiffies "$pid")
    n=$(echo "$out" | awk '/requests in/ {print $1}'); rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  fi
  echo "$rps $(awk -v d=$((c1 - c0)) -v u=$((u1 - u0)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v bad="${bad:-0}" \
    'BEGIN {printf "%.2f %s %.2f", d * 1e6 / hz / n, bad, u * 1e6 / hz / n}')"
}
