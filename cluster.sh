#!/usr/bin/env bash
# cluster.sh start DIR EK_ROOTS_PEM: a three-node Gatehouse cluster on
# loopback, nodes in DIR/node-{1,2,3}, logs in DIR/node-N.log, PIDs in
# DIR/pids, API addresses in DIR/api-N, the root in DIR/root.crt.
# cluster.sh stop DIR: stops it (SIGTERM, then waits).
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "cluster: FAILED: $*" >&2; exit 1; }

free_port() {
  local p
  for p in $(seq "$1" $(($1 + 300))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port near $1"
}

wait_for() { # FILE PATTERN SECONDS
  local i
  for i in $(seq 1 $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "--- $1" >&2; tail -n 30 "$1" >&2 || true
  die "timed out waiting for '$2' in $1"
}

start() {
  local D=$1 roots=$2 i
  mkdir -p "$D"
  [ -f "$D/pids" ] && die "$D/pids exists: a cluster may be running (cluster.sh stop $D)"
  : >"$D/pids"
  local api=18443 raft=18300
  for i in 1 2 3; do
    api=$(free_port $((api + 1))); raft=$(free_port $((raft + 1)))
    echo "127.0.0.1:$api" >"$D/api-$i"
    echo "127.0.0.1:$raft" >"$D/raft-$i"
  done
  bin/gatehouse init --data-dir "$D/node-1" --node-id node-1 --password-file "$D/ca-password" \
    --ek-roots "$roots" --trust-domain demo.gatehouse.internal \
    --listen "$(cat "$D/api-1")" --raft-addr "$(cat "$D/raft-1")" --cert-validity 720h --approval-retry 2s >/dev/null
  cp "$D/node-1/ca/root.crt" "$D/root.crt"
  bin/gatehouse serve --data-dir "$D/node-1" --password-file "$D/ca-password" >>"$D/node-1.log" 2>&1 &
  echo $! >>"$D/pids"
  wait_for "$D/node-1.log" "msg=ready" 30
  for i in 2 3; do
    bin/gatehouse cluster token create --data-dir "$D/node-1" >"$D/token-$i" 2>/dev/null
    bin/gatehouse serve --data-dir "$D/node-$i" --password-file "$D/ca-password" \
      --join "$(cat "$D/api-1")" --token-file "$D/token-$i" --node-id "node-$i" \
      --listen "$(cat "$D/api-$i")" --raft-addr "$(cat "$D/raft-$i")" >>"$D/node-$i.log" 2>&1 &
    echo $! >>"$D/pids"
    wait_for "$D/node-$i.log" "msg=ready" 30
    wait_for "$D/node-$i.log" "registered in the cluster" 30
  done
  [ "$(bin/gatehouse cluster members --data-dir "$D/node-1" -o json | grep -c '"voter": true')" -eq 3 ] || die "expected 3 voters"
}

stop() {
  local D=$1 rc=0 pid
  [ -f "$D/pids" ] || return 0
  for pid in $(tac "$D/pids"); do
    kill -TERM "$pid" 2>/dev/null || continue
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  done
  rm -f "$D/pids"
  return $rc
}

case "${1:-}" in
  start) start "$2" "$3" ;;
  stop) stop "$2" ;;
  *) die "usage: cluster.sh start DIR EK_ROOTS_PEM | stop DIR" ;;
esac
