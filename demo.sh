#!/usr/bin/env bash
# make demo: a three-node appliance enrolls three swtpm devices end to end,
# each through a different node.
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

step "initializing node-1 (trust domain demo.gatehouse.internal)"
declare -a API RAFT
API[1]=$(free_port 18443); RAFT[1]=$(free_port 18300)
API[2]=$(free_port $((API[1] + 1))); RAFT[2]=$(free_port $((RAFT[1] + 1)))
API[3]=$(free_port $((API[2] + 1))); RAFT[3]=$(free_port $((RAFT[2] + 1)))
bin/gatehouse init --data-dir "$D/node-1" --node-id node-1 --password-file "$D/ca-password" \
  --ek-roots "$D/ek-roots.pem" --trust-domain demo.gatehouse.internal \
  --listen "127.0.0.1:${API[1]}" --raft-addr "127.0.0.1:${RAFT[1]}" --cert-validity 720h
cp "$D/node-1/ca/root.crt" "$D/root.crt"
grep -q "ENCRYPTED PRIVATE KEY" "$D/node-1/ca/intermediate.key" || die "intermediate key is not encrypted at rest"

declare -a SERVE
step "starting node-1"
bin/gatehouse serve --data-dir "$D/node-1" --password-file "$D/ca-password" >"$D/node-1.log" 2>&1 &
SERVE[1]=$!
pids+=(${SERVE[1]})
wait_for "$D/node-1.log" "msg=ready" 30

for i in 2 3; do
  step "node-$i joins through node-1 with a one-time token pinned to the cluster root"
  bin/gatehouse cluster token create --data-dir "$D/node-1" >"$D/token-$i" 2>/dev/null
  bin/gatehouse serve --data-dir "$D/node-$i" --password-file "$D/ca-password" \
    --join "127.0.0.1:${API[1]}" --token-file "$D/token-$i" --node-id "node-$i" \
    --listen "127.0.0.1:${API[i]}" --raft-addr "127.0.0.1:${RAFT[i]}" >"$D/node-$i.log" 2>&1 &
  SERVE[$i]=$!
  pids+=(${SERVE[$i]})
  wait_for "$D/node-$i.log" "msg=ready" 30
  wait_for "$D/node-$i.log" "registered in the cluster" 30
done
bin/gatehouse cluster members --data-dir "$D/node-1"
[ "$(bin/gatehouse cluster members --data-dir "$D/node-1" -o json | grep -c '"voter": true')" -eq 3 ] || die "expected 3 voters"

i=0
while read -r tpm; do
  i=$((i + 1))
  out="$D/device-$i"
  ak=ecdsa; [ "$i" -eq 2 ] && ak=rsa
  other=$((i % 3 + 1))
  step "device-$i: enrolling through node-$i ($tpm, $ak AK)"
  bin/gatehouse-agent enroll --server "https://127.0.0.1:${API[i]}" --server-root "$D/root.crt" --tpm "$tpm" \
    --out "$out" --ak "$ak" --serial "SN-000$i" --model demo-gateway --firmware-version "1.0.$i"
  echo "    openssl verify:"
  openssl verify -CAfile "$D/root.crt" -untrusted "$out/chain.pem" "$out/cert.pem" | sed 's/^/      /'
  openssl x509 -in "$out/cert.pem" -noout -subject -ext subjectAltName,extendedKeyUsage | sed 's/^/      /'
  echo "    whoami at node-$other over mTLS, signed inside the TPM:"
  bin/gatehouse-agent whoami --server "https://127.0.0.1:${API[other]}" --server-root "$D/root.crt" --tpm "$tpm" --dir "$out" | sed 's/^/      /'
  att=$(sed -n 's/.*"attestation_id": *\([0-9]*\).*/\1/p' "$out/identity.json")
  echo "    attestation record $att, read at node-$other:"
  bin/gatehouse attestations show "$att" --data-dir "$D/node-$other" | sed 's/^/      /'
done <"$D/tpms/devices.txt"

step "running the agent again on device-1: it already has a valid certificate"
bin/gatehouse-agent enroll --server "https://127.0.0.1:${API[1]}" --server-root "$D/root.crt" \
  --tpm "$(sed -n 1p "$D/tpms/devices.txt")" --out "$D/device-1"

step "device registry (read at node-3)"
bin/gatehouse devices list --data-dir "$D/node-3"
n=$(bin/gatehouse devices list --data-dir "$D/node-3" -o json | grep -c '"id"')
[ "$n" -eq 3 ] || die "expected 3 devices in the registry, found $n"
for i in 1 2 3; do
  h[$i]=$(bin/gatehouse status --data-dir "$D/node-$i" -o json | sed -n 's/.*"state_hash": "\(.*\)".*/\1/p')
done
[ "${h[1]}" = "${h[2]}" ] && [ "${h[2]}" = "${h[3]}" ] || die "registries differ: ${h[*]}"
echo "    all three registries hold the same state (sha256 ${h[1]:0:16}…)"

step "stopping"
for i in 3 2 1; do
  kill -TERM "${SERVE[$i]}"
  wait "${SERVE[$i]}" || die "node-$i exited with an error (see $D/node-$i.log)"
done
cleanup
pids=()
echo
echo "demo OK: artifacts in $D/ (root.crt, device-1..3/{cert.pem,chain.pem,config.json,key.blob})"
