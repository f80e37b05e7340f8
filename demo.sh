#!/usr/bin/env bash
# make demo: a three-node appliance enrolls swtpm devices end to end, each
# through a different node, under a policy captured from a real boot log.
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

BOOTLOG=testvectors/eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin
step "the boot the devices will prove: a real Ubuntu 21.04 event log from a GCE VM ($BOOTLOG)"
bin/gatehouse eventlog inspect "$BOOTLOG" | sed -n '/^facts:/,/^replayed sha1/p' | grep -v '^replayed' | sed 's/^/    /'

step "creating 5 swtpm devices with EK certificates from a test manufacturer CA, booted by extending that log into their PCRs (device-5's shim measurement differs)"
bin/mkdevices -dir "$D/tpms" -n 5 -run -boot-log "$BOOTLOG" -tamper-last >"$D/mkdevices.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  [ "$(grep -c '^swtpm://' "$D/tpms/devices.txt" 2>/dev/null)" = 5 ] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$D/mkdevices.log" >&2; die "mkdevices exited"; }
  sleep 0.1
done
[ "$(grep -c '^swtpm://' "$D/tpms/devices.txt" 2>/dev/null)" = 5 ] || die "expected 5 devices in $D/tpms/devices.txt"
cat "$D/tpms/manufacturer/root.pem" "$D/tpms/manufacturer/issuercert.pem" >"$D/ek-roots.pem"
sed 's/^/    /' "$D/tpms/devices.txt"

step "starting a three-node cluster: node-1 initializes, node-2 and node-3 join with one-time tokens pinned to the root"
./cluster.sh start "$D" "$D/ek-roots.pem"
grep -q "ENCRYPTED PRIVATE KEY" "$D/node-1/ca/intermediate.key" || die "intermediate key is not encrypted at rest"
declare -a API
for i in 1 2 3; do API[$i]=$(cut -d: -f2 "$D/api-$i"); done
bin/gatehouse cluster members --data-dir "$D/node-1"

mapfile -t TPM <"$D/tpms/devices.txt"
enroll() { # enroll N [MODEL]: device-N through node ((N-1)%3+1)
  local i=$1 node=$(( ($1 - 1) % 3 + 1 )) ak=ecdsa ek=rsa-2048 model=${2:-demo-gateway}
  [ "$i" -eq 2 ] && ak=rsa
  [ "$i" -eq 3 ] && ek=ecc-p384
  step "device-$i: enrolling through node-$node (${TPM[i-1]}, $ek EK, $ak AK, model $model, sending its event log)"
  bin/gatehouse-agent enroll --server "https://127.0.0.1:${API[$node]}" --server-root "$D/root.crt" --tpm "${TPM[i-1]}" \
    --out "$D/device-$i" --ek "$ek" --ak "$ak" --serial "SN-000$i" --model "$model" --firmware-version "1.0.$i" \
    --event-log "$D/tpms/device-$i.eventlog" --wait 2m
}
show() { # show N: verify device-N's certificate, then read its record at another node
  local i=$1 out="$D/device-$1" other=$(( $1 % 3 + 1 ))
  echo "    openssl verify:"
  openssl verify -CAfile "$D/root.crt" -untrusted "$out/chain.pem" "$out/cert.pem" | sed 's/^/      /'
  openssl x509 -in "$out/cert.pem" -noout -subject -ext subjectAltName,extendedKeyUsage | sed 's/^/      /'
  echo "    whoami at node-$other over mTLS, signed inside the TPM:"
  bin/gatehouse-agent whoami --server "https://127.0.0.1:${API[other]}" --server-root "$D/root.crt" --tpm "${TPM[i-1]}" --dir "$out" | sed 's/^/      /'
  att=$(sed -n 's/.*"attestation_id": *\([0-9]*\).*/\1/p' "$out/identity.json")
  echo "    attestation record $att, read at node-$other:"
  bin/gatehouse attestations show "$att" --data-dir "$D/node-$other" | sed 's/^/      /'
}

enroll 1
show 1

step "capturing a policy from device-1's accepted evidence: golden PCRs, Secure Boot off, boot digests, the reference events"
id1=$(sed -n 's/.*"device_id": *"\([0-9a-f]*\)".*/\1/p' "$D/device-1/identity.json")
bin/gatehouse policy capture --device "$id1" --group demo-gateways --data-dir "$D/node-1" >"$D/policy.json"
# Give the group a certificate profile and a device configuration.
sed -i 's|"certificate": {}|"certificate": {"validity": "720h", "dns_names": ["{{.DeviceID}}.gateways.demo.internal"]},\n      "config": {"ntp": "pool.ntp.org", "telemetry": "https://telemetry.demo.internal"}|' "$D/policy.json"
grep -q gateways.demo.internal "$D/policy.json" || die "could not add the certificate profile to $D/policy.json"
echo "    $D/policy.json: $(grep -o '"[0-9]*": "[0-9a-f]\{64\}"' "$D/policy.json" | wc -l) golden sha256 PCRs, group demo-gateways"
step "dry run: who would pass it (nothing is enforced yet)"
bin/gatehouse policy test "$D/policy.json" --data-dir "$D/node-2" | sed 's/^/    /'
step "applying it (replicated, versioned)"
bin/gatehouse policy apply "$D/policy.json" --data-dir "$D/node-2" | sed 's/^/    /'
bin/gatehouse policy history --data-dir "$D/node-3" | sed 's/^/    /'

for i in 2 3; do
  enroll "$i"
  show "$i"
done

enroll 5 >"$D/device-5.out" 2>&1 && die "device-5 booted a different shim and was admitted"
sed 's/^/    /' "$D/device-5.out"
att=$(bin/gatehouse attestations list --limit 1 -o json --data-dir "$D/node-1" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p' | head -n1)
echo "    device-5 refused; its attestation record $att explains why:"
refusal=$(bin/gatehouse attestations show "$att" --data-dir "$D/node-1")
sed -n '/^policy:/,/^evidence:/p' <<<"$refusal" | grep -v '^evidence:' | sed 's/^/      /'
[[ "$refusal" == *'event 23'*'shimx64.efi'* ]] || die "the refusal does not name the shim event"
[ -e "$D/device-5/cert.pem" ] && die "device-5 has a certificate"

step "operators and auditors: admin certificates for the HTTPS admin API (operator olga, auditor audrey)"
bin/gatehouse admin issue-cert --role operator --name olga --out "$D/olga" --data-dir "$D/node-1" | sed 's/^/    /'
bin/gatehouse admin issue-cert --role auditor --name audrey --out "$D/audrey" --data-dir "$D/node-1" | sed 's/^/    /'
OP=(--admin-config "$D/olga/admin.json")
AUD=(--admin-config "$D/audrey/admin.json")
bin/gatehouse "${AUD[@]}" devices approve "$id1" --reason "trying my luck" >"$D/audrey-write.out" 2>&1 && die "an auditor changed a device"
echo "    the auditor may not change devices: $(cat "$D/audrey-write.out")"

step "approve mode: the operator adds a group 'lab' (model lab-gateway) that waits for approval"
sed 's|"groups": \[|"groups": [\n    {"name": "lab", "mode": "approve", "match": {"models": ["lab-gateway"]}, "config": {"ntp": "lab-ntp.demo.internal"}},|' "$D/policy.json" >"$D/policy-lab.json"
bin/gatehouse "${OP[@]}" policy apply "$D/policy-lab.json" | sed 's/^/    /'
enroll 4 lab-gateway >"$D/device-4.out" 2>&1 &
agent4=$!
for _ in $(seq 1 300); do grep -q "pending approval" "$D/device-4.out" && break; sleep 0.1; done
grep -q "pending approval" "$D/device-4.out" || { cat "$D/device-4.out" >&2; die "device-4 did not wait for approval"; }
sed 's/^/    /' "$D/device-4.out"
echo "    the approval queue:"
bin/gatehouse "${OP[@]}" devices list --state pending | sed 's/^/      /'
id4=$(bin/gatehouse "${OP[@]}" devices list --state pending -o json | sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' | head -n1)
[ -e "$D/device-4/cert.pem" ] && die "a pending device has a certificate"
bin/gatehouse "${OP[@]}" devices approve "$id4" --reason "asset tag LAB-0042 checked" | sed 's/^/    /'
wait "$agent4" || { cat "$D/device-4.out" >&2; die "device-4 was not enrolled after approval"; }
echo "    the agent retried and got its certificate:"
sed -n '/^enrolled/,$p' "$D/device-4.out" | sed 's/^/      /'

step "renewal: device-1 re-attests (fresh quote with its enrolled AK) and gets a new certificate for the same TPM key"
old=$(openssl x509 -in "$D/device-1/cert.pem" -noout -serial)
bin/gatehouse-agent renew --server "https://127.0.0.1:${API[2]}" --server-root "$D/root.crt" --tpm "${TPM[0]}" --dir "$D/device-1" \
  --event-log "$D/tpms/device-1.eventlog" | sed 's/^/    /'
[ "$old" != "$(openssl x509 -in "$D/device-1/cert.pem" -noout -serial)" ] || die "renewal kept the old certificate"

step "revocation: the operator revokes device-2; every node's CRL lists its certificate and mTLS refuses it"
bin/gatehouse "${OP[@]}" devices revoke "$(sed -n 's/.*"device_id": *"\([0-9a-f]*\)".*/\1/p' "$D/device-2/identity.json")" --reason "reported stolen" | sed 's/^/    /'
crl_url=$(openssl x509 -in "$D/device-2/cert.pem" -noout -ext crlDistributionPoints | grep -o 'https://[^ ]*')
echo "    CRL distribution point in the certificate: $crl_url"
serial2=$(openssl x509 -in "$D/device-2/cert.pem" -noout -serial | cut -d= -f2)
# node-3 serves the CRL from its own replica (no leader round trip per
# request), so it lists the revocation once it has applied it: normally
# within milliseconds; the demo allows 5 s.
for i in $(seq 50); do
  curl -sf --cacert "$D/root.crt" "https://127.0.0.1:${API[3]}/crl" -o "$D/crl.der" || die "no CRL at node-3"
  openssl crl -inform DER -in "$D/crl.der" -noout -text | grep -qi "$serial2" && break
  sleep 0.1
done
echo "    node-3's CRL after $(( (i - 1) * 100 )) ms:"
openssl crl -inform DER -in "$D/crl.der" -noout -text | sed -n '/Revoked Certificates/,$p' | head -n 6 | sed 's/^/    /'
openssl crl -inform DER -in "$D/crl.der" -noout -text | grep -qi "$serial2" || die "the CRL does not list device-2's serial $serial2"
bin/gatehouse-agent whoami --server "https://127.0.0.1:${API[3]}" --server-root "$D/root.crt" --tpm "${TPM[1]}" --dir "$D/device-2" >"$D/whoami-2.out" 2>&1 && die "a revoked device passed mTLS"
echo "    whoami with the revoked certificate: $(cat "$D/whoami-2.out")"

step "the auditor: export the signed, hash-chained audit log and verify it offline against the root"
bin/gatehouse "${AUD[@]}" audit export --out "$D/audit.jsonl"
bin/gatehouse audit verify "$D/audit.jsonl" --root "$D/audrey/root.crt" | sed 's/^/    /'
grep -o '"type":"[a-z._]*"' "$D/audit.jsonl" | sort | uniq -c | sed 's/^/    /'
line=$(grep -n 'reported stolen' "$D/audit.jsonl" | head -n1 | cut -d: -f1)
sed "${line}s/reported stolen/reported found/" "$D/audit.jsonl" >"$D/audit-tampered.jsonl"
echo "    one reason edited on line $line:"
bin/gatehouse audit verify "$D/audit-tampered.jsonl" --root "$D/audrey/root.crt" 2>/dev/null | grep -E 'PROBLEM|result' | sed 's/^/      /' && die "a tampered log verified"
att1=$(sed -n 's/.*"attestation_id": *\([0-9]*\).*/\1/p' "$D/device-3/identity.json")
echo "    re-checking device-3's enrollment (attestation $att1) from its stored evidence alone:"
bin/gatehouse "${AUD[@]}" attestations verify "$att1" --ek-roots "$D/ek-roots.pem" | sed 's/^/      /'

step "running the agent again on device-1: it already has a valid certificate"
bin/gatehouse-agent enroll --server "https://127.0.0.1:${API[1]}" --server-root "$D/root.crt" \
  --tpm "${TPM[0]}" --out "$D/device-1"

step "device registry (read at node-3)"
bin/gatehouse devices list --data-dir "$D/node-3"
n=$(bin/gatehouse devices list --data-dir "$D/node-3" -o json | grep -c '"id": "[0-9a-f]\{32\}"')
[ "$n" -eq 4 ] || die "expected 4 devices in the registry, found $n"
for i in 1 2 3; do
  h[$i]=$(bin/gatehouse status --data-dir "$D/node-$i" -o json | sed -n 's/.*"state_hash": "\(.*\)".*/\1/p')
done
[ "${h[1]}" = "${h[2]}" ] && [ "${h[2]}" = "${h[3]}" ] || die "registries differ: ${h[*]}"
echo "    all three registries hold the same state (sha256 ${h[1]:0:16}…)"

step "stopping"
./cluster.sh stop "$D"
for i in 1 2 3; do grep -q 'msg=stopped .*err=<nil>' "$D/node-$i.log" || die "node-$i did not shut down cleanly (see $D/node-$i.log)"; done
cleanup
pids=()
echo
echo "demo OK: artifacts in $D/ (root.crt, device-1..4/{cert.pem,chain.pem,config.json,key.blob,ak.blob}, audit.jsonl, crl.der)"
