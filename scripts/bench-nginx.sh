#!/usr/bin/env bash
# What nginx's auth_request sub-request to tollgate costs: wrk through nginx
# to a trivial upstream, once without the check and once with
# nginx/tollgate.conf's auth_request to tollgate's /check (memory store,
# limit high enough that every request is allowed). Prints both and the
# difference. Usage: scripts/bench-nginx.sh [seconds] (default 10).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
secs="${1:-10}"

cargo build --release -q -p tollgate
bin="$repo/target/release/tollgate"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
work="$(mktemp -d)"
source scripts/lib.sh
trap 'stop_started; rm -rf "$work"' EXIT

grpc=$(free_port); admin=$(free_port); upstream=$(free_port); with=$(free_port); without=$(free_port)

cat >"$work/tollgate.toml" <<EOF
[server]
grpc_listen = "127.0.0.1:$grpc"
admin_listen = "127.0.0.1:$admin"
[[rule]]
domain = "edge"
match = ["tenant"]
limit = { requests = 1000000000, per = "minute" }
EOF
"$bin" serve --config "$work/tollgate.toml" 2>"$work/tollgate.log" &
pids+=($!)

# The example config, filled in, plus a trivial upstream and a server
# that proxies to it without asking tollgate.
body="$(sed -e "s/{{UPSTREAM_PORT}}/$upstream/" -e "s/{{TOLLGATE_ADMIN}}/127.0.0.1:$admin/" \
  -e "s/{{LISTEN_PORT}}/$with/" nginx/tollgate.conf)"
cat >"$work/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  server { listen 127.0.0.1:$upstream; location / { return 200 "ok\n"; } }
  server {
    listen 127.0.0.1:$without;
    location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://app; }
  }
$body
}
EOF
"$nginx_bin" -p "$work" -c "$work/nginx.conf" -e "$work/error.log" &
pids+=($!)

for _ in $(seq 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$admin/healthz" \
    && curl -fs -o /dev/null "http://127.0.0.1:$without/" && break
  sleep 0.1
done
curl -fs -o /dev/null -H 'x-tenant: t' "http://127.0.0.1:$with/" \
  || { echo "nginx → tollgate check failed"; cat "$work/error.log"; exit 1; }

run() { # connections port
  wrk -t1 -c"$1" -d"${secs}s" --latency -H 'x-tenant: bench' "http://127.0.0.1:$2/" |
    awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%s req/s, p50 %s, p99 %s\n", rps, p50, p99}'
}
echo "nginx $("$nginx_bin" -v 2>&1 | sed 's#.*/##'), $(nproc) cores, ${secs}s each"
echo "ports: upstream $upstream, tollgate admin $admin, nginx with $with, without $without" >&2
for c in 1 32; do
  echo "wrk -c$c without auth_request: $(run "$c" "$without")"
  echo "wrk -c$c with auth_request:    $(run "$c" "$with")"
done
