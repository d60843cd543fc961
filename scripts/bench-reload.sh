#!/usr/bin/env bash
# How long a hot reload of a 10,000-rule config takes: tollgate (release)
# starts on one rule, the file is replaced by 10,000 rules (10 domains x
# 1,000 tenants, each rule with a per-minute and a per-hour limit), and
# SIGHUP reloads it; the `config reloaded` log line says how long loading,
# validating and swapping took. Then `tollgate check` on the same file, the
# whole command timed. Usage: scripts/bench-reload.sh [rules] (default 10000).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
rules="${1:-10000}"

cargo build --release -q -p tollgate
bin="$repo/target/release/tollgate"
work="$(mktemp -d)"
source scripts/lib.sh
trap 'stop_started; rm -rf "$work"' EXIT

header="[server]
grpc_listen = \"127.0.0.1:$(free_port)\"
admin_listen = \"127.0.0.1:$(free_port)\"
"
printf '%s\n[[rule]]\ndomain = "d0"\nmatch = ["tenant=t0"]\nlimit = { requests = 10, per = "minute" }\n' \
  "$header" >"$work/tollgate.toml"
python3 - "$rules" "$work/big.toml" "$header" <<'EOF'
import sys
n, path, header = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(path, "w") as f:
    f.write(header)
    for i in range(n):
        f.write(f'\n[[rule]]\ndomain = "d{i % 10}"\nmatch = ["tenant=t{i // 10}", "path"]\n'
                f'limits = [{{ requests = {100 + i}, per = "minute" }}, {{ requests = {10000 + i}, per = "hour" }}]\n')
EOF

"$bin" serve --config "$work/tollgate.toml" 2>"$work/log" &
pid=$!; pids+=("$pid")
for _ in $(seq 50); do grep -q "tollgate listening" "$work/log" && break; sleep 0.1; done
cp "$work/big.toml" "$work/tollgate.toml.new"
mv "$work/tollgate.toml.new" "$work/tollgate.toml"
kill -HUP "$pid"
for _ in $(seq 100); do grep -q "rules=$rules" "$work/log" && break; sleep 0.1; done
line="$(grep "rules=$rules" "$work/log" | head -1)"
[ -n "$line" ] || { echo "no reload seen:"; cat "$work/log"; exit 1; }
echo "hot reload of $rules rules: $(sed -E 's/.*took_ms=([0-9]+).*/\1/' <<<"$line") ms (load, validate, swap; from the log line)"

start=$(date +%s%N)
"$bin" check --config "$work/big.toml" >/dev/null
end=$(date +%s%N)
echo "tollgate check on $rules rules: $(((end - start) / 1000000)) ms (whole process)"
