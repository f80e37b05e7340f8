package attest

import (
	"errors"
	"strings"
	"testing"
)

func TestACMEGroup(t *testing.T) {
	doc := `{"groups":[
	  {"name":"booted","match":{"models":["edge-1"]},"mode":"auto","require":{"event_log":true}},
	  {"name":"acme-fleet","match":{"labels":{"site":"lab"}},"mode":"approve","require":{},"acme":true},
	  {"name":"plain","match":{"ek_issuers":["CN=Test EK CA"]},"mode":"auto","require":{}}]}`
	p, err := ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	p.Version = 4
	ek := Input{EKIssuer: "CN=Test EK CA", Manufacturer: "id:53573536", EKPublicSHA256: strings.Repeat("a", 64), DeviceID: "d1"}

	in := ek
	in.Labels = map[string]string{"site": "lab"}
	g, err := p.ACMEGroup(&in)
	if err != nil || g == nil || g.Name != "acme-fleet" || g.Mode != ModeApprove {
		t.Fatalf("labelled device: %v %v", g, err)
	}

	in = ek
	g, err = p.ACMEGroup(&in)
	if !errors.Is(err, ErrACMENotAllowed) || g == nil || g.Name != "plain" || !strings.Contains(err.Error(), "group plain of policy v4") || strings.Contains(err.Error(), "quote") {
		t.Fatalf("group without acme: %v %v", g, err)
	}

	in = ek
	in.Model = "edge-1"
	g, err = p.ACMEGroup(&in)
	if !errors.Is(err, ErrACMENotAllowed) || g.Name != "booted" || !strings.Contains(err.Error(), "group booted") || !strings.Contains(err.Error(), "no quote") {
		t.Fatalf("group with boot-state requirements: %v", err)
	}

	in = Input{EKIssuer: "CN=Other", DeviceID: "d2"}
	if g, err = p.ACMEGroup(&in); !errors.Is(err, ErrACMENotAllowed) || g != nil || !strings.Contains(err.Error(), "no enrollment group") {
		t.Fatalf("no group: %v %v", g, err)
	}
}

// acme on a group with boot-state requirements would admit, without a
// quote, what those requirements exist to refuse.
func TestParsePolicyRefusesACMEWithBootState(t *testing.T) {
	for _, req := range []string{`{"event_log":true}`, `{"secure_boot":true}`, `{"pcrs":{"sha256":{"7":"` + strings.Repeat("0", 64) + `"}}}`, `{"dbx_min_entries":1}`, `{"firmware_versions":["x"]}`} {
		doc := `{"groups":[{"name":"g","match":{},"mode":"auto","require":` + req + `,"acme":true}]}`
		if _, err := ParsePolicy([]byte(doc)); !errors.Is(err, ErrPolicyInvalid) || !strings.Contains(err.Error(), "acme") {
			t.Errorf("%s: %v", req, err)
		}
	}
	// Positive control: acme without boot-state requirements, and boot
	// state without acme.
	for _, doc := range []string{`{"groups":[{"name":"g","match":{},"mode":"auto","require":{},"acme":true}]}`, `{"groups":[{"name":"g","match":{},"mode":"auto","require":{"event_log":true}}]}`} {
		if _, err := ParsePolicy([]byte(doc)); err != nil {
			t.Errorf("%s: %v", doc, err)
		}
	}
}
