#!/usr/bin/env bash
# Starts the built control plane and proxy (demo configuration, free ports, a scratch
# database and Redis prefix), then checks their live /metrics with deploy/check.sh:
# `promtool check metrics` passes and every metric the alerts and the dashboard use is
# exported. Run after the binaries are built (deploy/local/test.sh builds them).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${TOLLGATE_BIN_DIR:-target/debug}
db=tollgate_metrics_check
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
cp_port=$(free_port); cp_metrics=$(free_port); proxy_port=$(free_port); proxy_metrics=$(free_port)
export TOLLGATE_CONTROL_PLANE__LISTEN="127.0.0.1:$cp_port"
export TOLLGATE_CONTROL_PLANE__METRICS_LISTEN="127.0.0.1:$cp_metrics"
export TOLLGATE_CONTROL_PLANE__DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export TOLLGATE_REDIS__KEY_PREFIX="tg:metrics-check:$$:"
export TOLLGATE_PROXY__LISTEN="127.0.0.1:$proxy_port"
export TOLLGATE_PROXY__METRICS_LISTEN="127.0.0.1:$proxy_metrics"
export TOLLGATE_PROXY__CONTROL_PLANE_URL="http://127.0.0.1:$cp_port"
export TOLLGATE_PROXY__SPOOL_DIR="$work/spool"
"$bin/tollgate-control-plane" --config config/demo.toml >"$work/cp.log" 2>&1 &
pids+=($!)
"$bin/tollgate-proxy" --config config/demo.toml >"$work/proxy.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$cp_port/health/ready" "http://127.0.0.1:$proxy_metrics/health/live"; do
  for _ in $(seq 1 100); do
    curl -fsS "$url" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "$url" >/dev/null || { echo "not healthy: $url"; tail -20 "$work"/*.log; exit 1; }
done
bash deploy/check.sh --metrics-url "http://127.0.0.1:$proxy_metrics/metrics" "http://127.0.0.1:$cp_metrics/metrics"
