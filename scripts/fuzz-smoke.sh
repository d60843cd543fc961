#!/usr/bin/env bash
# A short libFuzzer run of each target in fuzz/ (docs/fuzzing.md), from the
# seed corpora in fuzz/corpus/<target>/: a crash, a broken invariant or a
# hang (10 s on one input) fails it. The long runs are by hand
# (docs/fuzzing.md gives the commands and the figures). scripts/test.sh
# runs it last.
#
# Needs a nightly toolchain (it fails, saying so, without one), not
# cargo-fuzz: the targets are built with plain `cargo +nightly build` and
# the instrumentation flags `cargo fuzz build -s none` passes (cargo-fuzz
# 0.13's src/project.rs), in the `fuzz-smoke` profile of fuzz/Cargo.toml
# (opt-level 1, 16 codegen units, no debug info: a faster build than the
# campaign's, the same checks: debug assertions and overflow checks on).
# The first build compiles the server crate with coverage instrumentation;
# later runs reuse fuzz/target. Each target then runs a fixed number of
# inputs from a fixed seed (-runs, -seed=1: the same inputs on every run of
# the same code, so a landing is gated on what was run before it, not on
# luck; finding new inputs is the campaigns' job), about 8 s each on an
# idle core. FUZZ_SMOKE_SCALE multiplies the counts (default 1).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"

scale="${FUZZ_SMOKE_SCALE:-1}"
# target:inputs, from each one's speed in this build (docs/fuzzing.md).
targets=(request:500000 usage_json:500000 sse_chunks:300000 config_toml:30000
  ratelimit_yaml:40000 http_check:100000 grpc_request:400000)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: no nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
triple="$(rustup run nightly rustc -vV | sed -n 's/^host: //p')"

# No sanitizer (cargo-fuzz's `-s none`): every crate of ours forbids unsafe
# code; what is looked for is panics, broken invariants and hangs.
# `--target` keeps these flags off build scripts and proc macros, as
# cargo-fuzz does. `--features config`: the server crate's targets.
flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0
  -Cllvm-args=-sanitizer-coverage-stack-depth
  --cfg fuzzing
)
start=$SECONDS
RUSTFLAGS="${flags[*]}" cargo +nightly build --profile fuzz-smoke \
  --target "$triple" --features config --bins
echo "fuzz-smoke: build $((SECONDS - start)) s"
bin="target/$triple/fuzz-smoke"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p artifacts
for entry in "${targets[@]}"; do
  t="${entry%%:*}"
  runs=$((${entry#*:} * scale))
  mkdir -p "$work/$t" "artifacts/$t"
  echo "==> fuzz $t: $runs inputs"
  # The grown corpus goes to a scratch directory; the seeds stay as they
  # are. -timeout: one input taking 10 s is a hang, and a failure.
  rc=0
  t0=$SECONDS
  "$bin/$t" "$work/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -runs="$runs" -seed=1 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$work/$t.log" 2>&1 || rc=$?
  echo "    $((SECONDS - t0)) s"
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$work/$t.log" >&2
    echo "fuzz-smoke: $t failed (exit $rc); the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz-smoke: ${#targets[@]} targets, no crash ($((SECONDS - start)) s in all)"
