#!/usr/bin/env bash
# POSTs against an upstream that closes idle connections without announcing when: nginx with
# `keepalive_timeout 300ms` (no `Keep-Alive: timeout` field), behind a relay adding DELAY_MS
# each way (a network path with a round trip of twice that; loopback's is too short for the
# close to cross a request often). A client POSTs through weir every 270-330 ms, so weir's
# pooled connection has idled about as long as nginx keeps it: a POST sent as nginx closes it
# is lost, and cannot go again. Counts the status codes, for each weir binary given.
#   usage: benches/load/idle-race.sh [POSTS=150] [WEIR...]   (default: target/release/weir)
#   env: DELAY_MS=10
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-150}; shift || true
BINS=("$@"); [ ${#BINS[@]} -gt 0 ] || BINS=(target/release/weir)
source benches/load/bench-setup.sh
bench_setup nginx:nginx python3:python3
[ -x target/release/weir ] || cargo build -q --release --bin weir
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_timeout 300ms;
  server { listen 127.0.0.1:19601; location / { return 200 "ok"; } }
}
CONF
cat > "$W/relay.py" <<'PY'
# A TCP relay adding DELAY seconds each way, the end of a stream included.
import asyncio, sys, time
LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def pump(reader, writer):
    q = asyncio.Queue()
    async def recv():
        while True:
            data = await reader.read(65536)
            await q.put((time.monotonic() + DELAY, data))
            if not data:
                return
    async def send():
        while True:
            at, data = await q.get()
            await asyncio.sleep(max(0, at - time.monotonic()))
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()
    await asyncio.gather(recv(), send(), return_exceptions=True)
async def handle(cr, cw):
    try:
        ur, uw = await asyncio.open_connection("127.0.0.1", TARGET)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pump(cr, uw), pump(ur, cw), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
cat > "$W/posts.py" <<'PY'
import http.client, random, sys, time
codes = {}
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[2]), timeout=10)
for _ in range(int(sys.argv[1])):
    time.sleep(random.uniform(0.27, 0.33))
    c.request("POST", "/order", body=b"x")
    r = c.getresponse()
    r.read()
    codes[r.status] = codes.get(r.status, 0) + 1
print(" ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
PY
nginx -c "$W/nginx.conf" & pids+=($!)
python3 "$W/relay.py" 19602 19601 "$(awk -v d="${DELAY_MS:-10}" 'BEGIN {print d / 1000}')" & pids+=($!)
cat > "$W/weir.toml" <<CONF
[admin]
bind = "127.0.0.1:19603"
[[listener]]
name = "client"
bind = "127.0.0.1:19604"
pool = "app"
[[pool]]
name = "app"
[[pool.endpoint]]
address = "127.0.0.1:19602"
CONF
for bin in "${BINS[@]}"; do
  WEIR_LOG=warn "$bin" run --config "$W/weir.toml" & P=$!; pids+=($P)
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:19603/readyz && break; sleep 0.1; done
  echo "$bin: $N POSTs, status codes $(python3 "$W/posts.py" "$N" 19604)"
  kill "$P"; wait "$P" 2>/dev/null || true
done
