# Sourced by the load scripts: nginx's and HAProxy's configs, tuned alike and as weir is (one
# worker, upstream keep-alive, X-Forwarded-For added, no access log), so that every script
# measures the same peers.
#   nginx_conf FILE WORKDIR PORT UPSTREAM_PORT_A UPSTREAM_PORT_B [EXTRA]
#     EXTRA: lines for the server block (more `listen`s, `ssl_certificate`).
#   haproxy_cfg FILE PORT UPSTREAM_PORT_A UPSTREAM_PORT_B [EXTRA]
#     EXTRA: lines for the frontend (more `bind`s).
nginx_conf() {
  local w=$2
  mkdir -p "$w/nginx"
  cat > "$1" <<NGINX
worker_processes 1;
daemon off;
pid $w/nginx.pid;
error_log $w/nginx-error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 19000; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $w/nginx; proxy_temp_path $w/nginx; fastcgi_temp_path $w/nginx;
  uwsgi_temp_path $w/nginx; scgi_temp_path $w/nginx;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  # keepalive 1024: idle upstream connections kept per worker. It must exceed the most requests in
  # flight (the h2 phase has 640); with 128, nginx closed every connection above it after its
  # request, ~25,000 a second, which spent the host's ephemeral ports for the systems after it.
  upstream app { server 127.0.0.1:$4; server 127.0.0.1:$5; keepalive 1024; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$3 reuseport backlog=4096;
${6:-}
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffering on;
    }
  }
}
NGINX
}

haproxy_cfg() {
  cat > "$1" <<HAPROXY
global
  nbthread 1
  maxconn 12000
  no strict-limits
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 75s
  timeout server 75s
  timeout http-keep-alive 75s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend web
  bind 127.0.0.1:$2
${5:-}
  default_backend app
backend app
  balance roundrobin
  server a 127.0.0.1:$3
  server b 127.0.0.1:$4
HAPROXY
}

# Layout A for the per-request scripts: two demo upstreams, weir, nginx and HAProxy, all on core
# 0, with ports BASE+1 (weir), BASE+3 (nginx), BASE+4 (HAProxy), weir's admin on ADMIN, the
# upstreams on UP+1 and UP+2; waits until each answers. Needs weir-config.sh and bench-setup.sh
# sourced. Sets PW, PN (nginx's master) and PH.
#   start_layout_a BASE ADMIN UP [WEIR=target/release/weir]
#   UPCORE=1: the upstreams on core 1 instead (layout B: the proxy alone on core 0)
start_layout_a() {
  local base=$1 admin=$2 up=$3 weir=${4:-target/release/weir} port upcore=${UPCORE:-0}
  weir_toml "$W/weir.toml" $((base + 1)) "$admin" "$PWD/plugins/dist" $((up + 1)) $((up + 2))
  nginx_conf "$W/nginx.conf" "$W" $((base + 3)) $((up + 1)) $((up + 2))
  haproxy_cfg "$W/haproxy.cfg" $((base + 4)) $((up + 1)) $((up + 2))
  taskset -c "$upcore" target/release/examples/demo_upstream $((up + 1)) a 100 2>/dev/null & pids+=($!)
  taskset -c "$upcore" target/release/examples/demo_upstream $((up + 2)) b 100 2>/dev/null & pids+=($!)
  WEIR_LOG=warn taskset -c 0 "$weir" run --config "$W/weir.toml" & PW=$!; pids+=($PW)
  taskset -c 0 nginx -c "$W/nginx.conf" -e "$W/nginx-error.log" & PN=$!; pids+=($PN)
  taskset -c 0 haproxy -db -f "$W/haproxy.cfg" 2>/dev/null & PH=$!; pids+=($PH)
  for port in $((base + 1)) $((base + 3)) $((base + 4)); do
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  done
}
