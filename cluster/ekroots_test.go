package cluster

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCAKey signs the test CAs: one key, so that thousands cost little.
var testCAKey = func() ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}()

// testCert is a self-signed certificate, a CA or not, with a random serial
// (so that every call gives another DER).
func testCert(t testing.TB, cn string, isCA bool) []byte {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: isCA}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, testCAKey.Public(), testCAKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func randomRoots(t testing.TB, n int) []EKRoot {
	out := make([]EKRoot, n)
	for i := range out {
		out[i] = EKRoot{Subject: "CN=test", DER: testCert(t, "test", true)}
	}
	return out
}

// The FSM keys CAs by the SHA-256 it computes, seeds only an empty set,
// bounds the set, refuses to remove the last CA, and carries the set and
// the settings through a snapshot; every accepted change moves
// ConfigGeneration.
func TestEKRootsAndSettingsInFSM(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	gen := n.ConfigGeneration()
	lie := randomRoots(t, 1)
	lie[0].SHA256 = "00" // the FSM computes the key itself
	if ok, err := n.SeedEKRoots(ctx, "node:n1", lie); err != nil || !ok {
		t.Fatalf("seed an empty set: %v %v", ok, err)
	}
	if n.ConfigGeneration() == gen {
		t.Fatal("the seed did not move ConfigGeneration")
	}
	if ok, err := n.SeedEKRoots(ctx, "node:n1", randomRoots(t, 3)); err != nil || ok {
		t.Fatalf("seed a set that has CAs: %v %v (want a no-op)", ok, err)
	}
	roots, _ := n.EKRoots()
	if len(roots) != 1 || roots[0].SHA256 == "00" || len(roots[0].SHA256) != 64 || roots[0].AddedBy != "node:n1" {
		t.Fatalf("after the seed: %+v", roots)
	}
	if err := n.RemoveEKRoot(ctx, "alice", roots[0].SHA256); !errors.Is(err, ErrLastEKRoot) {
		t.Fatalf("remove the last CA: %v", err)
	}
	if w, err := n.AddEKRoots(ctx, "alice", randomRoots(t, MaxEKRoots-1)); err != nil || w != MaxEKRoots-1 {
		t.Fatalf("fill the set: %d %v", w, err)
	}
	if _, err := n.AddEKRoots(ctx, "alice", randomRoots(t, 1)); !errors.Is(err, ErrEKRootsLimit) {
		t.Fatalf("one over the bound: %v", err)
	}
	// A refused command writes nothing, also when its first CAs would fit.
	if err := n.RemoveEKRoot(ctx, "alice", roots[0].SHA256); err != nil {
		t.Fatalf("control: remove one of many: %v", err)
	}
	head, _ := n.AuditHead()
	if _, err := n.AddEKRoots(ctx, "alice", randomRoots(t, 2)); !errors.Is(err, ErrEKRootsLimit) {
		t.Fatalf("two over a bound one away: %v", err)
	}
	if after, _ := n.AuditHead(); after.Seq != head.Seq {
		t.Fatal("a refused add wrote audit entries")
	}
	if rs, _ := n.EKRoots(); len(rs) != MaxEKRoots-1 {
		t.Fatalf("a refused add left %d CAs, want %d", len(rs), MaxEKRoots-1)
	}
	big := randomRoots(t, 1)
	big[0].DER = make([]byte, MaxEKRootDER+1)
	if _, err := n.AddEKRoots(ctx, "alice", big); !errors.Is(err, ErrEKRootsLimit) {
		t.Fatalf("an oversized certificate: %v", err)
	}
	if err := n.RemoveEKRoot(ctx, "alice", roots[0].SHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove twice: %v", err)
	}

	if _, err := n.Settings(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("settings before the seed: %v", err)
	}
	if ok, err := n.SeedSettings(ctx, "node:n1", json.RawMessage(`{"a":1}`)); err != nil || !ok {
		t.Fatalf("seed settings: %v %v", ok, err)
	}
	if ok, _ := n.SeedSettings(ctx, "node:n1", json.RawMessage(`{"a":2}`)); ok {
		t.Fatal("a second seed overwrote the settings")
	}
	if _, err := n.SetSettings(ctx, "alice", 0, json.RawMessage(`{"a":3}`)); !errors.Is(err, ErrSettingsConflict) {
		t.Fatalf("a change based on no version: %v", err)
	}
	if v, err := n.SetSettings(ctx, "alice", 1, json.RawMessage(`{"a":4}`)); err != nil || v != 2 {
		t.Fatalf("a change based on version 1: %d %v", v, err)
	}

	want, _ := n.StateHash()
	snap, _ := n.fsm.Snapshot()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	other, err := openFSM(filepath.Join(t.TempDir(), "fsm.db"), func(err error) { t.Errorf("fatal: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer other.close()
	g := other.confGen.Load()
	if err := other.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got, _ := other.stateHash(); got != want || other.confGen.Load() == g {
		t.Fatalf("restored hash %s (want %s), generation moved: %v", got, want, other.confGen.Load() != g)
	}
	restored := &Node{fsm: other}
	if rs, _ := restored.EKRoots(); len(rs) != MaxEKRoots-1 {
		t.Fatalf("%d CAs after restore", len(rs))
	}
	if s, err := restored.Settings(); err != nil || s.Version != 2 || string(s.Document) != `{"a":4}` {
		t.Fatalf("settings after restore: %+v %v", s, err)
	}
}

// The FSM judges what it stores itself, whoever proposed the command (an
// appliance validates first, but a forwarded command comes from any
// node): a DER that is not exactly one certificate, or a certificate that
// is not a CA outside a seed, is refused, writing nothing; the subject is
// the certificate's, not the command's. A settings document over the
// bound or refused by the node's validator is refused too.
func TestFSMJudgesEKRootsAndSettings(t *testing.T) {
	var calls []string
	n := openNode(t, t.TempDir(), WithSettingsValidator(func(prev, next json.RawMessage) error {
		calls = append(calls, string(prev)+"->"+string(next))
		if strings.Contains(string(next), "bad") {
			return errors.New("refused by the validator")
		}
		return nil
	}))
	ctx := context.Background()
	ca := testCert(t, "Vendor CA", true)
	leaf := testCert(t, "device", false)
	if ok, err := n.SeedEKRoots(ctx, "node:n1", []EKRoot{{DER: leaf, Subject: "CN=Liar"}}); err != nil || !ok {
		t.Fatalf("a seed keeps what init accepted (any certificate): %v %v", ok, err)
	}
	roots, _ := n.EKRoots()
	if len(roots) != 1 || roots[0].Subject != "CN=device" {
		t.Fatalf("seeded %+v, want the certificate's own subject", roots)
	}
	head, _ := n.AuditHead()
	gen := n.ConfigGeneration()
	for name, der := range map[string][]byte{
		"not a CA":               testCert(t, "another device", false),
		"garbage":                []byte("garbage"),
		"a certificate and more": append(append([]byte(nil), ca...), 0),
		"two certificates":       append(append([]byte(nil), ca...), ca...),
	} {
		if _, err := n.AddEKRoots(ctx, "alice", []EKRoot{{DER: testCert(t, "fine", true)}, {DER: der}}); !errors.Is(err, ErrEKRootInvalid) {
			t.Errorf("%s: %v, want ErrEKRootInvalid", name, err)
		}
	}
	if rs, _ := n.EKRoots(); len(rs) != 1 {
		t.Fatalf("refused adds left %d CAs", len(rs))
	}
	if after, _ := n.AuditHead(); after.Seq != head.Seq {
		t.Fatal("a refused add wrote audit entries")
	}
	if w, err := n.AddEKRoots(ctx, "alice", []EKRoot{{DER: ca, Subject: "CN=Trusted Root Inc"}}); err != nil || w != 1 {
		t.Fatalf("control: a CA: %d %v", w, err)
	}
	if !hasSubject(n, "CN=Vendor CA") || hasSubject(n, "CN=Trusted Root Inc") {
		t.Fatalf("the stored subject is the command's claim: %+v", must(n.EKRoots()))
	}
	if n.ConfigGeneration() == gen {
		t.Fatal("the accepted add did not move ConfigGeneration")
	}

	if ok, err := n.SeedSettings(ctx, "node:n1", json.RawMessage(`{"a":1}`)); err != nil || !ok {
		t.Fatalf("seed settings: %v %v", ok, err)
	}
	for name, doc := range map[string]string{
		"refused by the validator": `{"a":"bad"}`,
		"over the bound":           fmt.Sprintf(`{"a":%q}`, strings.Repeat("x", MaxSettingsDocument)),
	} {
		if _, err := n.SetSettings(ctx, "alice", 1, json.RawMessage(doc)); !errors.Is(err, ErrSettingsInvalid) {
			t.Errorf("%s: %v, want ErrSettingsInvalid", name, err)
		}
	}
	if rec, err := n.Settings(); err != nil || rec.Version != 1 || string(rec.Document) != `{"a":1}` {
		t.Fatalf("refused changes left %+v %v", rec, err)
	}
	if v, err := n.SetSettings(ctx, "alice", 1, json.RawMessage(`{"a":2}`)); err != nil || v != 2 {
		t.Fatalf("control: a good change: %d %v", v, err)
	}
	if len(calls) == 0 || calls[0] != `->{"a":1}` || calls[len(calls)-1] != `{"a":1}->{"a":2}` {
		t.Fatalf("the validator saw %q, want the seed with no previous document first and the stored one as prev", calls)
	}
	if ok, err := n.SeedSettings(ctx, "node:n1", json.RawMessage(`{"a":"bad"}`)); err != nil || ok {
		t.Fatalf("a seed over stored settings: %v %v (want a no-op)", ok, err)
	}
}

func hasSubject(n *Node, subject string) bool {
	rs, _ := n.EKRoots()
	for _, r := range rs {
		if r.Subject == subject {
			return true
		}
	}
	return false
}

func must[T any](v T, _ error) T { return v }

// ConfigCommands names commands this build applies, in Commands' form: a
// typo would make every node wait forever for members to know it.
func TestConfigCommandsAreCommands(t *testing.T) {
	all := Commands()
	if len(all) != len(commandTypes)+len(binaryCommandTypes) {
		t.Fatalf("Commands lists %d, the registries have %d", len(all), len(commandTypes)+len(binaryCommandTypes))
	}
	for _, c := range ConfigCommands {
		found := false
		for _, k := range all {
			found = found || k == c
		}
		if !found {
			t.Errorf("%s is not in Commands %v", c, all)
		}
	}
}
