#!/usr/bin/env bash
# The soak (docs/soak.md): N minutes at a fixed rate through one real
# Envoy into tollgate on Redis, with Redis restarted every 5 minutes, then
# checks on what is left behind. Not a CI test: a script with a report.
#
#   scripts/soak.sh [--minutes N] [--restart-every SECONDS] [--report FILE] [--no-build]
#   (defaults: 30 minutes, Redis restarted every 300 s, target/soak/report.md)
#
# Starts on 127.0.0.1 with free ports: redis-server (an RDB file in its own
# directory; each restart is `SHUTDOWN SAVE` and a new redis-server on the
# same port and directory, so counters and reservation records survive as
# they would a planned restart), the mock LLM upstream (mock-llm, JSON and
# SSE), tollgate on the Redis store (logs to a file), and Envoy
# (envoy/bench.yaml: the `ratelimit` listener with the rate limit filter,
# domain `edge`, failure_mode_deny; the `llm_ext_proc` listener with
# ext_proc, BUFFERED request body, STREAMED response). Then, at fixed rates
# (tollgate-load http, nice -n 5):
#   * rate limit: 100 req/s over 10 tenants, 8 requests/s each allowed;
#   * ext_proc JSON: 10 req/s, tenant soak-json;
#   * ext_proc SSE: 13 req/s over 13 connections, tenant soak-sse;
#   * ext_proc SSE, aborting: 2 connections (10% of the 20 LLM clients)
#     that hang up after the first streamed bytes, 2 req/s, each stream
#     its own tenant soak-abort-N (N = connection × 7919 + the stream's
#     number on it), so a stream charged otherwise is found, and when.
# Every 30 s it samples tollgate's RSS and CPU (/proc), its log lines since
# the last sample, Redis restarts so far and Envoy's answers by class.
# At the end (load stopped, 5 s to settle) it checks, and exits non-zero if
# one fails:
#   * leaked slots: /quotas lists no concurrency slot held and no
#     reservation in flight, and Redis holds no reservation record;
#   * budgets exact: each tenant's token counter in Redis (via /quotas)
#     equals what its requests were charged: 30 tokens (the mock's 10 + 20)
#     per JSON or SSE answer read to the end, and per aborted stream what
#     a single aborted stream charged in a calibration before the load
#     (on_abort = charge_streamed: the prompt estimate + the streamed
#     bytes / 4; the mock's 300 ms between events makes that one event;
#     the aborting tenants' counters are read from Redis, and the report
#     lists each aborted stream charged otherwise);
#     a request whose reservation is still unsettled at the end (a slot
#     still held) counts at what it still reserves, its estimate;
#   * the store agrees with tollgate: the counters' sum equals tollgate's
#     reserved − refunded + overage (tollgate_quota_tokens_total);
#   * log lines per minute: at most 10 a minute on average (a few lines
#     per Redis restart, none per request).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

minutes=30 report="" restart_every=300 build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift ;;
    --restart-every) restart_every="$2"; shift ;;
    --report) report="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
sample_every=30
max_log_per_minute=10

command -v redis-server >/dev/null || { echo "soak: needs redis-server" >&2; exit 1; }
command -v curl >/dev/null || { echo "soak: needs curl" >&2; exit 1; }
envoy_bin="$repo/.venv/bin/envoy"
[ -x "$envoy_bin" ] || { echo "soak: needs Envoy at $envoy_bin (scripts/install-test-deps.sh)" >&2; exit 1; }
[ "$build" = 0 ] || cargo build --release --quiet -p tollgate -p tollgate-load -p tollgate-testkit --bins
bin="$repo/target/release"
load="$bin/tollgate-load"
work="$repo/target/soak/$(date +%Y%m%d-%H%M%S)"
report="${report:-$repo/target/soak/report.md}"
mkdir -p "$work" "$(dirname "$report")"
echo "soak: $minutes min; work files in $work"

source scripts/lib.sh
load_pids=()
cleanup() {
  local p
  for p in "${load_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_started
}
trap cleanup EXIT

# --- Redis, restartable on the same port and directory --------------------
redis_port=$(free_port)
redis_dir="$work/redis"
mkdir -p "$redis_dir"
start_redis() {
  # `--save ''`: no background snapshots; SHUTDOWN SAVE writes the file.
  redis-server --port "$redis_port" --dir "$redis_dir" --dbfilename dump.rdb \
    --save '' --appendonly no >>"$redis_dir/redis.log" 2>&1 &
  redis_pid=$!; pids+=("$redis_pid")
  wait_for redis-server redis-cli -p "$redis_port" ping
}
rcli() { redis-cli -p "$redis_port" "$@"; }
start_redis
restarts=0
restart_log="$work/restarts.txt"
: >"$restart_log"
restart_redis() {
  local t0 t1
  t0=$(date +%s.%N)
  rcli shutdown save >/dev/null 2>&1 || true
  wait "$redis_pid" 2>/dev/null || true
  start_redis
  t1=$(date +%s.%N)
  restarts=$((restarts + 1))
  awk -v a="$t0" -v b="$t1" -v n="$restarts" -v at="$(date -u +%H:%M:%S)" \
    'BEGIN { printf "%d %s %.0f\n", n, at, (b - a) * 1000 }' >>"$restart_log"
}

# --- the mock LLM, tollgate, Envoy -----------------------------------------
llm_port=$(free_port)
"$bin/mock-llm" --listen "127.0.0.1:$llm_port" --no-record >"$work/mock-llm.log" 2>&1 &
pids+=("$!")
wait_for mock-llm bash -c "exec 3<>/dev/tcp/127.0.0.1/$llm_port"

cat >"$work/tollgate.toml" <<EOF
# scripts/soak.sh: token budgets far above what the soak sends (only the
# rate limit rule denies), so every count is checkable.
[server]
grpc_listen  = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
kind = "redis"
url = "redis://127.0.0.1:$redis_port"
timeout = "2s"

[llm]
tenant_header = "x-tenant"
estimator     = "bytes"
on_abort      = "charge_streamed"

[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 4096

[[quota]]
name  = "soak"
match = { tenant = "*" }
tokens_per_day = 1_000_000_000
max_concurrent = 100

[[rule]]
domain = "edge"
match  = ["tenant"]
limit  = { requests = 8, per = "second" }
EOF
tollgate_log="$work/tollgate.log"
"$bin/tollgate" serve --config "$work/tollgate.toml" --ready-file "$work/ready.json" \
  >"$tollgate_log" 2>&1 &
tollgate_pid=$!; pids+=("$tollgate_pid")
wait_for tollgate test -s "$work/ready.json"
tollgate_port=$(sed -E 's/.*"grpc":"[^"]*:([0-9]+)".*/\1/' "$work/ready.json")
admin_port=$(sed -E 's/.*"admin":"[^"]*:([0-9]+)".*/\1/' "$work/ready.json")
admin="http://127.0.0.1:$admin_port"

rl_port=$(free_port) llm_ext_port=$(free_port) envoy_admin=$(free_port)
scripts/render-envoy.sh envoy/bench.yaml ADMIN_PORT="$envoy_admin" \
  ALONE_PORT="$(free_port)" RATELIMIT_PORT="$rl_port" LLM_ALONE_PORT="$(free_port)" \
  LLM_EXT_PROC_PORT="$llm_ext_port" UPSTREAM_PORT="$llm_port" LLM_PORT="$llm_port" \
  TOLLGATE_PORT="$tollgate_port" >"$work/envoy.yaml"
"$envoy_bin" -c "$work/envoy.yaml" --concurrency 1 --log-level warn --disable-hot-restart \
  >"$work/envoy.log" 2>&1 &
pids+=("$!")
wait_for envoy curl -sf "http://127.0.0.1:$envoy_admin/ready"
wait_for "envoy listeners" curl -sf -o /dev/null -H 'x-tenant: warm' "http://127.0.0.1:$rl_port/"

# --- load -------------------------------------------------------------------
llm_url="http://127.0.0.1:$llm_ext_port/v1/chat/completions"
json_body='{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"user","content":"soak"}]}'
sse_body='{"model":"gpt-4o","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"soak"}]}'
# The aborting clients: 5 events 300 ms apart, so an abort after the first
# one is far ahead of the second.
abort_args=(--url "$llm_url" --body "$sse_body" -H "x-mock-chunks: 5"
  -H "x-mock-chunk-delay-ms: 300" --abort-fraction 1)

# A tenant's figures in /quotas (read from Redis): its token counter's
# `used` and `reserved` (held by reservations not settled), and its slots
# held: "used reserved slots" (0 0 0 when the key is absent).
tenant_figures() {
  python3 -c '
import json, sys
tenant = sys.argv[1]
q = next(q for q in json.load(sys.stdin)["quotas"] if q["name"] == "soak")
kinds = [l["kind"] for l in q["limits"]]
used = reserved = slots = 0
for k in q["keys"]:
    if {"key": "tenant", "value": tenant} in k["values"] and k["class"] is None:
        for kind, c in zip(kinds, k["counters"]):
            if kind == "tokens":
                used += c["used"]
                reserved += c["reserved"] or 0
            else:
                slots += c["used"]
print(used, reserved, slots)' "$1"
}
# /quotas lists a quota's 20 busiest keys: ask for the one tenant.
tenant_quotas() { curl -sfG --data-urlencode "tenant=$1" "$admin/quotas?quota=soak"; }
used_tokens() { tenant_quotas "$1" | tenant_figures "$1" | cut -d' ' -f1; }

# Calibration: what one aborted stream is charged.
"$load" http --json --rate 1 --duration 1s --warmup 0s --concurrency 1 \
  "${abort_args[@]}" -H "x-tenant: soak-calib" >"$work/calibration.json"
sleep 1
abort_charge=$(used_tokens soak-calib)
echo "soak: one aborted stream is charged $abort_charge tokens"

run="${minutes}m"
start_load() {
  local name="$1"; shift
  nice -n 5 "$load" http --json --duration "$run" --warmup 0s "$@" >"$work/load-$name.json" \
    2>"$work/load-$name.err" &
  load_pids+=("$!")
}
start_load rls --url "http://127.0.0.1:$rl_port/" --rate 100 --concurrency 8 \
  --tenant-header x-tenant --tenants 10
start_load json --url "$llm_url" --body "$json_body" --rate 10 --concurrency 5 \
  -H "x-tenant: soak-json"
start_load sse --url "$llm_url" --body "$sse_body" --rate 13 --concurrency 13 \
  -H "x-tenant: soak-sse" -H "x-mock-chunks: 5" -H "x-mock-chunk-delay-ms: 20"
start_load abort --rate 2 --concurrency 2 "${abort_args[@]}" \
  --tenant-header x-tenant --tenant-prefix soak-abort- --tenants 1000000000
load_start=$(date +%s)

# --- samples ------------------------------------------------------------------
hz=$(getconf CLK_TCK)
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$tollgate_pid/status"; }
cpu_s() { sed 's/.*) //' "/proc/$tollgate_pid/stat" | awk -v hz="$hz" '{printf "%.1f", ($12 + $13) / hz}'; }
log_lines() { wc -l <"$tollgate_log"; }
# Envoy's answers by class on both listeners: "2xx 4xx 5xx".
envoy_answers() {
  curl -sfG --data-urlencode 'filter=^http\..*downstream_rq_[245]xx$' \
    "http://127.0.0.1:$envoy_admin/stats" |
    awk -F': ' '$1 !~ /^http\.admin\./ { c[substr($1, length($1) - 2)] += $2 }
      END { printf "%d %d %d", c["2xx"], c["4xx"], c["5xx"] }'
}
samples="$work/samples.txt"
echo "minute rss_mib cpu_s log_lines_since_last redis_restarts envoy_2xx envoy_4xx envoy_5xx load_avg" >"$samples"
prev_lines=$(log_lines)
sample() {
  local lines answers
  lines=$(log_lines)
  answers=$(envoy_answers)
  echo "$(awk -v s="$1" 'BEGIN { printf "%.1f", s / 60 }') $(awk -v k="$(rss_kb)" 'BEGIN { printf "%.1f", k / 1024 }') $(cpu_s) $((lines - prev_lines)) $restarts $answers $(cut -d' ' -f1 /proc/loadavg)" |
    tee -a "$samples"
  prev_lines=$lines
}

start=$(date +%s)
total=$((minutes * 60))
next_sample=0 next_restart=$restart_every
sample 0
while :; do
  now=$(( $(date +%s) - start ))
  [ "$now" -ge "$total" ] && break
  if ! kill -0 "$tollgate_pid" 2>/dev/null; then
    echo "soak: tollgate exited during the run" >&2; break
  fi
  if [ "$now" -ge "$next_restart" ]; then
    restart_redis
    echo "soak: Redis restart $restarts ($(tail -n 1 "$restart_log" | cut -d' ' -f3) ms down)"
    next_restart=$((next_restart + restart_every))
  fi
  if [ "$now" -ge $((next_sample + sample_every)) ]; then
    next_sample=$((next_sample + sample_every))
    sample "$now"
  fi
  sleep 1
done
for p in "${load_pids[@]}"; do wait "$p" || echo "soak: a load process failed" >&2; done
load_pids=()
sleep 5
sample "$(( $(date +%s) - start ))"

# --- checks ---------------------------------------------------------------------
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))' "$work/load-$1.json" "$2"; }
fails=0
check() { # check NAME OK(0/1) DETAIL
  local mark=pass
  [ "$2" = 1 ] || { mark=FAIL; fails=$((fails + 1)); }
  echo "| $1 | $mark | $3 |" >>"$work/checks.md"
}
: >"$work/checks.md"

# The 1,000 busiest keys (the most /quotas lists); Redis is read below for
# every record and slot set.
curl -sf "$admin/quotas?quota=soak&top=1000" >"$work/quotas-end.json"
curl -sf "$admin/metrics" >"$work/metrics-end.txt"
slots=$(python3 -c '
import json, sys
q = next(q for q in json.load(open(sys.argv[1]))["quotas"] if q["name"] == "soak")
kinds = [l["kind"] for l in q["limits"]]
held = reserved = 0
for k in q["keys"]:
    for kind, c in zip(kinds, k["counters"]):
        reserved += c.get("reserved") or 0
        if not kind.startswith("token"):
            held += c["used"]
print(held, q.get("in_flight", 0), reserved)' "$work/quotas-end.json")
read -r slots_held in_flight reserved_left <<<"$slots"
# And in Redis itself: reservation records, and members of the slot sets.
records=$(rcli --scan --pattern 'tg:{*}:res:*' | wc -l)
slot_members=0
for k in $(rcli --scan --pattern 'tg:{*}:c:*'); do
  [ "$(rcli type "$k")" = zset ] && slot_members=$((slot_members + $(rcli zcard "$k")))
done
check "leaked slots" "$([ "$slots_held" = 0 ] && [ "$in_flight" = 0 ] && [ "$reserved_left" = 0 ] && [ "$records" = 0 ] && [ "$slot_members" = 0 ] && echo 1)" \
  "/quotas: concurrency slots held $slots_held, reservations in flight $in_flight, tokens still reserved $reserved_left; Redis: $records reservation records, $slot_members slot set members"

# The aborting streams' tenants, one each: more than /quotas lists, so
# read from Redis: each token counter (a count, reservations included)
# and each slot set's size.
rcli --scan --pattern 'tg:{*}:t*:soak-abort-*' >"$work/abort-token-keys"
xargs -r -n 500 redis-cli -p "$redis_port" mget <"$work/abort-token-keys" >"$work/abort-token-counts"
: >"$work/abort-slots"
for k in $(rcli --scan --pattern 'tg:{*}:c:soak-abort-*'); do
  echo "$k $(rcli zcard "$k")" >>"$work/abort-slots"
done
# "used reserved held" as tenant_figures gives them (an unsettled stream
# counts at what it holds), then each settled stream charged other than
# the calibration: its tenant, its charge and about when it ran
# (connection c's k-th stream is tenant c × 7919 + k, one a second per
# connection from the load's start).
abort_figures=$(python3 -c '
import sys, time
keys, counts, slots, charge, start = sys.argv[1:6]
charge, start = int(charge), int(start)
def tenant(key):
    return next(s for s in key.split(":") if s.startswith("soak-abort-"))
held = {}
for line in open(slots):
    k, n = line.split()
    held[tenant(k)] = held.get(tenant(k), 0) + int(n)
used = {}
for k, c in zip(open(keys).read().split(), open(counts).read().split()):
    used[tenant(k)] = used.get(tenant(k), 0) + int(c)
unsettled = sum(u for t, u in used.items() if held.get(t))
odd = sorted((start + int(t[len("soak-abort-"):]) % 7919, t, u)
             for t, u in used.items() if not held.get(t) and u != charge)
print(sum(used.values()), unsettled, sum(held.values()))
print("; ".join("{} charged {} at about {}".format(t, u, time.strftime("%H:%M:%S", time.gmtime(at)))
                for at, t, u in odd) or "none")' \
  "$work/abort-token-keys" "$work/abort-token-counts" "$work/abort-slots" "$abort_charge" "$load_start")
odd_aborts=$(sed -n 2p <<<"$abort_figures")

budget_rows="" budget_ok=1
sum_used=$(used_tokens soak-calib)
for t in json sse abort; do
  ok=$(field "$t" ok); aborted=$(field "$t" aborted)
  if [ "$t" = abort ]; then
    read -r used reserved held <<<"$(head -n 1 <<<"$abort_figures")"
  else
    read -r used reserved held < <(tenant_quotas "soak-$t" | tenant_figures "soak-$t")
  fi
  # A request whose settle failed (Redis restarting) was counted by the
  # client but still holds its estimate and slot: it is charged what is
  # reserved instead (the aborting tenant's are aborted streams).
  if [ "$t" = abort ]; then
    expected=$((30 * ok + abort_charge * (aborted - held) + reserved))
    how="$ok read to the end × 30 + ($aborted aborted − $held unsettled) × $abort_charge + $reserved reserved"
  else
    expected=$((30 * (ok - held) + reserved))
    how="($ok read to the end − $held unsettled) × 30 + $reserved reserved"
  fi
  sum_used=$((sum_used + used))
  budget_rows+="soak-$t: $used used, expected $expected = $how; "
  [ "$used" = "$expected" ] || budget_ok=0
done
check "budgets exact" "$budget_ok" "$budget_rows"

metric_sum() { # metric_sum REGEX: sum of the sample values of matching lines
  awk -v re="$1" '$0 !~ /^#/ && $0 ~ re { s += $NF } END { printf "%d", s }' "$work/metrics-end.txt"
}
m_reserved=$(metric_sum '^tollgate_quota_tokens_total\{.*kind="reserved"')
m_refunded=$(metric_sum '^tollgate_quota_tokens_total\{.*kind="refunded"')
m_overage=$(metric_sum '^tollgate_quota_tokens_total\{.*kind="overage"')
m_spent=$((m_reserved - m_refunded + m_overage))
check "store agrees with tollgate" "$([ "$m_spent" = "$sum_used" ] && echo 1)" \
  "Σ counters $sum_used (the three tenants and the calibration); tollgate reserved $m_reserved − refunded $m_refunded + overage $m_overage = $m_spent"

log_total=$(log_lines)
per_minute=$(awk -v l="$log_total" -v m="$minutes" 'BEGIN { printf "%.1f", l / m }')
check "log lines per minute" "$(awk -v p="$per_minute" -v m="$max_log_per_minute" 'BEGIN { print (p <= m) ? 1 : 0 }')" \
  "$log_total lines in $minutes min: $per_minute a minute (at most $max_log_per_minute)"

# --- report -------------------------------------------------------------------------
settlements=$(grep '^tollgate_llm_settlements_total' "$work/metrics-end.txt" | sed -E 's/.*how="([a-z_]+)".* ([0-9.e+]+)$/\1 \2/' | tr '\n' ',' | sed 's/,$//; s/,/, /g')
store_errors=$(grep '^tollgate_store_errors_total' "$work/metrics-end.txt" | sed -E 's/.*kind="([a-z_]+)".* ([0-9.e+]+)$/\1 \2/' | tr '\n' ',' | sed 's/,$//; s/,/, /g')
rss_col() { awk -v row="$1" 'NR > 1 { r[NR - 1] = $2 } END { n = NR - 1; i = (row == "start") ? 1 : (row == "end") ? n : int((n + 1) / 2); print r[i] }' "$samples"; }
{
  echo "# Soak report"
  echo
  echo "Run $(date -u -d "@$start" +'%Y-%m-%d %H:%M UTC') by \`scripts/soak.sh --minutes $minutes\`, $minutes min; load average at the end $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)."
  echo
  echo "| check | result | figures |"
  echo "|---|---|---|"
  cat "$work/checks.md"
  echo
  echo "tollgate RSS: start $(rss_col start) MiB, middle $(rss_col middle) MiB, end $(rss_col end) MiB; CPU $(cpu_s) s in all."
  echo "Redis restarts: $restarts (SHUTDOWN SAVE + start on the same port and directory; ms down each: $(cut -d' ' -f3 "$restart_log" | tr '\n' ' '))."
  echo "Settlements: $settlements. Store errors: ${store_errors:-none}."
  echo "Aborted streams charged other than the calibrated $abort_charge: $odd_aborts."
  echo "Redis restarts at (UTC): $(cut -d' ' -f2 "$restart_log" | tr '\n' ' ')"
  echo
  echo "| load | rate/s | connections | requests | ok | denied | errors | aborted | p50 ms | p99 ms |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
  for t in rls json sse abort; do
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print("| {} | {} | {} | {} | {} | {} | {} | {} | {:.1f} | {:.1f} |".format(sys.argv[2],
      r["rate"], r["concurrency"], r["requests"], r["ok"], r["denied"], r["errors"],
      r.get("aborted", 0), l["p50"], l["p99"]))' \
      "$work/load-$t.json" "$t"
  done
  echo
  echo "Samples every ${sample_every} s (Envoy's answers are cumulative, both listeners):"
  echo
  echo '```'
  column -t "$samples"
  echo '```'
  echo
  echo "tollgate's log lines, by message (timestamps and fields cut):"
  echo
  echo '```'
  sed -E 's/^[^ ]+ +//; s/\x1b\[[0-9;]*m//g' "$tollgate_log" | cut -c1-100 | sort | uniq -c | sort -rn | head -n 15
  echo '```'
} >"$report"
cp "$report" "$work/report.md"
cat "$report"
[ "$fails" = 0 ] || { echo "soak: $fails check(s) failed" >&2; exit 1; }
