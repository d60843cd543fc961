#!/usr/bin/env bash
# tollgate idle, before and after one edit of its config: CPU ticks
# (utime + stime, 1/100 s) per 5 s, RSS and log lines, on a config of N
# rules (default 10,000) and the memory store. Idle after an edit must look
# like idle before it: no re-reading, no log lines.
# Usage: scripts/idle-after-edit.sh [rules] [tollgate binary]
# (default: a release build of this checkout).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
rules="${1:-10000}"
bin="${2:-}"
if [ -z "$bin" ]; then
  cargo build --release -q -p tollgate
  bin="$repo/target/release/tollgate"
fi
work="$(mktemp -d)"
source scripts/lib.sh
trap 'stop_started; rm -rf "$work"' EXIT

python3 - "$rules" "$work/tollgate.toml" "$(free_port)" "$(free_port)" <<'PY'
import sys
n, path, grpc, admin = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with open(path, "w") as f:
    f.write(f'[server]\ngrpc_listen = "127.0.0.1:{grpc}"\nadmin_listen = "127.0.0.1:{admin}"\n')
    for i in range(n):
        f.write(f'\n[[rule]]\ndomain = "d{i % 10}"\nmatch = ["tenant=t{i // 10}", "path"]\n'
                f'limits = [{{ requests = {100 + i}, per = "minute" }}, {{ requests = {10000 + i}, per = "hour" }}]\n')
PY
"$bin" serve --config "$work/tollgate.toml" 2>"$work/log" &
pid=$!; pids+=("$pid")
WAIT_SECONDS=60 wait_for tollgate grep -q "tollgate listening" "$work/log"
sleep 2

ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
window() {
  local label="$1" t0 l0
  t0=$(ticks); l0=$(wc -l <"$work/log")
  sleep 5
  echo "$label: $(( $(ticks) - t0 )) ticks in 5 s, RSS $(( $(rss_kb) / 1024 )) MB, $(( $(wc -l <"$work/log") - l0 )) log lines"
}
window "idle before the edit"
echo "# a comment" >>"$work/tollgate.toml"
sleep 1
window "idle after the edit (1)"
window "idle after the edit (2)"
window "idle after the edit (3)"
echo 'limit = { requests = 1, per = "fortnight" }' >>"$work/tollgate.toml"
sleep 1
window "invalid config in place (1)"
window "invalid config in place (2)"
echo "config refused lines in all: $(grep -c 'config refused' "$work/log" || true)"
