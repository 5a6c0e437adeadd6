#!/usr/bin/env bash
# Builds weir with profile-guided optimisation into target/pgo/release/weir.
#
# 1. an instrumented release build (target/pgo-gen), 2. a training run: that weir, on one core
# beside two demo upstreams, proxies HTTP/1.1 keep-alive (saturating and at a fixed rate),
# h2c and TLS with the Wasm round-robin on every request, 3. `llvm-profdata merge`, 4. the
# release build again with the profile (target/pgo). Two release builds: ~12 minutes here.
#
# Why: on this machine the request path is spread over tokio, hyper, rustls, wasmtime and weir,
# and its code goes cold between requests; laid out by the profile, the same code ran 12-14%
# more requests a second at 13-14% less CPU per request (benches/README.md). The binary is
# the same program: only the compiler's layout and inlining choices differ.
#   usage: scripts/build-pgo.sh [TRAIN_SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-10}
# Tools, the demo upstream, the plugins, a scratch directory $W and the PID list `pids`
# (stopped on exit): as the load scripts have them.
source benches/load/bench-setup.sh
bench_setup wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl
rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
profdata=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -1)
[ -x "$profdata" ] || { echo "error: llvm-profdata not found (rustup component add llvm-tools)" >&2; exit 1; }

out=$PWD/target/pgo
raw=$out/profraw
rm -rf "$raw" && mkdir -p "$raw"
echo "pgo: instrumented build (target/pgo-gen)" >&2
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR=target/pgo-gen cargo build -q --release --bin weir

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -days 2 -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
source benches/load/weir-config.sh
weir_toml "$W/weir.toml" 18981 19961 "$PWD/plugins/dist" 19981 19982 "[[listener]]
name = \"tls\"
bind = \"127.0.0.1:18982\"
pool = \"app\"
[listener.tls]
cert = \"$W/cert.pem\"
key = \"$W/key.pem\""
taskset -c 0 target/release/examples/demo_upstream 19981 a 100 2>/dev/null & pids+=($!)
taskset -c 0 target/release/examples/demo_upstream 19982 b 100 2>/dev/null & pids+=($!)
LLVM_PROFILE_FILE="$raw/weir-%p-%m.profraw" WEIR_LOG=warn taskset -c 0 target/pgo-gen/release/weir run --config "$W/weir.toml" & weir=$!
pids+=($weir)
up=0
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18981/ && { up=1; break; }; sleep 0.1; done
[ $up = 1 ] || { echo "error: the instrumented weir did not answer" >&2; exit 1; }
echo "pgo: training, $S s of HTTP/1.1 and half that each of fixed rate, h2c and TLS" >&2
taskset -c 1 wrk -t1 -c64 -d"${S}s" http://127.0.0.1:18981/ | grep 'Requests/sec' >&2
taskset -c 1 h2load --h1 -c 50 --rps 100 -D $((S / 2)) http://127.0.0.1:18981/ | grep '^requests:' >&2
taskset -c 1 h2load -c 64 -m 10 -D $((S / 2)) http://127.0.0.1:18981/ | grep '^requests:' >&2
taskset -c 1 wrk -t1 -c64 -d"$((S / 2))s" https://127.0.0.1:18982/ | grep 'Requests/sec' >&2
# The profile is written when weir exits: a graceful stop.
kill -TERM "$weir"
wait "$weir" || { echo "error: the instrumented weir did not exit cleanly" >&2; exit 1; }
ls "$raw"/weir-*.profraw >/dev/null 2>&1 || { echo "error: the training wrote no profile" >&2; exit 1; }
"$profdata" merge -o "$out/weir.profdata" "$raw"/weir-*.profraw

echo "pgo: optimised build (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$out/weir.profdata" CARGO_TARGET_DIR=target/pgo cargo build -q --release --bin weir
echo "target/pgo/release/weir"
