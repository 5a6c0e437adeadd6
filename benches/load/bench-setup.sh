# Sourced by the small load scripts (ab.sh, per-request.sh, idle.sh, threads.sh; compare.sh
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
