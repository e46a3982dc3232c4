#!/usr/bin/env bash
# flotilla on a local Kubernetes cluster (k3d), from the committed manifests.
#   examples/k3d.sh up [--sidecars]
#                             create the cluster (examples/k3d.yaml), build and
#                             import the image, create the secrets, apply
#                             manifests/ (with an Envoy sidecar in every
#                             service pod: manifests/overlays/sidecars), wait
#                             until ready, curl through Envoy
#   examples/k3d.sh scale N   scale the echo Deployment to N pods and show the
#                             endpoints Envoy gets from flotilla's xDS server
#   examples/k3d.sh demo      calls through Envoy, showing which pod answered,
#                             and the proxyless gRPC client's view
#   examples/k3d.sh down      delete the cluster
# Needs docker, k3d (https://k3d.io) and kubectl on the PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=flotilla
ns=flotilla
url=http://localhost:8080

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "$1 is not installed: $2" >&2; exit 1; }
}

up() {
  local kustomization=manifests
  case "${1:-}" in
    "") ;;
    --sidecars) kustomization=manifests/overlays/sidecars ;;
    *) echo "up: unknown option $1 (--sidecars or nothing)" >&2; exit 64 ;;
  esac
  need docker "https://docs.docker.com/engine/install/"
  need k3d "https://k3d.io/#installation"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  if ! k3d cluster list "$cluster" >/dev/null 2>&1; then
    k3d cluster create --config examples/k3d.yaml
  fi
  echo "== the image"
  if docker build -t flotilla:dev . ; then :; else
    echo "docker build failed (no registry for the Rust image?): building the final stage around a local binary"
    scripts/build-image flotilla:dev
  fi
  k3d image import --cluster "$cluster" flotilla:dev
  echo "== the secrets (generated here, never committed)"
  kubectl apply -f manifests/base/namespace.yaml
  if ! kubectl -n "$ns" get secret flotilla-secrets >/dev/null 2>&1; then
    secrets=$(mktemp -d)
    trap 'rm -rf "$secrets"' EXIT
    FLOTILLA_BIN=${FLOTILLA_BIN:-target/release/flotilla}
    [ -x "$FLOTILLA_BIN" ] || cargo build --release --locked --bin flotilla
    FLOTILLA_BIN=$FLOTILLA_BIN scripts/k8s-secrets "$secrets"
    kubectl -n "$ns" create secret generic flotilla-secrets --from-file="$secrets"
  fi
  echo "== apply"
  kubectl apply -k "$kustomization"
  kubectl -n "$ns" rollout status statefulset/flotilla-db --timeout=180s
  for d in accounts kv echo envoy; do
    kubectl -n "$ns" rollout status "deployment/$d" --timeout=180s
  done
  echo "== through Envoy: $url/api/echo"
  for _ in $(seq 1 30); do
    curl -fsS "$url/api/echo" && echo && break
    sleep 2
  done
}

endpoints() {
  # Envoy's own view: the echo cluster's endpoints, from its admin interface.
  local pod
  pod=$(kubectl -n "$ns" get pod -l app.kubernetes.io/name=envoy -o name | head -1)
  kubectl -n "$ns" port-forward "$pod" 19901:9901 >/dev/null 2>&1 &
  local pf=$!
  sleep 1
  curl -fsS "http://127.0.0.1:19901/clusters" | grep '^echo::' | grep -E 'health_flags|cx_active' || true
  kill "$pf" 2>/dev/null || true
}

scale() {
  local n=${1:?usage: examples/k3d.sh scale N}
  kubectl -n "$ns" scale deployment/echo --replicas "$n"
  kubectl -n "$ns" rollout status deployment/echo --timeout=120s
  sleep 1
  echo "== echo's endpoints in Envoy"
  endpoints
}

demo() {
  echo "== 10 calls through Envoy (which pod answered)"
  for _ in $(seq 1 10); do
    curl -fsS "$url/api/echo" | sed -n 's/.*"node":"\([^"]*\)".*/\1/p'
  done
  echo "== the proxyless gRPC client (xds:///echo, no Envoy in the path)"
  kubectl -n "$ns" logs deployment/echo-client --tail 5
}

down() {
  need k3d "https://k3d.io/#installation"
  k3d cluster delete "$cluster"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  scale) scale "${2:-}" ;;
  demo) demo ;;
  down) down ;;
  *) sed -n '2,14p' "$0"; exit 64 ;;
esac
