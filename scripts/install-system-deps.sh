#!/usr/bin/env bash
# Installs the system programs Switchboard runs (redis-server, haproxy) and, with --browser,
# Debian's Chromium for the e2e tier; with --node, node and npm for the npm package's test
# (clients/js); with --postgres, PostgreSQL for the tests' PostgreSQL run (and `manage.py cluster
# up --db postgres`). Does nothing for what is already there.
set -euo pipefail

want=(redis-server:redis-server haproxy:haproxy)
for flag in "$@"; do
  case "$flag" in
    --browser) want+=(chromium:chromium) ;;
    --node) want+=(node:nodejs npm:npm) ;;
    --postgres) want+=(initdb:postgresql) ;;
  esac
done

missing=()
for pair in "${want[@]}"; do
  binary=${pair%%:*}
  package=${pair##*:}
  # Debian keeps PostgreSQL's server programs off PATH, in /usr/lib/postgresql/<version>/bin.
  command -v "$binary" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$binary" >/dev/null \
    || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "Missing: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing ${missing[*]} with apt-get…"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
