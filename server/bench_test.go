package server_test

import (
	"context"
	"encoding/json"
	"os"
	"syscall"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// BenchmarkEnrollment measures the appliance's side of one enrollment
// (challenge plus complete: EK chain, AK check, MakeCredential, quote,
// certify and CSR verification, Raft commit, step-ca issuance), called
// in-process. The device's TPM work runs with the timer stopped. cpu-µs/op
// is the process CPU time (user+system) spent inside the two calls, which
// includes Raft's background goroutines; ns/op also includes the fsyncs of
// the commit. The CapturedPolicy case sends a real 105-event log (the device
// booted it) and is judged by a policy captured from its first enrollment:
// golden PCRs, Secure Boot, firmware, boot digests and reference events.
func BenchmarkEnrollment(b *testing.B) {
	bootLog, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		alg  goattest.Algorithm
		log  []byte
	}{{"ECDSA-AK", goattest.ECDSA, nil}, {"RSA-AK", goattest.RSA, nil}, {"ECDSA-AK-CapturedPolicy", goattest.ECDSA, bootLog}} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b)
			d := servertest.NewBootedDevice(b, e.Mfr, tc.log)
			if tc.log != nil {
				applyCapturedPolicy(b, e, d, tc.log)
			}
			ak := d.NewAK(b, tc.alg) // one AK per device, as a device re-enrolling would reuse it
			enroller := e.App.Enroller()
			ctx := context.Background()
			chReq, err := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{Model: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			var cpu time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c0 := cpuTime()
				ch, err := enroller.Challenge(ctx, chReq)
				cpu += cpuTime() - c0
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				secret, err := ak.ActivateCredentialWithEK(d.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, d.EK)
				if err != nil {
					b.Fatal(err)
				}
				ev, key, err := fwclient.Evidence(d.TPM, ak, ch, secret, tc.log)
				if err != nil {
					b.Fatal(err)
				}
				key.Close()
				b.StartTimer()
				c0 = cpuTime()
				resp, err := enroller.Complete(ctx, ev)
				cpu += cpuTime() - c0
				if err != nil {
					b.Fatal(err)
				}
				if tc.log != nil && string(resp.Configuration) != `{"bench":true}` {
					b.Fatalf("not judged by the captured policy: config %s", resp.Configuration)
				}
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// applyCapturedPolicy enrolls d once with its log under the default policy,
// then applies a policy captured from that evidence.
func applyCapturedPolicy(b *testing.B, e *env, d *device, log []byte) {
	id, err := e.Client.Enroll(context.Background(), d.TPM, fwclient.WithEventLog(log))
	if err != nil {
		b.Fatal(err)
	}
	p, err := server.CapturePolicy(e.App.Node(), id.DeviceID, "bench")
	if err != nil {
		b.Fatal(err)
	}
	p.Groups[0].Config = json.RawMessage(`{"bench":true}`)
	doc, err := json.Marshal(p)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.App.ApplyPolicy(context.Background(), "bench", doc); err != nil {
		b.Fatal(err)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
