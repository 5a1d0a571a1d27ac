#!/usr/bin/env bash
# tollgate's benchmark and failure drills, one command:
#
#   bash bench/run.sh           # full run: release binaries, a few minutes; figures for the README
#   bash bench/run.sh --smoke   # seconds: tiny loads, exactness and one drill (CI; debug binaries)
#
# Installs wrk and nginx (Debian packages) if missing, starts its own Redis and PostgreSQL
# cluster on free loopback ports, and writes bench/results/latest.{json,md}. Only loopback
# traffic. Exits non-zero if exactness fails or a drill loses or duplicates usage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/setup.sh
missing=()
for tool in wrk nginx; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The nginx package may start a server on :80; the benchmark runs its own.
systemctl stop nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true
if [ "${1:-}" = "--smoke" ]; then
  cargo build --workspace --bins --locked
  TOLLGATE_BIN_DIR=target/debug target/debug/tollgate-bench --smoke --out "${TOLLGATE_BENCH_OUT:-target/bench-smoke}"
else
  cargo build --release --workspace --bins --locked
  TOLLGATE_BIN_DIR=target/release target/release/tollgate-bench --out bench/results "$@"
fi
