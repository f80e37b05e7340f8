package attest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// ErrPolicyInvalid: a policy document that cannot be enforced as written.
var ErrPolicyInvalid = errors.New("policy invalid")

// ErrPolicyDenied: the evidence is genuine but the policy refuses it.
var ErrPolicyDenied = errors.New("policy refused the device")

// ErrACMENotAllowed: the group that decides for the device does not admit
// identity-only attestation through ACME device-attest-01 (Group.ACME).
var ErrACMENotAllowed = errors.New("the device's group does not admit ACME device-attest")

// Enrollment modes.
const (
	ModeAuto    = "auto"    // enroll at once
	ModeApprove = "approve" // wait for an operator
)

// What a group does when an enrolled device comes back with the same EK and
// a new AK (its TPM was cleared or the device re-imaged).
const (
	ReprovisionReissue         = "reissue"          // accept and issue (the default)
	ReprovisionRequireApproval = "require-approval" // back to pending until an operator approves
	ReprovisionReject          = "reject"           // refuse
)

// Policy decides which devices enroll and how. Groups are tried in order;
// the first whose Match selects the device decides. A device no group
// selects is refused.
//
// Guarantees: Evaluate reads nothing but its arguments, and a Decision lists
// the outcome of every rule of the deciding group. Non-guarantees: the
// policy judges only evidence that VerifyCompletion has already verified;
// it cannot make an unverified log or quote trustworthy.
type Policy struct {
	// Version is assigned by the registry when the policy is applied.
	Version int     `json:"version,omitempty"`
	Groups  []Group `json:"groups"`
}

// Group is one enrollment group.
type Group struct {
	Name        string          `json:"name"`
	Match       Match           `json:"match"`
	Mode        string          `json:"mode"`
	Require     Requirements    `json:"require"`
	Certificate CertProfile     `json:"certificate"`
	Config      json.RawMessage `json:"config,omitempty"`
	// Reprovision is ReprovisionReissue (default), ReprovisionRequireApproval
	// or ReprovisionReject.
	Reprovision string `json:"reprovision,omitempty"`
	// ReattestInterval (a Go duration) marks a device stale when it has not
	// renewed or re-enrolled within it; empty: never.
	ReattestInterval string `json:"reattest_interval,omitempty"`
	// ACME admits identity-only attestation through ACME device-attest-01
	// (the attestation CA and step-ca's ACME provisioner): the EK and the
	// AK are verified, but there is no quote, so a group with boot-state
	// requirements cannot set it (Validate).
	ACME bool `json:"acme,omitempty"`
}

// BootState reports whether the requirements judge boot state (PCRs or the
// event log), which only a quote can show.
func (r *Requirements) BootState() bool {
	return len(r.PCRs) > 0 || r.EventLog || r.SecureBoot != nil || len(r.FirmwareVersions) > 0 || len(r.BootDigests) > 0 || r.DBXMinEntries > 0
}

// ACMEGroup returns the group that decides for in (Select) and whether it
// admits ACME device-attest-01: nil error only for a group with ACME set.
// Otherwise the error wraps ErrACMENotAllowed and says why: no group
// selects the device, or the deciding group (named) does not set acme, and,
// if it has boot-state requirements, that ACME device-attest carries no
// quote, so they cannot be checked. in has no PCRs or log on this path.
func (p *Policy) ACMEGroup(in *Input) (*Group, error) {
	g := p.Select(in)
	if g == nil {
		return nil, fmt.Errorf("%w: no enrollment group of policy v%d selects this device (EK issuer %q, manufacturer %q)", ErrACMENotAllowed, p.Version, in.EKIssuer, in.Manufacturer)
	}
	if g.ACME {
		return g, nil
	}
	err := fmt.Errorf("%w: group %s of policy v%d does not set \"acme\": true", ErrACMENotAllowed, g.Name, p.Version)
	if g.Require.BootState() {
		err = fmt.Errorf("%w; it requires boot state (PCRs or event log), and ACME device-attest carries no quote, so that cannot be checked: enroll natively (gatehouse-agent)", err)
	}
	return g, err
}

// ReprovisionAction is the group's re-provisioning choice with the default
// applied.
func (g *Group) ReprovisionAction() string {
	if g.Reprovision == "" {
		return ReprovisionReissue
	}
	return g.Reprovision
}

// ReattestEvery is ReattestInterval parsed (0: never); validated with the
// policy.
func (g *Group) ReattestEvery() time.Duration {
	d, _ := time.ParseDuration(g.ReattestInterval)
	return d
}

// Match selects devices. Every non-empty field must match; an empty Match
// selects every device.
type Match struct {
	EKIssuers      []string          `json:"ek_issuers,omitempty"`       // exact issuer names, as Name prints them
	Manufacturers  []string          `json:"manufacturers,omitempty"`    // TPM manufacturer IDs from the EK SAN, e.g. "id:49465800"
	EKPublicSHA256 []string          `json:"ek_public_sha256,omitempty"` // individual enrollment: pre-registered EKs
	Models         []string          `json:"models,omitempty"`           // claimed device model (untrusted)
	Labels         map[string]string `json:"labels,omitempty"`           // registry labels of a known device
}

// Requirements are what the boot evidence must show.
type Requirements struct {
	// PCRs are golden values: bank → PCR index → hex digest.
	PCRs map[string]map[string]string `json:"pcrs,omitempty"`
	// EventLog requires a log that replays to the quote.
	EventLog   bool  `json:"event_log,omitempty"`
	SecureBoot *bool `json:"secure_boot,omitempty"`
	// FirmwareVersions allows these S-CRTM versions from the log.
	FirmwareVersions []string `json:"firmware_versions,omitempty"`
	// BootDigests allows these EFI boot application digests (hex, any bank):
	// every bootloader and kernel the log shows must be listed.
	BootDigests []string `json:"boot_digests,omitempty"`
	// DBXMinEntries requires at least this many dbx entries (revoked
	// signers and hashes) in the log's dbx measurement.
	DBXMinEntries int `json:"dbx_min_entries,omitempty"`
	// Reference holds, per PCR index, the events of a known-good boot. It
	// is not a rule: it lets a PCR mismatch name the event that differs.
	Reference map[string][]ReferenceEvent `json:"reference_events,omitempty"`
}

// ReferenceEvent is one event of a known-good log.
type ReferenceEvent struct {
	Type        string            `json:"type"`
	Description string            `json:"description,omitempty"`
	Digests     map[string]string `json:"digests"`
}

// CertProfile shapes the device certificate.
type CertProfile struct {
	Validity string   `json:"validity,omitempty"`  // Go duration, e.g. "720h"; empty: the appliance default
	DNSNames []string `json:"dns_names,omitempty"` // templates over DeviceID, Serial, Model, Group
	URIs     []string `json:"uris,omitempty"`      // added to the SPIFFE ID
}

// Input is the verified evidence a policy judges.
type Input struct {
	EKIssuer       string
	Manufacturer   string
	EKPublicSHA256 string
	Model          string // claimed
	Serial         string // claimed
	DeviceID       string
	Labels         map[string]string
	// EnrolledGroup is the group an operator enrolled this EK into one by
	// one (an imported individual enrollment); it selects that group
	// before any match is tried.
	EnrolledGroup string
	// PCRs are the quoted values, bank → index → digest, and nothing else:
	// its keys are the quote's coverage (see attest.Result.PCRs).
	PCRs map[string]map[int][]byte
	Log  *EventLog // verified against the quote; nil without a log
}

// Rule names in decisions.
const (
	RuleGroup       = "group"
	RulePCRs        = "pcrs"
	RuleEventLog    = "event_log"
	RuleSecureBoot  = "secure_boot"
	RuleFirmware    = "firmware_version"
	RuleBootDigests = "boot_digests"
	RuleDBX         = "dbx"
	// RuleQuoteCoverage fails when the quote did not cover a PCR the
	// group's rules read; it is listed only then.
	RuleQuoteCoverage = "quote_coverage"
)

// Outcome is one rule's result.
type Outcome struct {
	Rule   string `json:"rule"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail"`
	// PCRs explain a PCR rule failure: one entry per differing PCR.
	PCRs []PCRExplanation `json:"pcrs,omitempty"`
}

// PCRExplanation names one PCR that differs from its golden value and, when
// the policy carries reference events, the first event that differs.
type PCRExplanation struct {
	PCRDiff
	Event *EventDiff `json:"event,omitempty"`
}

// EventDiff is one event that differs from the reference boot.
type EventDiff struct {
	Number      int    `json:"number"`
	Type        string `json:"type"`
	Description string `json:"description,omitempty"`
	Expected    string `json:"expected"` // reference digest; empty: the reference has no such event
	Actual      string `json:"actual"`   // device digest; empty: the device has no such event
}

// Decision is a policy's verdict on one device.
type Decision struct {
	PolicyVersion int             `json:"policy_version"`
	Group         string          `json:"group,omitempty"`
	Mode          string          `json:"mode,omitempty"`
	Passed        bool            `json:"passed"`
	Outcomes      []Outcome       `json:"rules"`
	Certificate   CertProfile     `json:"-"`
	Config        json.RawMessage `json:"-"`
	Reprovision   string          `json:"-"`
}

// Err returns nil for a pass, else an error wrapping ErrPolicyDenied that
// names every failing rule.
func (d *Decision) Err() error {
	if d.Passed {
		return nil
	}
	var parts []string
	for _, o := range d.Outcomes {
		if !o.Passed {
			parts = append(parts, o.Rule+": "+o.Detail)
		}
	}
	return fmt.Errorf("%w (policy v%d, group %q): %s", ErrPolicyDenied, d.PolicyVersion, d.Group, strings.Join(parts, "; "))
}

// DefaultPolicy admits any device whose evidence verifies: one auto group
// with no boot requirements. It is in force until an operator applies one.
func DefaultPolicy() *Policy {
	return &Policy{Groups: []Group{{Name: "default", Mode: ModeAuto}}}
}

var (
	hexDigest = regexp.MustCompile(`^[0-9a-f]+$`)
	groupName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
)

// ParsePolicy decodes and validates a policy document. Unknown fields are
// refused, so a misspelt requirement cannot silently allow everything.
func ParsePolicy(b []byte) (*Policy, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicyInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the document", ErrPolicyInvalid)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks every field a decision depends on.
func (p *Policy) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrPolicyInvalid, fmt.Sprintf(format, a...))
	}
	if len(p.Groups) == 0 {
		return bad("no groups: no device could enroll")
	}
	seen := map[string]bool{}
	for i, g := range p.Groups {
		at := fmt.Sprintf("group %d (%q)", i, g.Name)
		if !groupName.MatchString(g.Name) {
			return bad("%s: name must be lower-case letters, digits, '.', '_' or '-'", at)
		}
		if seen[g.Name] {
			return bad("%s: duplicate name", at)
		}
		seen[g.Name] = true
		if g.Mode != ModeAuto && g.Mode != ModeApprove {
			return bad("%s: mode must be %q or %q", at, ModeAuto, ModeApprove)
		}
		switch g.Reprovision {
		case "", ReprovisionReissue, ReprovisionRequireApproval, ReprovisionReject:
		default:
			return bad("%s: reprovision must be %q, %q or %q", at, ReprovisionReissue, ReprovisionRequireApproval, ReprovisionReject)
		}
		if g.ReattestInterval != "" {
			if d, err := time.ParseDuration(g.ReattestInterval); err != nil || d < time.Minute {
				return bad("%s: reattest_interval %q must be a duration of at least 1m", at, g.ReattestInterval)
			}
		}
		if len(g.Config) > 0 {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(g.Config, &obj); err != nil || obj == nil {
				return bad("%s: config must be a JSON object", at)
			}
		}
		for _, h := range g.Match.EKPublicSHA256 {
			if len(h) != 64 || !hexDigest.MatchString(h) {
				return bad("%s: ek_public_sha256 %q is not 64 lower-case hex digits", at, h)
			}
		}
		for bank, vals := range g.Require.PCRs {
			size, ok := bankHashes[bank]
			if !ok {
				return bad("%s: unknown PCR bank %q", at, bank)
			}
			for idx, v := range vals {
				n, err := strconv.Atoi(idx)
				if err != nil || n < 0 || n > maxPCR {
					return bad("%s: PCR index %q is not 0-%d", at, idx, maxPCR)
				}
				if len(v) != 2*size.Size() || !hexDigest.MatchString(v) {
					return bad("%s: %s PCR %s: %q is not a %d-byte lower-case hex digest", at, bank, idx, v, size.Size())
				}
			}
		}
		for _, d := range g.Require.BootDigests {
			if !hexDigest.MatchString(d) || (len(d) != 40 && len(d) != 64 && len(d) != 96 && len(d) != 128) {
				return bad("%s: boot digest %q is not a lower-case hex SHA digest", at, d)
			}
		}
		if g.Require.DBXMinEntries < 0 {
			return bad("%s: dbx_min_entries is negative", at)
		}
		if g.ACME && g.Require.BootState() {
			// ACME device-attest has no quote: it would admit what the
			// group's rules exist to refuse.
			return bad("%s: acme cannot be set on a group with boot-state requirements (PCRs or event log): ACME device-attest carries no quote, so they could not be checked", at)
		}
		if g.Certificate.Validity != "" {
			d, err := time.ParseDuration(g.Certificate.Validity)
			if err != nil || d < time.Hour || d > 5*365*24*time.Hour {
				return bad("%s: certificate validity %q must be a duration between 1h and 5 years", at, g.Certificate.Validity)
			}
		}
		for _, t := range g.Certificate.DNSNames {
			if err := checkDNSTemplate(t, g.Name); err != nil {
				return bad("%s: DNS name template %q: %v", at, t, err)
			}
		}
		for _, t := range g.Certificate.URIs {
			if err := checkURITemplate(t); err != nil {
				return bad("%s: URI template %q: %v", at, t, err)
			}
		}
		if len(g.Config) > 0 {
			var obj map[string]any
			if err := json.Unmarshal(g.Config, &obj); err != nil {
				return bad("%s: config must be a JSON object: %v", at, err)
			}
		}
	}
	return nil
}

// Select returns the group that decides for the device: its individual
// enrollment's, else for an EK admitted only by pre-registration the group
// listing it, else the first group whose Match selects it; or nil.
func (p *Policy) Select(in *Input) *Group {
	if g := p.GroupNamed(in.EnrolledGroup); in.EnrolledGroup != "" && g != nil {
		return g
	}
	// An EK without a verified certificate (EKIssuer is set only for one
	// that chained) was admitted because a group lists its key: that group
	// decides, so an earlier, laxer group cannot take a device only the
	// later group's operator vouched for.
	if in.EKIssuer == "" {
		if g := p.PreRegistered(in.EKPublicSHA256); g != nil {
			return g
		}
	}
	for i := range p.Groups {
		if p.Groups[i].Match.selects(in) {
			return &p.Groups[i]
		}
	}
	return nil
}

// GroupNamed returns the group called name, or nil.
func (p *Policy) GroupNamed(name string) *Group {
	for i := range p.Groups {
		if p.Groups[i].Name == name {
			return &p.Groups[i]
		}
	}
	return nil
}

// PreRegistered returns the group that lists this EK by its public-key hash.
func (p *Policy) PreRegistered(ekPublicSHA256 string) *Group {
	for i := range p.Groups {
		if slices.Contains(p.Groups[i].Match.EKPublicSHA256, ekPublicSHA256) {
			return &p.Groups[i]
		}
	}
	return nil
}

func (m *Match) selects(in *Input) bool {
	if len(m.EKIssuers) > 0 && !slices.Contains(m.EKIssuers, in.EKIssuer) {
		return false
	}
	if len(m.Manufacturers) > 0 && !slices.Contains(m.Manufacturers, in.Manufacturer) {
		return false
	}
	if len(m.EKPublicSHA256) > 0 && !slices.Contains(m.EKPublicSHA256, in.EKPublicSHA256) {
		return false
	}
	if len(m.Models) > 0 && !slices.Contains(m.Models, in.Model) {
		return false
	}
	for k, v := range m.Labels {
		if in.Labels[k] != v {
			return false
		}
	}
	return true
}

// Evaluate judges verified evidence. Every rule of the deciding group is
// evaluated, so a decision lists all that fail, not just the first.
func (p *Policy) Evaluate(in *Input) *Decision {
	d := &Decision{PolicyVersion: p.Version}
	g := p.Select(in)
	if g == nil {
		d.Outcomes = []Outcome{{Rule: RuleGroup, Detail: fmt.Sprintf("no enrollment group selects this device (EK issuer %q, manufacturer %q, model %q)", in.EKIssuer, in.Manufacturer, in.Model)}}
		return d
	}
	d.Group, d.Mode, d.Certificate, d.Config, d.Reprovision = g.Name, g.Mode, g.Certificate, g.Config, g.ReprovisionAction()
	d.Outcomes = append(d.Outcomes, Outcome{Rule: RuleGroup, Passed: true, Detail: "selected by group " + g.Name})
	r := &g.Require
	if o, ok := ruleCoverage(r, in); !ok {
		d.Outcomes = append(d.Outcomes, o)
	}
	if r.EventLog || r.SecureBoot != nil || len(r.FirmwareVersions) > 0 || len(r.BootDigests) > 0 || r.DBXMinEntries > 0 {
		d.Outcomes = append(d.Outcomes, ruleEventLog(in))
	}
	if len(r.PCRs) > 0 {
		d.Outcomes = append(d.Outcomes, rulePCRs(r, in))
	}
	if in.Log != nil {
		if r.SecureBoot != nil {
			d.Outcomes = append(d.Outcomes, ruleSecureBoot(*r.SecureBoot, in.Log))
		}
		if len(r.FirmwareVersions) > 0 {
			d.Outcomes = append(d.Outcomes, ruleFirmware(r.FirmwareVersions, in.Log))
		}
		if len(r.BootDigests) > 0 {
			d.Outcomes = append(d.Outcomes, ruleBootDigests(r.BootDigests, in))
		}
		if r.DBXMinEntries > 0 {
			o := Outcome{Rule: RuleDBX, Passed: in.Log.Facts.DBXEntries >= r.DBXMinEntries}
			o.Detail = fmt.Sprintf("dbx has %d entries, the policy requires at least %d", in.Log.Facts.DBXEntries, r.DBXMinEntries)
			d.Outcomes = append(d.Outcomes, o)
		}
	}
	d.Passed = true
	for _, o := range d.Outcomes {
		d.Passed = d.Passed && o.Passed
	}
	return d
}

// PCRs the log-fact rules read: the facts come from events of these PCRs.
const (
	pcrFirmware   = 0 // EV_S_CRTM_VERSION
	pcrBootApps   = 4 // EV_EFI_BOOT_SERVICES_APPLICATION
	pcrSecureBoot = 7 // Secure Boot variables, dbx, authorities
)

// ruleCoverage checks that the quote covered every PCR the group's rules
// read: golden values per bank and index, and for log facts the PCR their
// events extend, in the quoted bank. Input.PCRs holds only quoted values.
func ruleCoverage(r *Requirements, in *Input) (Outcome, bool) {
	var missing []string
	for _, bank := range sortedKeys(r.PCRs) {
		for _, idx := range sortedIndexes(r.PCRs[bank]) {
			if _, ok := in.PCRs[bank][idx]; !ok {
				missing = append(missing, fmt.Sprintf("PCR %d (%s, rule %s)", idx, bank, RulePCRs))
			}
		}
	}
	quotedAny := func(pcr int) bool {
		for _, vals := range in.PCRs {
			if _, ok := vals[pcr]; ok {
				return true
			}
		}
		return false
	}
	for _, need := range []struct {
		on   bool
		pcr  int
		rule string
	}{
		{len(r.FirmwareVersions) > 0, pcrFirmware, RuleFirmware},
		{len(r.BootDigests) > 0, pcrBootApps, RuleBootDigests},
		{r.SecureBoot != nil, pcrSecureBoot, RuleSecureBoot},
		{r.DBXMinEntries > 0, pcrSecureBoot, RuleDBX},
	} {
		if need.on && !quotedAny(need.pcr) {
			missing = append(missing, fmt.Sprintf("PCR %d (quoted bank, rule %s)", need.pcr, need.rule))
		}
	}
	if len(missing) == 0 {
		return Outcome{}, true
	}
	var quoted []string
	for _, bank := range sortedKeys(in.PCRs) {
		idx := make([]int, 0, len(in.PCRs[bank]))
		for i := range in.PCRs[bank] {
			idx = append(idx, i)
		}
		sort.Ints(idx)
		quoted = append(quoted, fmt.Sprintf("%s PCRs %v", bank, idx))
	}
	if len(quoted) == 0 {
		quoted = []string{"no PCRs"}
	}
	return Outcome{Rule: RuleQuoteCoverage, Detail: fmt.Sprintf("the quote (%s) does not cover %s that the group's rules read", strings.Join(quoted, "; "), strings.Join(missing, ", "))}, false
}

func ruleEventLog(in *Input) Outcome {
	if in.Log == nil {
		return Outcome{Rule: RuleEventLog, Detail: "the group's requirements need an event log and the device sent none"}
	}
	o := Outcome{Rule: RuleEventLog, Passed: true, Detail: fmt.Sprintf("%d events replay to the quoted PCRs", len(in.Log.Events))}
	if len(in.Log.Problems) > 0 {
		o.Detail += "; noted: " + strings.Join(in.Log.Problems, "; ")
	}
	return o
}

func rulePCRs(r *Requirements, in *Input) Outcome {
	o := Outcome{Rule: RulePCRs}
	n := 0
	for _, bank := range sortedKeys(r.PCRs) {
		for _, idx := range sortedIndexes(r.PCRs[bank]) {
			n++
			want := r.PCRs[bank][strconv.Itoa(idx)]
			got, ok := in.PCRs[bank][idx]
			if !ok {
				o.PCRs = append(o.PCRs, PCRExplanation{PCRDiff: PCRDiff{Index: idx, Bank: bank, Expected: want}})
				continue
			}
			if hex.EncodeToString(got) != want {
				e := PCRExplanation{PCRDiff: PCRDiff{Index: idx, Bank: bank, Expected: want, Actual: hex.EncodeToString(got)}}
				e.Event = firstDifferingEvent(r.Reference[strconv.Itoa(idx)], in.Log, idx, bank)
				o.PCRs = append(o.PCRs, e)
			}
		}
	}
	if len(o.PCRs) == 0 {
		o.Passed, o.Detail = true, fmt.Sprintf("%d PCR values equal the golden values", n)
		return o
	}
	var parts []string
	for _, e := range o.PCRs {
		parts = append(parts, e.String())
	}
	o.Detail = strings.Join(parts, "; ")
	return o
}

// String explains one PCR difference in words.
func (e PCRExplanation) String() string {
	if e.Actual == "" {
		return fmt.Sprintf("PCR %d (%s) was not quoted; the policy requires %s", e.Index, e.Bank, e.Expected)
	}
	s := fmt.Sprintf("PCR %d (%s) is %s, the policy requires %s", e.Index, e.Bank, e.Actual, e.Expected)
	if ev := e.Event; ev != nil {
		what := ev.Type
		if ev.Description != "" {
			what += " \"" + ev.Description + "\""
		}
		switch {
		case ev.Expected == "":
			s += fmt.Sprintf(": event %d %s (digest %s) is not in the reference boot", ev.Number, what, ev.Actual)
		case ev.Actual == "":
			s += fmt.Sprintf(": the reference boot's %s (digest %s) is missing from the device's log", what, ev.Expected)
		default:
			s += fmt.Sprintf(": event %d %s has digest %s, the reference has %s", ev.Number, what, ev.Actual, ev.Expected)
		}
	}
	return s
}

// firstDifferingEvent walks the device's events for one PCR alongside the
// reference boot's and returns the first that differs.
func firstDifferingEvent(ref []ReferenceEvent, log *EventLog, pcr int, bank string) *EventDiff {
	if len(ref) == 0 || log == nil {
		return nil
	}
	events := log.EventsFor(pcr)
	for i := 0; i < len(events) || i < len(ref); i++ {
		switch {
		case i >= len(events):
			return &EventDiff{Number: -1, Type: ref[i].Type, Description: ref[i].Description, Expected: ref[i].Digests[bank]}
		case i >= len(ref):
			e := events[i]
			return &EventDiff{Number: e.Number, Type: e.Type, Description: e.Description, Actual: e.Digests.Get(bank)}
		case events[i].Type != ref[i].Type || events[i].Digests.Get(bank) != ref[i].Digests[bank]:
			e := events[i]
			return &EventDiff{Number: e.Number, Type: e.Type, Description: e.Description, Expected: ref[i].Digests[bank], Actual: e.Digests.Get(bank)}
		}
	}
	return nil
}

func ruleSecureBoot(want bool, l *EventLog) Outcome {
	o := Outcome{Rule: RuleSecureBoot}
	switch {
	case l.Facts.SecureBoot == nil:
		o.Detail = "the log does not state the Secure Boot state" + l.why("Secure Boot", "PCR 7")
	case *l.Facts.SecureBoot == want:
		o.Passed, o.Detail = true, "Secure Boot is "+onOff(want)
	default:
		o.Detail = fmt.Sprintf("Secure Boot is %s, the policy requires %s", onOff(*l.Facts.SecureBoot), onOff(want))
	}
	return o
}

func ruleFirmware(allowed []string, l *EventLog) Outcome {
	o := Outcome{Rule: RuleFirmware}
	v := l.Facts.SCRTMVersion
	switch {
	case v == "":
		o.Detail = "the log has no S-CRTM version event that is evidence" + l.why("S-CRTM", "PCR 0")
	case slices.Contains(allowed, v):
		o.Passed, o.Detail = true, fmt.Sprintf("firmware %q is allowed", v)
	default:
		o.Detail = fmt.Sprintf("firmware %q is not among the allowed %q", v, allowed)
	}
	return o
}

func ruleBootDigests(allowed []string, in *Input) Outcome {
	l := in.Log
	o := Outcome{Rule: RuleBootDigests}
	if len(l.Facts.BootApps) == 0 {
		o.Detail = "the log shows no EFI boot application"
		return o
	}
	for _, app := range l.Facts.BootApps {
		ok := false
		for bank, d := range app.Digests {
			// Only a quoted bank's digests are bound to the quote.
			_, quoted := in.PCRs[bank]
			ok = ok || (quoted && slices.Contains(allowed, d))
		}
		if !ok {
			var ds []string
			for _, bank := range sortedKeys(app.Digests) {
				if _, quoted := in.PCRs[bank]; quoted {
					ds = append(ds, bank+" "+app.Digests[bank])
				}
			}
			o.Detail = fmt.Sprintf("event %d EFI boot application %s (PCR %d, %s) is not an allowed boot digest", app.Event, app.Path, app.PCR, strings.Join(ds, ", "))
			return o
		}
	}
	o.Passed, o.Detail = true, fmt.Sprintf("all %d boot applications are allowed", len(l.Facts.BootApps))
	return o
}

// why appends the log's problems that mention any of topics: the reason a
// fact a rule needs was dropped.
func (l *EventLog) why(topics ...string) string {
	var out []string
	for _, p := range l.Problems {
		for _, t := range topics {
			if strings.Contains(p, t) {
				out = append(out, p)
				break
			}
		}
	}
	if len(out) == 0 {
		return ""
	}
	return ": " + strings.Join(out, "; ")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedIndexes(m map[string]string) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		n, _ := strconv.Atoi(k)
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// ErrClaimInvalid: a value the device claimed (its serial or model) cannot
// be part of a certificate name as the group's template places it.
var ErrClaimInvalid = errors.New("claim unusable in a certificate name")

// SAN templates hold text and these placeholders only, each a bare
// {{.Field}}: no functions, pipelines or conditionals, so what a template
// can produce is known when the policy is applied.
var sanFields = map[string]bool{"DeviceID": true, "Serial": true, "Model": true, "Group": true}

// claimedFields are the placeholders whose values the device chooses.
var claimedFields = map[string]bool{"Serial": true, "Model": true}

// sentinel stands in for every placeholder when a template is checked at
// apply time: a plain lower-case DNS label and URI path segment.
const sentinel = "x0gatehouse0placeholder0x"

func parseSANTemplate(t string) (*template.Template, error) {
	tpl, err := template.New("").Option("missingkey=error").Parse(t)
	if err != nil {
		return nil, err
	}
	if tpl.Tree == nil {
		return tpl, nil
	}
	for _, n := range tpl.Tree.Root.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
		case *parse.ActionNode:
			if len(n.Pipe.Decl) == 0 && len(n.Pipe.Cmds) == 1 && len(n.Pipe.Cmds[0].Args) == 1 {
				if f, ok := n.Pipe.Cmds[0].Args[0].(*parse.FieldNode); ok && len(f.Ident) == 1 && sanFields[f.Ident[0]] {
					continue
				}
			}
			return nil, fmt.Errorf("%s: only {{.DeviceID}}, {{.Serial}}, {{.Model}} and {{.Group}} are allowed", n)
		default:
			return nil, fmt.Errorf("%s: only text and {{.Field}} placeholders are allowed", n)
		}
	}
	return tpl, nil
}

func renderSAN(tpl *template.Template, data map[string]string) (string, error) {
	var b strings.Builder
	if err := tpl.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

func sentinelData() map[string]string {
	data := map[string]string{}
	for f := range sanFields {
		data[f] = sentinel
	}
	return data
}

// checkDNSTemplate refuses a DNS template that is not a host name, puts a
// placeholder anywhere but inside a label, or leaves its last label to a
// placeholder (a template that is only a placeholder could name a node or
// another device). {{.Group}} needs group to be a DNS label.
func checkDNSTemplate(t, group string) error {
	tpl, err := parseSANTemplate(t)
	if err != nil {
		return err
	}
	name, err := renderSAN(tpl, sentinelData())
	if err != nil {
		return err
	}
	labels := strings.Split(name, ".")
	switch {
	case !ValidHostname(name):
		return errors.New("not a host name (LDH labels of at most 63 characters, no wildcard)")
	case len(labels) < 2 || strings.Contains(labels[len(labels)-1], sentinel):
		return errors.New("its last label must be fixed text: a placeholder there could produce any name")
	case strings.Contains(t, "{{.Group}}") && !dnsLabel.MatchString(group):
		return fmt.Errorf("group name %q is not a DNS label", group)
	}
	return nil
}

// checkURITemplate refuses a URI template whose placeholders could reach
// the scheme, authority, query or fragment, and any template for a SPIFFE
// ID (the device's own is always added; the admin and node namespaces are
// reserved) or a Gatehouse URN.
func checkURITemplate(t string) error {
	tpl, err := parseSANTemplate(t)
	if err != nil {
		return err
	}
	s, err := renderSAN(tpl, sentinelData())
	if err != nil {
		return err
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return err
	case u.Scheme == "":
		return errors.New("no scheme")
	case strings.Contains(u.Scheme, sentinel) || u.User != nil && strings.Contains(u.User.String(), sentinel) || strings.Contains(u.Host, sentinel):
		return errors.New("a placeholder in the scheme or authority")
	case strings.Contains(u.RawQuery, sentinel) || strings.Contains(u.Fragment, sentinel):
		return errors.New("a placeholder in the query or fragment")
	case strings.EqualFold(u.Scheme, "spiffe"):
		return errors.New("SPIFFE IDs are reserved: the device's own is always added, and the admin and node namespaces belong to other issuance paths")
	case strings.HasPrefix(strings.ToLower(s), "urn:gatehouse:"):
		return errors.New("the urn:gatehouse: namespace is reserved")
	}
	return nil
}

var dnsLabel = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

// ValidHostname reports whether name is a DNS host name a certificate may
// carry: LDH labels of 1-63 characters, not starting or ending with '-', at
// most 253 characters, no wildcard and no trailing dot. Policies are held to
// it when they render names, and ca again at issuance.
func ValidHostname(name string) bool {
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	for _, l := range strings.Split(name, ".") {
		if !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

var dnsValue = regexp.MustCompile(`^[a-zA-Z0-9-]+$`)

// CheckReservedNames refuses a policy any of whose DNS templates could
// produce one of names (the appliance's own host names, which its node and
// server certificates carry), whatever values the device claims.
func (p *Policy) CheckReservedNames(names []string) error {
	for _, g := range p.Groups {
		for _, t := range g.Certificate.DNSNames {
			tpl, err := parseSANTemplate(t)
			if err != nil {
				return fmt.Errorf("%w: group %q: DNS name template %q: %v", ErrPolicyInvalid, g.Name, t, err)
			}
			// Each placeholder stands for any value SANs would accept.
			var b strings.Builder
			b.WriteString("(?i)^")
			for _, n := range tpl.Tree.Root.Nodes {
				if text, ok := n.(*parse.TextNode); ok {
					b.WriteString(regexp.QuoteMeta(string(text.Text)))
				} else {
					b.WriteString("[a-z0-9-]+")
				}
			}
			re := regexp.MustCompile(b.String() + "$")
			for _, name := range names {
				if re.MatchString(strings.TrimSuffix(name, ".")) {
					return fmt.Errorf("%w: group %q: DNS name template %q could produce %q, a name of this appliance", ErrPolicyInvalid, g.Name, t, name)
				}
			}
		}
	}
	return nil
}

// SANs renders a group's SAN templates for one device. Every value is
// untrusted: in a DNS name each must be letters, digits and '-' (no '.',
// '*' or anything that could add a label or a wildcard), and the result a
// host name, else the error wraps ErrClaimInvalid; in a URI each is
// escaped as one path segment (url.PathEscape).
func (c CertProfile) SANs(in *Input, group string) (dns, uris []string, err error) {
	values := map[string]string{"DeviceID": in.DeviceID, "Serial": in.Serial, "Model": in.Model, "Group": group}
	dnsData, uriData := map[string]string{}, map[string]string{}
	for k, v := range values {
		dnsData[k], uriData[k] = v, url.PathEscape(v)
	}
	for _, t := range c.DNSNames {
		tpl, err := parseSANTemplate(t)
		if err != nil {
			return nil, nil, err
		}
		for _, f := range templateFields(tpl) {
			if !dnsValue.MatchString(values[f]) {
				what := "value"
				if claimedFields[f] {
					what = "claimed value"
				}
				return nil, nil, fmt.Errorf("%w: %s %q of {{.%s}} cannot be part of DNS name template %q (letters, digits and '-' only)", ErrClaimInvalid, what, values[f], f, t)
			}
		}
		name, err := renderSAN(tpl, dnsData)
		if err != nil {
			return nil, nil, err
		}
		if !ValidHostname(name) {
			return nil, nil, fmt.Errorf("%w: DNS name %q from template %q is not a host name", ErrClaimInvalid, name, t)
		}
		dns = append(dns, name)
	}
	for _, t := range c.URIs {
		tpl, err := parseSANTemplate(t)
		if err != nil {
			return nil, nil, err
		}
		u, err := renderSAN(tpl, uriData)
		if err != nil {
			return nil, nil, err
		}
		uris = append(uris, u)
	}
	return dns, uris, nil
}

func templateFields(tpl *template.Template) []string {
	var out []string
	if tpl.Tree == nil {
		return nil
	}
	for _, n := range tpl.Tree.Root.Nodes {
		if a, ok := n.(*parse.ActionNode); ok {
			out = append(out, a.Pipe.Cmds[0].Args[0].(*parse.FieldNode).Ident[0]) // shape checked by parseSANTemplate
		}
	}
	return out
}

// Capture drafts a group from one device's accepted evidence: its EK
// manufacturer, every PCR its log touches as golden values, the Secure Boot
// state, firmware version and boot digests it showed, and the log's events
// as the reference boot.
func Capture(name string, in *Input) Group {
	g := Group{Name: name, Mode: ModeAuto}
	if in.Manufacturer != "" {
		g.Match.Manufacturers = []string{in.Manufacturer}
	}
	if in.Model != "" {
		g.Match.Models = []string{in.Model}
	}
	r := &g.Require
	r.PCRs = map[string]map[string]string{}
	for bank, vals := range in.PCRs {
		for idx, v := range vals {
			if in.Log != nil {
				if _, touched := in.Log.Replay(bank)[idx]; !touched {
					continue
				}
			}
			if r.PCRs[bank] == nil {
				r.PCRs[bank] = map[string]string{}
			}
			r.PCRs[bank][strconv.Itoa(idx)] = hex.EncodeToString(v)
		}
	}
	if in.Log == nil {
		return g
	}
	r.EventLog = true
	r.SecureBoot = in.Log.Facts.SecureBoot
	if v := in.Log.Facts.SCRTMVersion; v != "" {
		r.FirmwareVersions = []string{v}
	}
	for _, app := range in.Log.Facts.BootApps {
		if d := app.Digests["sha256"]; d != "" && !slices.Contains(r.BootDigests, d) {
			r.BootDigests = append(r.BootDigests, d)
		}
	}
	r.Reference = map[string][]ReferenceEvent{}
	for _, e := range in.Log.Events {
		if e.TypeCode == evNoAction {
			continue
		}
		k := strconv.Itoa(e.PCR)
		r.Reference[k] = append(r.Reference[k], ReferenceEvent{Type: e.Type, Description: e.Description, Digests: e.Digests.Map()})
	}
	return g
}
