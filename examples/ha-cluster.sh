#!/usr/bin/env bash
# Starts or stops the three HA nodes of config/ha/ on loopback.
#
#   examples/ha-cluster.sh start     # builds, starts ha-1..3, waits until ready
#   examples/ha-cluster.sh status    # Raft view of every member
#   examples/ha-cluster.sh stop      # SIGTERM, then waits for each to exit
#
# Logs go to data/ha-N.log; data to data/ha-N/. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/flotilla

start() {
  cargo build --release --quiet
  mkdir -p data
  for i in 1 2 3; do
    if [ -f "data/ha-$i.pid" ] && kill -0 "$(cat "data/ha-$i.pid")" 2>/dev/null; then
      echo "ha-$i is already running"
      continue
    fi
    "$bin" serve --config "config/ha/node$i.yaml" >>"data/ha-$i.log" 2>&1 &
    echo $! >"data/ha-$i.pid"
  done
  for i in 1 2 3; do
    for _ in $(seq 1 200); do
      if curl -fs "http://127.0.0.1:819$i/readyz" >/dev/null 2>&1; then
        echo "ha-$i ready (public 127.0.0.1:818$i, admin 127.0.0.1:819$i)"
        break
      fi
      sleep 0.1
    done
  done
}

stop() {
  for i in 1 2 3; do
    if [ -f "data/ha-$i.pid" ]; then
      pid=$(cat "data/ha-$i.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "data/ha-$i.pid"
      echo "ha-$i stopped"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) "$bin" cluster status --config config/ha/node1.yaml ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 64 ;;
esac
