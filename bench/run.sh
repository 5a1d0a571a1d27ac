#!/usr/bin/env bash
# tollgate's benchmark and failure drills, one command:
#
#   bash bench/run.sh           # full run: release binaries, a few minutes; figures for the README
#   bash bench/run.sh --smoke   # seconds: tiny loads, exactness and one drill (CI; debug binaries)
#   bash bench/run.sh --journeys [N]  # the model-based billing test with N journeys
#                                     # (default 10,000; CI runs 200): bench/results/journeys.md
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
if [ "${1:-}" = "--journeys" ]; then
  count="${2:-10000}"
  mkdir -p bench/results
  log=bench/results/journeys.log
  started=$(date +%s)
  # --workspace, not -p: a one-package build unifies features differently and rebuilds
  # the Stripe crates (about 11 minutes here) instead of reusing the test build.
  JOURNEYS="$count" cargo test --workspace --test api --locked \
    journeys::random_journeys -- --nocapture 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  {
    echo "# Model-based billing journeys"
    echo
    echo "\`bash bench/run.sh --journeys $count\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(( $(date +%s) - started )) s (build included)."
    echo
    grep -E '^journeys: ' "$log" | sed 's/^/    /'
    echo
    [ "$status" -eq 0 ] && echo "Every journey agreed with the reference model." || echo "**Some journeys disagreed** (see journeys.log)."
  } > bench/results/journeys.md
  cat bench/results/journeys.md
  exit "$status"
elif [ "${1:-}" = "--smoke" ]; then
  cargo build --workspace --bins --locked
  TOLLGATE_BIN_DIR=target/debug target/debug/tollgate-bench --smoke --out "${TOLLGATE_BENCH_OUT:-target/bench-smoke}"
else
  cargo build --release --workspace --bins --locked
  TOLLGATE_BIN_DIR=target/release target/release/tollgate-bench --out bench/results "$@"
fi
