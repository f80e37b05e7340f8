#!/usr/bin/env bash
# loadtest.sh DIR [gatehouse-load flags...]: `make loadtest`. Starts a new
# three-node cluster in DIR (cluster.sh: real data directories, fsync on,
# loopback ports) that trusts a fresh test TPM manufacturer (DIR/tpms),
# with init's default policy (one group, mode auto), runs gatehouse-load
# against it with the flags given, and stops the nodes it started, also on
# failure or interrupt: SIGTERM, and SIGKILL for a node still running 30 s
# later (a node hung in shutdown must not hang the run; it is named). The
# data stays in DIR for inspection (node-N.log); the next run deletes it
# first.
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-bin}
# The Makefile exports it for the step CLI test; gatehouse serve refuses
# a $GATEHOUSE_* variable that names no flag of its own.
unset GATEHOUSE_STEP
D=$1
shift

# stop_nodes: cluster.sh stop, bounded.
stop_nodes() {
  local pid i
  [ -f "$D/pids" ] || return 0
  for pid in $(cat "$D/pids"); do
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'gatehouse serve' && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $(cat "$D/pids"); do
    for i in $(seq 1 600); do
      tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'gatehouse serve' || break
      sleep 0.05
    done
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'gatehouse serve'; then
      echo "loadtest: node PID $pid still running 30 s after SIGTERM: SIGQUIT (goroutine dump in its log), then SIGKILL" >&2
      kill -QUIT "$pid" 2>/dev/null || true
      sleep 2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$D/pids"
}
stop_nodes
rm -rf "$D"
mkdir -p "$D"
trap stop_nodes EXIT
$BIN/mkdevices -dir "$D/tpms" -n 1 >/dev/null
cat "$D/tpms/manufacturer/root.pem" "$D/tpms/manufacturer/issuercert.pem" >"$D/ek-roots.pem"
./cluster.sh start "$D" "$D/ek-roots.pem"
echo "loadtest: three nodes up in $D (PIDs $(tr '\n' ' ' <"$D/pids"))"
$BIN/gatehouse-load --cluster "$D" --manufacturer "$D/tpms/manufacturer" "$@"
