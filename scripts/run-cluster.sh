#!/usr/bin/env bash
# `make run`: a local cluster in the foreground. Two brokerd share ./run/data
# (the file lock decides the master); the handover sidecar listens on
# 127.0.0.1:61600 with the repository's proxy.toml. Each line of output is
# prefixed with its process. Ctrl-C stops everything cleanly (SIGTERM, then
# wait).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p run/data
# The shared directory's cluster identity, once (brokerd refuses a directory
# without one: an unmounted share must not become a second master).
[ -f run/data/cluster ] || ./bin/brokerd -init -data run/data

pids=()
start() { # name, command...
  local name=$1; shift
  # Process substitution keeps $! the command's own pid (a pipeline's
  # would be sed's), so stop() signals the real processes.
  "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}

stop() {
  trap - INT TERM
  echo "[run] stopping (SIGTERM: brokers flush and release the lock, the sidecar drains)..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "[run] stopped"
  exit 0
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
