#!/usr/bin/env bash
# Validates the operations kit with the real tools (tests/integration/test_monitoring.py runs the
# same checks, plus metric-name and coverage checks). Tools: monitoring/install-tools.sh.
set -euo pipefail
cd "$(dirname "$0")"
for tool in promtool amtool; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run monitoring/install-tools.sh" >&2; exit 1; }
done

# prometheus.yml reads the scrape token from /run/secrets (a compose secret): check a
# copy whose secret paths point at stand-in files, so file checks still run.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r prometheus "$tmp/prometheus"
mkdir "$tmp/secrets"
for secret in $(grep -o '/run/secrets/[A-Za-z0-9_]*' prometheus/prometheus.yml | sort -u); do
  echo stand-in >"$tmp/secrets/$(basename "$secret")"
done
sed "s#/run/secrets/#$tmp/secrets/#g" prometheus/prometheus.yml >"$tmp/prometheus/prometheus.yml"

promtool check config --lint=all --lint-fatal "$tmp/prometheus/prometheus.yml"
promtool check rules --lint=all --lint-fatal prometheus/rules/*.yml
promtool test rules prometheus/tests/*_test.yml
amtool check-config alertmanager/alertmanager.yml
