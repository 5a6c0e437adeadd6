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
