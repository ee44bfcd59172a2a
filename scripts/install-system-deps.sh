#!/usr/bin/env bash
# Installs the system programs Switchboard runs (redis-server, haproxy) and, with --browser,
# Debian's Chromium for the e2e tier; with --node, node and npm for the npm package's test
# (clients/js). Does nothing for what is already there.
set -euo pipefail

want=(redis-server:redis-server haproxy:haproxy)
for flag in "$@"; do
  case "$flag" in
    --browser) want+=(chromium:chromium) ;;
    --node) want+=(node:nodejs npm:npm) ;;
  esac
done

missing=()
for pair in "${want[@]}"; do
  binary=${pair%%:*}
  package=${pair##*:}
  command -v "$binary" >/dev/null 2>&1 || missing+=("$package")
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
