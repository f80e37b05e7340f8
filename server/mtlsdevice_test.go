package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// mtlsDevice speaks for an enrolled device on the mTLS endpoints: its
// TPM-resident key in the handshake, its enrolled AK for quotes. Both are
// closed when the test ends.
type mtlsDevice struct {
	t   *testing.T
	e   *env
	D   *servertest.Device
	ID  *fwclient.Identity
	AK  *goattest.AK
	Key *goattest.Key
	hc  *http.Client
}

func (e *env) mtlsDevice(t *testing.T, d *servertest.Device, id *fwclient.Identity) *mtlsDevice {
	t.Helper()
	cert, key, err := id.TLSCertificate(d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	ak, err := d.TPM.LoadAK(id.AKBlob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ak.Close(d.TPM.TPM) })
	return &mtlsDevice{t: t, e: e, D: d, ID: id, AK: ak, Key: key, hc: mtlsClient(e, &cert)}
}

// post sends in as JSON and decodes a 200 answer into out (nil: ignored);
// any other answer is returned as its problem.
func (m *mtlsDevice) post(path string, in, out any) *api.Problem {
	m.t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		m.t.Fatal(err)
	}
	resp, err := m.hc.Post(m.e.URL()+path, "application/json", bytes.NewReader(b))
	if err != nil {
		m.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if out != nil {
			if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
				m.t.Fatal(err)
			}
		}
		return nil
	}
	var p api.Problem
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		m.t.Fatalf("POST %s: %d without a problem body: %v", path, resp.StatusCode, err)
	}
	return &p
}

// renewChallenge opens a renewal session.
func (m *mtlsDevice) renewChallenge() api.RenewChallengeResponse {
	m.t.Helper()
	var ch api.RenewChallengeResponse
	if p := m.post(api.PathRenewChallenge, struct{}{}, &ch); p != nil {
		m.t.Fatalf("renew challenge: %v", p)
	}
	return ch
}
