package acme

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"testing"
	"time"

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
