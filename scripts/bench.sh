#!/usr/bin/env bash
# Every benchmark figure in docs/benchmarks.md, from one command:
#
#   scripts/bench.sh            # full run (~10 min), rewrites the figures in docs/benchmarks.md
#   scripts/bench.sh --quick    # 3 s per scenario, no Criterion, docs untouched (for development)
#
# Installs what is missing (scripts/install-test-deps.sh: redis-server,
# redis-tools (redis-benchmark), nginx, wrk, Envoy in .venv; plus curl),
# builds the release binaries, and starts everything on 127.0.0.1 with
# free ports: one redis-server, nginx (the trivial upstream), the mock LLM
# upstream, tollgate (memory store, then Redis store), and one Envoy
# (envoy/bench.yaml, one worker) whose listeners differ only in the filter
# under test. Then it runs, for a fixed duration each:
#   * direct gRPC rate limit calls (tollgate-load grpc), memory and Redis;
#   * redis-benchmark running take.lua itself, at the same concurrency;
#   * HTTP through Envoy: alone, rate limit filter -> tollgate (wrk, 32
#     connections, maximum; tollgate-load at a fixed rate for latency);
#   * LLM requests through Envoy, alone and with ext_proc -> tollgate (JSON
#     and SSE, fixed rate and maximum, time to the first streamed byte), and
#     with ext_proc -> a server that does nothing (tollgate-load
#     null-ext-proc), the floor under tollgate's ext_proc figures;
#   * the Criterion benches (rls/benches/decide.rs, filters/benches).
# Results: target/bench/<time>/results.jsonl (one JSON line per scenario,
# with the CPU time each process spent) and report.md, which
# `tollgate-load report` renders and which replaces the part of
# docs/benchmarks.md between the bench.sh markers.
#
# Options: --quick, --no-criterion, --no-docs, --duration D (default 10s),
#          --note TEXT (printed above the figures, e.g. "quiet machine").
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

duration=10s warmup=2s criterion=1 docs=1 note=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) duration=3s warmup=1s criterion=0 docs=0 ;;
    --no-criterion) criterion=0 ;;
    --no-docs) docs=0 ;;
    --duration) duration="$2"; shift ;;
    --note) note="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# Concurrency of every maximum-throughput run (the issue's 32 connections).
conc=32

# --- tools and binaries --------------------------------------------------
scripts/install-test-deps.sh
if ! command -v curl >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq curl >/dev/null
fi
envoy_bin="$repo/.venv/bin/envoy"
cargo build --release --quiet -p tollgate -p tollgate-load -p tollgate-testkit --bins
bin="$repo/target/release"
load="$bin/tollgate-load"

work="$repo/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$work"
results="$work/results.jsonl"
: >"$results"
echo "bench: results in $work"

# --- processes -----------------------------------------------------------
# free_port, wait_for, pids and stop_started.
source scripts/lib.sh
trap stop_started EXIT

# CPU seconds (user + system) a process has used so far.
cpu_of() {
  local ticks
  ticks=$(sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}')
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

redis_port=$(free_port)
redis-server --port "$redis_port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!; pids+=("$redis_pid")
wait_for redis-server redis-cli -p "$redis_port" ping

# The trivial upstream of the rate limit route: nginx, one worker, 200 "ok".
start_trivial_nginx "$work"
# The worker process does the work; its CPU time is what is counted.
nginx_worker=$(pgrep -P "$nginx_pid" | head -n 1)

llm_port=$(free_port)
"$bin/mock-llm" --listen "127.0.0.1:$llm_port" --no-record >"$work/mock-llm.log" 2>&1 &
llm_pid=$!; pids+=("$llm_pid")
wait_for mock-llm bash -c "exec 3<>/dev/tcp/127.0.0.1/$llm_port"

# tollgate on `store` (memory|redis); sets tollgate_pid, tollgate_port.
start_tollgate() {
  local store="$1" dir="$work/tollgate-$1"
  mkdir -p "$dir"
  local store_toml='kind = "memory"'
  [ "$store" = redis ] && store_toml="kind = \"redis\"
url = \"redis://127.0.0.1:$redis_port\""
  cat >"$dir/tollgate.toml" <<EOF
# scripts/bench.sh: limits far above what the runs send, so every request
# takes the whole decision path and is allowed.
[server]
grpc_listen  = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[store]
$store_toml

[[rule]]
domain = "bench"
match  = ["tenant"]
limit  = { requests = 1000000000, per = "minute" }

[[rule]]
domain = "edge"
match  = ["tenant"]
limit  = { requests = 1000000000, per = "minute" }

[llm]
tenant_header = "x-tenant"

[[model]]
name = "gpt-4o"
context_window = 128000
default_max_output = 4096

[[quota]]
name  = "per-tenant"
match = { tenant = "*" }
tokens_per_minute = 1000000000
max_concurrent    = 10000
EOF
  "$bin/tollgate" serve --config "$dir/tollgate.toml" \
    --ready-file "$dir/ready.json" >"$dir/tollgate.log" 2>&1 &
  tollgate_pid=$!; pids+=("$tollgate_pid")
  wait_for tollgate test -s "$dir/ready.json"
  tollgate_port=$(sed -E 's/.*"grpc":"[^"]*:([0-9]+)".*/\1/' "$dir/ready.json")
}

# Envoy in front of tollgate_port; sets envoy_pid and the listener ports.
start_envoy() {
  local dir="$work/envoy-$1"
  mkdir -p "$dir"
  alone_port=$(free_port) rl_port=$(free_port) llm_alone_port=$(free_port)
  llm_ext_port=$(free_port) envoy_admin=$(free_port)
  scripts/render-envoy.sh envoy/bench.yaml ADMIN_PORT="$envoy_admin" \
    ALONE_PORT="$alone_port" RATELIMIT_PORT="$rl_port" \
    LLM_ALONE_PORT="$llm_alone_port" LLM_EXT_PROC_PORT="$llm_ext_port" \
    UPSTREAM_PORT="$up_port" LLM_PORT="$llm_port" TOLLGATE_PORT="$tollgate_port" \
    >"$dir/envoy.yaml"
  "$envoy_bin" -c "$dir/envoy.yaml" --concurrency 1 --log-level warn \
    --disable-hot-restart >"$dir/envoy.log" 2>&1 &
  envoy_pid=$!; pids+=("$envoy_pid")
  wait_for envoy curl -sf "http://127.0.0.1:$envoy_admin/ready"
  wait_for "envoy listeners" curl -sf -o /dev/null "http://127.0.0.1:$alone_port/"
}

# --- scenarios -------------------------------------------------------------
# run ID GROUP TITLE LOAD WATCH -- COMMAND...: runs COMMAND (which prints one
# JSON result line) and appends {id, group, title, load, cpu, result}, with
# the CPU seconds each watched "name=pid" process spent during the run.
run() {
  local id="$1" group="$2" title="$3" loadname="$4" watch="$5"
  shift 6
  echo "bench: $id" >&2
  local w before=() after=() i=0 out cpu=""
  for w in $watch; do before+=("$(cpu_of "${w#*=}")"); done
  out=$("$@" | tail -n 1)
  for w in $watch; do after+=("$(cpu_of "${w#*=}")"); done
  for w in $watch; do
    cpu+="${cpu:+,}\"${w%%=*}\":$(awk -v a="${after[$i]}" -v b="${before[$i]}" 'BEGIN{printf "%.3f", a-b}')"
    i=$((i + 1))
  done
  printf '{"id":"%s","group":"%s","title":"%s","load":"%s","cpu":{%s},"result":%s}\n' \
    "$id" "$group" "$title" "$loadname" "$cpu" "$out" >>"$results"
}

grpc_load() { "$load" grpc --json --duration "$duration" --warmup "$warmup" "$@"; }
http_load() { "$load" http --json --duration "$duration" --warmup "$warmup" "$@"; }
# Connections and caches warm first, outside the measured run (and its
# CPU count).
wrk_warm() { wrk -t 2 -c "$conc" -d "$warmup" -s scripts/bench/wrk-tenants.lua "$1" >/dev/null; }
wrk_max() { wrk -t 2 -c "$conc" -d "$duration" -s scripts/bench/wrk-tenants.lua "$1"; }

G_GRPC="Direct gRPC (rate limit service)"
G_RL="HTTP through Envoy, rate limit filter"
G_LLM="LLM requests through Envoy, ext_proc"
chat=(--body-file scripts/bench/chat.json --tenant-header x-tenant)
stream=(--body-file scripts/bench/chat-stream.json --tenant-header x-tenant
  -H "x-mock-chunks: 10" -H "x-mock-chunk-delay-ms: 2" --first-byte)

# llm_500 ID json|sse TITLE WATCH PORT: chat completions at 500 req/s
# through the Envoy listener on PORT.
llm_500() {
  local id="$1" kind="$2" title="$3" watch="$4" port="$5" args=("${chat[@]}")
  [ "$kind" = sse ] && args=("${stream[@]}")
  run "$id" "$G_LLM" "${kind^^} chat completion, $title, 500 req/s" \
    "tollgate-load http -c 64 -r 500" "$watch" -- \
    http_load --url "http://127.0.0.1:$port/v1/chat/completions" \
    --concurrency 64 --rate 500 "${args[@]}"
}

# redis-benchmark: the exact script tollgate sends (common.lua + take.lua),
# one fixed-window counter per call over 10,000 keys, same concurrency.
sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$(cat lua/common.lua lua/take.lua)")
# As tollgate calls it for a per-minute fixed window: key with its window
# start, then now, take, no hold, and the counter's 7 values (algorithm,
# amount, ticks, tick_ms, cost, enforce, window start ms).
now_ms=$(($(date +%s) * 1000))
window_ms=$((now_ms - now_ms % 60000))
evalsha=(EVALSHA "$sha" 1 "tg:{0123456789ab}:minutew:v__rand_int__:$((window_ms / 1000))"
  "$now_ms" 1 "" 0 "" 0 1000000000 60000 1 1 1 "$window_ms")
# Size the run to last about as long as the others (warm-up, not counted).
bench_n=$(redis-benchmark -p "$redis_port" -c "$conc" -n 20000 -r 10000 --csv "${evalsha[@]}" |
  awk -F'"' -v d="${duration%s}" 'NR==2 {print int($4 * d)}')
redis_bench() {
  local n="$bench_n"
  redis-benchmark -p "$redis_port" -c "$conc" -n "$n" -r 10000 --csv "${evalsha[@]}" |
    awk -F'"' -v n="$n" 'NR==2 { printf "{\"requests_per_second\":%s,\"requests\":%d,\"ok\":%d,\"denied\":0,\"errors\":0,\"sent_total\":%d,\"latency_ms\":{\"p50\":%s,\"p99\":%s,\"max\":%s}}\n", $4, n, n, n, $10, $14, $16 }'
}
run redis-benchmark "$G_GRPC" "redis-benchmark: EVALSHA take.lua (1 counter), no tollgate" \
  "redis-benchmark -c $conc" "redis=$redis_pid" -- redis_bench

for store in memory redis; do
  start_tollgate "$store"
  redis-cli -p "$redis_port" FLUSHALL >/dev/null
  evalsha_before=$(redis-cli -p "$redis_port" INFO commandstats |
    sed -nE 's/^cmdstat_evalsha:calls=([0-9]+).*/\1/p')
  watch="tollgate=$tollgate_pid"
  [ "$store" = redis ] && watch+=" redis=$redis_pid"
  run "grpc-$store-max" "$G_GRPC" "tollgate $store store, 1 descriptor, 10,000 keys, maximum" \
    "tollgate-load grpc -c $conc" "$watch" -- \
    grpc_load --target "http://127.0.0.1:$tollgate_port" --concurrency "$conc" --keys 10000
  if [ "$store" = redis ]; then
    # One EVALSHA per decision: Redis's own count, beside the load tool's.
    evalsha_after=$(redis-cli -p "$redis_port" INFO commandstats |
      sed -nE 's/^cmdstat_evalsha:calls=([0-9]+).*/\1/p')
    sent=$(tail -n 1 "$results" | sed -E 's/.*"sent_total":([0-9]+).*/\1/')
    echo "bench: redis EVALSHA calls $((evalsha_after - ${evalsha_before:-0})) for $sent decisions" |
      tee "$work/round-trips.txt" >&2
  fi
  run "grpc-$store-4d-max" "$G_GRPC" "tollgate $store store, 4 descriptors per call, maximum" \
    "tollgate-load grpc -c $conc" "$watch" -- \
    grpc_load --target "http://127.0.0.1:$tollgate_port" --concurrency "$conc" --keys 10000 \
    --descriptors 4
  run "grpc-$store-5000" "$G_GRPC" "tollgate $store store, 5,000 calls/s" \
    "tollgate-load grpc -c 64 -r 5000" "$watch" -- \
    grpc_load --target "http://127.0.0.1:$tollgate_port" --concurrency 64 --rate 5000 \
    --keys 10000

  start_envoy "$store"
  watch+=" envoy=$envoy_pid"
  if [ "$store" = memory ]; then
    wrk_warm "http://127.0.0.1:$alone_port/"
    run envoy-alone-max "$G_RL" "Envoy alone (no rate limit filter), maximum" \
      "wrk -c $conc" "envoy=$envoy_pid nginx=$nginx_worker" -- wrk_max "http://127.0.0.1:$alone_port/"
    run envoy-alone-1000 "$G_RL" "Envoy alone, 1,000 req/s" \
      "tollgate-load http -c $conc -r 1000" "envoy=$envoy_pid nginx=$nginx_worker" -- \
      http_load --url "http://127.0.0.1:$alone_port/" --concurrency "$conc" --rate 1000
  fi
  wrk_warm "http://127.0.0.1:$rl_port/"
  run "envoy-$store-max" "$G_RL" "Envoy + tollgate ($store), maximum" \
    "wrk -c $conc" "$watch nginx=$nginx_worker" -- wrk_max "http://127.0.0.1:$rl_port/"
  run "envoy-$store-1000" "$G_RL" "Envoy + tollgate ($store), 1,000 req/s" \
    "tollgate-load http -c $conc -r 1000" "$watch nginx=$nginx_worker" -- \
    http_load --url "http://127.0.0.1:$rl_port/" --concurrency "$conc" --rate 1000 \
    --tenant-header x-tenant

  llm_watch="$watch mock=$llm_pid"
  if [ "$store" = memory ]; then
    for kind in json sse; do
      llm_500 "llm-$kind-alone-500" "$kind" "Envoy alone" \
        "envoy=$envoy_pid mock=$llm_pid" "$llm_alone_port"
      llm_500 "llm-$kind-ext-proc-500" "$kind" "Envoy + ext_proc (memory)" \
        "$llm_watch" "$llm_ext_port"
    done
    run llm-json-alone-max "$G_LLM" "JSON chat completion, Envoy alone, maximum" \
      "tollgate-load http -c $conc" "envoy=$envoy_pid mock=$llm_pid" -- \
      http_load --url "http://127.0.0.1:$llm_alone_port/v1/chat/completions" \
      --concurrency "$conc" "${chat[@]}"
  fi
  run "llm-json-ext-proc-$store-max" "$G_LLM" "JSON chat completion, Envoy + ext_proc ($store), maximum" \
    "tollgate-load http -c $conc" "$llm_watch" -- \
    http_load --url "http://127.0.0.1:$llm_ext_port/v1/chat/completions" \
    --concurrency "$conc" "${chat[@]}"
  run "llm-sse-ext-proc-$store-max" "$G_LLM" "SSE chat completion (10 chunks, 2 ms apart), Envoy + ext_proc ($store), maximum" \
    "tollgate-load http -c $conc" "$llm_watch" -- \
    http_load --url "http://127.0.0.1:$llm_ext_port/v1/chat/completions" \
    --concurrency "$conc" "${stream[@]}"

  stop "$envoy_pid"
  stop "$tollgate_pid"
done

# The floor under the ext_proc figures: the same Envoy listener in front of
# an ext_proc server that answers every message at once and does nothing
# (`tollgate-load null-ext-proc`). Envoy + it is what any ext_proc service
# costs here; tollgate's figures above it are tollgate's own work.
null_port=$(free_port)
"$load" null-ext-proc --listen "127.0.0.1:$null_port" >"$work/null-ext-proc.log" 2>&1 &
null_pid=$!; pids+=("$null_pid")
wait_for null-ext-proc bash -c "exec 3<>/dev/tcp/127.0.0.1/$null_port"
tollgate_port=$null_port
start_envoy null
for kind in json sse; do
  llm_500 "llm-$kind-null-500" "$kind" "Envoy + null ext_proc server (no tollgate)" \
    "null=$null_pid envoy=$envoy_pid mock=$llm_pid" "$llm_ext_port"
done
stop "$envoy_pid"
stop "$null_pid"

# --- Criterion -------------------------------------------------------------
crit=()
if [ "$criterion" = 1 ]; then
  export CRITERION_HOME="$work/criterion"
  cargo bench --quiet -p tollgate --bench decide -- --warm-up-time 1 --measurement-time 3 \
    >"$work/criterion-rls.log" 2>&1
  cargo bench --quiet -p tollgate-filters --bench filters -- --warm-up-time 1 --measurement-time 3 \
    >"$work/criterion-filters.log" 2>&1
  crit=(--criterion "$CRITERION_HOME")
fi

# --- report ----------------------------------------------------------------
load_avg=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "Run $(date -u +'%Y-%m-%d %H:%M UTC') by \`scripts/bench.sh\`${note:+ — $note}."
  echo
  echo "* Machine: $(nproc) CPUs ($(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "* Load average at the end of the run: $load_avg (1, 5, 15 min); everything (load tool, Envoy, tollgate, Redis, mock upstream) shares these CPUs"
  echo "* Envoy $("$envoy_bin" --version | sed -nE 's#.*/([0-9]+\.[0-9]+\.[0-9]+)/.*#\1#p' | head -n 1) (\`--concurrency 1\`), $(redis-server --version | sed -E 's/.* v=([^ ]+).*/Redis \1/'), $(wrk -v 2>&1 | awk 'NR==1 {print "wrk", $2}'), $(rustc --version | cut -d' ' -f1-2)"
  echo "* Each scenario: ${warmup} warm-up, then ${duration} measured; maximum-throughput runs use $conc connections (HTTP) or $conc calls in flight over 4 HTTP/2 connections (gRPC)"
  [ -f "$work/round-trips.txt" ] && echo "* Round trips: $(sed 's/^bench: //' "$work/round-trips.txt") (Redis \`INFO commandstats\`, warm-up included)"
  echo
  "$load" report --results "$results" "${crit[@]}"
} >"$work/report.md"
cat "$work/report.md"

if [ "$docs" = 1 ]; then
  doc=docs/benchmarks.md
  awk -v report="$work/report.md" '
    /<!-- bench.sh: begin -->/ { print; while ((getline line < report) > 0) print line; skip = 1; next }
    /<!-- bench.sh: end -->/ { skip = 0 }
    !skip { print }' "$doc" >"$work/benchmarks.md"
  cp "$work/benchmarks.md" "$doc"
  echo "bench: figures written to $doc"
fi
