package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// fakeAttestor counts what the attestation CA hands it.
type fakeAttestor struct {
	activated []*Attested
	unproven  []error
}

func (f *fakeAttestor) VerifyAttestation(context.Context, *AttestRequest) (*Attested, error) {
	return nil, errors.New("unused")
}

func (f *fakeAttestor) Activated(_ context.Context, a *Attested) ([]*x509.Certificate, error) {
	f.activated = append(f.activated, a)
	return []*x509.Certificate{{Raw: []byte{1}}}, nil
}

func (f *fakeAttestor) Unproven(_ context.Context, cause error) error {
	f.unproven = append(f.unproven, cause)
	return cause
}

// Pending activations are one-time, expire, and are bounded (the oldest
// goes first).
func TestPendingActivations(t *testing.T) {
	now := time.Unix(1000, 0)
	f := &fakeAttestor{}
	c := NewAttestationCA(f, WithPendingLimit(2), WithClock(func() time.Time { return now }))
	ctx := context.Background()
	put := func(secret byte, ttl time.Duration) [32]byte {
		s := [32]byte{secret}
		c.put(sha(s[:]), &Attested{DeviceID: string(rune('a' + secret)), Expires: now.Add(ttl)})
		return s
	}
	s1 := put(1, time.Minute)
	if resp, err := c.Secret(ctx, &SecretRequest{Secret: s1[:]}); err != nil || len(resp.Chain) != 1 || len(f.activated) != 1 {
		t.Fatalf("known secret: %v %v", resp, err)
	}
	if _, err := c.Secret(ctx, &SecretRequest{Secret: s1[:]}); !errors.Is(err, ErrSecretUnknown) || len(f.activated) != 1 {
		t.Fatalf("replayed secret: %v", err)
	}

	s2 := put(2, time.Second)
	now = now.Add(2 * time.Second)
	if _, err := c.Secret(ctx, &SecretRequest{Secret: s2[:]}); !errors.Is(err, ErrSecretUnknown) {
		t.Fatalf("expired secret: %v", err)
	}

	s3, s4, s5 := put(3, time.Minute), put(4, time.Minute), put(5, time.Minute)
	if c.Pending() != 2 {
		t.Fatalf("%d pending, limit 2", c.Pending())
	}
	if _, err := c.Secret(ctx, &SecretRequest{Secret: s3[:]}); !errors.Is(err, ErrSecretUnknown) {
		t.Fatalf("evicted secret: %v", err)
	}
	for _, s := range [][32]byte{s4, s5} {
		if _, err := c.Secret(ctx, &SecretRequest{Secret: s[:]}); err != nil {
			t.Fatalf("kept secret: %v", err)
		}
	}
	if len(f.unproven) != 3 || len(f.activated) != 3 {
		t.Fatalf("unproven %d, activated %d", len(f.unproven), len(f.activated))
	}
}

func TestVerifyAKParametersRefusesTPM12(t *testing.T) {
	if _, err := VerifyAKParameters(AttestationParameters{UseTCSDActivationFormat: true}); !errors.Is(err, attest.ErrAKInvalid) {
		t.Fatal(err)
	}
	if _, err := VerifyAKParameters(AttestationParameters{Public: []byte{1, 2}}); !errors.Is(err, attest.ErrAKInvalid) {
		t.Fatal(err)
	}
}

func sha(b []byte) [32]byte { return sha256.Sum256(b) }

// softwareAK is AK evidence for a P-256 key that never was in a TPM: a
// TPMT_PUBLIC claiming a restricted TPM key, made-up creation data followed
// by pad, and a creation attestation over both signed in software. Before
// possession it passes as an AK (anyone can make one); pad inflates what a
// pending activation keeps.
func softwareAK(t *testing.T, pad []byte) AttestationParameters {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.Public{Type: tpm2.AlgECC, NameAlg: tpm2.AlgSHA256,
		Attributes: tpm2.FlagSign | tpm2.FlagRestricted | tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth,
		ECCParameters: &tpm2.ECCParams{Sign: &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256}, CurveID: tpm2.CurveNISTP256,
			Point: tpm2.ECPoint{XRaw: k.X.FillBytes(make([]byte, 32)), YRaw: k.Y.FillBytes(make([]byte, 32))}}}
	pubBytes, err := pub.Encode()
	if err != nil {
		t.Fatal(err)
	}
	name, err := pub.Name()
	if err != nil {
		t.Fatal(err)
	}
	parent := tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: make([]byte, 32)}
	cdata := tpm2.CreationData{PCRSelection: tpm2.PCRSelection{Hash: tpm2.AlgSHA256}, PCRDigest: make([]byte, 32), Locality: 1,
		ParentNameAlg: tpm2.AlgSHA256, ParentName: tpm2.Name{Digest: &parent}, ParentQualifiedName: tpm2.Name{Digest: &parent}}
	cd, err := cdata.EncodeCreationData()
	if err != nil {
		t.Fatal(err)
	}
	cd = append(cd, pad...)
	sum := sha256.Sum256(cd)
	att, err := tpm2.AttestationData{Magic: 0xff544347, Type: tpm2.TagAttestCreation, QualifiedSigner: name,
		AttestedCreationInfo: &tpm2.CreationInfo{Name: name, OpaqueDigest: sum[:]}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(att)
	r, s, err := ecdsa.Sign(rand.Reader, k, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig, err := tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA256, R: r, S: s}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return AttestationParameters{Public: pubBytes, CreateData: cd, CreateAttestation: att, CreateSignature: sig}
}

// AK evidence is bounded field by field before it is verified: the
// creation data (and the other fields, which TPM decoders read with
// trailing bytes ignored) of a self-signed AK could otherwise carry tens
// of KiB that a pending activation keeps until it expires, 4096 of them
// per node. Positive control: the same AK without padding is an AK.
func TestVerifyAKParametersBounded(t *testing.T) {
	if _, err := VerifyAKParameters(softwareAK(t, nil)); err != nil {
		t.Fatalf("control, an unpadded software AK before possession: %v", err)
	}
	if _, err := VerifyAKParameters(softwareAK(t, make([]byte, 40<<10))); !errors.Is(err, attest.ErrAKInvalid) {
		t.Fatalf("AK creation data padded by 40 KiB: %v, want ErrAKInvalid", err)
	}
	for _, f := range []func(p *AttestationParameters) *[]byte{
		func(p *AttestationParameters) *[]byte { return &p.Public },
		func(p *AttestationParameters) *[]byte { return &p.CreateAttestation },
		func(p *AttestationParameters) *[]byte { return &p.CreateSignature },
	} {
		p := softwareAK(t, nil)
		*f(&p) = append(*f(&p), make([]byte, maxAKField)...)
		if _, err := VerifyAKParameters(p); !errors.Is(err, attest.ErrAKInvalid) {
			t.Fatalf("an AK field over %d bytes: %v, want ErrAKInvalid", maxAKField, err)
		}
	}
}
