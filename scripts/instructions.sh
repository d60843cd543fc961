#!/usr/bin/env bash
# Instructions per decision: the figure used to judge an optimization on a
# machine too busy for wall-clock numbers (docs/benchmarks.md).
#
#   scripts/instructions.sh [--bin PATH] [--store memory|redis] [--requests N]
#                           [--rate R] [--threads T] [--syscalls]
#
# Runs tollgate (target/release/tollgate unless --bin) under valgrind's
# callgrind, sends a warm-up of direct gRPC rate limit calls
# (tollgate-load grpc, 32 in flight, 10,000 keys), zeroes the counters,
# sends N more at R per second (default 4,000 at 400/s: slow enough for
# valgrind), dumps, and prints user-space instructions per decision, with
# the ten costliest functions (inclusive). --syscalls instead runs tollgate
# natively under `strace -c -f` at the maximum rate and prints system calls
# per decision (kernel work, which callgrind does not see).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

bin="$repo/target/release/tollgate" store=memory requests=4000 rate=400 threads=1 syscalls=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift ;;
    --store) store="$2"; shift ;;
    --requests) requests="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    --syscalls) syscalls=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "instructions: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for tool in valgrind callgrind_control callgrind_annotate strace redis-server; do
  command -v "$tool" >/dev/null || {
    echo "instructions: $tool missing (apt-get install valgrind strace redis-server)" >&2
    exit 1
  }
done
cargo build --release --quiet -p tollgate-load
load="$repo/target/release/tollgate-load"
work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-instructions.XXXXXX")"
echo "instructions: files in $work" >&2

# free_port, wait_for, pids and stop_started; tollgate under valgrind
# starts slowly, so waits last up to 30 s.
source scripts/lib.sh
trap stop_started EXIT
WAIT_SECONDS=30

store_toml='kind = "memory"'
if [ "$store" = redis ]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
  pids+=($!)
  wait_for redis-server redis-cli -p "$redis_port" ping
  store_toml="kind = \"redis\"
url = \"redis://127.0.0.1:$redis_port\"
timeout = \"2s\""
fi
cat >"$work/tollgate.toml" <<EOF
[server]
grpc_listen  = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[store]
$store_toml
[[rule]]
domain = "bench"
match  = ["tenant"]
limit  = { requests = 1000000000, per = "minute" }
EOF

serve=("$bin" serve --config "$work/tollgate.toml" --ready-file "$work/ready.json")
# An older binary may not know --threads; pass it only when asked.
[ "$threads" != 1 ] && serve+=(--threads "$threads")
if [ "$syscalls" = 1 ]; then
  strace -c -f -o "$work/strace.txt" "${serve[@]}" >"$work/tollgate.log" 2>&1 &
else
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "${serve[@]}" >"$work/tollgate.log" 2>&1 &
fi
tracer=$!; pids+=("$tracer")
wait_for tollgate test -s "$work/ready.json"
target="http://127.0.0.1:$(sed -E 's/.*"grpc":"[^"]*:([0-9]+)".*/\1/' "$work/ready.json")"
grpc() { "$load" grpc --target "$target" --concurrency 32 --keys 10000 --warmup 0s "$@"; }

if [ "$syscalls" = 1 ]; then
  out=$(grpc --duration 5s --json)
  # Stop tollgate itself (strace's child): strace then writes its table.
  kill -TERM "$(pgrep -P "$tracer")"; wait "$tracer" || true
  n=$(sed -E 's/.*"sent_total":([0-9]+).*/\1/' <<<"$out")
  echo "decisions: $n"
  awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ {
      printf "%-16s %8.3f per decision\n", $NF, $4 / n }' "$work/strace.txt" | sort -k2 -rn | head -8
  exit 0
fi

grpc --duration 2s --rate "$rate" >/dev/null
callgrind_control -z "$tracer" >/dev/null 2>&1
duration=$(awk -v n="$requests" -v r="$rate" 'BEGIN { printf "%.3fs", n / r }')
grpc --duration "$duration" --rate "$rate" --json >"$work/load.json"
callgrind_control -d "$tracer" >/dev/null 2>&1
n=$(sed -E 's/.*"sent_total":([0-9]+).*/\1/' "$work/load.json")
dump=$(ls "$work"/callgrind.out.* | tail -n 1)
total=$(sed -nE 's/^(summary|totals): ([0-9]+).*/\2/p' "$dump" | tail -n 1)
echo "store: $store, threads: $threads, binary: $bin"
echo "decisions: $n, instructions: $total"
awk -v t="$total" -v n="$n" 'BEGIN { printf "instructions per decision: %.0f\n", t / n }'
echo "where (inclusive instructions per decision):"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
  sed -E 's/ \[[^]]*\]$//; s/^ *([0-9,]+) \([^)]*\) *[^:]*:/\1 /' |
  grep -E ' (<tollgate::service::ratelimit::RateLimitGrpc as .*>::should_rate_limit|tollgate::engine::decide::Engine::(decide::\{\{closure\}\}|plan)|<tollgate::store::(memory::MemoryStore|redis::RedisStore) as tollgate::store::Store>::take::\{\{closure\}\}|tollgate::metrics::Metrics::[a-z_]+|h2::proto::connection::Connection<T,P,B>::poll|__rustc::__rust_alloc|__memcpy_avx_unaligned_erms)$' |
  awk -v n="$n" '!seen[$2]++ { gsub(",", "", $1); printf "%8.0f  %s\n", $1 / n, substr($0, index($0, " ") + 1) }' |
  cut -c1-150
