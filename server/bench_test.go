package server_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// BenchmarkEnrollment measures the appliance's side of one enrollment
// (challenge plus complete: EK chain, AK check, MakeCredential, quote,
// certify and CSR verification, Raft commit, step-ca issuance), called
// in-process. The device's TPM work runs with the timer stopped. cpu-µs/op
// is the process CPU time (user+system) spent inside the two calls, which
// includes Raft's background goroutines; ns/op also includes the fsyncs of
// the commit.
func BenchmarkEnrollment(b *testing.B) {
	for _, tc := range []struct {
		name string
		alg  goattest.Algorithm
	}{{"ECDSA-AK", goattest.ECDSA}, {"RSA-AK", goattest.RSA}} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b)
			d := e.newDevice(e.Mfr)
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
				ev, key, err := fwclient.Evidence(d.TPM, ak, ch, secret, nil)
				if err != nil {
					b.Fatal(err)
				}
				key.Close()
				b.StartTimer()
				c0 = cpuTime()
				_, err = enroller.Complete(ctx, ev)
				cpu += cpuTime() - c0
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
