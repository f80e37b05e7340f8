package server

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// policyStore is what enrollment needs to read the policy in force.
type policyStore interface {
	PolicyVersion() (int, error)
	Policy(version int) (cluster.PolicyRecord, error)
}

// policyCache parses each policy version once. Versions are immutable, so
// an enrollment only reads the newest version number.
type policyCache struct {
	store policyStore
	mu    sync.Mutex
	cur   *attest.Policy
}

// current returns the newest applied policy, or the built-in default when
// none was applied. It reads the local replica: a follower that has not yet
// applied a new version judges by the previous one, and the record says which.
func (c *policyCache) current() (*attest.Policy, error) {
	v, err := c.store.PolicyVersion()
	if err != nil {
		return nil, err
	}
	if v == 0 {
		return attest.DefaultPolicy(), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && c.cur.Version == v {
		return c.cur, nil
	}
	rec, err := c.store.Policy(v)
	if err != nil {
		return nil, err
	}
	p, err := decodePolicyRecord(rec)
	if err != nil {
		return nil, err
	}
	c.cur = p
	return p, nil
}

func decodePolicyRecord(rec cluster.PolicyRecord) (*attest.Policy, error) {
	p, err := attest.ParsePolicy(rec.Document)
	if err != nil {
		return nil, fmt.Errorf("stored policy v%d: %w", rec.Version, err)
	}
	p.Version = rec.Version
	return p, nil
}

// policyInput assembles what a policy judges from verified evidence.
func policyInput(deviceID string, ek cluster.EKInfo, claims cluster.Claims, labels map[string]string, pcrs []goattest.PCR, log *attest.EventLog) *attest.Input {
	in := &attest.Input{
		EKIssuer: ek.Issuer, Manufacturer: ek.Manufacturer, EKPublicSHA256: ek.PublicSHA256,
		Model: claims.Model, Serial: claims.Serial, DeviceID: deviceID, Labels: labels,
		PCRs: map[string]map[int][]byte{}, Log: log,
	}
	for _, p := range pcrs {
		bank := attest.BankName(p.DigestAlg)
		if in.PCRs[bank] == nil {
			in.PCRs[bank] = map[int][]byte{}
		}
		in.PCRs[bank][p.Index] = p.Digest
	}
	return in
}

// gzipJSON is gzipBytes of v's JSON.
func gzipJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // plain structs of bytes and strings always marshal
	}
	return gzipBytes(b)
}

// gzipBytes wraps evidence in gzip before it enters the Raft log, so every
// replica stores the same bytes and every reader inflates them as before.
// The gzip holds stored (uncompressed) blocks unless those would exceed
// maxStoredBlob: deflating a 38 KB event log, even at the fastest level,
// cost 0.5 ms of the request's CPU to save a third of its size (its
// SHA-256 digests do not compress), where a stored block costs a CRC. A
// blob that fits maxStoredBlob only deflated is deflated, so nothing kept
// before is dropped now. Writers are pooled: a new deflating one allocates
// about 800 KB, more than the rest of an enrollment together.
func gzipBytes(b []byte) []byte {
	if out := gzipWith(&storedWriters, b); len(out) <= maxStoredBlob {
		return out
	}
	return gzipWith(&gzipWriters, b)
}

func gzipWith(pool *sync.Pool, b []byte) []byte {
	var buf bytes.Buffer
	w := pool.Get().(*gzip.Writer)
	w.Reset(&buf)
	w.Write(b) // writes to a bytes.Buffer cannot fail
	w.Close()
	pool.Put(w)
	return buf.Bytes()
}

var (
	gzipWriters = sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed) // the level is valid
		return w
	}}
	storedWriters = sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(nil, gzip.NoCompression) // the level is valid
		return w
	}}
)

// gunzipBytes inflates a stored log, refusing one beyond maxEventLog.
func gunzipBytes(b []byte) ([]byte, error) {
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(io.LimitReader(r, maxEventLog+1))
	if err == nil && len(out) > maxEventLog {
		err = fmt.Errorf("stored event log exceeds %d bytes", maxEventLog)
	}
	return out, err
}

// maxEventLog bounds a stored log once decompressed.
const maxEventLog = 4 << 20

// storedInput rebuilds a past attestation's policy input from the registry:
// the PCR values its quote covered (verified when it was made; the quote's
// selection is applied again, so values a device sent beside the quote are
// not judged), its stored log, and the device's individual enrollment in
// force, as live decisions select by it.
func storedInput(n *cluster.Node, rec cluster.AttestationRecord, labels map[string]string) (*attest.Input, error) {
	var pcrs []goattest.PCR
	if rec.HasRawEvidence {
		gz, err := n.RawEvidence(rec.ID)
		if err != nil {
			return nil, err
		}
		b, err := gunzipBytes(gz)
		if err != nil {
			return nil, fmt.Errorf("attestation %d raw evidence: %w", rec.ID, err)
		}
		var raw cluster.RawEvidence
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, fmt.Errorf("attestation %d raw evidence: %w", rec.ID, err)
		}
		for _, p := range raw.PCRs {
			if h, ok := attest.BankHash(p.Bank); ok {
				pcrs = append(pcrs, goattest.PCR{Index: p.Index, Digest: p.Digest, DigestAlg: h})
			}
		}
		if pcrs, err = attest.QuotedPCRs(raw.Quote, pcrs); err != nil {
			return nil, fmt.Errorf("attestation %d: %w", rec.ID, err)
		}
	} // without raw evidence no PCR can be shown to be quoted
	var log *attest.EventLog
	if rec.HasEventLog {
		gz, err := n.EventLog(rec.ID)
		if err != nil {
			return nil, err
		}
		raw, err := gunzipBytes(gz)
		if err != nil {
			return nil, fmt.Errorf("attestation %d event log: %w", rec.ID, err)
		}
		if log, err = attest.ParseEventLog(raw); err != nil {
			return nil, fmt.Errorf("attestation %d: %w", rec.ID, err)
		}
		// As at enrollment: only facts from quoted PCRs count. A log that
		// no longer verifies against them is not judged.
		if err := log.Verify(pcrs); err != nil {
			log = nil
		}
	}
	var ek cluster.EKInfo
	if rec.Evidence.EK != nil {
		ek = *rec.Evidence.EK
	}
	in := policyInput(rec.DeviceID, ek, rec.Evidence.Claims, labels, pcrs, log)
	// As enrollment and renewal do: an individual enrollment selects its
	// group before any match.
	if ek.PublicSHA256 != "" {
		if ie, err := n.IndividualEnrollment(ek.PublicSHA256); err == nil {
			in.EnrolledGroup = ie.Group
		}
	}
	return in, nil
}

// DryRunResult is one device's verdict under a candidate policy.
type DryRunResult struct {
	DeviceID      string           `json:"device_id"`
	AttestationID uint64           `json:"attestation_id"` // the evidence judged
	Current       string           `json:"current"`        // outcome recorded then
	Decision      *attest.Decision `json:"decision"`
}

// DryRun judges the newest verified evidence of every device (accepted or
// refused by policy) under a candidate policy. Nothing is written.
func DryRun(n *cluster.Node, p *attest.Policy) ([]DryRunResult, error) {
	recs, err := n.Attestations(cluster.AttestationQuery{})
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []DryRunResult
	for _, rec := range recs { // newest first
		if rec.Policy == nil || rec.DeviceID == "" || seen[rec.DeviceID] {
			continue // verification failed before policy: nothing to judge
		}
		seen[rec.DeviceID] = true
		var labels map[string]string
		if d, err := n.Device(rec.DeviceID); err == nil {
			labels = d.Labels
		} else if rec.Evidence.EK != nil {
			// As enrollment does for a device the registry does not hold.
			if ie, err := n.IndividualEnrollment(rec.Evidence.EK.PublicSHA256); err == nil {
				labels = ie.Labels
			}
		}
		in, err := storedInput(n, rec, labels)
		if err != nil {
			return nil, err
		}
		out = append(out, DryRunResult{DeviceID: rec.DeviceID, AttestationID: rec.ID, Current: rec.Outcome, Decision: p.Evaluate(in)})
	}
	return out, nil
}

// CapturePolicy drafts a one-group policy from a device's newest accepted
// evidence.
func CapturePolicy(n *cluster.Node, deviceID, group string) (*attest.Policy, error) {
	dev, err := n.Device(deviceID)
	if err != nil {
		return nil, err
	}
	rec, err := n.Attestation(dev.LastAttestationID)
	if err != nil {
		return nil, err
	}
	in, err := storedInput(n, rec, dev.Labels)
	if err != nil {
		return nil, err
	}
	if group == "" {
		group = "captured-" + deviceID[:8]
	}
	return &attest.Policy{Groups: []attest.Group{attest.Capture(group, in)}}, nil
}

func marshalPolicy(p *attest.Policy) ([]byte, error) {
	doc := *p
	doc.Version = 0 // the registry numbers versions
	return json.MarshalIndent(doc, "", "  ")
}
