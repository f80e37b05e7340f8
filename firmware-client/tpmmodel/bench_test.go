package tpmmodel_test

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"syscall"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
)

// cpu is this process's user+system CPU time.
func cpu(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkModelEnrollment is the load generator's own cost per
// enrollment: a fresh device (EK and its certificate), then one
// enrollment's TPM operations as fwclient runs them (AK creation and
// CertifyCreation, credential activation, device key and Certify, quote,
// PCR read, CSR, blobs). The appliance's part (AK check, MakeCredential)
// runs with the timer stopped and outside the cpu-ms/op figure, which
// counts the model's operations only (process CPU, GC included):
// device-cpu-ms/op is making the device (EK, EK certificate, SRK), which a
// load generator can do before its measured run, tpm-ops-cpu-ms/op the
// enrollment's TPM operations.
func BenchmarkModelEnrollment(b *testing.B) {
	m := swtpm.NewTestManufacturer(b)
	mfr := modelManufacturer(b, m)
	plat, err := tpmmodel.NewPlatform(readBootLog(b))
	if err != nil {
		b.Fatal(err)
	}
	nonce := sha256.Sum256([]byte("nonce"))
	secret := sha256.Sum256([]byte("secret"))
	for _, tc := range []struct {
		name string
		ek   string
		ak   goattest.Algorithm
	}{
		{"ecc-p256-ecdsa", fwclient.EKECCP256, goattest.ECDSA},
		{"rsa-2048-rsa", fwclient.EKRSA2048, goattest.RSA},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var deviceCPU, opsCPU time.Duration
			b.ReportAllocs()
			for b.Loop() {
				c0 := cpu(b)
				dev, err := mfr.NewDevice(plat, tc.ek)
				if err != nil {
					b.Fatal(err)
				}
				deviceCPU += cpu(b) - c0
				c0 = cpu(b)
				ek, err := dev.Endorsement("")
				if err != nil {
					b.Fatal(err)
				}
				ak, err := dev.CreateAK(tc.ak)
				if err != nil {
					b.Fatal(err)
				}
				params := ak.AttestationParameters()
				opsCPU += cpu(b) - c0

				b.StopTimer() // the appliance's work
				verified, err := gatehouse.VerifyAK(params)
				if err != nil {
					b.Fatal(err)
				}
				ec, err := verified.MakeCredential(ek.Public, ek.Area, secret[:])
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()

				c0 = cpu(b)
				if _, err := ak.ActivateCredential(ek, *ec); err != nil {
					b.Fatal(err)
				}
				key, err := ak.NewKey(api.CertifyQualifyingData(nonce[:]))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := ak.Quote(nonce[:], goattest.HashSHA256); err != nil {
					b.Fatal(err)
				}
				if _, err := dev.PCRs(goattest.HashSHA256); err != nil {
					b.Fatal(err)
				}
				if _, err := fwclient.CSR(key); err != nil {
					b.Fatal(err)
				}
				if _, err := key.Marshal(); err != nil {
					b.Fatal(err)
				}
				if _, err := ak.Marshal(); err != nil {
					b.Fatal(err)
				}
				opsCPU += cpu(b) - c0
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(ms(deviceCPU+opsCPU), "cpu-ms/op")
			b.ReportMetric(ms(deviceCPU), "device-cpu-ms/op")
			b.ReportMetric(ms(opsCPU), "tpm-ops-cpu-ms/op")
		})
	}
}

// BenchmarkModelRenewal is the load generator's own cost per renewal of an
// enrolled model device: the TPM operations fwclient.Renew runs (reload
// the device key and AK, quote, read PCRs, CSR) and one TLS handshake
// signature by the device key.
func BenchmarkModelRenewal(b *testing.B) {
	mfr := modelManufacturer(b, swtpm.NewTestManufacturer(b))
	plat, err := tpmmodel.NewPlatform(readBootLog(b))
	if err != nil {
		b.Fatal(err)
	}
	dev, err := mfr.NewDevice(plat, fwclient.EKECCP256)
	if err != nil {
		b.Fatal(err)
	}
	ak, err := dev.CreateAK(goattest.ECDSA)
	if err != nil {
		b.Fatal(err)
	}
	key, err := ak.NewKey([]byte("qualifying"))
	if err != nil {
		b.Fatal(err)
	}
	akBlob, _ := ak.Marshal()
	keyBlob, _ := key.Marshal()
	nonce := sha256.Sum256([]byte("nonce"))
	b.ReportAllocs()
	c0 := cpu(b)
	for b.Loop() {
		k, err := dev.OpenKey(keyBlob)
		if err != nil {
			b.Fatal(err)
		}
		a, err := dev.OpenAK(akBlob)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.Quote(nonce[:], goattest.HashSHA256); err != nil {
			b.Fatal(err)
		}
		if _, err := dev.PCRs(goattest.HashSHA256); err != nil {
			b.Fatal(err)
		}
		if _, err := fwclient.CSR(k); err != nil {
			b.Fatal(err)
		}
		priv, err := k.Private(k.Public())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := priv.(crypto.Signer).Sign(rand.Reader, nonce[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpu(b)-c0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
}
