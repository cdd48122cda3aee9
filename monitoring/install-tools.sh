#!/usr/bin/env bash
# Installs promtool (Debian package `prometheus`) and amtool (`prometheus-alertmanager`)
# when missing. Needs root (or sudo). Services the packages ship are never started.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
if [ ${#missing[@]} -eq 0 ]; then
  echo "promtool and amtool present: $(promtool --version 2>&1 | head -1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-tools: need root to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi

# policy-rc.d exit 101 = "action forbidden": invoke-rc.d won't start the packages' daemons.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Belt and braces: without an init system a postinst may still have spawned one.
for daemon in prometheus prometheus-alertmanager; do
  for pid in $(pgrep -x "$daemon" 2>/dev/null || true); do
    if [ "$(ps -o user= -p "$pid" | tr -d ' ')" = "prometheus" ]; then
      $SUDO kill "$pid" || true
    fi
  done
done

promtool --version 2>&1 | head -1
amtool --version 2>&1 | head -1
