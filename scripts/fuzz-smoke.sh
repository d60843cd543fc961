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
# later runs reuse fuzz/target. Each target then runs FUZZ_SMOKE_SECONDS
# (default 8) s.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"

seconds="${FUZZ_SMOKE_SECONDS:-8}"
targets=(request usage_json sse_chunks config_toml ratelimit_yaml http_check grpc_request)

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
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "artifacts/$t"
  echo "==> fuzz $t for ${seconds}s"
  # The grown corpus goes to a scratch directory; the seeds stay as they
  # are. -timeout: one input taking 10 s is a hang, and a failure.
  rc=0
  "$bin/$t" "$work/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$work/$t.log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$work/$t.log" >&2
    echo "fuzz-smoke: $t failed (exit $rc); the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz-smoke: ${#targets[@]} targets, ${seconds}s each, no crash ($((SECONDS - start)) s in all)"
