#!/usr/bin/env bash
# loadtest.sh DIR [gatehouse-load flags...]: `make loadtest`. Starts a new
# three-node cluster in DIR (cluster.sh: real data directories, fsync on,
# loopback ports) that trusts a fresh test TPM manufacturer (DIR/tpms),
# with init's default policy (one group, mode auto), runs gatehouse-load
# against it with the flags given, and stops the nodes it started, also on
# failure or interrupt. The data stays in DIR for inspection (node-N.log);
# the next run deletes it first.
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-bin}
# The Makefile exports it for the step CLI test; gatehouse serve refuses
# a $GATEHOUSE_* variable that names no flag of its own.
unset GATEHOUSE_STEP
D=$1
shift
[ -f "$D/pids" ] && ./cluster.sh stop "$D"
rm -rf "$D"
mkdir -p "$D"
trap './cluster.sh stop "$D"' EXIT
$BIN/mkdevices -dir "$D/tpms" -n 1 >/dev/null
cat "$D/tpms/manufacturer/root.pem" "$D/tpms/manufacturer/issuercert.pem" >"$D/ek-roots.pem"
./cluster.sh start "$D" "$D/ek-roots.pem"
echo "loadtest: three nodes up in $D (PIDs $(tr '\n' ' ' <"$D/pids"))"
$BIN/gatehouse-load --cluster "$D" --manufacturer "$D/tpms/manufacturer" "$@"
