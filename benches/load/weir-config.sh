# Sourced by the load scripts: the minimal weir config they benchmark (one worker thread, no
# file watching, one listener in front of two upstreams on loopback).
#   weir_toml FILE PORT ADMIN_PORT PLUGINS_DIR UPSTREAM_PORT_A UPSTREAM_PORT_B [EXTRA]
# EXTRA: TOML lines placed right after the client listener (its limits, more listeners).
# The listener writes only `X-Forwarded-For`, the one forwarding field nginx and HAProxy are set
# to add (peer-configs.sh), so that every proxy sends its upstreams the same request;
# WEIR_FORWARDING='' leaves the key out (weir's default: all five fields; binaries older than the
# key refuse it).
weir_toml() {
  local forwarding=${WEIR_FORWARDING-'["x-forwarded-for"]'}
  cat > "$1" <<TOML
[runtime]
worker_threads = 1
[admin]
bind = "127.0.0.1:$3"
[plugins]
dir = "$4"
[reload]
watch = false
[[listener]]
name = "client"
bind = "127.0.0.1:$2"
pool = "app"
${forwarding:+forwarding_headers = $forwarding}
${7:-}
[[pool]]
name = "app"
[[pool.endpoint]]
address = "127.0.0.1:$5"
[[pool.endpoint]]
address = "127.0.0.1:$6"
TOML
}
