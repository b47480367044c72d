#!/usr/bin/env bash
# `make run`: a local cluster in the foreground. Two brokerd share ./run/data
# (the file lock decides the master); the handover sidecar listens on
# 127.0.0.1:61600 with the repository's proxy.toml. Each line of output is
# prefixed with its process. Ctrl-C stops everything cleanly (SIGTERM, then
# wait).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p run/data

pids=()
start() { # name, command...
  local name=$1; shift
  ( exec "$@" 2>&1 ) | sed -u "s/^/[$name] /" &
  pids+=($!)
}

stop() {
  trap - INT TERM
  echo "[run] stopping..."
  pkill -TERM -P $$ -f 'bin/(brokerd|handover)' 2>/dev/null || true
  for p in $(jobs -p); do pkill -TERM -P "$p" 2>/dev/null || true; done
  wait
  echo "[run] stopped"
}
trap stop INT TERM

start brokerd-a ./bin/brokerd -listen 127.0.0.1:61613 -admin 127.0.0.1:8161 -data run/data
start brokerd-b ./bin/brokerd -listen 127.0.0.1:61614 -admin 127.0.0.1:8162 -data run/data
start handover ./bin/handover -config proxy.toml

cat <<'MSG'
[run] cluster starting: brokerd-a 127.0.0.1:61613 (admin :8161), brokerd-b 127.0.0.1:61614 (admin :8162),
[run] handover sidecar on 127.0.0.1:61600 (admin :9090). Ctrl-C stops all.
[run] try:  curl -s localhost:9090/status | python3 -m json.tool
MSG
wait
