#!/usr/bin/env bash
# Validates tollgate's deployment files offline; exits non-zero on any failure.
#
#   bash deploy/check.sh                                   # everything below
#   bash deploy/check.sh --metrics-url http://127.0.0.1:9101/metrics http://127.0.0.1:9102/metrics
#   bash deploy/check.sh --metrics-url URL... --allow-missing   # absent families only warn
#
# - Prometheus (promtool): alerts.yml parses, its unit tests (alerts_test.yml) pass,
#   prometheus.yml and prometheus-k8s.yml (and alerts.yml through them) are valid
#   configurations that scrape the deployments' metrics ports, every dashboard
#   query is valid PromQL, and every metric name in alerts, tests and dashboard is in
#   deploy/prometheus/metric-names.txt; every alert has for/severity/summary/description
#   and a runbook_url whose `### runbook-<alertname>` heading exists.
# - Grafana: the dashboard JSON parses, uses ${DS_PROMETHEUS}, panel ids and grid are sane.
# - Kubernetes: the kustomization renders (kubectl kustomize, or kustomize), and every
#   object — plus secret.example.yaml — validates strictly against the Kubernetes 1.30 and
#   1.37 schemas bundled in kubernetes-validate (no cluster, no network); the ConfigMap's
#   TOML holds no secret and its plans.toml equals config/plans.toml; secretKeyRefs,
#   ports, probes and the drain timing agree with the configuration.
# - When built binaries exist (target/release or target/debug, or $TOLLGATE_BIN_DIR), the
#   ConfigMap's configuration is loaded by the real binaries with the deployments' env
#   overrides (dummy secrets): the control plane prints a token, the proxy starts and
#   answers /health/ready on loopback.
# - Docker: both Dockerfiles parse with Docker's own parser and match the workspace.
# - --metrics-url URL...: each live /metrics passes `promtool check metrics`, and every
#   allow-listed tollgate_* family appears in some scrape. Labelled families appear only
#   after their first observation: scrape a system that has served traffic, or pass
#   --allow-missing.
#
# Tools are installed once into ${TOLLGATE_DEPLOY_TOOLS:-~/.cache/tollgate-deploy}:
# promtool is extracted from Debian's `prometheus` package (apt-get download; no
# Prometheus server is installed or started) unless one is on PATH; a Python virtualenv
# holds kubernetes-validate (with its schemas), dockerfile and kubernetes-validate's own dependencies (PyYAML, jsonschema) from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${TOLLGATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/tollgate-deploy}
PY_REQS="kubernetes-validate==1.37.0 dockerfile==3.4.0"
K8S_VERSIONS="1.30.0 1.37.0"

metrics_urls=()
allow_missing=0
while [ $# -gt 0 ]; do
  case $1 in
    --metrics-url)
      shift
      while [ $# -gt 0 ] && [[ $1 != --* ]]; do metrics_urls+=("$1"); shift; done
      [ ${#metrics_urls[@]} -gt 0 ] || { echo "--metrics-url needs at least one URL" >&2; exit 2; } ;;
    --allow-missing) allow_missing=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[check] %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
failed=()
step() { # name, command...: runs a check, records a failure, carries on
  local name=$1; shift
  log "$name"
  if "$@"; then :; else failed+=("$name"); log "FAILED: $name"; fi
}

work=$(mktemp -d /tmp/tollgate-deploy-check.XXXXXX)
proxy_pid=""
cleanup() {
  if [ -n "$proxy_pid" ]; then kill -KILL "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# ------------------------------------------------------------------ tools
mkdir -p "$TOOLS/bin"
if command -v promtool >/dev/null 2>&1; then
  PROMTOOL=$(command -v promtool)
elif [ -x "$TOOLS/bin/promtool" ]; then
  PROMTOOL=$TOOLS/bin/promtool
else
  log "extracting promtool from Debian's prometheus package into $TOOLS/bin"
  ( cd "$work" && { apt-get download prometheus >/dev/null 2>&1 \
      || { as_root apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } )
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  install -m 0755 "$work/usr/bin/promtool" "$TOOLS/bin/promtool"
  PROMTOOL=$TOOLS/bin/promtool
fi

VENV=$TOOLS/venv
if [ "$(cat "$VENV/.reqs" 2>/dev/null)" != "$PY_REQS" ]; then
  command -v python3 >/dev/null 2>&1 || {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv >/dev/null
  }
  log "installing $PY_REQS into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQS
  echo "$PY_REQS" >"$VENV/.reqs"
fi
PY=$VENV/bin/python
KV=$VENV/bin/kubernetes-validate
log "tools: $("$PROMTOOL" --version 2>&1 | head -n 1); kubernetes-validate $("$KV" --version 2>&1); $("$PY" --version)"

# ------------------------------------------------------------------ Prometheus and Grafana
step "promtool check rules deploy/prometheus/alerts.yml" \
  "$PROMTOOL" check rules deploy/prometheus/alerts.yml
step "promtool test rules deploy/prometheus/alerts_test.yml" \
  "$PROMTOOL" test rules deploy/prometheus/alerts_test.yml
step "promtool check config deploy/prometheus/prometheus.yml" \
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml
scrape_k8s() {
  "$PY" deploy/check.py scrape-k8s "$work/prometheus-k8s-static.yml" || return 1
  if "$PROMTOOL" check config deploy/prometheus/prometheus-k8s.yml >"$work/promtool-k8s.txt" 2>&1; then
    cat "$work/promtool-k8s.txt"
  elif grep -q 'field kubernetes_sd_configs not found' "$work/promtool-k8s.txt"; then
    log "this promtool has no Kubernetes discovery: checking a copy with static targets"
    "$PROMTOOL" check config "$work/prometheus-k8s-static.yml"
  else
    cat "$work/promtool-k8s.txt"; return 1
  fi
}
step "promtool check config deploy/prometheus/prometheus-k8s.yml" scrape_k8s
step "alert annotations and runbook anchors" "$PY" deploy/check.py runbooks
step "metric names against deploy/prometheus/metric-names.txt" "$PY" deploy/check.py names
dashboard_queries() {
  "$PY" deploy/check.py dashboard "$work/dashboard-rules.yml" \
    && "$PROMTOOL" check rules "$work/dashboard-rules.yml"
}
step "Grafana dashboard: JSON, structure, every query is valid PromQL" dashboard_queries

# ------------------------------------------------------------------ Kubernetes
render() {
  local out=$work/rendered.yaml
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/k8s >"$out" || return 1
  elif command -v kustomize >/dev/null 2>&1; then
    kustomize build deploy/k8s >"$out" || return 1
  else
    log "no kubectl or kustomize: validating the listed resources one by one"
    "$PY" deploy/check.py k8s-files >"$work/files.txt" || return 1
    while read -r f; do cat "$f" && echo "---" || return 1; done <"$work/files.txt" >"$out"
  fi
  if grep -Eq '^ +image: (tollgate-proxy|tollgate-control-plane|ticket-api)$' "$out" \
     && { command -v kubectl >/dev/null 2>&1 || command -v kustomize >/dev/null 2>&1; }; then
    echo "rendered manifests still hold unreplaced image names"; return 1
  fi
  log "rendered $(grep -c '^kind:' "$out") objects"
}
step "render deploy/k8s (kustomize)" render
validate_k8s() {
  local v rc=0
  for v in $K8S_VERSIONS; do
    "$KV" --strict --quiet -k "$v" "$work/rendered.yaml" deploy/k8s/secret.example.yaml || rc=1
  done
  [ $rc -eq 0 ] && log "all objects valid against Kubernetes $K8S_VERSIONS (strict)"
  return $rc
}
step "Kubernetes schemas ($K8S_VERSIONS, strict)" validate_k8s
step "Kubernetes configuration (ConfigMap, secrets, ports, probes, drain)" "$PY" deploy/check.py k8s-config

# ------------------------------------------------------------------ the real binaries
bin_for() { # name -> path of the newest built binary, or nothing
  local name=$1 d
  for d in ${TOLLGATE_BIN_DIR:-} target/release target/debug; do
    if [ -n "$d" ] && [ -x "$d/$name" ]; then echo "$d/$name"; return; fi
  done
}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
k8s_env() { "$PY" deploy/check.py env-file "$work/k8s.toml"; }

control_plane_loads_config() {
  local bin=$1 envs token
  mapfile -t envs < <(k8s_env)
  token=$(env -i PATH="$PATH" HOME="$HOME" "${envs[@]}" \
    "$bin" --config "$work/k8s.toml" token --customer deploy-check) || return 1
  [[ $token =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] \
    || { echo "unexpected token output: $token"; return 1; }
  log "$bin accepted the ConfigMap's configuration with the deployment's env overrides"
}
proxy_starts_with_config() {
  local bin=$1 envs listen metrics
  mapfile -t envs < <(k8s_env)
  listen=$(free_port); metrics=$(free_port)
  mkdir -p "$work/spool"
  # Loopback ports, a scratch spool, no drain; Redis and the control plane at closed
  # ports (the proxy connects lazily and must still start).
  env -i PATH="$PATH" HOME="$HOME" "${envs[@]}" \
    TOLLGATE_PROXY__LISTEN="127.0.0.1:$listen" TOLLGATE_PROXY__METRICS_LISTEN="127.0.0.1:$metrics" \
    TOLLGATE_PROXY__SPOOL_DIR="$work/spool" TOLLGATE_PROXY__DRAIN_SECONDS=0 \
    TOLLGATE_REDIS__URL="redis://127.0.0.1:1" \
    TOLLGATE_PROXY__CONTROL_PLANE_URL="http://127.0.0.1:1" \
    "$bin" --config "$work/k8s.toml" >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  local ok=1
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$metrics/health/ready" >/dev/null 2>&1; then ok=0; break; fi
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
  done
  # grep reads the whole body (`grep -q` would quit at the first match and curl, still
  # writing a larger scrape, would fail the pipeline under pipefail).
  [ $ok -eq 0 ] && ! curl -fsS "http://127.0.0.1:$metrics/metrics" | grep '^tollgate_proxy_' >/dev/null && ok=1
  kill -TERM "$proxy_pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$proxy_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=""
  if [ $ok -ne 0 ]; then echo "the proxy did not become ready; its log:"; cat "$work/proxy.log"; return 1; fi
  log "$bin started with the ConfigMap's configuration and answered /health/ready and /metrics"
}
cp_bin=$(bin_for tollgate-control-plane)
if [ -n "$cp_bin" ]; then
  step "control plane loads the ConfigMap's configuration" control_plane_loads_config "$cp_bin"
else
  log "skipped: no built tollgate-control-plane (target/release, target/debug)"
fi
proxy_bin=$(bin_for tollgate-proxy)
if [ -n "$proxy_bin" ]; then
  step "proxy starts with the ConfigMap's configuration" proxy_starts_with_config "$proxy_bin"
else
  log "skipped: no built tollgate-proxy (target/release, target/debug)"
fi

# ------------------------------------------------------------------ Docker
step "Dockerfiles (Docker's parser, stages, packages, user, ports)" "$PY" deploy/check.py docker

# ------------------------------------------------------------------ live metrics
if [ ${#metrics_urls[@]} -gt 0 ]; then
  live() {
    local i=0 url files=() rc=0
    for url in "${metrics_urls[@]}"; do
      i=$((i + 1))
      if ! curl -fsS --max-time 10 "$url" >"$work/scrape-$i.txt"; then
        echo "cannot fetch $url"; rc=1; continue
      fi
      log "promtool check metrics < $url"
      "$PROMTOOL" check metrics <"$work/scrape-$i.txt" || rc=1
      files+=("$work/scrape-$i.txt")
    done
    if [ ${#files[@]} -gt 0 ]; then
      if [ $allow_missing -eq 1 ]; then files+=(--allow-missing); fi
      "$PY" deploy/check.py live "${files[@]}" || rc=1
    fi
    return $rc
  }
  step "live metrics: ${metrics_urls[*]}" live
fi

if [ ${#failed[@]} -gt 0 ]; then
  log "${#failed[@]} check(s) failed:"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
log "all deployment checks passed"
