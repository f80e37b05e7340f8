package adversary_test

// Issue 13's attestation CA (POST /attestation/attest, /attestation/secret):
// anonymous like enrollment. Before possession nothing may be written
// (untrusted EK, someone else's public EK certificate, wrong or replayed
// secret, garbage, a flood); a group without acme and an inactive device
// are refused; every row's control is a device that gets an AK certificate
// chaining to the AK CA.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

const catAttestCA = "attestca"

// akAttestRequest is the /attest body for d's EK and a fresh RSA AK (what
// step-ca's device-attest accepts), as the step client builds it.
func (h *Harness) akAttestRequest(d *Dev) (acme.AttestRequest, *goattest.AK) {
	ak := d.NewAK(h.T, goattest.RSA)
	p := ak.AttestationParameters()
	ekPub, err := x509.MarshalPKIXPublicKey(d.EK.Public)
	if err != nil {
		h.T.Fatal(err)
	}
	req := acme.AttestRequest{TPMInfo: acme.TPMInfo{Version: 2}, EK: ekPub,
		Params: acme.AttestationParameters{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature}}
	if d.EK.Certificate != nil {
		req.EKCerts = [][]byte{d.EK.Certificate.Raw}
	}
	return req, ak
}

func (h *Harness) akAttest(req acme.AttestRequest) (acme.AttestResponse, Result) {
	a := h.send(nil, http.MethodPost, api.PathAttestationAttest, "application/json", jsonBody(req))
	var resp acme.AttestResponse
	if a.Status == http.StatusOK {
		if err := json.Unmarshal(a.Body, &resp); err != nil {
			return resp, harnessErr("attest answer: %v", err)
		}
	}
	return resp, a.Result
}

// akSecret posts a secret; an answer with a chain counts as issued.
func (h *Harness) akSecret(secret []byte) ([]*x509.Certificate, Result) {
	a := h.send(nil, http.MethodPost, api.PathAttestationSecret, "application/json", jsonBody(acme.SecretRequest{Secret: secret}))
	var resp acme.SecretResponse
	var chain []*x509.Certificate
	if a.Status == http.StatusOK && json.Unmarshal(a.Body, &resp) == nil {
		for _, der := range resp.Chain {
			if c, err := x509.ParseCertificate(der); err == nil {
				chain = append(chain, c)
			}
		}
		if len(chain) > 0 {
			a.Result.Certificate, a.Result.CertDER = true, resp.Chain[0]
		}
	}
	return chain, a.Result
}

// akActivated runs /attest for d and activates the credential.
func (h *Harness) akActivated(d *Dev) ([]byte, Result) {
	req, ak := h.akAttestRequest(d)
	resp, r := h.akAttest(req)
	if r.Status != http.StatusOK {
		return nil, r
	}
	secret, err := ak.ActivateCredential(d.TPM.TPM, goattest.EncryptedCredential{Credential: resp.Credential, Secret: resp.Secret})
	if err != nil {
		return nil, harnessErr("activate: %v", err)
	}
	return secret, r
}

// akControl: a fresh device of the trusted manufacturer gets an AK
// certificate chaining to the AK CA, naming its device ID.
func (h *Harness) akControl() (*Dev, []byte, error) {
	d := h.newDev(nil)
	secret, r := h.akActivated(d)
	if secret == nil {
		return nil, nil, fmt.Errorf("attest: %s", r)
	}
	chain, r := h.akSecret(secret)
	if len(chain) != 2 || !bytes.Equal(chain[1].Raw, h.Env.App.AKCA().Raw) {
		return nil, nil, fmt.Errorf("secret: %s, %d certificates", r, len(chain))
	}
	if err := chain[0].CheckSignatureFrom(chain[1]); err != nil {
		return nil, nil, fmt.Errorf("AK certificate not signed by the AK CA: %v", err)
	}
	return d, secret, nil
}

func akControl(h *Harness) error { _, _, err := h.akControl(); return err }

// unwritten runs an attack and turns any committed attestation record, or
// more Raft entries than the node's own loops may add, into a violation.
func (h *Harness) unwritten(attack func() Result) Result {
	node := h.Env.App.Node()
	newest := func() uint64 {
		recs, _ := node.Attestations(cluster.AttestationQuery{Limit: 1})
		if len(recs) == 0 {
			return 0
		}
		return recs[0].ID
	}
	before, idx := newest(), node.Stats()["last_log_index"]
	r := attack()
	if after := newest(); after != before {
		r.Violation = fmt.Sprintf("an attestation record was committed (ID %d); Raft index %s -> %s", after, idx, node.Stats()["last_log_index"])
	}
	return r
}

func attestCAAttacks() []Attack {
	var as []Attack
	add := func(a ...Attack) { as = append(as, a...) }

	add(Attack{Name: "attestation CA: EK from an untrusted manufacturer", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			stranger := &Dev{Device: newForeignDevice(h)}
			req, _ := h.akAttestRequest(stranger)
			h.Arm()
			return h.unwritten(func() Result { _, r := h.akAttest(req); return expectCode(r, api.CodeEKUntrusted) })
		}})
	add(Attack{Name: "attestation CA: a victim's public EK certificate with the attacker's AK, junk secret", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			victim, _, err := h.akControl()
			if err != nil {
				return harnessErr("victim: %v", err)
			}
			h.Arm()
			atk := h.newDev(nil)
			req, _ := h.akAttestRequest(atk)
			req.EK, req.EKCerts = nil, [][]byte{victim.EK.Certificate.Raw}
			return h.unwritten(func() Result {
				// The credential is encrypted to the victim's EK: the
				// attacker's TPM cannot open it, so it guesses.
				if _, r := h.akAttest(req); r.Status != http.StatusOK {
					return r
				}
				_, r := h.akSecret(randomBytes(32))
				return expectCode(r, api.CodeSecretUnknown)
			})
		}})
	add(Attack{Name: "attestation CA: replayed secret", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			_, secret, err := h.akControl()
			if err != nil {
				return harnessErr("first run: %v", err)
			}
			h.Arm()
			return h.unwritten(func() Result { _, r := h.akSecret(secret); return expectCode(r, api.CodeSecretUnknown) })
		}})
	add(Attack{Name: "attestation CA: device in a group without acme (boot-state group)", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			// The reference device enrolled natively as model "golden":
			// its group requires boot state, which ACME cannot show.
			req, _ := h.akAttestRequest(h.dev(devGolden))
			return h.unwritten(func() Result { _, r := h.akAttest(req); return expectCode(r, api.CodeACMENotAllowed) })
		}})
	add(Attack{Name: "attestation CA: revoked device", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			d, _, err := h.akControl()
			if err != nil {
				return harnessErr("enroll: %v", err)
			}
			if _, err := server.NewAdminClient(h.Env.Dir).TransitionDevice(context.Background(), d.ID, cluster.OpRevoke, "adversary", "stolen"); err != nil {
				return harnessErr("revoke: %v", err)
			}
			h.Arm()
			req, _ := h.akAttestRequest(d)
			return h.unwritten(func() Result { _, r := h.akAttest(req); return expectCode(r, api.CodeDeviceInactive) })
		}})
	add(Attack{Name: "attestation CA: AK evidence that is not a TPM key", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			req, _ := h.akAttestRequest(h.newDev(nil))
			req.Params.CreateAttestation = randomBytes(len(req.Params.CreateAttestation))
			return h.unwritten(func() Result { _, r := h.akAttest(req); return expectCode(r, api.CodeAKInvalid) })
		}})
	add(Attack{Name: "attestation CA: AK evidence padded to 40 KiB (a software AK signs its own creation data), kept pending in memory: refused", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			req, _ := h.akAttestRequest(h.newDev(nil))
			p := req.Params
			ak, err := paddedSoftwareAK(api.KeyParameters{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature}, make([]byte, 40<<10))
			if err != nil {
				return harnessErr("craft: %v", err)
			}
			req.Params = acme.AttestationParameters{Public: ak.Public, CreateData: ak.CreateData, CreateAttestation: ak.CreateAttestation, CreateSignature: ak.CreateSignature}
			return h.unwritten(func() Result { _, r := h.akAttest(req); return expectCode(r, api.CodeAKInvalid) })
		}})
	add(Attack{Name: "attestation CA: unknown fields, garbage and a non-JSON media type", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			return h.unwritten(func() Result {
				if r := h.post(nil, api.PathAttestationAttest, "application/json", []byte(`{"tpmInfo":{},"params":{},"admin":true}`)); r.Problem == nil || r.Problem.Code != api.CodeMalformed {
					return r
				}
				if r := h.post(nil, api.PathAttestationSecret, "application/json", []byte(`{"secret":`)); r.Problem == nil || r.Problem.Code != api.CodeMalformed {
					return r
				}
				return expectCode(h.post(nil, api.PathAttestationAttest, "text/plain", []byte(`{}`)), api.CodeUnsupportedMediaType)
			})
		}})
	add(Attack{Name: "attestation CA: anonymous flood of /attest and /secret writes nothing", Category: catAttestCA, Expect: ExpectProblem,
		Control: akControl,
		Attack: func(h *Harness) Result {
			req, _ := h.akAttestRequest(&Dev{Device: newForeignDevice(h)})
			node := h.Env.App.Node()
			before := node.Stats()["last_log_index"]
			var last Result
			r := h.unwritten(func() Result {
				for range 50 {
					if _, last = h.akAttest(req); last.Problem == nil {
						return last
					}
					if _, last = h.akSecret(randomBytes(32)); last.Problem == nil {
						return last
					}
				}
				return last
			})
			if after := node.Stats()["last_log_index"]; after != before && r.Violation == "" {
				var b, a uint64
				fmt.Sscan(before, &b)
				fmt.Sscan(after, &a)
				if a > b+2 { // the node's own summary or checkpoint may fall inside
					r.Violation = fmt.Sprintf("100 refused requests appended %d Raft entries", a-b)
				}
			}
			return r
		}})
	return as
}

// expectCode keeps a refusal with code as it is and marks any other answer
// as a violation.
func expectCode(r Result, code string) Result {
	if r.Problem != nil && r.Problem.Code != code && r.Violation == "" {
		r.Violation = fmt.Sprintf("refused with %s, want %s", r.Problem.Code, code)
	}
	return r
}

// newForeignDevice is a swtpm whose EK certificate a manufacturer the
// appliance does not trust issued.
func newForeignDevice(h *Harness) *servertest.Device {
	return servertest.NewDevice(h.T, swtpm.NewTestManufacturer(h.T))
}
