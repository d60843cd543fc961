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
