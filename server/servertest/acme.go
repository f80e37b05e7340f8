package servertest

// ACME device-attest-01 helpers: a test AK CA (standing in for the
// attestation CA's), a device whose swtpm is driven by go.step.sm/crypto/tpm
// (the library the step CLI uses), and an RFC 8555 client
// (golang.org/x/crypto/acme).

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	goattest "github.com/google/go-attestation/attest"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/tpm"
	"go.step.sm/crypto/tpm/attestation"
	"go.step.sm/crypto/tpm/storage"
	"go.step.sm/crypto/x509util"
	xacme "golang.org/x/crypto/acme"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
)

// TestAKCA stands in for the AK CA (the attestation CA's issuer of AK
// certificates): the ACME provisioner's only attestation root.
type TestAKCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func NewTestAKCA(t testing.TB) *TestAKCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test AK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &TestAKCA{cert: cert, key: key}
}

func (a *TestAKCA) Option() server.Option {
	return server.WithACMEAttestationRoots(func(*ca.CA) []*x509.Certificate { return []*x509.Certificate{a.cert} })
}

var oidTCGAIK = asn1.ObjectIdentifier{2, 23, 133, 8, 3}

// IssueAK certifies ak with an empty subject, the TPM directoryName and the
// permanent identifier, as step-ca's device-attest-01 expects.
func (a *TestAKCA) IssueAK(t testing.TB, ak crypto.PublicKey, permanentID string) *x509.Certificate {
	t.Helper()
	tpmName := []byte(`{"extraNames":[{"type":"2.23.133.2.1","value":"id:53574D20"},{"type":"2.23.133.2.2","value":"swtpm"},{"type":"2.23.133.2.3","value":"id:00020000"}]}`)
	sans := []x509util.SubjectAlternativeName{
		{Type: x509util.PermanentIdentifierType, Value: permanentID},
		{Type: x509util.DirectoryNameType, ASN1Value: tpmName},
	}
	var seq []byte
	for _, s := range sans {
		rv, err := s.RawValue()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := asn1.Marshal(rv)
		seq = append(seq, b...)
	}
	san, _ := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: seq})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()),
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidTCGAIK}, BasicConstraintsValid: true,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: san}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, ak, a.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// ACMEDevice is a device enrolled natively (so the registry knows it,
// active) whose swtpm is then driven by go.step.sm/crypto/tpm, the library
// the step CLI uses, with an RSA AK certified by the test AK CA.
type ACMEDevice struct {
	ID     string // the Gatehouse device ID, the AK certificate's permanent identifier
	tpm    *tpm.TPM
	akName string
	akDER  []byte
	keys   int
}

// ACMEDeviceFromAK is a device whose AK (akName in t) the attestation CA
// certified: akCert is the AK certificate it answered.
func ACMEDeviceFromAK(id string, t *tpm.TPM, akName string, akCert *x509.Certificate) *ACMEDevice {
	return &ACMEDevice{ID: id, tpm: t, akName: akName, akDER: akCert.Raw}
}

type noLogChannel struct{ io.ReadWriteCloser }

func (noLogChannel) MeasurementLog() ([]byte, error) { return nil, nil }

// Close keeps the connection: go.step.sm/crypto/tpm opens and closes its
// channel around every operation; the test closes it at the end.
func (noLogChannel) Close() error { return nil }

func NewACMEDevice(t testing.TB, e *Env, aca *TestAKCA, akNames string) *ACMEDevice {
	t.Helper()
	d := NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	d.TPM.Close() // one client at a time on swtpm's data port
	ch, err := fwclient.OpenTransport(d.Proc.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	st, err := tpm.New(tpm.WithCommandChannel(noLogChannel{ch}), tpm.WithStore(storage.NewDirstore(t.TempDir())), tpm.WithDisableDownload())
	if err != nil {
		t.Fatal(err)
	}
	ak, err := st.CreateAK(context.Background(), "ak")
	if err != nil {
		t.Fatal(err)
	}
	if akNames == "" {
		akNames = id.DeviceID
	}
	ap, err := ak.AttestationParameters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := goattest.ParseAKPublic(ap.Public)
	if err != nil {
		t.Fatal(err)
	}
	return &ACMEDevice{ID: id.DeviceID, tpm: st, akName: "ak", akDER: aca.IssueAK(t, akPub.Public, akNames).Raw}
}

// attest makes a TPM key attested by the AK over keyAuth (the
// device-attest-01 payload) and returns the payload and the key.
func (d *ACMEDevice) Attest(t testing.TB, keyAuth string) ([]byte, crypto.Signer) {
	t.Helper()
	sum := sha256.Sum256([]byte(keyAuth))
	d.keys++
	k, err := d.tpm.AttestKey(context.Background(), d.akName, fmt.Sprint("key-", d.keys), tpm.AttestKeyConfig{Algorithm: "ECDSA", Size: 256, QualifyingData: sum[:]})
	if err != nil {
		t.Fatal(err)
	}
	params, err := k.CertificationParameters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := k.Signer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	obj, err := cbor.Marshal(struct {
		Format string         `json:"fmt"`
		Stmt   map[string]any `json:"attStmt"`
	}{"tpm", map[string]any{"ver": "2.0", "x5c": []any{d.akDER}, "alg": int64(-257),
		"sig": params.CreateSignature, "certInfo": params.CreateAttestation, "pubArea": params.Public}})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString(obj)})
	return payload, signer
}

func ACMEClient(t testing.TB, app *server.Appliance) *xacme.Client {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pool := x509.NewCertPool()
	pool.AddCert(app.Root())
	c := &xacme.Client{Key: key, DirectoryURL: "https://" + app.Addr() + "/acme/" + ca.ACMEProvisionerName + "/directory",
		HTTPClient: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	if _, err := c.Register(context.Background(), &xacme.Account{}, xacme.AcceptTOS); err != nil {
		t.Fatalf("new-account: %v", err)
	}
	return c
}

// OrderAndProve runs new-order and the device-attest-01 challenge; it
// returns the order URL, finalize URL and the attested key.
// ErrNotProven: the device-attest-01 answer left the authorization
// unproven (the challenge's error is wrapped).
var ErrNotProven = errors.New("authorization not valid after the device-attest-01 answer")

func OrderAndProve(t testing.TB, c *xacme.Client, d *ACMEDevice, identifier string) (*xacme.Order, crypto.Signer, error) {
	t.Helper()
	ctx := context.Background()
	o, err := c.AuthorizeOrder(ctx, []xacme.AuthzID{{Type: "permanent-identifier", Value: identifier}})
	if err != nil {
		return nil, nil, err
	}
	az, err := c.GetAuthorization(ctx, o.AuthzURLs[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(az.Challenges) != 1 || az.Challenges[0].Type != "device-attest-01" {
		t.Fatalf("challenges %+v, want exactly device-attest-01", az.Challenges)
	}
	chal := az.Challenges[0]
	keyAuth, err := c.HTTP01ChallengeResponse(chal.Token)
	if err != nil {
		t.Fatal(err)
	}
	payload, key := d.Attest(t, keyAuth)
	chal.Payload = payload
	if _, err := c.Accept(ctx, chal); err != nil {
		return o, key, err
	}
	// step-ca validates device-attest-01 within the request: a refused
	// proof leaves the authorization pending with the challenge's error.
	if az, err = c.GetAuthorization(ctx, o.AuthzURLs[0]); err != nil {
		return o, key, err
	} else if az.Status != xacme.StatusValid {
		var why error = ErrNotProven
		if len(az.Challenges) == 1 && az.Challenges[0].Error != nil {
			why = fmt.Errorf("%w: %w", ErrNotProven, az.Challenges[0].Error)
		}
		return o, key, why
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	o, err = c.WaitOrder(wctx, o.URI)
	return o, key, err
}

func Finalize(c *xacme.Client, o *xacme.Order, key crypto.Signer, cn string) ([]*x509.Certificate, error) {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		return nil, err
	}
	ders, _, err := c.CreateOrderCert(context.Background(), o.FinalizeURL, csr, true)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, d := range ders {
		crt, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, err
		}
		out = append(out, crt)
	}
	return out, nil
}

func ACMEProblem(err error) string {
	var ae *xacme.Error
	if errors.As(err, &ae) {
		return ae.ProblemType
	}
	return ""
}

// SignACMEJWS is an RFC 8555 JWS over payload with key's JWK embedded
// (new-account), for requests a client library would not make (replays).
func SignACMEJWS(key *ecdsa.PrivateKey, nonce, url, payload string) string {
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	jwk := map[string]string{"kty": "EC", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(pad(key.X.Bytes())), "y": base64.RawURLEncoding.EncodeToString(pad(key.Y.Bytes()))}
	prot, _ := json.Marshal(map[string]any{"alg": "ES256", "jwk": jwk, "nonce": nonce, "url": url})
	p64 := base64.RawURLEncoding.EncodeToString(prot)
	b64 := base64.RawURLEncoding.EncodeToString([]byte(payload))
	sum := sha256.Sum256([]byte(p64 + "." + b64))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		panic(err)
	}
	out, _ := json.Marshal(map[string]string{"protected": p64, "payload": b64,
		"signature": base64.RawURLEncoding.EncodeToString(append(pad(r.Bytes()), pad(s.Bytes())...))})
	return string(out)
}

// keepOpen is a swtpm command channel that go.step.sm/crypto/tpm cannot
// close: it closes its channel after every operation, and the swtpm data
// port is one connection for the test's life.
type keepOpen struct{ tpm.CommandChannel }

func (keepOpen) Close() error { return nil }

// StepTPM is a swtpm driven by go.step.sm/crypto/tpm, the library the step
// CLI runs, through tpm.WithCommandChannel over the swtpm data port (the
// CLI's tpmkms device= takes a device path or a UNIX socket; in process,
// the channel needs no bridge), with the EK and AK the CLI would use.
type StepTPM struct {
	TPM *tpm.TPM
	EK  *tpm.EK
	AK  *tpm.AK
	ID  string // attest.DeviceID of the EK
}

func NewStepTPM(t testing.TB, m *swtpm.Manufacturer) *StepTPM {
	t.Helper()
	p := swtpm.StartTest(t, m)
	ch, err := fwclient.OpenTransport(p.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	tp, err := tpm.New(tpm.WithCommandChannel(keepOpen{ch.(tpm.CommandChannel)}), tpm.WithStore(storage.NewDirstore(t.TempDir())), tpm.WithDisableDownload())
	if err != nil {
		t.Fatal(err)
	}
	d := &StepTPM{TPM: tp}
	ctx := context.Background()
	eks, err := tp.GetEKs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ek := range eks { // the CLI's getPreferredEK: RSA first
		if _, ok := ek.Public().(*rsa.PublicKey); ok {
			d.EK = ek
			break
		}
	}
	if d.EK == nil {
		d.EK = eks[0]
	}
	// The CLI names its AK after the EK's hex fingerprint.
	fp, err := keyutil.EncodedFingerprint(d.EK.Public(), keyutil.HexFingerprint)
	if err != nil {
		t.Fatal(err)
	}
	if d.AK, err = tp.CreateAK(ctx, strings.Split(fp, ":")[1]); err != nil {
		t.Fatal(err)
	}
	if d.ID, err = attest.DeviceID(d.EK.Public()); err != nil {
		t.Fatal(err)
	}
	return d
}

// AttestWithClient runs the attestation CA protocol with the attestation
// client of go.step.sm/crypto/tpm/attestation (the CLI's copy speaks the
// same JSON) against the appliance at base, whose TLS root is root.
func (d *StepTPM) AttestWithClient(t testing.TB, base string, root *x509.Certificate) ([]*x509.Certificate, error) {
	t.Helper()
	rootFile := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := attestation.NewClient(base+"/attestation", attestation.WithRootsFile(rootFile))
	if err != nil {
		t.Fatal(err)
	}
	return c.Attest(context.Background(), d.TPM, d.EK, d.AK)
}

// EnrollThroughACME is the step CLI's whole path for a new device: the
// attestation CA certifies its AK, device-attest-01 proves a new TPM key,
// and finalize issues the device certificate. It returns the device's ID,
// the AK certificate and the device certificate chain.
func EnrollThroughACME(t testing.TB, e *Env) (id string, akCert *x509.Certificate, chain []*x509.Certificate) {
	t.Helper()
	d := NewStepTPM(t, e.Mfr)
	aks, err := d.AttestWithClient(t, e.URL(), e.App.Root())
	if err != nil {
		t.Fatalf("attestation client: %v", err)
	}
	c := ACMEClient(t, e.App)
	o, key, err := OrderAndProve(t, c, ACMEDeviceFromAK(d.ID, d.TPM, d.AK.Name(), aks[0]), d.ID)
	if err != nil {
		t.Fatalf("order and prove: %v", err)
	}
	if chain, err = Finalize(c, o, key, d.ID); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	return d.ID, aks[0], chain
}
