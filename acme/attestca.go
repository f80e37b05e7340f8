package acme

import (
	"container/list"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// The attestation CA protocol, as the step CLI (utils/cautils/tpm.go) and
// go.step.sm/crypto/tpm/attestation speak it: POST <base>/attest, then
// POST <base>/secret. Both clients send JSON without a Content-Type and
// treat any status >= 300 (the CLI) or >= 400 (the library) as failure,
// without reading the body.

// TPMInfo is what the client reports about its TPM (unverified).
type TPMInfo struct {
	Version         int    `json:"version,omitempty"`
	Manufacturer    string `json:"manufacturer,omitempty"` // the manufacturer ID, in decimal
	Model           string `json:"model,omitempty"`        // the TPM's vendor info string
	FirmwareVersion string `json:"firmwareVersion,omitempty"`
}

// AttestationParameters are the AK's creation evidence (go-attestation's
// AttestationParameters).
type AttestationParameters struct {
	Public                  []byte `json:"public,omitempty"`
	UseTCSDActivationFormat bool   `json:"useTCSDActivationFormat,omitempty"`
	CreateData              []byte `json:"createData,omitempty"`
	CreateAttestation       []byte `json:"createAttestation,omitempty"`
	CreateSignature         []byte `json:"createSignature,omitempty"`
}

// AttestRequest is the body of POST /attest. EK is the preferred EK's
// public key (PKIX DER); EKCerts are the certificates of all the TPM's EKs
// (the CLI sends every one it finds).
type AttestRequest struct {
	TPMInfo TPMInfo               `json:"tpmInfo"`
	EK      []byte                `json:"ek,omitempty"`
	EKCerts [][]byte              `json:"ekCerts,omitempty"`
	AKCert  []byte                `json:"akCert,omitempty"`
	Params  AttestationParameters `json:"params"`
}

// AttestResponse is the credential-activation challenge.
type AttestResponse struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"` // encrypted to the EK
}

// SecretRequest is the body of POST /secret: the activated secret, and
// nothing else (no session: see AttestationCA).
type SecretRequest struct {
	Secret []byte `json:"secret"`
}

// SecretResponse is the AK certificate chain, DER, leaf first.
type SecretResponse struct {
	Chain [][]byte `json:"chain"`
}

// Bounds of a request, before any verification.
const (
	// MaxAttestBody bounds POST /attest: a few EK certificates and the AK's
	// creation evidence.
	MaxAttestBody = 64 << 10
	// MaxSecretBody bounds POST /secret: a 32-byte secret in base64.
	MaxSecretBody = 1 << 10
	// DefaultPendingLimit bounds the activations a node keeps pending.
	DefaultPendingLimit = 4096
	// maxAKField bounds each field of the AK evidence (TPM2B_PUBLIC,
	// TPMS_CREATION_DATA, TPMS_ATTEST, TPMT_SIGNATURE of an RSA-4096 key
	// are each well under 1 KiB).
	maxAKField = 2 << 10
)

// ErrSecretUnknown: the activated secret matches no pending activation on
// this node: wrong (the TPM that answered does not hold both the EK and the
// AK), expired, already used, or its /attest went to another node.
var ErrSecretUnknown = errors.New("the secret matches no pending credential activation on this node")

// Attested is an /attest request that passed verification before
// possession: its EK and AK, and the appliance's own state (opaque here).
type Attested struct {
	DeviceID string
	EK       crypto.PublicKey
	AK       *attest.AK
	// Expires ends the pending activation (the appliance's session TTL).
	Expires time.Time
	// State is the appliance's, handed back to Activated.
	State any
}

// Attestor is what the attestation CA needs from the appliance (server's
// Enroller implements it): the verification and the commit path native
// enrollment uses, so that neither is duplicated here.
type Attestor interface {
	// VerifyAttestation judges an /attest request before possession is
	// proven: the EK (certificate chain or pre-registration), the AK, the
	// device's state and its group's acme setting. Its refusals are
	// counted, not recorded: anyone can send anyone's EK certificate.
	VerifyAttestation(ctx context.Context, req *AttestRequest) (*Attested, error)
	// Activated runs once the client proved it holds the TPM (it returned
	// the secret only that TPM could activate for that AK): it judges the
	// device again, commits the attestation record through Raft and only
	// then issues the AK certificate, returned leaf first with its CA.
	Activated(ctx context.Context, a *Attested) ([]*x509.Certificate, error)
	// Unproven counts a refusal at /secret, where nothing is proven.
	Unproven(ctx context.Context, cause error) error
}

// AttestationCA runs the attestation CA protocol the step CLI needs for
// ACME device-attest-01 with format "tpm".
//
// Guarantees: an AK certificate is issued only for an AK that the TPM
// holding a verified EK activated a credential for, after the record is
// committed; a secret is good once (it is deleted when used), and its
// record's session ID is consumed by the FSM, so a replay is refused on
// every node. Before possession nothing is written: pending activations
// are node-local, bounded (the oldest is evicted) and expire.
//
// Non-guarantees: /attest and /secret must reach the same node (the client
// sends both to one URL within seconds; a load balancer must keep them
// together), and a node's restart forgets its pending activations (the
// client starts over). The /secret request carries no session, so it is
// matched by the secret alone (SHA-256 of it as the key).
type AttestationCA struct {
	att   Attestor
	now   func() time.Time
	limit int

	mu      sync.Mutex
	pending map[[32]byte]*list.Element // of *pendingActivation
	order   *list.List                 // oldest first
}

type pendingActivation struct {
	key [32]byte
	a   *Attested
}

// AttestationCAOption configures NewAttestationCA.
type AttestationCAOption func(*AttestationCA)

// WithPendingLimit bounds the pending activations (DefaultPendingLimit).
func WithPendingLimit(n int) AttestationCAOption { return func(c *AttestationCA) { c.limit = n } }

// WithClock sets the clock that expires pending activations.
func WithClock(now func() time.Time) AttestationCAOption {
	return func(c *AttestationCA) { c.now = now }
}

// NewAttestationCA returns an attestation CA that verifies and commits
// through att.
func NewAttestationCA(att Attestor, opts ...AttestationCAOption) *AttestationCA {
	c := &AttestationCA{att: att, now: time.Now, limit: DefaultPendingLimit, pending: map[[32]byte]*list.Element{}, order: list.New()}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Attest verifies the request (Attestor.VerifyAttestation) and answers a
// credential that only the TPM holding the EK can activate, and only for
// that AK, wrapping a fresh 32-byte secret kept pending on this node.
func (c *AttestationCA) Attest(ctx context.Context, req *AttestRequest) (*AttestResponse, error) {
	a, err := c.att.VerifyAttestation(ctx, req)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	// The step client sends no EK public area: the default EK template's
	// wrapping (RSA-2048), as go-attestation's own activation does.
	cred, err := a.AK.MakeCredential(a.EK, nil, secret)
	if err != nil {
		return nil, c.att.Unproven(ctx, err)
	}
	c.put(sha256.Sum256(secret), a)
	return &AttestResponse{Credential: cred.Credential, Secret: cred.Secret}, nil
}

// Secret takes the pending activation the secret names (once), and hands
// it to Attestor.Activated, which commits and issues.
func (c *AttestationCA) Secret(ctx context.Context, req *SecretRequest) (*SecretResponse, error) {
	a := c.take(sha256.Sum256(req.Secret))
	if a == nil {
		return nil, c.att.Unproven(ctx, ErrSecretUnknown)
	}
	chain, err := c.att.Activated(ctx, a)
	if err != nil {
		return nil, err
	}
	out := &SecretResponse{}
	for _, crt := range chain {
		out.Chain = append(out.Chain, crt.Raw)
	}
	return out, nil
}

// Pending is how many activations this node holds.
func (c *AttestationCA) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

func (c *AttestationCA) put(key [32]byte, a *Attested) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire()
	for c.limit > 0 && c.order.Len() >= c.limit {
		oldest := c.order.Front()
		delete(c.pending, oldest.Value.(*pendingActivation).key)
		c.order.Remove(oldest)
	}
	c.pending[key] = c.order.PushBack(&pendingActivation{key: key, a: a})
}

func (c *AttestationCA) take(key [32]byte) *Attested {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expire()
	el, ok := c.pending[key]
	if !ok {
		return nil
	}
	delete(c.pending, key)
	c.order.Remove(el)
	return el.Value.(*pendingActivation).a
}

// expire drops expired activations from the front. Entries are appended in
// time order, and a later one never expires before an earlier one unless
// the session TTL was shortened meanwhile, so the scan stops early.
func (c *AttestationCA) expire() {
	now := c.now()
	for el := c.order.Front(); el != nil; {
		next := el.Next()
		p := el.Value.(*pendingActivation)
		if now.Before(p.a.Expires) {
			break
		}
		delete(c.pending, p.key)
		c.order.Remove(el)
		el = next
	}
}

// VerifyAKParameters is attest.VerifyAK over the protocol's parameters.
func VerifyAKParameters(p AttestationParameters) (*attest.AK, error) {
	if p.UseTCSDActivationFormat {
		return nil, fmt.Errorf("%w: TPM 1.2 (TCSD) activation is not supported", attest.ErrAKInvalid)
	}
	// Before anything is decoded: the decoders ignore trailing bytes, and
	// a self-signed AK's signature covers whatever follows, so only this
	// bound keeps a pending activation small.
	for _, f := range [][]byte{p.Public, p.CreateData, p.CreateAttestation, p.CreateSignature} {
		if len(f) > maxAKField {
			return nil, fmt.Errorf("%w: an AK evidence field of %d bytes (at most %d)", attest.ErrAKInvalid, len(f), maxAKField)
		}
	}
	return attest.VerifyAK(goattest.AttestationParameters{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature})
}
