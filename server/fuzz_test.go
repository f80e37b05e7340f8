package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// The fuzz targets feed mutated request bodies to the device API's handler
// in-process, on a live node, starting from one honest swtpm enrollment
// (or renewal) per run. Evidence is bound to its session, so a body is
// stored with placeholders ("$QUOTE", "$PCRS", ...) that each execution
// fills with this run's live values: a mutation that leaves a placeholder
// alone keeps the honest value, one that changes it sends its own. Each
// execution also gets the session re-sealed under a fresh ID (so replay
// protection does not end the exploration at the first request).
//
// Invariants: no panic (net/http would only drop the connection), no 5xx
// but 503 (every refusal must map to a 4xx problem with a code), every
// non-2xx answer is a problem with a code, and never a certificate for a
// body whose evidence differs from the honest request's.
//
// Non-guarantee: a corpus entry whose mutation replaced a placeholder with
// a value bound to an earlier run's session (a token, a quote over its
// nonce) replays only as far as that binding is checked.

// fuzzFill is one run's live values for the placeholders.
type fuzzFill struct {
	subst map[string]string // quoted placeholder → JSON value
	token string            // the honest session token
}

func (ff *fuzzFill) fill(body []byte, freshToken string) []byte {
	s := string(body)
	for k, v := range ff.subst {
		s = strings.ReplaceAll(s, k, v)
	}
	s = strings.ReplaceAll(s, `"$TOKEN"`, `"`+freshToken+`"`)
	s = strings.ReplaceAll(s, ff.token, freshToken)
	return []byte(s)
}

func b64(b []byte) string { return `"` + base64.StdEncoding.EncodeToString(b) + `"` }

func fuzzLog(f *testing.F) []byte {
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		f.Fatal(err)
	}
	return log
}

var fuzzClients atomic.Uint32

// The seeds with every field a placeholder.
var (
	seedComplete = []byte(`{"session_token":"$TOKEN","activated_secret":"$SECRET","quote":{"quote":"$QUOTE","signature":"$QUOTESIG"},"pcrs":"$PCRS","event_log":"$LOG","device_key":{"public":"$DKPUB","create_data":"$DKDATA","create_attestation":"$DKATT","create_signature":"$DKSIG"},"csr":"$CSR"}`)
	seedRenew    = []byte(`{"session_token":"$TOKEN","ak_public":"$AKPUB","quote":{"quote":"$QUOTE","signature":"$QUOTESIG"},"pcrs":"$PCRS","event_log":"$LOG","csr":"$CSR"}`)
)

func mustDecode(f *testing.F, b []byte, out *api.CompleteResponse) *api.CompleteResponse {
	if err := json.Unmarshal(b, out); err != nil {
		f.Fatal(err)
	}
	return out
}

func controlServe(h http.Handler, path string, body []byte, state *tls.ConnectionState) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.TLS = state
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// fuzzServe runs one request through h and checks the invariants that
// hold for any body; it returns the answer.
func fuzzServe(t *testing.T, h http.Handler, path string, body []byte, state *tls.ConnectionState) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	n := fuzzClients.Add(1) // a different client each time: per-client limits are not under test here
	r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:40000", byte(n>>16), byte(n>>8), byte(n))
	r.TLS = state
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r) // a panic fails the fuzz run
	if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
		t.Fatalf("%s answered %d: %s\nbody: %s", path, w.Code, w.Body.Bytes(), clip(body))
	}
	if w.Code/100 != 2 {
		var p api.Problem
		if ct := w.Header().Get("Content-Type"); ct != api.ContentTypeProblem || json.Unmarshal(w.Body.Bytes(), &p) != nil || p.Code == "" || p.Status != w.Code {
			t.Fatalf("%s answered %d without a problem code (%s): %s\nbody: %s", path, w.Code, w.Header().Get("Content-Type"), w.Body.Bytes(), clip(body))
		}
	}
	return w
}

// sortedPCRs makes PCR lists comparable as sets.
func sortedPCRs(in []api.PCR) []api.PCR {
	out := append([]api.PCR(nil), in...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Bank != out[j].Bank {
			return out[i].Bank < out[j].Bank
		}
		if out[i].Index != out[j].Index {
			return out[i].Index < out[j].Index
		}
		return bytes.Compare(out[i].Digest, out[j].Digest) < 0
	})
	return out
}

func FuzzComplete(f *testing.F) {
	e := servertest.New(f)
	log := fuzzLog(f)
	d := servertest.NewBootedDevice(f, e.Mfr, log)
	ak := d.NewAK(f, goattest.ECDSA)
	creq, err := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{Serial: "SN-FUZZ", Model: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	cb, _ := json.Marshal(creq)
	resp, err := e.HTTP.Post(e.URL()+api.PathChallenge, "application/json", bytes.NewReader(cb))
	if err != nil {
		f.Fatal(err)
	}
	var ch api.ChallengeResponse
	err = json.NewDecoder(resp.Body).Decode(&ch)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		f.Fatalf("challenge: %d %v", resp.StatusCode, err)
	}
	secret, err := ak.ActivateCredentialWithEK(d.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, d.EK)
	if err != nil {
		f.Fatal(err)
	}
	honest, key, err := fwclient.Evidence(d.TPM, ak, &ch, secret, log)
	if err != nil {
		f.Fatal(err)
	}
	key.Close()
	pcrs, _ := json.Marshal(honest.PCRs)
	ff := &fuzzFill{token: honest.SessionToken, subst: map[string]string{
		`"$SECRET"`: b64(honest.ActivatedSecret), `"$QUOTE"`: b64(honest.Quote.Quote), `"$QUOTESIG"`: b64(honest.Quote.Signature),
		`"$PCRS"`: string(pcrs), `"$LOG"`: b64(honest.EventLog), `"$DKPUB"`: b64(honest.DeviceKey.Public),
		`"$DKDATA"`: b64(honest.DeviceKey.CreateData), `"$DKATT"`: b64(honest.DeviceKey.CreateAttestation),
		`"$DKSIG"`: b64(honest.DeviceKey.CreateSignature), `"$CSR"`: b64(honest.CSR),
	}}
	f.Add(seedComplete)
	f.Add([]byte(`{"session_token":"$TOKEN","activated_secret":"$SECRET","quote":{"quote":"$QUOTE","signature":"$QUOTESIG"},"pcrs":"$PCRS","device_key":{"public":"$DKPUB","create_data":"$DKDATA","create_attestation":"$DKATT","create_signature":"$DKSIG"},"csr":"$CSR"}`))
	f.Add([]byte(`{"session_token":"$TOKEN","activated_secret":"$SECRET","quote":{"quote":"$QUOTE","signature":"$QUOTESIG"},"pcrs":[{"index":0,"bank":"sha1","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAA="}],"event_log":"$LOG","device_key":{"public":"$DKPUB","create_data":"$DKDATA","create_attestation":"$DKATT","create_signature":"$DKSIG"},"csr":"$CSR"}`))
	h := e.App.DeviceHandlerForTest()
	// Positive control: the placeholder seed, filled, enrolls.
	if tok, err := e.App.ResealForTest(ff.token, ""); err != nil {
		f.Fatal(err)
	} else if w := controlServe(h, api.PathComplete, ff.fill(seedComplete, tok), nil); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"certificate"`) {
		f.Fatalf("the honest seed does not enroll: %d %s", w.Code, w.Body.Bytes())
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := e.App.ResealForTest(ff.token, "")
		if err != nil {
			t.Fatal(err)
		}
		b := ff.fill(body, tok)
		w := fuzzServe(t, h, api.PathComplete, b, nil)
		var out api.CompleteResponse
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &out) != nil || len(out.Certificate) == 0 {
			return
		}
		var got api.CompleteRequest
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("a certificate for a body that is not JSON: %v", err)
		}
		if !sameBytes(got.ActivatedSecret, honest.ActivatedSecret) || !sameQuote(got.Quote, got.PCRs, got.EventLog, honest.Quote, honest.PCRs, honest.EventLog) ||
			!reflect.DeepEqual(keyFields(got.DeviceKey), keyFields(honest.DeviceKey)) || !sameBytes(got.CSR, honest.CSR) {
			t.Fatalf("a certificate for evidence that differs from the honest request: %s", clip(b))
		}
	})
}

func sameBytes(a, b []byte) bool { return bytes.Equal(a, b) } // nil and empty are equal

// sameQuote: the same quote and PCR set (in any order), and the honest
// log or none (the default policy does not require one).
func sameQuote(q api.Quote, pcrs []api.PCR, log []byte, wq api.Quote, wpcrs []api.PCR, wlog []byte) bool {
	if !bytes.Equal(q.Quote, wq.Quote) || !bytes.Equal(q.Signature, wq.Signature) || len(pcrs) != len(wpcrs) {
		return false
	}
	if len(log) > 0 && !bytes.Equal(log, wlog) {
		return false
	}
	a, b := sortedPCRs(pcrs), sortedPCRs(wpcrs)
	for i := range a {
		if a[i].Index != b[i].Index || a[i].Bank != b[i].Bank || !bytes.Equal(a[i].Digest, b[i].Digest) {
			return false
		}
	}
	return true
}

func keyFields(k api.KeyParameters) [4]string {
	return [4]string{string(k.Public), string(k.CreateData), string(k.CreateAttestation), string(k.CreateSignature)}
}

// clip keeps failure messages readable.
func clip(b []byte) string {
	if len(b) > 400 {
		return fmt.Sprintf("%s... (%d bytes)", b[:400], len(b))
	}
	return string(b)
}

func FuzzRenew(f *testing.F) {
	e := servertest.New(f)
	log := fuzzLog(f)
	d := servertest.NewBootedDevice(f, e.Mfr, log)
	ctx := context.Background()
	id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(log), fwclient.WithClaims(api.Claims{Model: "fuzz"}))
	if err != nil {
		f.Fatal(err)
	}
	h := e.App.DeviceHandlerForTest()
	leaf := id.Certificate
	stateFor := func(leaf *x509.Certificate) *tls.ConnectionState {
		chain := append([]*x509.Certificate{leaf}, id.Chain...)
		return &tls.ConnectionState{PeerCertificates: chain, VerifiedChains: [][]*x509.Certificate{append(chain, e.App.Root())}}
	}

	// The honest renewal, built in-process as the agent would.
	cw := httptest.NewRecorder()
	cr := httptest.NewRequest(http.MethodPost, api.PathRenewChallenge, strings.NewReader("{}"))
	cr.Header.Set("Content-Type", "application/json")
	cr.TLS = stateFor(leaf)
	h.ServeHTTP(cw, cr)
	var ch api.RenewChallengeResponse
	if cw.Code != http.StatusOK || json.Unmarshal(cw.Body.Bytes(), &ch) != nil {
		f.Fatalf("renew challenge: %d %s", cw.Code, cw.Body.Bytes())
	}
	ak, err := d.TPM.LoadAK(id.AKBlob)
	if err != nil {
		f.Fatal(err)
	}
	defer ak.Close(d.TPM.TPM)
	quote, err := ak.Quote(d.TPM.TPM, ch.Nonce, goattest.HashSHA256)
	if err != nil {
		f.Fatal(err)
	}
	tpmPCRs, err := d.TPM.PCRs(goattest.HashSHA256)
	if err != nil {
		f.Fatal(err)
	}
	var pcrs []api.PCR
	for _, p := range tpmPCRs {
		pcrs = append(pcrs, api.PCR{Index: p.Index, Bank: "sha256", Digest: p.Digest})
	}
	key, err := d.TPM.LoadKey(id.KeyBlob)
	if err != nil {
		f.Fatal(err)
	}
	csr, err := fwclient.CSR(key)
	key.Close()
	if err != nil {
		f.Fatal(err)
	}
	honest := api.RenewRequest{SessionToken: ch.SessionToken, AKPublic: ak.AttestationParameters().Public,
		Quote: api.Quote{Quote: quote.Quote, Signature: quote.Signature}, PCRs: pcrs, EventLog: log, CSR: csr}
	pcrJSON, _ := json.Marshal(pcrs)
	ff := &fuzzFill{token: honest.SessionToken, subst: map[string]string{
		`"$AKPUB"`: b64(honest.AKPublic), `"$QUOTE"`: b64(quote.Quote), `"$QUOTESIG"`: b64(quote.Signature),
		`"$PCRS"`: string(pcrJSON), `"$LOG"`: b64(log), `"$CSR"`: b64(csr),
	}}
	f.Add(seedRenew)
	f.Add([]byte(`{"session_token":"$TOKEN","ak_public":"$AKPUB","quote":{"quote":"$QUOTE","signature":"$QUOTESIG"},"pcrs":"$PCRS","csr":"$CSR"}`))

	// Positive control: the placeholder seed, filled, renews.
	if tok, err := e.App.ResealForTest(ff.token, leaf.SerialNumber.Text(16)); err != nil {
		f.Fatal(err)
	} else if w := controlServe(h, api.PathRenew, ff.fill(seedRenew, tok), stateFor(leaf)); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"certificate"`) {
		f.Fatalf("the honest seed does not renew: %d %s", w.Code, w.Body.Bytes())
	} else {
		var out api.CompleteResponse
		if c, err := x509.ParseCertificate(mustDecode(f, w.Body.Bytes(), &out).Certificate); err == nil {
			leaf = c
		}
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := e.App.ResealForTest(ff.token, leaf.SerialNumber.Text(16))
		if err != nil {
			t.Fatal(err)
		}
		b := ff.fill(body, tok)
		w := fuzzServe(t, h, api.PathRenew, b, stateFor(leaf))
		// A refused renewal quarantines the device: put it back, so the
		// next input is judged on its own.
		if dev, err := e.App.Node().Device(id.DeviceID); err == nil && dev.Status == cluster.DeviceQuarantined {
			if _, err := e.App.Node().TransitionDevice(ctx, id.DeviceID, cluster.OpEnable, "fuzz", "reset between inputs"); err != nil {
				t.Fatal(err)
			}
		}
		var out api.CompleteResponse
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &out) != nil || len(out.Certificate) == 0 {
			return
		}
		var got api.RenewRequest
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("a certificate for a body that is not JSON: %v", err)
		}
		if !sameBytes(got.AKPublic, honest.AKPublic) || !sameQuote(got.Quote, got.PCRs, got.EventLog, honest.Quote, honest.PCRs, honest.EventLog) || !sameBytes(got.CSR, honest.CSR) {
			t.Fatalf("a certificate for evidence that differs from the honest renewal: %s", clip(b))
		}
		// Renew from the newest certificate on: the registry keeps only
		// the newest serials.
		if c, err := x509.ParseCertificate(out.Certificate); err == nil {
			leaf = c
		}
	})
}
