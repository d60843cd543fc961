#!/usr/bin/env bash
# Renders an envoy/ template for humans, as the test harness does:
#   scripts/render-envoy.sh envoy/ratelimit.yaml LISTEN_PORT=10000 ADMIN_PORT=9901 \
#       UPSTREAM_PORT=8080 TOLLGATE_PORT=8081 FAILURE_MODE_DENY=false > /tmp/envoy.yaml
#   .venv/bin/envoy --mode validate -c /tmp/envoy.yaml
# Every {{KEY}} must be given; an unfilled one is an error.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
# bash 5.2 would otherwise read '&' in a value as "the matched text".
shopt -u patsub_replacement 2>/dev/null || true
template="$1"; shift
text="$(cat "$template")"
for kv in "$@"; do
  case "$kv" in
    *=*) ;;
    *) echo "render-envoy: expected KEY=VALUE, got '$kv'" >&2; exit 2 ;;
  esac
  key="${kv%%=*}"; value="${kv#*=}"
  text="${text//\{\{$key\}\}/$value}"
done
if grep -q '{{[A-Z0-9_]*}}' <<<"$text"; then
  echo "render-envoy: unfilled placeholders in $template:" \
    "$(grep -o '{{[A-Z0-9_]*}}' <<<"$text" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
printf '%s\n' "$text"
