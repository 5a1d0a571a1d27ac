#!/usr/bin/env bash
# README command 1: the whole system on this machine, in the foreground until Ctrl-C.
#   proxy 127.0.0.1:8080 (metrics 9101) -> ticket API stand-in 127.0.0.1:8090
#   control plane 127.0.0.1:8081 (metrics 9102), PostgreSQL database `tollgate`, Redis
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${TOLLGATE_DEMO_CONFIG:-config/demo.toml}
bash deploy/local/setup.sh
cargo build --workspace --bins --locked
bin=target/debug

psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc \
  "SELECT 1 FROM pg_database WHERE datname = 'tollgate'" | grep -q 1 \
  || psql "postgres://postgres@127.0.0.1:5432/postgres" -qc "CREATE DATABASE tollgate"

logs=$(mktemp -d /tmp/tollgate-demo.XXXXXX)
pids=()
cleanup() {
  echo; echo "[demo] stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}
wait_for() { # name, url
  for _ in $(seq 1 300); do
    curl -fsS "$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "[demo] $1 did not become healthy; its log:"; cat "$logs/$1.log"; exit 1
}

start ticket-api "$bin/ticket-api-standin" --listen 127.0.0.1:8090
# The Stripe stand-in, unless the configuration points at real Stripe.
if grep -Eq '^api_base *= *"http://127\.0\.0\.1:12111"' "$CONFIG"; then
  start stripe "$bin/stripe-standin" --listen 127.0.0.1:12111 \
    --webhook-url http://127.0.0.1:8081/api/v1/webhooks/stripe \
    --webhook-secret "$(sed -nE 's/^webhook_secrets *= *\["([^"]+)".*/\1/p' "$CONFIG")" \
    --api-key "$(sed -nE 's/^secret_key *= *"([^"]+)".*/\1/p' "$CONFIG")"
  wait_for stripe http://127.0.0.1:12111/health
fi
start control-plane "$bin/tollgate-control-plane" --config "$CONFIG"
start proxy "$bin/tollgate-proxy" --config "$CONFIG"
wait_for ticket-api http://127.0.0.1:8090/health
wait_for control-plane http://127.0.0.1:8081/health/ready
wait_for proxy http://127.0.0.1:9101/health/ready
# Products and prices in Stripe (or the stand-in) from config/plans.toml; idempotent.
"$bin/tollgate-control-plane" --config "$CONFIG" sync-catalog >"$logs/sync-catalog.log" 2>&1 \
  || { echo "[demo] sync-catalog failed:"; cat "$logs/sync-catalog.log"; exit 1; }

cat <<TXT
[demo] tollgate is up (logs in $logs):
  proxy          http://127.0.0.1:8080   metrics http://127.0.0.1:9101/metrics
  control plane  http://127.0.0.1:8081   metrics http://127.0.0.1:9102/metrics
  ticket API     http://127.0.0.1:8090   (stand-in)
  Stripe         http://127.0.0.1:12111  (stand-in, unless real Stripe is configured)
Try: curl -s http://127.0.0.1:8081/api/v1/billing/plans
Ctrl-C stops everything.
TXT
wait -n "${pids[@]}" || true
echo "[demo] a component exited; see $logs"
