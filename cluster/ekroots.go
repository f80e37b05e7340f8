package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse-dev/gatehouse/attest"
)

// The manufacturer CA set (EK roots) is replicated state: every node's EK
// verifier is built from the ek_roots bucket, so an add or remove is in
// force on a node as soon as that node applies it. The appliance validates
// certificates before it proposes them, and the FSM judges them again when
// it applies the command (a forwarded command comes from any node holding
// a node certificate, and is only as good as that node): each DER must be
// exactly one certificate, a CA (basicConstraints cA) unless the command
// seeds the set from a node's ek-roots.pem, and the FSM keys it by the
// SHA-256 and names it by the subject it computes itself. It bounds the
// set's size.

var bEKRoots = []byte("ek_roots") // hex SHA-256 of DER → EKRoot (JSON)

// Bounds on the set: an operator's input, but a Raft entry and every
// node's verifier carry it.
const (
	MaxEKRoots   = 2000
	MaxEKRootDER = 64 << 10
)

// Audit entry types of the EK root set.
const (
	AuditEKRootAdded   = "ekroot.added"
	AuditEKRootRemoved = "ekroot.removed"
	AuditEKRootsSeeded = "ekroots.seeded"
)

var (
	// ErrLastEKRoot: removing the only manufacturer CA would refuse every
	// device that is not pre-registered; add the replacement first.
	ErrLastEKRoot = errors.New("refusing to remove the last manufacturer CA")
	// ErrEKRootsLimit: the set would exceed MaxEKRoots, or a certificate
	// MaxEKRootDER.
	ErrEKRootsLimit = errors.New("manufacturer CA set limit")
	// ErrEKRootInvalid: a certificate that is not one parseable CA
	// certificate (the appliance refuses these before proposing them).
	ErrEKRootInvalid = errors.New("not a manufacturer CA certificate")
)

// ConfigCommands are the commands that change the EK root set and the
// cluster settings, as Commands lists them: new in the build that
// replicated them, so proposed only when every member applies them.
var ConfigCommands = []string{"ekroots.add/1", "ekroots.remove/1", "settings.set/1"}

// EKRoot is one manufacturer CA of the replicated set.
type EKRoot struct {
	SHA256  string `json:"sha256"` // hex SHA-256 of DER: the key
	Subject string `json:"subject"`
	DER     []byte `json:"der"`
	// AllowNoTPMEvidence: EK certificates this CA issues directly may
	// carry neither the EK EKU nor a TPM SAN (attest.WithNoTPMEvidenceIssuers).
	AllowNoTPMEvidence bool      `json:"allow_no_tpm_evidence,omitempty"`
	AddedAt            time.Time `json:"added_at"`
	AddedBy            string    `json:"added_by"`
	Source             string    `json:"source,omitempty"` // where the operator took it from
}

// ekRootAudit is the detail of an EK root audit entry.
type ekRootAudit struct {
	Subject            string `json:"subject"`
	SHA256             string `json:"sha256"`
	AllowNoTPMEvidence bool   `json:"allow_no_tpm_evidence,omitempty"`
	Source             string `json:"source,omitempty"`
	Replaced           bool   `json:"replaced,omitempty"` // the same CA was there with another allowance
}

// addEKRoots adds CAs to the set. With Seed it applies only to an empty
// set (the first node's bundle at bootstrap, or a data directory from
// before the set was replicated), as one audit entry listing every CA;
// otherwise each CA added or changed gets its own entry, and a CA already
// present with the same allowance is left as it is. Result: how many were
// written.
type addEKRoots struct {
	Actor string   `json:"actor"`
	Roots []EKRoot `json:"roots"`
	Seed  bool     `json:"seed,omitempty"`
}

func (c *addEKRoots) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bEKRoots)
	n := b.Stats().KeyN
	if c.Seed && n > 0 {
		return applyResult{}
	}
	// Judge the whole command before writing: a refused one writes nothing.
	type change struct {
		root     EKRoot
		replaced bool
	}
	var changes []change
	seen := map[string]bool{}
	for _, r := range c.Roots {
		if len(r.DER) == 0 || len(r.DER) > MaxEKRootDER {
			return applyResult{Err: fmt.Errorf("%w: a certificate of %d bytes (at most %d)", ErrEKRootsLimit, len(r.DER), MaxEKRootDER)}
		}
		cert, err := ekRootCert(r.DER, !c.Seed)
		if err != nil {
			return applyResult{Err: err}
		}
		sum := sha256.Sum256(r.DER)
		r.SHA256, r.Subject, r.AddedAt, r.AddedBy = hex.EncodeToString(sum[:]), attest.Name(cert.Subject), at, c.Actor
		if seen[r.SHA256] {
			continue
		}
		seen[r.SHA256] = true
		replaced := false
		if v := b.Get([]byte(r.SHA256)); v != nil {
			var old EKRoot
			if err := json.Unmarshal(v, &old); err != nil {
				return applyResult{Err: err}
			}
			if old.AllowNoTPMEvidence == r.AllowNoTPMEvidence {
				continue
			}
			replaced = true
		} else if n++; n > MaxEKRoots {
			return applyResult{Err: fmt.Errorf("%w: the set would hold more than %d CAs", ErrEKRootsLimit, MaxEKRoots)}
		}
		changes = append(changes, change{r, replaced})
	}
	var seeded []ekRootAudit
	for _, ch := range changes {
		r := ch.root
		if err := putJSON(b, []byte(r.SHA256), r); err != nil {
			return applyResult{Err: err}
		}
		d := ekRootAudit{Subject: r.Subject, SHA256: r.SHA256, AllowNoTPMEvidence: r.AllowNoTPMEvidence, Source: r.Source, Replaced: ch.replaced}
		if c.Seed {
			seeded = append(seeded, d)
			continue
		}
		if err := appendAudit(tx, at, AuditEKRootAdded, c.Actor, "ekroot/"+r.SHA256, d); err != nil {
			return applyResult{Err: err}
		}
	}
	if c.Seed && len(changes) > 0 {
		if err := appendAudit(tx, at, AuditEKRootsSeeded, c.Actor, "ekroots", map[string]any{"count": len(changes), "roots": seeded}); err != nil {
			return applyResult{Err: err}
		}
	}
	return applyResult{Result: uint64(len(changes))}
}

// ekRootCert parses der as exactly one certificate, as the verifier will
// (attest.ParseCertificates), and with ca requires it to be a CA. A set
// with a certificate the verifier cannot parse would leave every node
// without an EK verifier.
func ekRootCert(der []byte, ca bool) (*x509.Certificate, error) {
	certs, err := attest.ParseCertificates(der)
	if err != nil || len(certs) != 1 || !bytes.Equal(certs[0].Raw, der) {
		return nil, fmt.Errorf("%w: the DER is not one certificate (%v)", ErrEKRootInvalid, err)
	}
	if ca && (!certs[0].BasicConstraintsValid || !certs[0].IsCA) {
		return nil, fmt.Errorf("%w: %s is not a CA certificate", ErrEKRootInvalid, attest.Name(certs[0].Subject))
	}
	return certs[0], nil
}

// removeEKRoot removes one CA by fingerprint. It refuses an unknown
// fingerprint (ErrNotFound) and the last CA (ErrLastEKRoot), writing nothing.
type removeEKRoot struct {
	Actor  string `json:"actor"`
	SHA256 string `json:"sha256"`
}

func (c *removeEKRoot) apply(tx *bolt.Tx, _ uint64, at time.Time) applyResult {
	b := tx.Bucket(bEKRoots)
	v := b.Get([]byte(c.SHA256))
	if v == nil {
		return applyResult{Err: fmt.Errorf("manufacturer CA %s: %w", c.SHA256, ErrNotFound)}
	}
	if b.Stats().KeyN <= 1 {
		return applyResult{Err: fmt.Errorf("%w (%s): add its replacement first", ErrLastEKRoot, c.SHA256)}
	}
	var r EKRoot
	if err := json.Unmarshal(v, &r); err != nil {
		return applyResult{Err: err}
	}
	if err := b.Delete([]byte(c.SHA256)); err != nil {
		return applyResult{Err: err}
	}
	d := ekRootAudit{Subject: r.Subject, SHA256: r.SHA256, AllowNoTPMEvidence: r.AllowNoTPMEvidence}
	if err := appendAudit(tx, at, AuditEKRootRemoved, c.Actor, "ekroot/"+r.SHA256, d); err != nil {
		return applyResult{Err: err}
	}
	return applyResult{Result: 1}
}

// AddEKRoots adds manufacturer CAs to the replicated set and returns how
// many were written (a CA already there with the same allowance is not).
// The caller validates the certificates; the FSM only bounds them.
func (n *Node) AddEKRoots(ctx context.Context, actor string, roots []EKRoot) (int, error) {
	w, err := n.apply(ctx, "ekroots.add", 1, &addEKRoots{Actor: actor, Roots: roots})
	return int(w), err
}

// SeedEKRoots writes roots as the set if, when the command applies, the set
// is empty; it reports whether it did.
func (n *Node) SeedEKRoots(ctx context.Context, actor string, roots []EKRoot) (bool, error) {
	w, err := n.apply(ctx, "ekroots.add", 1, &addEKRoots{Actor: actor, Roots: roots, Seed: true})
	return w > 0, err
}

// RemoveEKRoot removes the CA whose DER has the given hex SHA-256.
func (n *Node) RemoveEKRoot(ctx context.Context, actor, sha256Hex string) error {
	_, err := n.apply(ctx, "ekroots.remove", 1, &removeEKRoot{Actor: actor, SHA256: sha256Hex})
	return err
}

// EKRoots returns this node's replica of the set, in fingerprint order;
// empty before it was seeded.
func (n *Node) EKRoots() ([]EKRoot, error) {
	var out []EKRoot
	err := n.fsm.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bEKRoots).ForEach(func(_, v []byte) error {
			var r EKRoot
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	return out, err
}

// ConfigGeneration changes whenever this node applies a change to the EK
// root set or the cluster settings, or restores a snapshot: what is built
// from them (the EK verifier) compares it.
func (n *Node) ConfigGeneration() uint64 { return n.fsm.confGen.Load() }
