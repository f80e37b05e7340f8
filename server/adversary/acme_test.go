package adversary_test

// Issue 13's ACME rows: step-ca's ACME API under /acme (device-attest-01,
// format tpm, the AK CA as the only attestation root). Anonymous clients
// must write nothing before a proof; a proof for one device must not get
// another's identifier; a device the registry does not know gets no
// certificate even with an AK certificate; the native signing routes are not there; nonces
// are single-use; accounts cannot change. They run against their own node
// with ACME enabled and a test AK CA (servertest.TestAKCA), so each row
// checks that node's Raft log and certificate serials itself.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"

	xacme "golang.org/x/crypto/acme"

	"github.com/gatehouse-dev/gatehouse/acme"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

const catACME = "acme"

// acmeState is the ACME node and what the rows share.
type acmeState struct {
	env     *servertest.Env
	aca     *servertest.TestAKCA
	dev     *servertest.ACMEDevice // active; its AK certificate names it
	revoked string                 // a revoked device's ID
	client  *xacme.Client
}

var (
	acmeMu     sync.Mutex
	acmeStates = map[*Harness]*acmeState{}
)

func (h *Harness) acme() *acmeState {
	acmeMu.Lock()
	defer acmeMu.Unlock()
	if s := acmeStates[h]; s != nil {
		return s
	}
	t := h.T
	s := &acmeState{env: servertest.New(t), aca: servertest.NewTestAKCA(t)}
	if err := s.env.App.Close(); err != nil {
		t.Fatal(err)
	}
	s.env.Start(s.aca.Option())
	if _, err := server.NewAdminClient(s.env.Dir).ApplyPolicy(h.Ctx, "test", []byte(`{"groups":[{"name":"fleet","match":{},"mode":"auto","require":{},"acme":true}]}`)); err != nil {
		t.Fatal(err)
	}
	s.dev = servertest.NewACMEDevice(t, s.env, s.aca, "")
	gone := servertest.NewACMEDevice(t, s.env, s.aca, "")
	if _, err := s.env.App.RevokeDevice(h.Ctx, gone.ID, "alice", "stolen"); err != nil {
		t.Fatal(err)
	}
	s.revoked = gone.ID
	s.client = servertest.ACMEClient(t, s.env.App)
	acmeStates[h] = s
	return s
}

func (s *acmeState) lastIndex() (uint64, error) {
	return strconv.ParseUint(s.env.App.Node().Stats()["last_log_index"], 10, 64)
}

func (s *acmeState) serials() (map[string]bool, error) {
	devs, err := s.env.App.Node().Devices()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, d := range devs {
		for _, sn := range d.Serials {
			out[sn] = true
		}
	}
	return out, nil
}

// guard snapshots the ACME node; check (after the attack) turns err (the
// ACME client's answer) into a Result: refused when the answer is a 4xx
// ACME problem of one of types, nothing was written to Raft (unless
// writes > 0 is allowed: a proof made in the attack's setup) and no
// certificate serial was added.
func (s *acmeState) guard() (func(err error, writes uint64, types ...string) Result, error) {
	idx, err := s.lastIndex()
	if err != nil {
		return nil, err
	}
	before, err := s.serials()
	if err != nil {
		return nil, err
	}
	return func(err error, writes uint64, types ...string) Result {
		var r Result
		var ae *xacme.Error
		switch {
		case err == nil:
			return Result{Status: http.StatusOK, Violation: "the ACME server accepted the request"}
		case errors.Is(err, servertest.ErrNotProven) && errors.As(err, &ae):
			// The challenge answer was taken (200) and refused: its error
			// is in the challenge, the authorization stays pending.
			r = Result{Status: http.StatusOK, ContentType: "application/json"}
			ok := false
			for _, t := range types {
				ok = ok || ae.ProblemType == "urn:ietf:params:acme:error:"+t
			}
			if !ok {
				r.Violation = fmt.Sprintf("challenge error %s (%s), want one of %v", ae.ProblemType, ae.Detail, types)
			}
		case errors.As(err, &ae):
			r = Result{Status: ae.StatusCode, ContentType: "application/problem+json"}
			ok := len(types) == 0
			for _, t := range types {
				ok = ok || ae.ProblemType == "urn:ietf:params:acme:error:"+t
			}
			if !ok || ae.StatusCode/100 != 4 {
				r.Violation = fmt.Sprintf("answer %d %s (%s), want a 4xx of %v", ae.StatusCode, ae.ProblemType, ae.Detail, types)
			}
		default:
			return harnessErr("no ACME answer: %v", err)
		}
		if idx2, err := s.lastIndex(); err != nil {
			return harnessErr("%v", err)
		} else if idx2-idx > writes {
			r.Violation = strings.TrimPrefix(r.Violation+fmt.Sprintf("; the Raft log grew by %d entries", idx2-idx), "; ")
		}
		after, err := s.serials()
		if err != nil {
			return harnessErr("%v", err)
		}
		for sn := range after {
			if !before[sn] {
				r.Violation = strings.TrimPrefix(r.Violation+"; new certificate serial "+sn, "; ")
				r.Certificate = true
			}
		}
		return r
	}, nil
}

// hexID is a fresh device ID no registry knows.
func hexID() string { return hex.EncodeToString(randomBytes(16)) }

func permID(id string) []xacme.AuthzID {
	return []xacme.AuthzID{{Type: "permanent-identifier", Value: id}}
}

// readyOrder proves s.dev's key for a new order (a Raft write: the proof).
func (s *acmeState) readyOrder(h *Harness) (*xacme.Order, error) {
	o, _, err := servertest.OrderAndProve(h.T, s.client, s.dev, s.dev.ID)
	if err == nil && o.Status != xacme.StatusReady {
		err = fmt.Errorf("order %s after the proof", o.Status)
	}
	return o, err
}

func acmeAttacks() []Attack {
	var as []Attack
	add := func(a ...Attack) { as = append(as, a...) }
	orderOK := func(h *Harness) error {
		s := h.acme()
		_, err := s.client.AuthorizeOrder(h.Ctx, permID(s.dev.ID))
		return err
	}
	for _, c := range []struct {
		name  string
		ids   func(s *acmeState) []xacme.AuthzID
		types []string
	}{
		{"ACME new-order for a revoked device", func(s *acmeState) []xacme.AuthzID { return permID(s.revoked) }, []string{"unauthorized"}},
		{"ACME new-order for a DNS name", func(*acmeState) []xacme.AuthzID { return []xacme.AuthzID{{Type: "dns", Value: "gatehouse.example"}} }, []string{"rejectedIdentifier"}},
		{"ACME new-order for a permanent identifier that is not a device ID (8000 characters)", func(*acmeState) []xacme.AuthzID { return permID(strings.Repeat("ab", 4000)) }, []string{"rejectedIdentifier"}},
		{"ACME new-order for two permanent identifiers (a device and another)", func(s *acmeState) []xacme.AuthzID {
			return append(permID(s.dev.ID), permID(s.revoked)...)
		}, []string{"rejectedIdentifier"}},
	} {
		add(Attack{Name: c.name + ": refused, nothing written", Category: catACME, Expect: ExpectHeld, Control: orderOK,
			Attack: func(h *Harness) Result {
				s := h.acme()
				check, err := s.guard()
				if err != nil {
					return harnessErr("%v", err)
				}
				_, err = s.client.AuthorizeOrder(h.Ctx, c.ids(s))
				return check(err, 0, c.types...)
			}})
	}
	add(Attack{Name: "ACME order for a device ID the registry does not know, proven with an AK certificate for it: finalize refused, nothing recorded", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			s := h.acme()
			o, key, err := servertest.OrderAndProve(h.T, s.client, s.dev, s.dev.ID)
			if err != nil {
				return err
			}
			_, err = servertest.Finalize(s.client, o, key, s.dev.ID)
			return err
		},
		Attack: func(h *Harness) Result {
			s := h.acme()
			ghostID := hexID()
			ghost := servertest.NewACMEDevice(h.T, s.env, s.aca, ghostID)
			o, key, err := servertest.OrderAndProve(h.T, s.client, ghost, ghostID)
			if err != nil {
				return harnessErr("setup: %v", err)
			}
			check, err := s.guard()
			if err != nil {
				return harnessErr("%v", err)
			}
			_, err = servertest.Finalize(s.client, o, key, ghostID)
			r := check(err, 0, "unauthorized")
			if recs, _ := s.env.App.Node().Attestations(cluster.AttestationQuery{DeviceID: ghostID}); len(recs) != 0 && r.Violation == "" {
				r.Violation = fmt.Sprintf("%d records for the unknown device", len(recs))
			}
			return r
		}})
	add(Attack{Name: "ACME device-attest-01 for another device's identifier with an AK certificate naming the attacker's device: refused, nothing written", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error { _, err := h.acme().readyOrder(h); return err },
		Attack: func(h *Harness) Result {
			s := h.acme()
			victim := servertest.NewACMEDevice(h.T, s.env, s.aca, "")
			check, err := s.guard()
			if err != nil {
				return harnessErr("%v", err)
			}
			_, _, err = servertest.OrderAndProve(h.T, s.client, s.dev, victim.ID)
			return check(err, 0, "badAttestationStatement", "rejectedIdentifier", "unauthorized")
		}})
	add(Attack{Name: "ACME device-attest-01 with an AK certificate from a CA that is not the AK CA: refused, nothing written", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error { _, err := h.acme().readyOrder(h); return err },
		Attack: func(h *Harness) Result {
			s := h.acme()
			rogue := servertest.NewACMEDevice(h.T, s.env, servertest.NewTestAKCA(h.T), "")
			check, err := s.guard()
			if err != nil {
				return harnessErr("%v", err)
			}
			_, _, err = servertest.OrderAndProve(h.T, s.client, rogue, rogue.ID)
			return check(err, 0, "badAttestationStatement")
		}})
	add(Attack{Name: "ACME finalize with a CSR for a key the TPM did not attest: refused, no certificate", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			s := h.acme()
			o, key, err := servertest.OrderAndProve(h.T, s.client, s.dev, s.dev.ID)
			if err != nil {
				return err
			}
			_, err = servertest.Finalize(s.client, o, key, s.dev.ID)
			return err
		},
		Attack: func(h *Harness) Result {
			s := h.acme()
			o, err := s.readyOrder(h)
			if err != nil {
				return harnessErr("%v", err)
			}
			check, err := s.guard()
			if err != nil {
				return harnessErr("%v", err)
			}
			other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			_, err = servertest.Finalize(s.client, o, other, s.dev.ID)
			return check(err, 0, "unauthorized", "badCSR")
		}})
	add(Attack{Name: "ACME order and authorization URLs with a forged ID (MAC changed, payload changed): refused, nothing written", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			s := h.acme()
			o, err := s.client.AuthorizeOrder(h.Ctx, permID(s.dev.ID))
			if err != nil {
				return err
			}
			_, err = s.client.GetOrder(h.Ctx, o.URI)
			return err
		},
		Attack: func(h *Harness) Result {
			s := h.acme()
			o, err := s.client.AuthorizeOrder(h.Ctx, permID(s.dev.ID))
			if err != nil {
				return harnessErr("%v", err)
			}
			check, err := s.guard()
			if err != nil {
				return harnessErr("%v", err)
			}
			// The victim's device ID in the payload, the MAC kept.
			i := strings.LastIndex(o.URI, "/") + 1
			payload, mac, _ := strings.Cut(o.URI[i:], ".")
			raw, _ := base64.RawURLEncoding.DecodeString(payload)
			raw = []byte(strings.ReplaceAll(string(raw), s.dev.ID, s.revoked))
			forged := o.URI[:i] + base64.RawURLEncoding.EncodeToString(raw) + "." + mac
			if _, err := s.client.GetOrder(h.Ctx, forged); err == nil {
				return Result{Status: http.StatusOK, Violation: "an order ID with a changed payload was accepted"}
			}
			flipped := o.URI[:len(o.URI)-2] + "AA"
			if _, err := s.client.GetAuthorization(h.Ctx, strings.Replace(o.AuthzURLs[0], "/authz/", "/authz/x", 1)); err == nil {
				return Result{Status: http.StatusOK, Violation: "a forged authorization ID was accepted"}
			}
			_, err = s.client.GetOrder(h.Ctx, flipped)
			return check(err, 0, "malformed")
		}})
	add(Attack{Name: "step-ca's native signing routes (/sign, /renew, /rekey, /revoke, /1.0/sign, /ssh/sign) next to /acme: 404, nothing written", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			s := h.acme()
			resp, err := s.client.HTTPClient.Get("https://" + s.env.App.Addr() + "/provisioners")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("GET /provisioners: %d", resp.StatusCode)
			}
			return nil
		},
		Attack: func(h *Harness) Result {
			s := h.acme()
			idx, err := s.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			r := Result{}
			for _, p := range []string{"/sign", "/renew", "/rekey", "/revoke", "/1.0/sign", "/1.0/renew", "/ssh/sign", "/admin/provisioners", "/acme/device-attest/../../sign"} {
				resp, err := s.client.HTTPClient.Post("https://"+s.env.App.Addr()+p, "application/json", strings.NewReader(`{"csr":"x","ott":"y"}`))
				if err != nil {
					return harnessErr("%v", err)
				}
				resp.Body.Close()
				r.Status = resp.StatusCode
				if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
					r.Violation = fmt.Sprintf("POST %s answered %d", p, resp.StatusCode)
					return r
				}
			}
			if idx2, _ := s.lastIndex(); idx2 != idx {
				r.Violation = fmt.Sprintf("the Raft log grew by %d entries", idx2-idx)
			}
			return r
		}})
	add(Attack{Name: "ACME request replayed with the same nonce on the same node: badNonce", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			s := h.acme()
			st, _, err := acmeNewAccount(s, "")
			if err == nil && st != http.StatusCreated {
				err = fmt.Errorf("new-account %d", st)
			}
			return err
		},
		Attack: func(h *Harness) Result {
			s := h.acme()
			st, replay, err := acmeNewAccount(s, "")
			if err != nil || st != http.StatusCreated {
				return harnessErr("first use: %d %v", st, err)
			}
			st, body, err := acmeNewAccount(s, replay)
			if err != nil {
				return harnessErr("%v", err)
			}
			r := Result{Status: st, ContentType: "application/problem+json"}
			if st != http.StatusBadRequest || !strings.Contains(body, "badNonce") {
				r.Violation = fmt.Sprintf("replay answered %d %.200s", st, body)
			}
			return r
		}})
	add(Attack{Name: "ACME account contact update and deactivation (stateless accounts): refused, nothing written", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error {
			// new-account (again: accounts are stateless) and the account URL serves.
			s := h.acme()
			if _, err := s.client.Register(h.Ctx, &xacme.Account{}, xacme.AcceptTOS); !errors.Is(err, xacme.ErrAccountAlreadyExists) && err != nil {
				return err
			}
			_, err := s.client.AuthorizeOrder(h.Ctx, permID(s.dev.ID))
			return err
		},
		Attack: func(h *Harness) Result {
			s := h.acme()
			check, err := s.guard()
			if err != nil {
				return harnessErr("%v", err)
			}
			if _, err := s.client.UpdateReg(h.Ctx, &xacme.Account{Contact: []string{"mailto:attacker@example.com"}}); err == nil {
				return Result{Status: http.StatusOK, Violation: "account update accepted"}
			}
			return check(s.client.DeactivateReg(h.Ctx), 0, "unauthorized")
		}})
	add(Attack{Name: "anonymous ACME flood (new-nonce, new-account, refused and accepted new-order, failed device-attest-01): no Raft entry, bounded", Category: catACME, Expect: ExpectHeld,
		Control: func(h *Harness) error { _, err := h.acme().readyOrder(h); return err },
		Attack: func(h *Harness) Result {
			s := h.acme()
			idx, err := s.lastIndex()
			if err != nil {
				return harnessErr("%v", err)
			}
			junk, _ := json.Marshal(map[string]string{"attObj": base64.RawURLEncoding.EncodeToString([]byte("junk"))})
			var r Result
			for i := 0; i < 20; i++ {
				atk := servertest.ACMEClient(h.T, s.env.App)
				if _, err := atk.AuthorizeOrder(h.Ctx, []xacme.AuthzID{{Type: "dns", Value: "flood.example"}}); err == nil {
					return Result{Status: http.StatusCreated, Violation: "an order for a DNS name was accepted"}
				}
				if _, err := atk.AuthorizeOrder(h.Ctx, permID(strings.Repeat("ab", 16))); err != nil { // not registered (yet): admitted, stateless
					return harnessErr("%v", err)
				}
				o, err := atk.AuthorizeOrder(h.Ctx, permID(s.dev.ID))
				if err != nil {
					return harnessErr("%v", err)
				}
				az, err := atk.GetAuthorization(h.Ctx, o.AuthzURLs[0])
				if err != nil {
					return harnessErr("%v", err)
				}
				ch := az.Challenges[0]
				ch.Payload = junk
				r.Status = http.StatusOK
				var ae *xacme.Error
				if _, err = atk.Accept(h.Ctx, ch); errors.As(err, &ae) {
					r.Status = ae.StatusCode
				} else if err != nil {
					return harnessErr("%v", err)
				}
				if az, err = atk.GetAuthorization(h.Ctx, o.AuthzURLs[0]); err != nil || az.Status == xacme.StatusValid {
					return Result{Status: http.StatusOK, Violation: fmt.Sprintf("a junk attestation: authorization %v %v", az, err)}
				}
			}
			if idx2, _ := s.lastIndex(); idx2 != idx {
				r.Violation = fmt.Sprintf("the flood appended %d Raft entries", idx2-idx)
			}
			// What the node keeps in memory for it stays within its bounds
			// (entries and bytes), as its metrics report them.
			st, err := acmeNodeState(s)
			if err != nil {
				return harnessErr("%v", err)
			}
			if st["pending_updates"] < 1 || st["pending_updates"] > acme.MaxPending || st["pending_bytes"] > acme.MaxPendingBytes || st["used_nonces"] > acme.MaxUsedNonces {
				r.Violation = strings.TrimPrefix(r.Violation+fmt.Sprintf("; node-local ACME state %v, bounds %d entries, %d bytes, %d nonces", st, acme.MaxPending, acme.MaxPendingBytes, acme.MaxUsedNonces), "; ")
			}
			return r
		}})
	return as
}

// acmeNodeState scrapes the node's gatehouse_acme_node_state gauges by kind.
func acmeNodeState(s *acmeState) (map[string]float64, error) {
	resp, err := s.client.HTTPClient.Get("https://" + s.env.App.Addr() + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, m := range regexp.MustCompile(`(?m)^gatehouse_acme_node_state\{kind="([a-z_]+)"\} (\S+)$`).FindAllSubmatch(b, -1) {
		v, err := strconv.ParseFloat(string(m[2]), 64)
		if err != nil {
			return nil, err
		}
		out[string(m[1])] = v
	}
	if len(out) != 3 {
		return nil, fmt.Errorf("gatehouse_acme_node_state: %v, want used_nonces, pending_updates, pending_bytes", out)
	}
	return out, nil
}

// acmeNewAccount posts a new-account JWS (a fresh key) with a fresh nonce,
// or replays body when set; it returns the status and, for a fresh
// request, the body it sent (for the replay).
func acmeNewAccount(s *acmeState, body string) (int, string, error) {
	base := "https://" + s.env.App.Addr() + "/acme/" + ca.ACMEProvisionerName
	hc := s.client.HTTPClient
	if body == "" {
		resp, err := hc.Head(base + "/new-nonce")
		if err != nil {
			return 0, "", err
		}
		resp.Body.Close()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		body = servertest.SignACMEJWS(key, resp.Header.Get("Replay-Nonce"), base+"/new-account", `{"termsOfServiceAgreed":true}`)
		resp, err = hc.Post(base+"/new-account", "application/jose+json", strings.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		resp.Body.Close()
		return resp.StatusCode, body, nil
	}
	resp, err := hc.Post(base+"/new-account", "application/jose+json", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), nil
}
