#!/usr/bin/env bash
# Renders an envoy/ template: scripts/render-envoy.sh TEMPLATE KEY=VALUE... > out.yaml
set -euo pipefail
template="$1"; shift
text="$(cat "$template")"
for kv in "$@"; do
  key="${kv%%=*}"; value="${kv#*=}"
  text="${text//\{\{$key\}\}/$value}"
done
if grep -q '{{[A-Z_]*}}' <<<"$text"; then
  echo "unfilled placeholders: $(grep -o '{{[A-Z_]*}}' <<<"$text" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
printf '%s\n' "$text"
