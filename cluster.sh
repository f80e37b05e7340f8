#!/usr/bin/env bash
# cluster.sh start DIR EK_ROOTS_PEM: a three-node Gatehouse cluster on
# loopback, nodes in DIR/node-{1,2,3}, logs in DIR/node-N.log, PIDs in
# DIR/pids, API addresses in DIR/api-N, the root in DIR/root.crt.
# cluster.sh stop DIR: stops it (SIGTERM, then waits); the data stays.
# cluster.sh up DIR: `make cluster`: says so and leaves it alone when it is
# already running, restarts it from DIR when it was stopped, else mints a
# test TPM manufacturer (DIR/tpms) and starts a new cluster trusting it;
# then prints how to use it.
# cluster.sh running DIR: exit status 0 when all of DIR's nodes run.
# cluster.sh clean DIR: `make cluster-clean`: stops it and deletes DIR, but
# first keeps its CA password in $BACKUPS (ca-password-<root fingerprint>):
# without it, the backups taken of this cluster would not restore.
# Binaries come from $BIN (default bin), backups are suggested in $BACKUPS
# (default build/backups: outside what make cluster-clean deletes).
# CPU_PROFILE=1 (start): each node writes a Go CPU profile to
# DIR/node-N.cpu.pprof until it stops (make loadtest LOADTEST_PROFILE=1).
# HEAP_PROFILE=1 (start): each node writes a heap profile at its in-use
# heap's peak to DIR/node-N.heap.pprof (serve --heap-profile).
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-bin}
BACKUPS=${BACKUPS:-build/backups}

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
  # 18300 up: apart from the tests' fixed Raft ports (10000-17999), swtpm's
  # (20000 up) and the kernel's ephemeral range (32768 up).
  local api=18443 raft=18300
  for i in 1 2 3; do
    api=$(free_port $((api + 1))); raft=$(free_port $((raft + 1)))
    echo "127.0.0.1:$api" >"$D/api-$i"
    echo "127.0.0.1:$raft" >"$D/raft-$i"
  done
  $BIN/gatehouse init --data-dir "$D/node-1" --node-id node-1 --password-file "$D/ca-password" \
    --ek-roots "$roots" --trust-domain demo.gatehouse.internal \
    --listen "$(cat "$D/api-1")" --raft-addr "$(cat "$D/raft-1")" --cert-validity 720h --approval-retry 2s >/dev/null
  cp "$D/node-1/ca/root.crt" "$D/root.crt"
  $BIN/gatehouse serve --data-dir "$D/node-1" --password-file "$D/ca-password" \
    ${CPU_PROFILE:+--cpu-profile "$D/node-1.cpu.pprof"} ${HEAP_PROFILE:+--heap-profile "$D/node-1.heap.pprof"} >>"$D/node-1.log" 2>&1 &
  echo $! >>"$D/pids"
  wait_for "$D/node-1.log" "msg=ready" 30
  for i in 2 3; do
    $BIN/gatehouse cluster token create --data-dir "$D/node-1" >"$D/token-$i" 2>/dev/null
    $BIN/gatehouse serve --data-dir "$D/node-$i" --password-file "$D/ca-password" \
      --join "$(cat "$D/api-1")" --token-file "$D/token-$i" --node-id "node-$i" \
      --listen "$(cat "$D/api-$i")" --raft-addr "$(cat "$D/raft-$i")" \
      ${CPU_PROFILE:+--cpu-profile "$D/node-$i.cpu.pprof"} ${HEAP_PROFILE:+--heap-profile "$D/node-$i.heap.pprof"} >>"$D/node-$i.log" 2>&1 &
    echo $! >>"$D/pids"
    wait_for "$D/node-$i.log" "msg=ready" 30
    wait_for "$D/node-$i.log" "registered in the cluster" 30
  done
  [ "$($BIN/gatehouse cluster members --data-dir "$D/node-1" -o json | grep -c '"voter": true')" -eq 3 ] || die "expected 3 voters"
}

# is_node PID: PID is a live `gatehouse serve` (not a recycled PID).
is_node() {
  tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -q 'gatehouse serve'
}

running() {
  local D=$1 pid n=0
  [ -f "$D/pids" ] || return 1
  for pid in $(cat "$D/pids"); do
    is_node "$pid" || return 1
    n=$((n + 1))
  done
  [ "$n" -eq 3 ]
}

stop() {
  local D=$1 pid
  [ -f "$D/pids" ] || return 0
  for pid in $(tac "$D/pids"); do
    is_node "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || continue
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  done
  rm -f "$D/pids"
}

# clean: stop, keep the CA password beside the backups (named by the first
# 16 hex digits of the root's SHA-256, as `cluster backup inspect` prints
# it), delete DIR.
clean() {
  local D=$1 fp kept
  stop "$D"
  if [ -f "$D/ca-password" ] && [ -f "$D/root.crt" ]; then
    fp=$(openssl x509 -in "$D/root.crt" -outform der | sha256sum | cut -c1-16) || die "fingerprint of $D/root.crt"
    kept="$BACKUPS/ca-password-$fp"
    mkdir -p "$BACKUPS"
    cp "$D/ca-password" "$kept" && chmod 600 "$kept"
    echo "kept the CA password of the cluster (root sha256 $fp...) as $kept: its backups restore with it"
  fi
  rm -rf "$D"
  echo "stopped; deleted $D"
}

# restart: the three nodes of a stopped cluster, from their data
# directories (each keeps its addresses in its config.json). All three
# start before any is waited for: a lone node has no quorum.
restart() {
  local D=$1 i
  : >"$D/pids"
  for i in 1 2 3; do
    if [ -f "$D/node-$i.log" ]; then mv "$D/node-$i.log" "$D/node-$i.log.prev"; fi
    $BIN/gatehouse serve --data-dir "$D/node-$i" --password-file "$D/ca-password" >>"$D/node-$i.log" 2>&1 &
    echo $! >>"$D/pids"
  done
  for i in 1 2 3; do wait_for "$D/node-$i.log" "msg=ready" 60; done
}

up() {
  local D=$1
  if running "$D"; then
    echo "cluster: already running in $D (make cluster-stop stops it)"
  elif [ -f "$D/node-1/config.json" ]; then
    stop "$D" # whatever is left of a partial run
    echo "cluster: restarting the stopped cluster in $D"
    restart "$D"
  else
    if [ -e "$D" ]; then die "$D holds no complete cluster: make cluster-clean, then make cluster"; fi
    $BIN/mkdevices -dir "$D/tpms" -n 1 >/dev/null
    cat "$D/tpms/manufacturer/root.pem" "$D/tpms/manufacturer/issuercert.pem" >"$D/ek-roots.pem"
    start "$D" "$D/ek-roots.pem"
  fi
  mkdir -p "$BACKUPS"
  $BIN/gatehouse cluster members --data-dir "$D/node-1"
  cat <<EOF

Three nodes are running (logs: $D/node-N.log; data: $D/node-N).
  $BIN/gatehouse cluster status  --data-dir $D/node-2
  $BIN/gatehouse devices list    --data-dir $D/node-3
  $BIN/gatehouse cluster backup $BACKUPS/cluster.tar --data-dir $D/node-1
Enroll a swtpm device of the manufacturer the cluster trusts ($D/tpms/manufacturer);
it runs in the background until you stop it (kill %1):
  $BIN/mkdevices -manufacturer $D/tpms/manufacturer -dir $D/more -n 1 -run >$D/more.log &
  until [ -s $D/more/devices.txt ]; do kill -0 %1 2>/dev/null || break; sleep 0.2; done
  $BIN/gatehouse-agent enroll --server https://$(cat "$D/api-1") --server-root $D/root.crt --tpm "\$(cat $D/more/devices.txt)" --out $D/dev-1
Metrics: curl --cacert $D/root.crt https://$(cat "$D/api-1")/metrics
Stop, keeping the data (make cluster starts it again): make cluster-stop
Stop and delete $D (its CA password is kept in $BACKUPS for the backups): make cluster-clean
EOF
}

case "${1:-}" in
  start) start "$2" "$3" ;;
  stop) stop "$2" ;;
  up) up "$2" ;;
  running) running "$2" ;;
  clean) clean "$2" ;;
  *) die "usage: cluster.sh start DIR EK_ROOTS_PEM | stop DIR | up DIR | running DIR | clean DIR" ;;
esac
