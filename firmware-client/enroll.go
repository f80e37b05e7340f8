// Package fwclient is the device side of Gatehouse: it proves to an
// appliance that this device holds a genuine TPM, reports its boot state,
// and obtains an X.509 identity whose private key never leaves the TPM.
package fwclient

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
)

// Identity is what a successful enrollment yields.
type Identity struct {
	DeviceID      string
	AttestationID uint64
	Certificate   *x509.Certificate
	Chain         []*x509.Certificate // intermediates, leaf's issuer first
	Configuration json.RawMessage
	// KeyBlob is the TPM-wrapped device key (go-attestation's opaque
	// encoding). It is useless without the TPM that created it.
	KeyBlob []byte
	// AKBlob is the TPM-wrapped attestation key the appliance registered;
	// renewals quote with it.
	AKBlob []byte
}

// Option configures Enroll.
type Option func(*options)

type options struct {
	ek       string
	akAlg    attest.Algorithm
	claims   api.Claims
	eventLog []byte
	hc       *http.Client
}

// WithAKAlgorithm chooses the attestation key type (default ECDSA, which a
// TPM creates in milliseconds; RSA takes up to a few hundred).
func WithAKAlgorithm(alg attest.Algorithm) Option { return func(o *options) { o.akAlg = alg } }

// WithEK chooses the endorsement key: EKRSA2048 (default) or EKECCP384.
func WithEK(kind string) Option { return func(o *options) { o.ek = kind } }

// WithClaims sets what the device says about itself (recorded, not trusted).
func WithClaims(c api.Claims) Option { return func(o *options) { o.claims = c } }

// WithEventLog sends this firmware event log instead of the TPM's own.
func WithEventLog(b []byte) Option { return func(o *options) { o.eventLog = b } }

// WithHTTPClient replaces the HTTP client (its TLS settings are the caller's).
func WithHTTPClient(hc *http.Client) Option { return func(o *options) { o.hc = hc } }

// Client talks to one appliance, trusting only its root.
type Client struct {
	server string
	root   *x509.Certificate
	hc     *http.Client
}

// NewClient returns a client for server (https://host:port) that trusts only
// root for the server's certificate.
func NewClient(server string, root *x509.Certificate) *Client {
	return &Client{server: strings.TrimRight(server, "/"), root: root, hc: newHTTPClient(root, nil)}
}

func newHTTPClient(root *x509.Certificate, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(root)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 60 * time.Second, Transport: api.WrapTransport(&http.Transport{TLSClientConfig: cfg})}
}

// Enroll runs the two-round-trip enrollment with the device's TPM and
// returns the device's identity. The AK is transient: it is flushed when
// Enroll returns.
func (c *Client) Enroll(ctx context.Context, dev Device, opts ...Option) (*Identity, error) {
	o := c.options(opts)
	ak, err := dev.CreateAK(o.akAlg)
	if err != nil {
		return nil, fmt.Errorf("create AK: %w", err)
	}
	defer ak.Close()
	return c.enroll(ctx, dev, ak, o)
}

func (c *Client) options(opts []Option) options {
	o := options{akAlg: attest.ECDSA, hc: c.hc}
	for _, fn := range opts {
		fn(&o)
	}
	return o
}

// enroll runs both round trips with a given AK.
func (c *Client) enroll(ctx context.Context, dev Device, ak AK, o options) (*Identity, error) {
	ek, err := dev.Endorsement(o.ek)
	if err != nil {
		return nil, err
	}
	chReq, err := newChallengeRequest(ek, ak.AttestationParameters(), o.claims)
	if err != nil {
		return nil, err
	}
	var ch api.ChallengeResponse
	if err := c.post(ctx, o.hc, api.PathChallenge, chReq, &ch); err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	secret, err := ak.ActivateCredential(ek, attest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret})
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	key, err := ak.NewKey(api.CertifyQualifyingData(ch.Nonce))
	if err != nil {
		return nil, fmt.Errorf("create device key: %w", err)
	}
	defer key.Close()
	ev, err := evidence(dev, ak, key, &ch, secret, o.eventLog)
	if err != nil {
		return nil, err
	}

	var done api.CompleteResponse
	if err := c.post(ctx, o.hc, api.PathComplete, ev, &done); err != nil {
		return nil, fmt.Errorf("complete: %w", err)
	}
	id, err := c.identity(&done, key)
	if err != nil {
		return nil, err
	}
	if id.KeyBlob, err = key.Marshal(); err != nil {
		return nil, fmt.Errorf("marshal device key: %w", err)
	}
	if id.AKBlob, err = ak.Marshal(); err != nil {
		return nil, fmt.Errorf("marshal AK: %w", err)
	}
	return id, nil
}

// EnrollWaiting enrolls, and while the appliance answers that the device is
// pending approval, waits the hinted time and enrolls again (fresh
// evidence each time) until it is approved, refused, or ctx ends. pending,
// if set, is told about each wait.
//
// Every attempt uses the same AK: an operator approves the device with the
// AK it showed, and a new AK after approval would be a re-provisioning.
func (c *Client) EnrollWaiting(ctx context.Context, dev Device, pending func(*api.Pending), opts ...Option) (*Identity, error) {
	o := c.options(opts)
	ak, err := dev.CreateAK(o.akAlg)
	if err != nil {
		return nil, fmt.Errorf("create AK: %w", err)
	}
	defer ak.Close()
	for {
		id, err := c.enroll(ctx, dev, ak, o)
		var p *api.Pending
		if !errors.As(err, &p) {
			return id, err
		}
		if pending != nil {
			pending(p)
		}
		wait := time.Duration(max(p.RetryAfterSeconds, 1)) * time.Second
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("still pending approval: %w (%v)", ctx.Err(), p)
		case <-time.After(wait):
		}
	}
}

// NewChallengeRequest builds the first round trip's request.
func NewChallengeRequest(ek attest.EK, ak *attest.AK, claims api.Claims) (*api.ChallengeRequest, error) {
	e := &Endorsement{Public: ek.Public}
	if ek.Certificate != nil {
		e.Certificate = ek.Certificate.Raw
	}
	return newChallengeRequest(e, ak.AttestationParameters(), claims)
}

func newChallengeRequest(ek *Endorsement, p attest.AttestationParameters, claims api.Claims) (*api.ChallengeRequest, error) {
	ekPub, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		return nil, fmt.Errorf("EK public key: %w", err)
	}
	return &api.ChallengeRequest{
		EKPublic:      ekPub,
		EKCertificate: ek.Certificate,
		EKPublicArea:  ek.Area,
		AK:            api.KeyParameters{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		Claims:        claims,
	}, nil
}

// Evidence answers a challenge given the activated secret: it quotes the
// PCRs over the nonce, creates a device key certified by the AK for this
// session, and signs a CSR with it. The caller closes the returned key.
// Activation stays outside so tests can send evidence with a wrong secret.
func Evidence(tpm *TPM, ak *attest.AK, ch *api.ChallengeResponse, secret, eventLog []byte) (*api.CompleteRequest, *attest.Key, error) {
	key, err := newDeviceKey(tpm, ak, api.CertifyQualifyingData(ch.Nonce))
	if err != nil {
		return nil, nil, fmt.Errorf("create device key: %w", err)
	}
	req, err := evidence(tpm, &tpmAK{t: tpm, ak: ak}, key, ch, secret, eventLog)
	if err != nil {
		key.Close()
		return nil, nil, err
	}
	return req, key, nil
}

// evidence builds the second round trip's request: a quote of the PCRs
// over the nonce, the PCR values, the event log, key's certification and a
// CSR signed by key.
func evidence(dev Device, ak AK, key Key, ch *api.ChallengeResponse, secret, eventLog []byte) (*api.CompleteRequest, error) {
	bank, err := pcrBank(dev)
	if err != nil {
		return nil, err
	}
	quote, err := ak.Quote(ch.Nonce, bank)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	pcrs, err := dev.PCRs(bank)
	if err != nil {
		return nil, fmt.Errorf("read PCRs: %w", err)
	}
	if eventLog == nil {
		if eventLog, err = dev.MeasurementLog(); err != nil {
			eventLog = nil // no firmware log (swtpm, some VMs): the quote still binds the PCRs
		}
	}
	csr, err := CSR(key)
	if err != nil {
		return nil, err
	}
	cp := key.CertificationParameters()
	req := &api.CompleteRequest{
		SessionToken:    ch.SessionToken,
		ActivatedSecret: secret,
		Quote:           api.Quote{Quote: quote.Quote, Signature: quote.Signature},
		EventLog:        eventLog,
		DeviceKey:       api.KeyParameters{Public: cp.Public, CreateData: cp.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature},
		CSR:             csr,
	}
	bankName := strings.ToLower(bank.String())
	for _, p := range pcrs {
		req.PCRs = append(req.PCRs, api.PCR{Index: p.Index, Bank: bankName, Digest: p.Digest})
	}
	return req, nil
}

// CSR makes a certificate request signed inside the TPM by key. The
// appliance sets the subject; the CSR only proves possession.
func CSR(key Key) ([]byte, error) {
	priv, err := key.Private(key.Public())
	if err != nil {
		return nil, fmt.Errorf("device key signer: %w", err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("device key signer: %T is not a crypto.Signer", priv)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gatehouse-device"}}, signer)
	if err != nil {
		return nil, fmt.Errorf("sign CSR in the TPM: %w", err)
	}
	return der, nil
}

// EndorsementKey picks the TPM's EK, preferring one with a certificate.
func EndorsementKey(tpm *TPM) (attest.EK, error) {
	eks, err := tpm.EKs()
	if err != nil {
		return attest.EK{}, fmt.Errorf("read EKs: %w", err)
	}
	for _, ek := range eks {
		if ek.Certificate != nil {
			return ek, nil
		}
	}
	if len(eks) == 0 {
		return attest.EK{}, errors.New("the TPM has no endorsement key")
	}
	return eks[0], nil
}

// pcrBank prefers SHA-256, the bank every current firmware extends.
func pcrBank(dev Device) (attest.HashAlg, error) {
	banks, err := dev.PCRBanks()
	if err != nil {
		return 0, fmt.Errorf("read PCR banks: %w", err)
	}
	for _, b := range banks {
		if b == attest.HashSHA256 {
			return b, nil
		}
	}
	if len(banks) == 0 {
		return 0, errors.New("the TPM reports no active PCR bank")
	}
	return banks[0], nil
}

// identity checks the issued certificate before the device relies on it: it
// must chain to the pinned root and certify the TPM-resident key.
func (c *Client) identity(r *api.CompleteResponse, key Key) (*Identity, error) {
	leaf, err := x509.ParseCertificate(r.Certificate)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	id := &Identity{DeviceID: r.DeviceID, AttestationID: r.AttestationID, Certificate: leaf, Configuration: r.Configuration}
	inter := x509.NewCertPool()
	for _, der := range r.Chain {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("issued chain: %w", err)
		}
		id.Chain = append(id.Chain, ic)
		inter.AddCert(ic)
	}
	roots := x509.NewCertPool()
	roots.AddCert(c.root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("issued certificate does not verify to the appliance root: %w", err)
	}
	want, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, want) {
		return nil, errors.New("issued certificate is not for the TPM device key")
	}
	return id, nil
}

func (c *Client) post(ctx context.Context, hc *http.Client, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.server+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	return decodeResponse(resp, out)
}

func decodeResponse(resp *http.Response, out any) error {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusAccepted {
		var p api.Pending
		if err := json.Unmarshal(b, &p); err != nil || p.Status == "" {
			return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
		}
		if p.RetryAfterSeconds <= 0 {
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
				p.RetryAfterSeconds = s
			}
		}
		return &p
	}
	if resp.StatusCode != http.StatusOK {
		var p api.Problem
		if json.Unmarshal(b, &p) == nil && p.Code != "" {
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
				p.RetryAfter = time.Duration(s) * time.Second
			}
			return &p
		}
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, out)
}
