#!/usr/bin/env bash
# make demo: a single-node appliance enrolls three swtpm devices end to end.
# Everything it starts, it stops; artifacts stay in build/demo/.
set -euo pipefail
cd "$(dirname "$0")"

D=build/demo
rm -rf "$D"
mkdir -p "$D"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
die() { echo "demo: FAILED: $*" >&2; exit 1; }

# free_port prints a loopback TCP port nobody listens on, starting at $1.
free_port() {
  local p
  for p in $(seq "$1" $(($1 + 200))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port near $1"
}

# wait_for FILE PATTERN SECONDS
wait_for() {
  local i
  for i in $(seq 1 $(($3 * 10))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "--- $1" >&2; tail -n 30 "$1" >&2 || true
  die "timed out waiting for '$2' in $1"
}

step "creating 3 swtpm devices with EK certificates from a test manufacturer CA"
bin/mkdevices -dir "$D/tpms" -n 3 -run >"$D/mkdevices.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  [ "$(grep -c '^swtpm://' "$D/tpms/devices.txt" 2>/dev/null)" = 3 ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$D/mkdevices.log" >&2; die "mkdevices exited"; }
  sleep 0.1
done
[ "$(grep -c '^swtpm://' "$D/tpms/devices.txt" 2>/dev/null)" = 3 ] || die "expected 3 devices in $D/tpms/devices.txt"
cat "$D/tpms/manufacturer/root.pem" "$D/tpms/manufacturer/issuercert.pem" >"$D/ek-roots.pem"
sed 's/^/    /' "$D/tpms/devices.txt"

API=$(free_port 18443)
RAFT=$(free_port 18300)
step "initializing the appliance (trust domain demo.gatehouse.internal)"
bin/gatehouse init --data-dir "$D/node1" --password-file "$D/ca-password" \
  --ek-roots "$D/ek-roots.pem" --trust-domain demo.gatehouse.internal \
  --listen "127.0.0.1:$API" --raft-addr "127.0.0.1:$RAFT" --cert-validity 720h
cp "$D/node1/ca/root.crt" "$D/root.crt"
grep -q "ENCRYPTED PRIVATE KEY" "$D/node1/ca/intermediate.key" || die "intermediate key is not encrypted at rest"

step "starting the appliance"
bin/gatehouse serve --data-dir "$D/node1" --password-file "$D/ca-password" >"$D/node1.log" 2>&1 &
SERVE=$!
pids+=($SERVE)
wait_for "$D/node1.log" "msg=ready" 30
SERVER="https://127.0.0.1:$API"
echo "    device API at $SERVER (log: $D/node1.log)"

i=0
while read -r tpm; do
  i=$((i + 1))
  out="$D/device-$i"
  ak=ecdsa; [ "$i" -eq 2 ] && ak=rsa
  step "device-$i: enrolling through $tpm ($ak AK)"
  bin/gatehouse-agent enroll --server "$SERVER" --server-root "$D/root.crt" --tpm "$tpm" \
    --out "$out" --ak "$ak" --serial "SN-000$i" --model demo-gateway --firmware-version "1.0.$i"
  echo "    openssl verify:"
  openssl verify -CAfile "$D/root.crt" -untrusted "$out/chain.pem" "$out/cert.pem" | sed 's/^/      /'
  openssl x509 -in "$out/cert.pem" -noout -subject -ext subjectAltName,extendedKeyUsage | sed 's/^/      /'
  echo "    whoami over mTLS, signed inside the TPM:"
  bin/gatehouse-agent whoami --server "$SERVER" --server-root "$D/root.crt" --tpm "$tpm" --dir "$out" | sed 's/^/      /'
  att=$(sed -n 's/.*"attestation_id": *\([0-9]*\).*/\1/p' "$out/identity.json")
  echo "    attestation record $att:"
  bin/gatehouse attestations show "$att" --data-dir "$D/node1" | sed 's/^/      /'
done <"$D/tpms/devices.txt"

step "running the agent again on device-1: it already has a valid certificate"
bin/gatehouse-agent enroll --server "$SERVER" --server-root "$D/root.crt" \
  --tpm "$(sed -n 1p "$D/tpms/devices.txt")" --out "$D/device-1"

step "device registry"
bin/gatehouse devices list --data-dir "$D/node1"
n=$(bin/gatehouse devices list --data-dir "$D/node1" -o json | grep -c '"id"')
[ "$n" -eq 3 ] || die "expected 3 devices in the registry, found $n"

step "stopping"
kill -TERM "$SERVE"
wait "$SERVE" || die "gatehouse serve exited with an error (see $D/node1.log)"
cleanup
pids=()
echo
echo "demo OK: artifacts in $D/ (root.crt, device-1..3/{cert.pem,chain.pem,config.json,key.blob})"
