package acme

import (
	"bytes"
	"container/list"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	stepacme "github.com/smallstep/certificates/acme"
	"go.step.sm/crypto/jose"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/ca/catest"
)

type gateFunc func(string) error

func (g gateFunc) MayOrder(_ context.Context, id string) error { return g(id) }

func newTestDB(t *testing.T, gate Gate) (*DB, *catest.MemKV) {
	t.Helper()
	kv := catest.NewMemKV()
	d, err := NewDB(ca.NoSQL(kv), bytes.Repeat([]byte{7}, 32), gate)
	if err != nil {
		t.Fatal(err)
	}
	return d, kv
}

func TestNonces(t *testing.T) {
	d, kv := newTestDB(t, nil)
	ctx := context.Background()
	n, err := d.CreateNonce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteNonce(ctx, n); err != nil {
		t.Fatalf("fresh nonce refused: %v", err)
	}
	if err := d.DeleteNonce(ctx, n); err == nil {
		t.Fatal("replayed nonce accepted")
	}
	// Another node (same key, its own used-set) accepts it once: the
	// documented non-guarantee.
	other, _ := newTestDB(t, nil)
	if err := other.DeleteNonce(ctx, n); err != nil {
		t.Fatalf("another node: %v", err)
	}
	forged := []byte(n)
	forged[3] ^= 1
	if err := d.DeleteNonce(ctx, stepacme.Nonce(forged)); err == nil {
		t.Fatal("tampered nonce accepted")
	}
	old, _ := d.CreateNonce(ctx)
	d.now = func() time.Time { return time.Now().Add(NonceLifetime + time.Second) }
	if err := d.DeleteNonce(ctx, old); err == nil {
		t.Fatal("expired nonce accepted")
	}
	if kv.Writes() != 0 {
		t.Fatalf("nonces wrote %d times", kv.Writes())
	}
}

func TestUsedNoncesBounded(t *testing.T) {
	d, _ := newTestDB(t, nil)
	ctx := context.Background()
	for i := 0; i < MaxUsedNonces; i++ {
		n, _ := d.CreateNonce(ctx)
		if err := d.DeleteNonce(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := d.CreateNonce(ctx)
	if err := d.DeleteNonce(ctx, n); err == nil {
		t.Fatal("a nonce accepted with the used-set full of live nonces")
	}
	if used, _ := d.Sizes(); used != MaxUsedNonces {
		t.Fatalf("used-set %d, want the cap %d", used, MaxUsedNonces)
	}
	// Once they expire, room is made.
	d.now = func() time.Time { return time.Now().Add(NonceLifetime + time.Minute) }
	n, _ = d.CreateNonce(ctx)
	if err := d.DeleteNonce(ctx, n); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if used, _ := d.Sizes(); used != 1 {
		t.Fatalf("used-set %d after the sweep", used)
	}
}

func TestStatelessAccount(t *testing.T) {
	d, kv := newTestDB(t, nil)
	ctx := context.Background()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk := &jose.JSONWebKey{Key: k, Algorithm: "ES256"} // a private key: only the public part may be kept
	acc := &stepacme.Account{Key: jwk, Contact: []string{"mailto:a@b"}, Status: stepacme.StatusValid}
	if err := d.CreateAccount(ctx, acc); err != nil {
		t.Fatal(err)
	}
	got, err := d.GetAccount(ctx, acc.ID)
	if err != nil || !got.Key.IsPublic() || !got.Key.Key.(*ecdsa.PublicKey).Equal(&k.PublicKey) || got.Status != stepacme.StatusValid {
		t.Fatalf("rebuilt account %+v %v", got, err)
	}
	if _, err := d.GetAccount(ctx, "garbage"); !stepacme.IsErrNotFound(err) {
		t.Fatalf("garbage account ID: %v", err)
	}
	if _, err := d.GetAccountByKeyID(ctx, "x"); !stepacme.IsErrNotFound(err) {
		t.Fatalf("by key ID: %v", err)
	}
	if err := d.UpdateAccount(ctx, got); err == nil {
		t.Fatal("account update accepted")
	}
	if kv.Writes() != 0 {
		t.Fatalf("accounts wrote %d times", kv.Writes())
	}
}

// newPending makes the objects of a new order as step-ca's NewOrder does.
func newPending(t *testing.T, d *DB, acc, device string) (*stepacme.Order, *stepacme.Authorization, *stepacme.Challenge, error) {
	t.Helper()
	ctx := context.Background()
	id := stepacme.Identifier{Type: stepacme.PermanentIdentifier, Value: device}
	ch := &stepacme.Challenge{AccountID: acc, Value: device, Type: stepacme.DEVICEATTEST01, Token: "tok", Status: stepacme.StatusPending}
	if err := d.CreateChallenge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	az := &stepacme.Authorization{AccountID: acc, Identifier: id, Token: "tok", Status: stepacme.StatusPending, ExpiresAt: exp, Challenges: []*stepacme.Challenge{ch}}
	if err := d.CreateAuthorization(ctx, az); err != nil {
		t.Fatal(err)
	}
	o := &stepacme.Order{AccountID: acc, ProvisionerID: "p", Status: stepacme.StatusPending, Identifiers: []stepacme.Identifier{id},
		ExpiresAt: exp, AuthorizationIDs: []string{az.ID}, NotBefore: exp.Add(-time.Hour), NotAfter: exp}
	return o, az, ch, d.CreateOrder(ctx, o)
}

func TestObjectsWrittenOnlyAfterProof(t *testing.T) {
	d, kv := newTestDB(t, gateFunc(func(id string) error {
		if id != "dev" {
			return errors.New("no such device")
		}
		return nil
	}))
	ctx := context.Background()
	if _, _, _, err := newPending(t, d, "acct", "stranger"); err == nil || !strings.Contains(err.Error(), "no such device") {
		t.Fatalf("order for a device the gate refuses: %v", err)
	}
	o, az, ch, err := newPending(t, d, "acct", "dev")
	if err != nil {
		t.Fatal(err)
	}
	// Rebuilt from the IDs alone.
	gotO, err := d.GetOrder(ctx, o.ID)
	if err != nil || gotO.AccountID != "acct" || gotO.AuthorizationIDs[0] != az.ID || gotO.Status != stepacme.StatusPending {
		t.Fatalf("order %+v %v", gotO, err)
	}
	gotAz, err := d.GetAuthorization(ctx, az.ID)
	if err != nil || len(gotAz.Challenges) != 1 || gotAz.Challenges[0].ID != ch.ID || gotAz.Identifier.Value != "dev" {
		t.Fatalf("authorization %+v %v", gotAz, err)
	}
	// Tampered IDs are not found.
	for _, id := range []string{o.ID[:len(o.ID)-2] + "AA", "x" + o.ID[1:], "nodot"} {
		if _, err := d.GetOrder(ctx, id); err == nil {
			t.Fatalf("tampered order ID %q accepted", id)
		}
	}
	// A failed challenge stays on this node.
	ch.Status = stepacme.StatusInvalid
	if err := d.UpdateChallenge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if kv.Writes() != 0 {
		t.Fatalf("%d writes before proof", kv.Writes())
	}
	if got, _ := d.GetChallenge(ctx, ch.ID, az.ID); got.Status != stepacme.StatusInvalid {
		t.Fatalf("this node forgot the failed challenge: %s", got.Status)
	}
	other := &DB{store: d.store, kv: d.kv, idKey: d.idKey, nKey: d.nKey, now: time.Now, used: map[string]time.Time{}, usedOrder: list.New(), pending: map[string][]byte{}, order: list.New()}
	if got, _ := other.GetChallenge(ctx, ch.ID, az.ID); got.Status != stepacme.StatusPending {
		t.Fatalf("another node sees %s", got.Status)
	}
	// Proof: valid challenge, authorization, ready order are written, and
	// every node sees them.
	ch.Status, ch.ValidatedAt = stepacme.StatusValid, "now"
	az.Status, az.Fingerprint = stepacme.StatusValid, "fp"
	o.Status = stepacme.StatusReady
	if err := d.UpdateChallenge(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if err := d.UpdateAuthorization(ctx, az); err != nil {
		t.Fatal(err)
	}
	if err := d.UpdateOrder(ctx, o); err != nil {
		t.Fatal(err)
	}
	if kv.Writes() != 3 {
		t.Fatalf("%d writes after proof, want 3", kv.Writes())
	}
	if got, _ := other.GetAuthorization(ctx, az.ID); got.Status != stepacme.StatusValid || got.Fingerprint != "fp" || got.Challenges[0].Status != stepacme.StatusValid {
		t.Fatalf("another node's authorization %+v", got)
	}
	if got, _ := other.GetOrder(ctx, o.ID); got.Status != stepacme.StatusReady {
		t.Fatalf("another node's order %s", got.Status)
	}
}

func TestPendingCacheBounded(t *testing.T) {
	d, kv := newTestDB(t, nil)
	ctx := context.Background()
	for i := 0; i < MaxPending+10; i++ {
		ch := &stepacme.Challenge{AccountID: "acct", Value: "dev", Type: stepacme.DEVICEATTEST01, Token: fmt.Sprint("token-", i), Status: stepacme.StatusPending}
		if err := d.CreateChallenge(ctx, ch); err != nil {
			t.Fatal(err)
		}
		ch.Status = stepacme.StatusInvalid
		if err := d.UpdateChallenge(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	if _, pending := d.Sizes(); pending != MaxPending {
		t.Fatalf("pending cache %d, want the cap %d", pending, MaxPending)
	}
	if kv.Writes() != 0 {
		t.Fatalf("%d writes", kv.Writes())
	}
}

// The pending cache is bounded in bytes too: failed challenges of accounts
// with the largest key an account ID may carry (each entry then holds
// several KiB of IDs) never hold more than MaxPendingBytes; the newest
// entry is kept.
func TestPendingCacheBoundedInBytes(t *testing.T) {
	d, kv := newTestDB(t, nil)
	ctx := context.Background()
	acct := strings.Repeat("k", maxAccountKey*4/3) // base64url of the largest JWK
	var last *stepacme.Challenge
	for i := 0; i < MaxPending; i++ {
		ch := &stepacme.Challenge{AccountID: acct, Value: strings.Repeat("ab", 16), Type: stepacme.DEVICEATTEST01, Token: fmt.Sprint("token-", i), Status: stepacme.StatusPending}
		if err := d.CreateChallenge(ctx, ch); err != nil {
			t.Fatal(err)
		}
		ch.Status, ch.Error = stepacme.StatusInvalid, stepacme.NewError(stepacme.ErrorBadAttestationStatementType, "junk")
		if err := d.UpdateChallenge(ctx, ch); err != nil {
			t.Fatal(err)
		}
		last = ch
	}
	d.mu.Lock()
	size := 0
	for k, v := range d.pending {
		size += len(k) + len(v)
	}
	n := len(d.pending)
	d.mu.Unlock()
	if size > MaxPendingBytes {
		t.Fatalf("pending cache holds %d bytes in %d entries, more than MaxPendingBytes %d", size, n, MaxPendingBytes)
	}
	if got, err := d.GetChallenge(ctx, last.ID, ""); err != nil || got.Status != stepacme.StatusInvalid {
		t.Fatalf("the newest failed challenge was forgotten: %+v %v", got, err)
	}
	if kv.Writes() != 0 {
		t.Fatalf("%d writes", kv.Writes())
	}
}
