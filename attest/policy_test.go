package attest

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// inputFromLog builds the evidence of a device whose quote equals the log's
// replay, as VerifyCompletion would have accepted it.
func inputFromLog(t testing.TB, raw []byte) *Input {
	t.Helper()
	l, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	pcrs := map[string]map[int][]byte{}
	for _, bank := range l.Banks {
		pcrs[bank] = l.Replay(bank)
	}
	return &Input{Manufacturer: "id:49465800", EKIssuer: "CN=Test EK CA", Model: "edge-1", DeviceID: "d1", PCRs: pcrs, Log: l}
}

const ubuntuLog = "eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"

func TestPolicyCaptureThenExplain(t *testing.T) {
	raw := readVector(t, ubuntuLog)
	good := inputFromLog(t, raw)
	p := &Policy{Version: 3, Groups: []Group{Capture("edge", good)}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePolicy(b); err != nil {
		t.Fatalf("captured policy does not validate: %v", err)
	}
	d := p.Evaluate(good)
	if !d.Passed || d.Group != "edge" || d.PolicyVersion != 3 || len(d.Outcomes) < 5 {
		t.Fatalf("the captured device fails its own policy: %+v", d)
	}

	// Change the shim's measurement: PCR 4 and the boot digests rule fail,
	// and the explanation names the event with both digests.
	shim := good.Log.Facts.BootApps[0]
	bad, err := testvectors.FlipDigest(raw, shim.Digests["sha256"])
	if err != nil {
		t.Fatal(err)
	}
	d = p.Evaluate(inputFromLog(t, bad))
	if d.Passed {
		t.Fatal("a changed bootloader passed")
	}
	err = d.Err()
	if !errors.Is(err, ErrPolicyDenied) {
		t.Fatalf("err %v", err)
	}
	var pcr *Outcome
	for i, o := range d.Outcomes {
		if o.Rule == RulePCRs {
			pcr = &d.Outcomes[i]
		}
	}
	if pcr == nil || pcr.Passed || len(pcr.PCRs) != 1 {
		t.Fatalf("PCR outcome %+v", pcr)
	}
	e := pcr.PCRs[0]
	if e.Index != 4 || e.Bank != "sha256" || e.Event == nil || e.Event.Number != shim.Event || e.Event.Expected != shim.Digests["sha256"] || e.Event.Actual == shim.Digests["sha256"] {
		t.Fatalf("explanation %+v / %+v", e, e.Event)
	}
	if !strings.Contains(err.Error(), `EV_EFI_BOOT_SERVICES_APPLICATION "EFI boot application `+shim.Path+`"`) || shim.Path == "" {
		t.Fatalf("explanation does not name the event: %v", err)
	}
	if !strings.Contains(err.Error(), "boot_digests: event") {
		t.Fatalf("boot digests rule not named: %v", err)
	}
}

func TestPolicyRules(t *testing.T) {
	in := inputFromLog(t, readVector(t, "eventlogs/keylime/binary_bios_measurements-secureboot"))
	on, off := true, false
	for _, tc := range []struct {
		name   string
		group  Group
		passed bool
		failed string
	}{
		{"empty group admits", Group{Name: "a", Mode: ModeAuto}, true, ""},
		{"secure boot on", Group{Name: "a", Mode: ModeAuto, Require: Requirements{SecureBoot: &on}}, true, ""},
		{"secure boot off", Group{Name: "a", Mode: ModeAuto, Require: Requirements{SecureBoot: &off}}, false, RuleSecureBoot},
		{"firmware not allowed", Group{Name: "a", Mode: ModeAuto, Require: Requirements{FirmwareVersions: []string{"1.0"}}}, false, RuleFirmware},
		{"dbx too short", Group{Name: "a", Mode: ModeAuto, Require: Requirements{DBXMinEntries: 100000}}, false, RuleDBX},
		{"boot digest unknown", Group{Name: "a", Mode: ModeAuto, Require: Requirements{BootDigests: []string{strings.Repeat("ab", 32)}}}, false, RuleBootDigests},
		{"pcr not quoted", Group{Name: "a", Mode: ModeAuto, Require: Requirements{PCRs: map[string]map[string]string{"sha256": {"23": strings.Repeat("00", 32)}}}}, false, RulePCRs},
		{"no group", Group{Name: "a", Mode: ModeAuto, Match: Match{Models: []string{"other"}}}, false, RuleGroup},
		{"manufacturer matches", Group{Name: "a", Mode: ModeApprove, Match: Match{Manufacturers: []string{"id:49465800"}}}, true, ""},
		{"labels", Group{Name: "a", Mode: ModeAuto, Match: Match{Labels: map[string]string{"site": "x"}}}, false, RuleGroup},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := (&Policy{Groups: []Group{tc.group}}).Evaluate(in)
			if d.Passed != tc.passed {
				t.Fatalf("passed %v, want %v: %v", d.Passed, tc.passed, d.Err())
			}
			if tc.failed == "" {
				return
			}
			for _, o := range d.Outcomes {
				if o.Rule == tc.failed && !o.Passed && o.Detail != "" {
					return
				}
			}
			t.Fatalf("rule %s not failed: %+v", tc.failed, d.Outcomes)
		})
	}
	// Requirements on a device without a log fail the event_log rule.
	noLog := *in
	noLog.Log = nil
	d := (&Policy{Groups: []Group{{Name: "a", Mode: ModeAuto, Require: Requirements{SecureBoot: &on}}}}).Evaluate(&noLog)
	if d.Passed || d.Outcomes[1].Rule != RuleEventLog {
		t.Fatalf("%+v", d)
	}
}

func TestParsePolicyRefuses(t *testing.T) {
	for _, doc := range []string{
		``, `{}`, `{"groups":[]}`, `[]`,
		`{"groups":[{"name":"a","mode":"auto"}],"extra":1}`,
		`{"groups":[{"name":"a","mode":"sometimes"}]}`,
		`{"groups":[{"name":"A B","mode":"auto"}]}`,
		`{"groups":[{"name":"a","mode":"auto"},{"name":"a","mode":"auto"}]}`,
		`{"groups":[{"name":"a","mode":"auto","require":{"pcrs":{"sha256":{"0":"00"}}}}]}`,
		`{"groups":[{"name":"a","mode":"auto","require":{"pcrs":{"md5":{}}}}]}`,
		`{"groups":[{"name":"a","mode":"auto","require":{"pcrs":{"sha1":{"24":"0000000000000000000000000000000000000000"}}}}]}`,
		`{"groups":[{"name":"a","mode":"auto","require":{"secure_bot":true}}]}`,
		`{"groups":[{"name":"a","mode":"auto","match":{"ek_public_sha256":["xyz"]}}]}`,
		`{"groups":[{"name":"a","mode":"auto","certificate":{"validity":"1s"}}]}`,
		`{"groups":[{"name":"a","mode":"auto","certificate":{"dns_names":["{{.DeviceID"]}}]}`,
		`{"groups":[{"name":"a","mode":"auto","config":[1,2]}]}`,
		`{"groups":[{"name":"a","mode":"auto"}]} {}`,
	} {
		if _, err := ParsePolicy([]byte(doc)); !errors.Is(err, ErrPolicyInvalid) {
			t.Errorf("%s: %v", doc, err)
		}
	}
	p, err := ParsePolicy([]byte(`{"groups":[{"name":"edge","mode":"approve","certificate":{"validity":"720h","dns_names":["{{.DeviceID}}.devices.example.com"]},"config":{"ntp":"pool.example.com"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	dns, _, err := p.Groups[0].Certificate.SANs(&Input{DeviceID: "abc"}, "edge")
	if err != nil || len(dns) != 1 || dns[0] != "abc.devices.example.com" {
		t.Fatalf("SANs %v %v", dns, err)
	}
}

// A policy whose SAN templates could produce a reserved or attacker-chosen
// name is refused when it is applied.
func TestPolicyRefusesDangerousSANTemplates(t *testing.T) {
	for _, tc := range []struct{ dns, uri string }{
		{uri: "spiffe://fleet.example.com/{{.Serial}}"},
		{uri: "spiffe://fleet.example.com/admin/operator/{{.Serial}}"},
		{uri: "spiffe://fleet.example.com/node/x"},
		{uri: "SPIFFE://fleet.example.com/device/{{.DeviceID}}"},
		{uri: "{{.Serial}}://x/y"},
		{uri: "https://{{.Serial}}/x"},
		{uri: "https://inv.example.com{{.Serial}}/x"},
		{uri: "https://{{.Serial}}@inv.example.com/x"},
		{uri: "https://inv.example.com/x?s={{.Serial}}"},
		{uri: "https://inv.example.com/x#{{.Serial}}"},
		{uri: "urn:gatehouse:audit-key"},
		{uri: "/relative/{{.Serial}}"},
		{uri: `https://inv.example.com/{{printf "%s" .Serial}}`},
		{uri: `https://inv.example.com/{{if .Serial}}x{{end}}`},
		{dns: "{{.Serial}}"},
		{dns: "{{.DeviceID}}"},
		{dns: "{{.Serial}}.{{.Model}}"},
		{dns: "*.devices.example.com"},
		{dns: "{{.Serial}}.*.example.com"},
		{dns: "{{.Serial}}_x.example.com"},
		{dns: "{{.Serial}}.example.com."},
		{dns: "{{.Group}}.example.com"}, // the group "a.b" is not a DNS label
		{dns: "{{.Nope}}.example.com"},
	} {
		cert := `"dns_names":["` + tc.dns + `"]`
		if tc.uri != "" {
			cert = `"uris":["` + tc.uri + `"]`
		}
		doc := `{"groups":[{"name":"a.b","mode":"auto","certificate":{` + strings.ReplaceAll(cert, `"%s"`, `\"%s\"`) + `}}]}`
		if _, err := ParsePolicy([]byte(doc)); !errors.Is(err, ErrPolicyInvalid) {
			t.Errorf("%s: applied (%v)", doc, err)
		}
	}
	for _, doc := range []string{
		`{"groups":[{"name":"edge","mode":"auto","certificate":{"dns_names":["{{.Serial}}.devices.example.com","{{.Group}}-{{.Model}}.example.com","fixed.example.com"]}}]}`,
		`{"groups":[{"name":"edge","mode":"auto","certificate":{"uris":["https://inv.example.com/devices/{{.Serial}}","urn:example:{{.Model}}"]}}]}`,
	} {
		if _, err := ParsePolicy([]byte(doc)); err != nil {
			t.Errorf("%s: %v", doc, err)
		}
	}
}

// Claims are untrusted: in a DNS name they cannot add labels or wildcards
// (refused with ErrClaimInvalid); in a URI each is one escaped path segment.
func TestSANsConfineClaims(t *testing.T) {
	p := CertProfile{DNSNames: []string{"{{.Serial}}.devices.example.com"}, URIs: []string{"https://inv.example.com/devices/{{.Serial}}/{{.Model}}"}}
	dns, uris, err := p.SANs(&Input{DeviceID: "abc", Serial: "SN-1", Model: "m1"}, "edge")
	if err != nil || len(dns) != 1 || dns[0] != "SN-1.devices.example.com" || len(uris) != 1 || uris[0] != "https://inv.example.com/devices/SN-1/m1" {
		t.Fatalf("plain claims: %v %v %v", dns, uris, err)
	}
	for _, serial := range []string{"*", "a.b", "admin/operator/x", "", "a b", "x\n", strings.Repeat("a", 64)} {
		if dns, _, err := p.SANs(&Input{DeviceID: "abc", Serial: serial}, "edge"); !errors.Is(err, ErrClaimInvalid) {
			t.Errorf("serial %q: %v, %v", serial, dns, err)
		}
	}
	p = CertProfile{URIs: []string{"https://inv.example.com/devices/{{.Serial}}"}}
	for serial, want := range map[string]string{
		"admin/operator/x":       "https://inv.example.com/devices/admin%2Foperator%2Fx",
		"../../x?y#z":            "https://inv.example.com/devices/..%2F..%2Fx%3Fy%23z",
		"spiffe://td/admin/op/x": "https://inv.example.com/devices/spiffe:%2F%2Ftd%2Fadmin%2Fop%2Fx",
	} {
		_, uris, err := p.SANs(&Input{DeviceID: "abc", Serial: serial}, "edge")
		if err != nil || len(uris) != 1 || uris[0] != want {
			t.Errorf("serial %q: %v, %v (want %s)", serial, uris, err, want)
		}
	}
}

// A DNS template that could produce one of the appliance's own host names,
// for some claimed value, is refused.
func TestPolicyCheckReservedNames(t *testing.T) {
	names := []string{"gatehouse.example.com", "127.0.0.1"}
	for tmpl, refused := range map[string]bool{
		"{{.Serial}}.example.com":         true,
		"GATE{{.Model}}.Example.com":      true,
		"{{.Serial}}.0.0.1":               true,
		"gatehouse.example.com":           true,
		"{{.Serial}}.devices.example.com": false,
		"{{.DeviceID}}.gw.example.org":    false,
	} {
		p, err := ParsePolicy([]byte(`{"groups":[{"name":"g","mode":"auto","certificate":{"dns_names":["` + tmpl + `"]}}]}`))
		if err != nil {
			t.Fatalf("%s: %v", tmpl, err)
		}
		if err := p.CheckReservedNames(names); errors.Is(err, ErrPolicyInvalid) != refused {
			t.Errorf("%s: %v (want refused=%v)", tmpl, err, refused)
		}
	}
}

// An EK admitted only because a group lists its key is decided by that
// group, not by an earlier catch-all; a verified EK follows the order.
func TestPreRegisteredEKDecidedByItsGroup(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"groups":[
		{"name":"catch-all","mode":"auto","require":{}},
		{"name":"vouched","match":{"ek_public_sha256":["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]},"mode":"approve","require":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if g := p.Select(&Input{EKPublicSHA256: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}); g == nil || g.Name != "vouched" {
		t.Fatalf("pre-registered EK without a verified certificate selected %v, want vouched", g)
	}
	if g := p.Select(&Input{EKPublicSHA256: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", EKIssuer: "CN=Vendor CA"}); g == nil || g.Name != "catch-all" {
		t.Fatalf("verified EK selected %v, want the first matching group", g)
	}
	if g := p.Select(&Input{EKPublicSHA256: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}); g == nil || g.Name != "catch-all" {
		t.Fatalf("other EK selected %v, want catch-all", g)
	}
	if g := p.Select(&Input{EKPublicSHA256: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", EnrolledGroup: "catch-all"}); g == nil || g.Name != "catch-all" {
		t.Fatalf("individual enrollment selected %v, want its group", g)
	}
}
