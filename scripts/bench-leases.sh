#!/usr/bin/env bash
# Leases measured beside their baselines, in one run (docs/benchmarks.md,
# "Leases"):
#   * direct gRPC decisions/s: tollgate on the memory store, on Redis with
#     leases, on Redis without (the same load: tollgate-load grpc, 32 calls
#     in flight, 1,000 keys, limits far above what is sent);
#   * Redis commands per decision with leases at that steady load (Redis's
#     own INFO commandstats over the measured run only, not the warm-up);
#   * HTTP through one Envoy (wrk, 32 connections, maximum): Envoy alone,
#     Envoy + a rate limit service that does nothing (tollgate-load
#     null-rls: the floor no rate limit service can beat), Envoy + tollgate
#     on Redis with leases, Envoy + tollgate on Redis without.
# Usage: scripts/bench-leases.sh [--duration 10s] [--no-docs] [--note TEXT]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

duration=10s warmup=3s docs=1 note=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift ;;
    --no-docs) docs=0 ;;
    --note) note="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-leases: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
conc=32

scripts/install-test-deps.sh >/dev/null
command -v curl >/dev/null || { echo "bench-leases: needs curl" >&2; exit 1; }
envoy_bin="$repo/.venv/bin/envoy"
cargo build --release --quiet -p tollgate -p tollgate-load
bin="$repo/target/release"
load="$bin/tollgate-load"
work="$repo/target/bench/leases-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$work"
echo "bench-leases: results in $work"

source scripts/lib.sh
trap stop_started EXIT
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=("$!")
wait_for redis-server redis-cli -p "$redis_port" ping

# The trivial upstream: nginx, one worker, 200 "ok".
start_trivial_nginx "$work"

# tollgate on memory, redis or leases; sets tollgate_pid and tollgate_port.
start_tollgate() {
  local mode="$1" dir="$work/tollgate-$1" store='kind = "memory"' leases=""
  mkdir -p "$dir"
  # A mode runs twice (gRPC, then through Envoy): the first run's ready
  # file would name its port, long closed.
  rm -f "$dir/ready.json"
  [ "$mode" != memory ] && store="kind = \"redis\"
url = \"redis://127.0.0.1:$redis_port\""
  [ "$mode" = leases ] && leases='[leases]
enabled = true'
  cat >"$dir/tollgate.toml" <<EOF
[server]
grpc_listen  = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
$store

$leases

[[rule]]
domain = "bench"
match  = ["tenant"]
limit  = { requests = 1000000000, per = "hour" }

[[rule]]
domain = "edge"
match  = ["tenant"]
limit  = { requests = 1000000000, per = "hour" }
EOF
  "$bin/tollgate" serve --config "$dir/tollgate.toml" --ready-file "$dir/ready.json" \
    >"$dir/tollgate.log" 2>&1 &
  tollgate_pid=$!; pids+=("$tollgate_pid")
  wait_for tollgate test -s "$dir/ready.json"
  tollgate_port=$(sed -E 's/.*"grpc":"[^"]*:([0-9]+)".*/\1/' "$dir/ready.json")
}

evalsha() {
  redis-cli -p "$redis_port" INFO commandstats | sed -nE 's/^cmdstat_evalsha:calls=([0-9]+).*/\1/p'
}

grpc_rate() {
  "$load" grpc --json --duration "$duration" --warmup "$warmup" --target "http://127.0.0.1:$tollgate_port" \
    --concurrency "$conc" --keys 1000 | tail -n 1
}

declare -A rps
for mode in memory leases redis; do
  start_tollgate "$mode"
  redis-cli -p "$redis_port" FLUSHALL >/dev/null
  # The warm-up is the load tool's own; Redis's count over the whole call
  # includes it, so one more warm-up run comes first and the counted run
  # is measured on its own.
  "$load" grpc --duration "$warmup" --warmup 0s --target "http://127.0.0.1:$tollgate_port" \
    --concurrency "$conc" --keys 1000 >/dev/null
  before=$(evalsha)
  out=$(grpc_rate)
  after=$(evalsha)
  rps[$mode]=$(sed -E 's/.*"requests_per_second":([0-9.]+).*/\1/' <<<"$out")
  sent=$(sed -E 's/.*"sent_total":([0-9]+).*/\1/' <<<"$out")
  echo "$mode: ${rps[$mode]} decisions/s; EVALSHA $((${after:-0} - ${before:-0})) for $sent sent" |
    tee -a "$work/grpc.txt"
  if [ "$mode" = leases ]; then
    lease_calls=$((${after:-0} - ${before:-0}))
    lease_sent=$sent
  fi
  stop "$tollgate_pid"
done

# Envoy: listener "alone" (router only) and "ratelimit" (rate limit filter
# to TOLLGATE_PORT), rendered from envoy/bench.yaml.
start_envoy() {
  local dir="$work/envoy-$1"
  mkdir -p "$dir"
  alone_port=$(free_port) rl_port=$(free_port) envoy_admin=$(free_port)
  scripts/render-envoy.sh envoy/bench.yaml ADMIN_PORT="$envoy_admin" \
    ALONE_PORT="$alone_port" RATELIMIT_PORT="$rl_port" LLM_ALONE_PORT="$(free_port)" \
    LLM_EXT_PROC_PORT="$(free_port)" UPSTREAM_PORT="$up_port" LLM_PORT="$(free_port)" \
    TOLLGATE_PORT="$tollgate_port" >"$dir/envoy.yaml"
  "$envoy_bin" -c "$dir/envoy.yaml" --concurrency 1 --log-level warn --disable-hot-restart \
    >"$dir/envoy.log" 2>&1 &
  envoy_pid=$!; pids+=("$envoy_pid")
  wait_for envoy curl -sf "http://127.0.0.1:$envoy_admin/ready"
  wait_for "envoy listeners" curl -sf -o /dev/null "http://127.0.0.1:$alone_port/"
}

# Requests per second through Envoy; a run with any answer other than 2xx
# (the rate limit service failing, with failure_mode_deny) measured errors,
# not decisions: it stops the script rather than print a figure.
wrk_rps() {
  local out
  wrk -t 2 -c "$conc" -d "$warmup" -s scripts/bench/wrk-tenants.lua "$1" >/dev/null
  out=$(wrk -t 2 -c "$conc" -d "$duration" -s scripts/bench/wrk-tenants.lua "$1")
  if grep -q "Non-2xx" <<<"$out"; then
    echo "bench-leases: $1 answered errors: $(grep Non-2xx <<<"$out")" >&2
    exit 1
  fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

declare -A envoy
null_port=$(free_port)
"$load" null-rls --listen "127.0.0.1:$null_port" >"$work/null-rls.log" 2>&1 &
null_pid=$!; pids+=("$null_pid")
wait_for null-rls bash -c "exec 3<>/dev/tcp/127.0.0.1/$null_port"
tollgate_port=$null_port
start_envoy null
envoy[alone]=$(wrk_rps "http://127.0.0.1:$alone_port/")
envoy[null]=$(wrk_rps "http://127.0.0.1:$rl_port/")
stop "$envoy_pid"; stop "$null_pid"
for mode in leases redis; do
  start_tollgate "$mode"
  start_envoy "$mode"
  envoy[$mode]=$(wrk_rps "http://127.0.0.1:$rl_port/")
  stop "$envoy_pid"; stop "$tollgate_pid"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
load_avg=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "Run $(date -u +'%Y-%m-%d %H:%M UTC') by \`scripts/bench-leases.sh\`${note:+ — $note}; load average at the end $load_avg; ${warmup} warm-up, ${duration} measured per figure, $conc in flight."
  echo
  echo "| figure | value | ratio |"
  echo "|---|--:|--:|"
  echo "| direct gRPC, memory store | ${rps[memory]} decisions/s | 1.00 |"
  echo "| direct gRPC, Redis with leases | ${rps[leases]} decisions/s | $(ratio "${rps[leases]}" "${rps[memory]}") of memory |"
  echo "| direct gRPC, Redis without leases | ${rps[redis]} decisions/s | $(ratio "${rps[redis]}" "${rps[memory]}") of memory |"
  echo "| Redis commands per decision with leases (EVALSHA over decisions, measured run only) | $lease_calls / $lease_sent | $(awk -v a="$lease_calls" -v b="$lease_sent" 'BEGIN { printf "%.4f", a / b }') |"
  echo "| through Envoy: Envoy alone | ${envoy[alone]} req/s | 1.00 |"
  echo "| through Envoy: Envoy + do-nothing rate limit service | ${envoy[null]} req/s | $(ratio "${envoy[null]}" "${envoy[alone]}") of alone |"
  echo "| through Envoy: Envoy + tollgate, Redis with leases | ${envoy[leases]} req/s | $(ratio "${envoy[leases]}" "${envoy[alone]}") of alone, $(ratio "${envoy[leases]}" "${envoy[null]}") of the do-nothing service |"
  echo "| through Envoy: Envoy + tollgate, Redis without leases | ${envoy[redis]} req/s | $(ratio "${envoy[redis]}" "${envoy[alone]}") of alone, $(ratio "${envoy[redis]}" "${envoy[null]}") of the do-nothing service |"
} >"$work/report.md"
cat "$work/report.md"

if [ "$docs" = 1 ]; then
  doc=docs/benchmarks.md
  awk -v report="$work/report.md" '
    /<!-- bench-leases.sh: begin -->/ { print; while ((getline line < report) > 0) print line; skip = 1; next }
    /<!-- bench-leases.sh: end -->/ { skip = 0 }
    !skip { print }' "$doc" >"$work/benchmarks.md"
  cp "$work/benchmarks.md" "$doc"
  echo "bench-leases: figures written to $doc"
fi
