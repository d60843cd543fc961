#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): installs what is missing
# (scripts/install-test-deps.sh), then format check, clippy with warnings
# as errors, and every test: unit, property, store suites against a real
# redis-server, end-to-end through a real Envoy and nginx; then the
# README's `cargo run` on the default config; then a short fuzz smoke of
# every target (scripts/fuzz-smoke.sh: fixed inputs from a fixed seed,
# docs/fuzzing.md). Exits non-zero on the first failing step (all tests
# run, then the failures are listed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

step() {
  local start=$SECONDS
  echo "==> $*"
  "$@"
  echo "<== $* ok ($((SECONDS - start)) s)"
}

step scripts/install-test-deps.sh

# The harness finds Envoy through ENVOY_BIN first; CI (if set) passes through.
export ENVOY_BIN="$repo/.venv/bin/envoy"
export PATH="$repo/.venv/bin:$PATH"

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo test --workspace --no-fail-fast
# The README's first command, as written (debug build, already compiled
# above): `cargo run` must pick tollgate, and the default config must load.
step cargo run -q -- check --config config/tollgate.toml
step scripts/fuzz-smoke.sh
