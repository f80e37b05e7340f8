package adversary_test

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// Categories.
const (
	catToken    = "token"
	catEvidence = "evidence"
	catAK       = "ak"
	catQuote    = "quote-selection"
	catLog      = "event-log"
	catCertify  = "certify"
	catCSR      = "csr"
	catEK       = "ek"
	catClaims   = "claims"
	catProtocol = "protocol"
	catSigAlg   = "signature-alg"
	catMTLS     = "mtls"
	catRenew    = "renewal"
	catFlood    = "flood"
)

// attacks is the suite. Add a row: most need a base flow and a tamper.
func attacks() []Attack {
	var as []Attack
	add := func(a ...Attack) { as = append(as, a...) }
	plain := (*Harness).plainFlow
	golden := (*Harness).goldenFlow

	// ---- session tokens ----
	add(Attack{Name: "replayed session token (complete twice)", Category: catToken, Expect: ExpectProblem,
		Control: func(h *Harness) error { return certified(h.run(h.plainFlow())) },
		Attack: func(h *Harness) Result {
			f := h.plainFlow()
			s, r := h.open(f)
			if s == nil {
				return harnessErr("challenge: %v", r)
			}
			defer s.close()
			if err := certified(h.complete(f, s)); err != nil {
				return harnessErr("first completion: %v", err)
			}
			h.Arm()
			return h.complete(f, s)
		}})
	// Another session's evidence (its secret, quote, certify, CSR) under
	// this session's token.
	otherEvidence := func(dev string) func(h *Harness, f *Flow) {
		return func(h *Harness, f *Flow) {
			f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
				of := h.plainFlow()
				of.Dev = h.dev(dev)
				other, r := h.open(of)
				if other == nil {
					return fmt.Errorf("second session: %v", r)
				}
				defer other.close()
				tok := req.SessionToken
				*req = *other.Req
				req.SessionToken = tok
				return nil
			}
		}
	}
	add(enrollAttack("cross-session: token of session A with evidence of session B", catToken, plain, otherEvidence(devPlain)))
	add(enrollAttack("cross-device: token of device A with evidence of device B", catToken, plain, otherEvidence(devOther)))
	add(enrollAttack("tampered token (one byte flipped)", catToken, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			b := []byte(req.SessionToken)
			i := len(b) / 2
			if b[i] == 'A' {
				b[i] = 'B'
			} else {
				b[i] = 'A'
			}
			req.SessionToken = string(b)
			return nil
		}
	}))
	add(enrollAttack("truncated token", catToken, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.SessionToken = req.SessionToken[:len(req.SessionToken)-12]
			return nil
		}
	}))
	add(enrollAttack("empty token", catToken, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error { req.SessionToken = ""; return nil }
	}))
	add(enrollAttack("expired token (clock advanced past the session)", catToken, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			d := time.Until(s.Ch.ExpiresAt) + time.Minute
			h.Env.Clock.Advance(d)
			h.restoreClock = func() { h.Env.Clock.Advance(-d) } // after the request
			return nil
		}
	}))
	add(Attack{Name: "renewal token used to complete an enrollment", Category: catToken, Expect: ExpectProblem,
		Control: func(h *Harness) error { return certified(h.run(h.plainFlow())) },
		Attack: func(h *Harness) Result {
			e := h.peer()
			if e == nil {
				return harnessErr("no enrolled peer")
			}
			ch, a := h.renewChallenge(e)
			if ch == nil {
				return harnessErr("renew challenge: %v", a.Result)
			}
			f := h.plainFlow()
			f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
				req.SessionToken = ch.SessionToken
				return nil
			}
			return h.run(f)
		}})

	// ---- AKs ----
	add(enrollAttack("foreign AK: quote signed by another TPM's AK", catAK, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			o := h.dev(devOther)
			ak, err := o.TPM.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
			if err != nil {
				return err
			}
			defer ak.Close(o.TPM.TPM)
			q, err := ak.Quote(o.TPM.TPM, s.Ch.Nonce, goattest.HashSHA256)
			if err != nil {
				return err
			}
			req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
			return nil
		}
	}))
	add(enrollAttack("foreign AK: another TPM's AK presented with this EK", catAK, plain, func(h *Harness, f *Flow) {
		f.Dev = h.dev(devOther) // the AK and all evidence come from the other TPM
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			victim, err := fwclientChallenge(h.dev(devPlain), s.AK)
			if err != nil {
				return err
			}
			req.EKCertificate, req.EKPublic = victim.EKCertificate, victim.EKPublic
			return nil
		}
	}))
	add(enrollAttack("software AK (crafted TPMT_PUBLIC, fake creation data, self-signed)", catAK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			ak, err := softwareAK(req.AK)
			req.AK = ak
			return err
		}
	}))
	add(enrollAttack("AK creation attestation of another key", catAK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			o := h.dev(devOther)
			ak, err := o.TPM.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
			if err != nil {
				return err
			}
			defer ak.Close(o.TPM.TPM)
			p := ak.AttestationParameters()
			req.AK.CreateData, req.AK.CreateAttestation, req.AK.CreateSignature = p.CreateData, p.CreateAttestation, p.CreateSignature
			return nil
		}
	}))
	add(enrollAttack("wrong activated secret", catEvidence, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error { req.ActivatedSecret[0] ^= 1; return nil }
	}))
	add(enrollAttack("no activated secret", catEvidence, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error { req.ActivatedSecret = nil; return nil }
	}))

	// ---- quotes ----
	add(enrollAttack("tampered quote bytes", catEvidence, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.Quote.Quote[len(req.Quote.Quote)-3] ^= 0x40
			return nil
		}
	}))
	add(enrollAttack("tampered quote signature", catEvidence, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.Quote.Signature[len(req.Quote.Signature)-1] ^= 1
			return nil
		}
	}))
	add(enrollAttack("quote over a different nonce", catEvidence, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			q, err := s.ak().Quote(s.Dev.TPM.TPM, bytes.Repeat([]byte{7}, 32), goattest.HashSHA256)
			if err != nil {
				return err
			}
			req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
			return nil
		}
	}))
	add(enrollAttack("quote of an unallocated SHA-1 bank, golden SHA-256 PCRs sent (tampered shim)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Dev = h.dev(devShim)
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			q, err := s.ak().Quote(s.Dev.TPM.TPM, s.Ch.Nonce, goattest.HashSHA1)
			if err != nil {
				return err
			}
			req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
			req.PCRs = h.goldenOver(req.PCRs)
			return nil
		}
	}))
	add(enrollAttack("quote of an empty selection, golden SHA-256 PCRs sent (tampered shim)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Dev = h.dev(devShim)
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			q, err := s.ak().QuotePCRs(s.Dev.TPM.TPM, s.Ch.Nonce, goattest.HashSHA256, []int{})
			if err != nil {
				return err
			}
			req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
			req.PCRs = h.goldenOver(req.PCRs)
			return nil
		}
	}))
	add(enrollAttack("quote covers PCR 23 only, golden values sent for the rest (tampered shim)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Dev = h.dev(devShim)
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			q, err := s.ak().QuotePCRs(s.Dev.TPM.TPM, s.Ch.Nonce, goattest.HashSHA256, []int{23})
			if err != nil {
				return err
			}
			req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
			req.PCRs = h.goldenOver(req.PCRs)
			return nil
		}
	}))
	add(enrollAttack("PCRs sent outside the quote selection (quote 0-7, send 0-23)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			q, err := s.ak().QuotePCRs(s.Dev.TPM.TPM, s.Ch.Nonce, goattest.HashSHA256, []int{0, 1, 2, 3, 4, 5, 6, 7})
			if err != nil {
				return err
			}
			req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
			return nil
		}
	}))
	add(enrollAttack("SHA-1 PCRs sent next to a SHA-256 quote", catQuote, golden, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			for i := 0; i < 24; i++ {
				req.PCRs = append(req.PCRs, api.PCR{Index: i, Bank: "sha1", Digest: make([]byte, 20)})
			}
			return nil
		}
	}))
	add(enrollAttack("quoted PCRs omitted (16-23 not sent)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error { req.PCRs = req.PCRs[:16]; return nil }
	}))
	add(enrollAttack("tampered PCR value", catQuote, golden, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.PCRs[4].Digest[0] ^= 0xff
			return nil
		}
	}))
	add(enrollAttack("duplicate PCR: golden PCR 4 before the quoted one (tampered shim)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Dev = h.dev(devShim)
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.PCRs = append([]api.PCR{{Index: 4, Bank: "sha256", Digest: h.Golden[4]}}, req.PCRs...)
			return nil
		}
	}))
	add(enrollAttack("duplicate PCR: golden PCR 4 after the quoted one (tampered shim)", catQuote, golden, func(h *Harness, f *Flow) {
		f.Dev = h.dev(devShim)
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.PCRs = append(req.PCRs, api.PCR{Index: 4, Bank: "sha256", Digest: h.Golden[4]})
			return nil
		}
	}))
	for _, idx := range []int{-1, 24, 1 << 30} {
		add(enrollAttack(fmt.Sprintf("PCR index %d", idx), catQuote, plain, func(h *Harness, f *Flow) {
			f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
				req.PCRs = append(req.PCRs, api.PCR{Index: idx, Bank: "sha256", Digest: make([]byte, 32)})
				return nil
			}
		}))
	}
	add(enrollAttack("unknown PCR bank", catQuote, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.PCRs[0].Bank = "sha3_256"
			return nil
		}
	}))

	// ---- event logs ----
	add(enrollAttack("tampered event log (shim digest changed)", catLog, golden, func(h *Harness, f *Flow) { f.Log = h.ShimLog }))
	add(enrollAttack("truncated event log", catLog, golden, func(h *Harness, f *Flow) { f.Log = h.Log[:len(h.Log)/2] }))
	add(enrollAttack("event log of random bytes", catLog, golden, func(h *Harness, f *Flow) { f.Log = randomBytes(4096) }))
	add(enrollAttack("oversized event log (over the body limit)", catLog, golden, func(h *Harness, f *Flow) {
		f.Log = append(bytes.Clone(h.Log), make([]byte, api.MaxCompleteBody)...)
	}))
	add(enrollAttack("good log replayed by a tampered boot", catLog, golden, func(h *Harness, f *Flow) { f.Dev = h.dev(devShim) }))
	add(enrollAttack("log facts don't match digests (EVL firmware booted, GCE v1 text sent)", catLog, (*Harness).factsFlow, func(h *Harness, f *Flow) {
		f.Dev, f.Log = h.dev(devEvilFW), h.ForgedFWLog
	}))

	// ---- certify ----
	add(enrollAttack("software device key posing as TPM key", catCertify, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pub, err := eccPublic(&k.PublicKey, false).Encode()
			if err != nil {
				return err
			}
			req.DeviceKey.Public = pub
			req.CSR, err = softwareCSR(k, nil)
			return err
		}
	}))
	add(enrollAttack("device key certified by another TPM's AK", catCertify, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			o := h.dev(devOther)
			ak, err := o.TPM.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
			if err != nil {
				return err
			}
			defer ak.Close(o.TPM.TPM)
			key, err := o.TPM.NewKey(ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256, QualifyingData: api.CertifyQualifyingData(s.Ch.Nonce)})
			if err != nil {
				return err
			}
			defer key.Close()
			cp := key.CertificationParameters()
			req.DeviceKey = api.KeyParameters{Public: cp.Public, CreateData: cp.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature}
			req.CSR, err = csrOf(key, nil)
			return err
		}
	}))
	add(enrollAttack("certify replay: device key certified for another session", catCertify, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			other, r := h.open(h.plainFlow())
			if other == nil {
				return fmt.Errorf("second session: %v", r)
			}
			defer other.close()
			req.DeviceKey, req.CSR = other.Req.DeviceKey, other.Req.CSR
			return nil
		}
	}))
	add(enrollAttack("certify qualified with the raw nonce (no domain separation)", catCertify, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			key, err := s.Dev.TPM.NewKey(s.ak(), &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256, QualifyingData: s.Ch.Nonce})
			if err != nil {
				return err
			}
			defer key.Close()
			cp := key.CertificationParameters()
			req.DeviceKey = api.KeyParameters{Public: cp.Public, CreateData: cp.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature}
			req.CSR, err = csrOf(key, nil)
			return err
		}
	}))

	// ---- CSRs ----
	add(enrollAttack("CSR asking for other names (DNS, admin SPIFFE URI)", catCSR, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) (err error) {
			u, _ := url.Parse("spiffe://" + servertest.TrustDomain + "/admin/operator/mallory")
			req.CSR, err = csrOf(s.key(), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}, DNSNames: []string{"gatehouse.example.com"}, URIs: []*url.URL{u}})
			return err
		}
	}))
	add(enrollAttack("CSR asking for CA:true", catCSR, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			ext, err := basicConstraintsCA()
			if err != nil {
				return err
			}
			req.CSR, err = csrOf(s.key(), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gatehouse-device"}, ExtraExtensions: []pkix.Extension{ext}})
			return err
		}
	}))
	add(enrollAttack("CSR for a different (software) key", catCSR, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) (err error) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			req.CSR, err = softwareCSR(k, nil)
			return err
		}
	}))
	add(enrollAttack("CSR with a broken signature", catCSR, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.CSR[len(req.CSR)-2] ^= 0x10
			return nil
		}
	}))

	// ---- EKs ----
	add(enrollAttack("EK certificate from an untrusted (self-made) CA over the real EK", catEK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) (err error) {
			req.EKCertificate, err = selfMadeEKCert(s.Dev.EK.Public)
			return err
		}
	}))
	// An EK admitted only because a group lists it is that group's to
	// decide: the catch-all before it must not take it (control: the same
	// TPM with its genuine certificate enrolls through the catch-all).
	vouchedFlow := func(h *Harness) Flow { f := h.plainFlow(); f.Dev = h.dev(devVouched); return f }
	add(enrollAttack("pre-registered EK with a self-made certificate, listed in a strict group after a catch-all", catEK, vouchedFlow, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) (err error) {
			req.EKCertificate, err = selfMadeEKCert(s.Dev.EK.Public)
			return err
		}
	}))
	add(enrollAttack("EK certificate of an untrusted manufacturer's TPM", catEK, plain, func(h *Harness, f *Flow) {
		f.Dev = h.foreignMfrDev()
	}))
	add(enrollAttack("EK public key not matching the EK certificate", catEK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			o, err := fwclientChallenge(h.dev(devOther), s.AK)
			req.EKPublic = o.EKPublic
			return err
		}
	}))
	add(enrollAttack("EK public area for a different key", catEK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				return err
			}
			req.EKPublicArea, err = ekAreaFor(&k.PublicKey)
			return err
		}
	}))
	add(enrollAttack("EK certificate bytes garbage", catEK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			req.EKCertificate = randomBytes(900)
			return nil
		}
	}))
	add(enrollAttack("EK public key only, not pre-registered", catEK, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error { req.EKCertificate = nil; return nil }
	}))

	// ---- claims ----
	for _, c := range []struct{ name, serial string }{
		{"claim serial admin/operator/x", "admin/operator/x"},
		{"claim serial node/x", "node/x"},
		{"claim serial *", "*"},
		{"claim serial ../../admin", "../../admin"},
		{"claim serial with control characters", "SN\x00\r\nX-Injected: 1"},
		{"claim serial very long (16 KiB)", strings.Repeat("a", 16<<10)},
		{"claim serial with a dot (extra DNS label)", "evil.example.org"},
	} {
		add(enrollAttack(c.name, catClaims, (*Harness).claimsFlow, func(h *Harness, f *Flow) { f.Serial = c.serial }))
	}

	// ---- protocol ----
	add(enrollAttack("oversize complete body", catProtocol, plain, func(h *Harness, f *Flow) {
		f.Body = func(b []byte) []byte {
			return append(b[:len(b)-1], []byte(`,"x":"`+strings.Repeat("A", api.MaxCompleteBody)+`"}`)...)
		}
	}))
	add(enrollAttack("oversize challenge body", catProtocol, plain, func(h *Harness, f *Flow) {
		f.ChallengeBody = func(b []byte) []byte {
			return append(b[:len(b)-1], []byte(`,"x":"`+strings.Repeat("A", api.MaxChallengeBody)+`"}`)...)
		}
	}))
	add(enrollAttack("wrong Content-Type (text/plain)", catProtocol, plain, func(h *Harness, f *Flow) { f.ContentType = "text/plain" }))
	add(enrollAttack("non-JSON complete body", catProtocol, plain, func(h *Harness, f *Flow) {
		f.Body = func(b []byte) []byte { return []byte("session_token=" + string(b[:40])) }
	}))
	add(enrollAttack("unknown JSON field", catProtocol, plain, func(h *Harness, f *Flow) {
		f.Body = func(b []byte) []byte { return append(b[:len(b)-1], []byte(`,"is_admin":true}`)...) }
	}))
	add(enrollAttack("trailing JSON after the body", catProtocol, plain, func(h *Harness, f *Flow) {
		f.Body = func(b []byte) []byte { return append(b, []byte(`{"session_token":"x"}`)...) }
	}))
	add(Attack{Name: "slowloris (headers trickled)", Category: catProtocol, Expect: ExpectClosed,
		Control: func(h *Harness) error {
			r := h.slowloris(0)
			if r.Status != http.StatusOK {
				return fmt.Errorf("fast raw request: %v", r)
			}
			return nil
		},
		Attack: func(h *Harness) Result { return h.slowloris(500 * time.Millisecond) }})

	// ---- signature algorithms ----
	add(enrollAttack("RSA-typed creation signature for an ECDSA AK", catSigAlg, plain, func(h *Harness, f *Flow) {
		f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
			req.AK.CreateSignature = rsaTypedSignature()
			return nil
		}
	}))
	add(enrollAttack("RSA-typed quote signature for an ECDSA AK", catSigAlg, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.Quote.Signature = rsaTypedSignature()
			return nil
		}
	}))
	add(enrollAttack("RSA-typed certify signature for an ECDSA AK", catSigAlg, plain, func(h *Harness, f *Flow) {
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			req.DeviceKey.CreateSignature = rsaTypedSignature()
			return nil
		}
	}))
	add(enrollAttack("ECDSA-typed quote signature for an RSA AK", catSigAlg, plain, func(h *Harness, f *Flow) {
		f.AKAlg = goattest.RSA
		f.Complete = func(h *Harness, s *Session, req *api.CompleteRequest) error {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			sig, err := eccSignature(k, req.Quote.Quote)
			req.Quote.Signature = sig
			return err
		}
	}))

	// ---- mTLS ----
	add(Attack{Name: "mTLS with a certificate from a foreign CA", Category: catMTLS, Expect: ExpectTLSRefused,
		Control: func(h *Harness) error { return h.whoamiOK(h.peer()) },
		Attack: func(h *Harness) Result {
			cert, err := foreignClientCert("spiffe://" + servertest.TrustDomain + "/device/" + h.peer().ID.DeviceID)
			if err != nil {
				return harnessErr("%v", err)
			}
			hc := h.tlsClient(cert)
			defer hc.CloseIdleConnections()
			return h.get(hc, api.PathWhoAmI)
		}})
	add(Attack{Name: "device certificate on an admin route", Category: catMTLS, Expect: ExpectProblem,
		Control: func(h *Harness) error { return h.whoamiOK(h.peer()) },
		Attack: func(h *Harness) Result {
			hc, done, err := h.mtls(h.peer())
			if err != nil {
				return harnessErr("%v", err)
			}
			defer done()
			for _, r := range h.Env.App.AdminRoutes() {
				if m, p, _ := strings.Cut(r.Pattern, " "); m == http.MethodGet && !strings.Contains(p, "{") {
					return h.get(hc, p)
				}
			}
			return harnessErr("no admin GET route")
		}})
	add(Attack{Name: "device certificate on the cluster apply route", Category: catMTLS, Expect: ExpectProblem,
		Control: func(h *Harness) error { return h.whoamiOK(h.peer()) },
		Attack: func(h *Harness) Result {
			hc, done, err := h.mtls(h.peer())
			if err != nil {
				return harnessErr("%v", err)
			}
			defer done()
			return h.post(hc, "/cluster/v1/apply", "application/json", []byte(`{}`))
		}})

	// ---- renewal ----
	add(renewAttack("revoked device certificate on renew challenge", catMTLS, func(h *Harness, f *RenewFlow) error {
		if _, err := h.Env.App.RevokeDevice(h.Ctx, f.E.ID.DeviceID, "adversary", "test"); err != nil {
			return err
		}
		return nil
	}))
	add(renewAttack("renewal after revoke (token taken before)", catRenew, func(h *Harness, f *RenewFlow) error {
		f.BeforeRenew = func(h *Harness) error {
			_, err := h.Env.App.RevokeDevice(h.Ctx, f.E.ID.DeviceID, "adversary", "test")
			return err
		}
		return nil
	}))
	add(renewAttack("renew with device A's mTLS and device B's AK", catRenew, func(h *Harness, f *RenewFlow) error {
		f.Quote = func(h *Harness, rs *RenewSession) error {
			o := h.dev(devOther)
			ak, err := o.TPM.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
			if err != nil {
				return err
			}
			defer ak.Close(o.TPM.TPM)
			if rs.Quote, err = ak.Quote(o.TPM.TPM, rs.Ch.Nonce, goattest.HashSHA256); err != nil {
				return err
			}
			rs.otherAK = ak.AttestationParameters().Public
			return nil
		}
		f.Request = func(h *Harness, rs *RenewSession, req *api.RenewRequest) error {
			req.AKPublic = rs.otherAK
			return nil
		}
		return nil
	}))
	add(renewAttack("renewal token from another device", catRenew, func(h *Harness, f *RenewFlow) error {
		f.Token = func(h *Harness) (string, error) {
			ch, a := h.renewChallenge(h.peer())
			if ch == nil {
				return "", fmt.Errorf("peer's renew challenge: %v", a.Result)
			}
			return ch.SessionToken, nil
		}
		return nil
	}))
	add(renewAttack("enrollment token used for renewal", catRenew, func(h *Harness, f *RenewFlow) error {
		f.Token = func(h *Harness) (string, error) {
			s, r := h.open(h.plainFlow())
			if s == nil {
				return "", fmt.Errorf("enrollment challenge: %v", r)
			}
			defer s.close()
			return s.Ch.SessionToken, nil
		}
		return nil
	}))
	add(Attack{Name: "renewal replayed (renew twice with one token)", Category: catRenew, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			e, err := h.enrolled()
			if err != nil {
				return err
			}
			h.replayDev = e
			return certified(h.renew(RenewFlow{E: e}))
		},
		Attack: func(h *Harness) Result {
			var body []byte
			f := RenewFlow{E: h.replayDev, Body: func(b []byte) []byte { body = b; return b }}
			if err := certified(h.renew(f)); err != nil {
				return harnessErr("first renewal: %v", err)
			}
			hc, done, err := h.mtls(h.replayDev)
			if err != nil {
				return harnessErr("%v", err)
			}
			defer done()
			h.Arm()
			return h.post(hc, api.PathRenew, "application/json", body)
		}})
	add(renewAttack("renewal with RSA-typed quote signature for an ECDSA AK", catSigAlg, func(h *Harness, f *RenewFlow) error {
		f.Request = func(h *Harness, rs *RenewSession, req *api.RenewRequest) error {
			req.Quote.Signature = rsaTypedSignature()
			return nil
		}
		return nil
	}))
	add(renewAttack("renewal PCRs outside the quote selection", catQuote, func(h *Harness, f *RenewFlow) error {
		f.Quote = func(h *Harness, rs *RenewSession) (err error) {
			rs.Quote, err = rs.AK.QuotePCRs(rs.E.TPM.TPM, rs.Ch.Nonce, goattest.HashSHA256, []int{0, 1, 2, 3})
			return err
		}
		return nil
	}))
	add(renewAttack("renewal quote of an unallocated SHA-1 bank", catQuote, func(h *Harness, f *RenewFlow) error {
		f.Quote = func(h *Harness, rs *RenewSession) (err error) {
			rs.Quote, err = rs.AK.Quote(rs.E.TPM.TPM, rs.Ch.Nonce, goattest.HashSHA1)
			return err
		}
		return nil
	}))
	add(renewAttack("renewal CSR for a different key", catRenew, func(h *Harness, f *RenewFlow) error {
		f.Request = func(h *Harness, rs *RenewSession, req *api.RenewRequest) (err error) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			req.CSR, err = softwareCSR(k, nil)
			return err
		}
		return nil
	}))
	add(renewAttack("renewal with wrong Content-Type", catProtocol, func(h *Harness, f *RenewFlow) error {
		f.ContentType = "text/plain"
		return nil
	}))

	// ---- floods (issue 10) ----
	add(Attack{Name: "victim's flags raised with its public EK certificate", Category: catFlood, Expect: ExpectProblem,
		Control: func(h *Harness) error {
			v := h.newDev(nil)
			id, err := h.enroll(v.TPM, fwclient.WithClaims(api.Claims{Model: modelPlain}))
			if err != nil {
				return err
			}
			h.victim = &Enrolled{Dev: v, ID: id}
			return nil
		},
		Attack: func(h *Harness) Result {
			if h.victim == nil {
				return harnessErr("no victim")
			}
			before, err := h.Env.App.Node().Device(h.victim.ID.DeviceID)
			if err != nil {
				return harnessErr("%v", err)
			}
			var last Result
			for i := 0; i < 6; i++ {
				f := h.plainFlow()
				f.Dev = h.dev(devOther)
				f.Challenge = func(h *Harness, s *Session, req *api.ChallengeRequest) error {
					v, err := fwclientChallenge(h.victim.Dev, s.AK)
					req.EKCertificate, req.EKPublic = v.EKCertificate, v.EKPublic
					return err
				}
				last = h.run(f)
				if last.Problem == nil || last.Status/100 != 4 {
					return last
				}
			}
			after, err := h.Env.App.Node().Device(h.victim.ID.DeviceID)
			if err != nil {
				return harnessErr("%v", err)
			}
			if len(after.Flags) != len(before.Flags) {
				last.Violation = fmt.Sprintf("victim's flags went from %d to %d (%s)", len(before.Flags), len(after.Flags), after.Flags[len(after.Flags)-1].Name)
			}
			return last
		}})
	add(Attack{Name: "flood of 40 refused challenges (data directory growth)", Category: catFlood, Expect: ExpectProblem,
		Control: func(h *Harness) error { return certified(h.run(h.plainFlow())) },
		Attack: func(h *Harness) Result {
			const n, bound = 40, 512 << 10
			before, err := dirUsage(h.Env.Dir)
			if err != nil {
				return harnessErr("%v", err)
			}
			var last Result
			h.NoRetry = true // rate limiting is one way to bound the flood
			defer func() { h.NoRetry = false }()
			for i := 0; i < n; i++ {
				body, _ := json.Marshal(api.ChallengeRequest{EKCertificate: randomBytes(40 << 10)})
				last = h.post(nil, api.PathChallenge, "application/json", body)
				if last.Problem == nil || last.Status/100 != 4 {
					return last
				}
			}
			after, err := dirUsage(h.Env.Dir)
			if err != nil {
				return harnessErr("%v", err)
			}
			h.T.Logf("flood: data directory %d -> %d bytes (+%d) after %d refused challenges", before, after, after-before, n)
			if after-before > bound {
				last.Violation = fmt.Sprintf("data directory grew by %d KiB for %d refused challenges (bound %d KiB)", (after-before)>>10, n, bound>>10)
			}
			return last
		}})

	// ---- issue 11: probes, metrics, node info, EK roots, settings, enrollments ----
	add(opsAttacks()...)
	// ---- issue 10: identities, admin, joins, audit, revocation, rate limits, backups ----
	add(trustAttacks()...)
	// ---- issue 12: a device's certificates ----
	add(deviceCertsAttacks()...)
	// ---- issue 12: the audit entries query ----
	add(auditQueryAttacks()...)
	// ---- issue 12: the fleet aggregate ----
	add(fleetAttacks()...)
	// ---- issue 13: the attestation CA ----
	add(attestCAAttacks()...)
	// ---- issue 13: ACME device-attest-01 ----
	add(acmeAttacks()...)
	return as
}

// ---- attack helpers ----

// goldenOver replaces the sent SHA-256 PCR values with the reference
// boot's, keeping the device's own values for PCRs the log never touches.
func (h *Harness) goldenOver(in []api.PCR) []api.PCR {
	out := make([]api.PCR, len(in))
	for i, p := range in {
		if g, ok := h.Golden[p.Index]; ok && p.Bank == "sha256" {
			p.Digest = g
		}
		out[i] = p
	}
	return out
}

// peer is an enrolled device other attacks borrow (its tokens, its
// identity), never one an attack spends.
func (h *Harness) peer() *Enrolled {
	if h.peerDev == nil {
		e, err := h.enrolled()
		if err != nil {
			h.T.Fatalf("peer: %v", err)
		}
		h.peerDev = e
	}
	return h.peerDev
}

func (h *Harness) whoamiOK(e *Enrolled) error {
	hc, done, err := h.mtls(e)
	if err != nil {
		return err
	}
	defer done()
	if r := h.get(hc, api.PathWhoAmI); r.Status != http.StatusOK {
		return fmt.Errorf("whoami: %v", r)
	}
	return nil
}

// foreignMfrDev is a TPM whose manufacturer the appliance does not trust.
func (h *Harness) foreignMfrDev() *Dev {
	if d, ok := h.devs["foreign-mfr"]; ok {
		return d
	}
	d := servertest.NewDevice(h.T, swtpm.NewTestManufacturer(h.T))
	id, _ := attest.DeviceID(d.EK.Public)
	h.devs["foreign-mfr"] = &Dev{Device: d, ID: id}
	return h.devs["foreign-mfr"]
}

// fwclientChallenge is d's honest challenge request (its EK) with ak.
func fwclientChallenge(d *Dev, ak *goattest.AK) (*api.ChallengeRequest, error) {
	return fwclient.NewChallengeRequest(d.EK, ak, api.Claims{})
}

// csrOf is a CSR signed inside the TPM by key.
func csrOf(key *goattest.Key, tmpl *x509.CertificateRequest) ([]byte, error) {
	if tmpl == nil {
		return fwclient.CSR(key)
	}
	priv, err := key.Private(key.Public())
	if err != nil {
		return nil, err
	}
	signer, ok := priv.(interface {
		Public() crypto.PublicKey
		Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error)
	})
	if !ok {
		return nil, errors.New("device key is not a signer")
	}
	return x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
}

// slowloris opens a raw TLS connection and sends a request's headers one
// byte every gap (0: all at once, a GET /crl the server must answer). It
// reports whether the server answered or gave up on the connection.
func (h *Harness) slowloris(gap time.Duration) Result {
	pool := x509.NewCertPool()
	pool.AddCert(h.Env.App.Root())
	conn, err := tls.Dial("tcp", h.Env.App.Addr(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		if conn, err = tls.Dial("tcp", h.Env.App.Addr(), &tls.Config{RootCAs: pool, InsecureSkipVerify: true}); err != nil {
			return harnessErr("dial: %v", err)
		}
	}
	defer conn.Close()
	head := "GET " + api.PathCRL + " HTTP/1.1\r\nHost: gatehouse\r\n"
	if gap == 0 {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, head+"Connection: close\r\n\r\n"); err != nil {
			return Result{Err: err}
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return Result{Err: err}
		}
		resp.Body.Close()
		return Result{Status: resp.StatusCode}
	}
	// Trickle a never-ending header for up to 25 s: the server's header
	// timeout must end it first.
	closed := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		closed <- err
	}()
	deadline := time.Now().Add(25 * time.Second)
	line := head + "X-Slow: " + strings.Repeat("a", 1000)
	for i := 0; time.Now().Before(deadline); i++ {
		select {
		case err := <-closed:
			return Result{Closed: true, Err: err}
		case <-time.After(gap):
		}
		if _, err := conn.Write([]byte{line[i%len(line)]}); err != nil {
			return Result{Closed: true, Err: err}
		}
	}
	return Result{Violation: "the server kept a connection whose headers took 25 s"}
}
