#!/usr/bin/env bash
# A short libFuzzer run of each cargo-fuzz target in fuzz/ (docs/fuzzing.md),
# from the seed corpora in fuzz/corpus/<target>/: a crash, a broken
# invariant or an error line outside the file fails it. The long runs are
# by hand (docs/fuzzing.md gives the commands and the figures).
#
# Needs a nightly toolchain and cargo-fuzz. cargo-fuzz is installed here
# when missing: a one-off `cargo install cargo-fuzz` (about 3 min on 2
# cores). The first build of the targets takes about 10 min on 2 cores (the
# tollgate crate with coverage instrumentation); later runs reuse
# fuzz/target. Each target then runs FUZZ_SMOKE_SECONDS (default 20) s.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo/fuzz"

seconds="${FUZZ_SMOKE_SECONDS:-20}"
targets=(request usage_json sse_chunks config_toml)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: no nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: cargo install cargo-fuzz (one-off)"
  cargo install --locked cargo-fuzz
fi

# No sanitizer: every crate of ours forbids unsafe code; what is looked for
# is panics, broken invariants and hangs, at twice the speed of ASan.
# `--features config`: the config target needs the server crate.
build=(-s none --features config)
cargo +nightly fuzz build "${build[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  echo "==> fuzz $t for ${seconds}s"
  # The grown corpus goes to a scratch directory; the seeds stay as they
  # are. -timeout: one input taking 10 s is a hang, and a failure.
  rc=0
  cargo +nightly fuzz run "${build[@]}" "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$work/$t.log" 2>&1 || rc=$?
  grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "$work/$t.log" >&2
    echo "fuzz-smoke: $t failed (exit $rc); the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz-smoke: ${#targets[@]} targets, ${seconds}s each, no crash"
