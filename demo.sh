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
  ./cluster.sh stop "$D" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
die() { echo "demo: FAILED: $*" >&2; exit 1; }

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

step "starting a three-node cluster: node-1 initializes, node-2 and node-3 join with one-time tokens pinned to the root"
./cluster.sh start "$D" "$D/ek-roots.pem"
grep -q "ENCRYPTED PRIVATE KEY" "$D/node-1/ca/intermediate.key" || die "intermediate key is not encrypted at rest"
declare -a API
for i in 1 2 3; do API[$i]=$(cut -d: -f2 "$D/api-$i"); done
bin/gatehouse cluster members --data-dir "$D/node-1"

i=0
while read -r tpm; do
  i=$((i + 1))
  out="$D/device-$i"
  ak=ecdsa; [ "$i" -eq 2 ] && ak=rsa
  other=$((i % 3 + 1))
  step "device-$i: enrolling through node-$i ($tpm, $ak AK)"
  bin/gatehouse-agent enroll --server "https://127.0.0.1:${API[$i]}" --server-root "$D/root.crt" --tpm "$tpm" \
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
./cluster.sh stop "$D"
for i in 1 2 3; do grep -q 'msg="shutting down"' "$D/node-$i.log" || die "node-$i did not shut down cleanly (see $D/node-$i.log)"; done
cleanup
pids=()
echo
echo "demo OK: artifacts in $D/ (root.crt, device-1..3/{cert.pem,chain.pem,config.json,key.blob})"
