#!/usr/bin/env bash
# ext_proc with two messages per request (envoy/ext_proc.yaml: headers as
# attributes) against four (the same file with the headers messages sent),
# side by side on one tollgate and one mock upstream: JSON chat completions
# at 500 req/s, alternating, so both see the same machine. Prints p50/p90/p99
# per round. Usage: scripts/bench-ext-proc-modes.sh [rounds] (default 3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
rounds="${1:-3}"

cargo build --release -q -p tollgate -p tollgate-load -p tollgate-testkit
work="$(mktemp -d)"
source scripts/lib.sh
trap 'stop_started; rm -rf "$work"' EXIT

up=$(free_port); grpc=$(free_port); admin=$(free_port); lean=$(free_port); send=$(free_port)
printf '[server]\ngrpc_listen = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n[llm]\nestimator = "bytes"\n[[quota]]\nname = "q"\nmatch = { tenant = "*" }\ntokens_per_minute = 1000000000\n' \
  "$grpc" "$admin" >"$work/tollgate.toml"
target/release/tollgate serve --config "$work/tollgate.toml" 2>"$work/tollgate.log" & pids+=($!)
target/release/mock-llm --listen "127.0.0.1:$up" --no-record 2>/dev/null & pids+=($!)

# The four-message variant: headers messages sent, no metadata headers.
python3 - "$work/send.yaml" <<'PY'
import sys
out, skipping = [], False
for line in open("envoy/ext_proc.yaml"):
    t = line.lstrip()
    if t.startswith("response_headers_to_add:"):
        skipping = True
        continue
    if skipping and (t.startswith("- header:") or t.startswith("append_action:")):
        continue
    skipping = False
    out.append(line.replace("request_header_mode: SKIP", "request_header_mode: SEND")
                   .replace("response_header_mode: SKIP", "response_header_mode: SEND"))
open(sys.argv[1], "w").write("".join(out))
PY
envoy="$repo/.venv/bin/envoy"
for mode in lean send; do
  template=envoy/ext_proc.yaml; listen=$lean
  [ "$mode" = send ] && template="$work/send.yaml" && listen=$send
  scripts/render-envoy.sh "$template" ADMIN_PORT=0 LISTEN_PORT="$listen" UPSTREAM_PORT="$up" \
    TOLLGATE_PORT="$grpc" TOLLGATE_PORT_2="$grpc" >"$work/$mode-envoy.yaml"
  "$envoy" -c "$work/$mode-envoy.yaml" --concurrency 1 --use-dynamic-base-id --log-level error 2>/dev/null & pids+=($!)
done
for _ in $(seq 100); do
  curl -s -o /dev/null "127.0.0.1:$lean/" && curl -s -o /dev/null "127.0.0.1:$send/" && break
  sleep 0.1
done

body='{"model":"gpt-4o","max_tokens":20,"messages":[{"role":"user","content":"hello"}]}'
for round in $(seq "$rounds"); do
  for mode in lean send; do
    listen=$lean; [ "$mode" = send ] && listen=$send
    label="two messages "; [ "$mode" = send ] && label="four messages"
    target/release/tollgate-load http --url "http://127.0.0.1:$listen/v1/chat/completions" \
      --body "$body" -H 'content-type: application/json' --tenant-header x-tenant \
      --rate 500 --concurrency 64 --duration 8s --json |
      python3 -c "import json,sys; l=json.load(sys.stdin)['latency_ms']; print('round $round, $label: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms' % (l['p50'], l['p90'], l['p99']))"
  done
done
