#!/usr/bin/env bash
# The whole test suite: installs the test dependencies, then format,
# clippy, and every test (unit, property, store suites against a real
# redis-server, end-to-end through a real Envoy and nginx).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

scripts/install-test-deps.sh
export PATH="$repo/.venv/bin:$PATH"
export ENVOY_BIN="$repo/.venv/bin/envoy"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
