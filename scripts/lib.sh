# Sourced (not run) by the scripts that start processes for a measurement
# (bench.sh, instructions.sh, bench-*.sh): a free port, a bounded wait for
# something to start, and stopping what was started when the script exits.

# A TCP port free on 127.0.0.1 right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds, for
# at most WAIT_SECONDS (default 10); then gives up, saying WHAT did not start.
wait_for() {
  local what="$1"; shift
  for _ in $(seq $((${WAIT_SECONDS:-10} * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "${0##*/}: $what did not start" >&2
  exit 1
}

# Background processes to stop on exit: start them as `cmd & pids+=($!)`,
# and call stop_started from the script's EXIT trap.
pids=()
stop_started() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# The trivial upstream of the benchmarks: nginx, one worker, 200 "ok", under
# $1 (its config, pid, logs and temp files); sets up_port.
start_trivial_nginx() {
  local dir="$1/nginx"
  up_port=$(free_port)
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server { listen 127.0.0.1:$up_port; location / { return 200 "ok\n"; } }
}
NGINX
  "$(command -v nginx || echo /usr/sbin/nginx)" -c "$dir/nginx.conf" -p "$dir" \
    >"$dir/out.log" 2>&1 &
  pids+=("$!")
  wait_for nginx bash -c "exec 3<>/dev/tcp/127.0.0.1/$up_port"
}
