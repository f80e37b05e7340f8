package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// voters counts a's registered voters: members that vote and whose API
// address the registry holds.
func voters(a *server.Appliance) int {
	ms, err := a.Node().Members()
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range ms {
		if m.Voter && m.APIAddr != "" {
			n++
		}
	}
	return n
}

// Three nodes form; enrollments go through every node, including a session
// that starts on one node and completes on another; all registries end up
// identical.
func TestThreeNodeCluster(t *testing.T) {
	e := servertest.New(t)
	n2, _ := e.Join(t, "node-2")
	n3, _ := e.Join(t, "node-3")
	nodes := []*server.Appliance{e.App, n2, n3}
	for _, n := range nodes {
		servertest.WaitFor(t, "three registered voters", 20*time.Second, func() bool { return voters(n) == 3 })
	}

	ctx := context.Background()
	var ids []string
	for _, n := range nodes {
		d := servertest.NewDevice(t, e.Mfr)
		client := fwclient.NewClient("https://"+n.Addr(), n.Root())
		id, err := client.Enroll(ctx, d.TPM)
		if err != nil {
			t.Fatalf("enroll through %s: %v", n.Addr(), err)
		}
		ids = append(ids, id.DeviceID)
		// The identity works against every node.
		for _, other := range nodes {
			if _, err := fwclient.NewClient("https://"+other.Addr(), other.Root()).WhoAmI(ctx, d.TPM, id); err != nil {
				t.Fatalf("whoami at %s for a device enrolled at %s: %v", other.Addr(), n.Addr(), err)
			}
		}
	}

	// Challenge on node 2, complete on node 3: no node keeps session state.
	d := servertest.NewDevice(t, e.Mfr)
	ak := d.NewAK(t, goattest.ECDSA)
	req, _ := fwclient.NewChallengeRequest(d.EK, ak, api.Claims{})
	ch, err := n2.Enroller().Challenge(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ak.ActivateCredentialWithEK(d.TPM.TPM, goattest.EncryptedCredential{Credential: ch.Credential.Credential, Secret: ch.Credential.Secret}, d.EK)
	if err != nil {
		t.Fatal(err)
	}
	ev, key, err := fwclient.Evidence(d.TPM, ak, ch, secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	key.Close()
	done, err := n3.Enroller().Complete(ctx, ev)
	if err != nil {
		t.Fatalf("complete on another node: %v", err)
	}
	ids = append(ids, done.DeviceID)
	// The same token replayed on yet another node is refused.
	if _, err := e.App.Enroller().Complete(ctx, ev); err == nil || !strings.Contains(err.Error(), api.CodeSessionReplayed) {
		t.Fatalf("replay on a third node: %v", err)
	}

	want, _ := e.App.Node().StateHash()
	for _, n := range nodes {
		servertest.WaitFor(t, "identical registries", 10*time.Second, func() bool {
			h, _ := n.Node().StateHash()
			if h == want {
				return true
			}
			want, _ = e.App.Node().StateHash() // the leader may still apply
			return false
		})
		for _, id := range ids {
			if _, err := n.Node().Device(id); err != nil {
				t.Fatalf("device %s missing on a node: %v", id, err)
			}
		}
	}

	// The audit chain, appended through different nodes (followers forward),
	// is byte-identical on all of them and verifies.
	for i, n := range nodes {
		if err := n.Node().AppendAudit(ctx, cluster.AuditAdminDenied, fmt.Sprintf("test-%d", i), "/admin/v1/x", nil); err != nil {
			t.Fatal(err)
		}
	}
	// A revocation through a follower replicates: the CRL of another node
	// lists it and that node refuses the certificate.
	revoked, err := n2.RevokeDevice(ctx, ids[0], "test", "decommissioned")
	if err != nil {
		t.Fatalf("revoke through a follower: %v", err)
	}
	auditKey, chain := e.App.AuditKey()
	if _, err := n3.Node().Checkpoint(ctx, "test", auditKey); err != nil {
		t.Fatalf("checkpoint through a follower: %v", err)
	}
	exports := make([][]byte, len(nodes))
	for i, n := range nodes {
		servertest.WaitFor(t, "identical audit chains", 10*time.Second, func() bool {
			entries, err := n.Node().AuditEntries(time.Time{}, 0)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := cluster.WriteAudit(&buf, cluster.AuditCSV, cluster.AuditHeader{}, entries); err != nil {
				t.Fatal(err)
			}
			if err := cluster.WriteAuditRange(&buf, cluster.AuditCSV, cluster.SignRange(auditKey, cluster.RangeExport, "td", time.Time{}, time.Time{}, entries)); err != nil {
				t.Fatal(err)
			}
			exports[i] = buf.Bytes()
			return i == 0 || bytes.Equal(exports[i], exports[0])
		})
	}
	_, lines, _ := cluster.ReadAudit(bytes.NewReader(exports[2]))
	if rep := cluster.VerifyAudit(lines, auditKey.Public().(ed25519.PublicKey)); !rep.OK() || rep.Entries < 10 {
		t.Fatalf("chain from node 3: %+v", rep)
	}
	if _, err := ca.VerifyAuditKey(chain, n3.Root()); err != nil {
		t.Fatal(err)
	}
	serial, _ := new(big.Int).SetString(revoked.Serials[0], 16)
	if ok, err := n3.IsRevoked(serial); err != nil || !ok {
		t.Fatalf("node 3 does not see the revocation: %v %v", ok, err)
	}
}

// A peer without a node certificate of this cluster cannot talk Raft: not
// a stranger's certificate, and not a device certificate from the cluster's
// own CA.
func TestRaftPortRefusesNonMembers(t *testing.T) {
	e := servertest.New(t)
	addr := e.App.Node().RaftAddr()
	try := func(cert *tls.Certificate) error {
		cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		// TLS 1.3 reports a refused client certificate on the first read.
		if _, err := c.Write([]byte{0}); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		return err
	}
	if err := try(nil); err == nil {
		t.Fatal("a peer without a certificate was accepted")
	}
	stranger := selfSigned(t)
	if err := try(&stranger); err == nil {
		t.Fatal("a peer with a foreign certificate was accepted")
	}
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(context.Background(), d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	devCert, key, err := id.TLSCertificate(d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	if err := try(&devCert); err == nil {
		t.Fatal("a device certificate was accepted on the Raft port")
	}
}

func TestJoinTokens(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	cfg := server.DefaultConfig()
	cfg.Listen, cfg.RaftAddr = "127.0.0.1:0", "127.0.0.1:0"

	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg.NodeID = "node-2"
	if err := server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), tok.String(), cfg); err != nil {
		t.Fatalf("first use: %v", err)
	}
	cfg.NodeID = "node-3"
	var p *api.Problem
	if err := server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), tok.String(), cfg); !errors.As(err, &p) || p.Code != api.CodeJoinTokenUsed {
		t.Fatalf("reused token: %v", err)
	}

	short, err := e.App.CreateJoinToken(ctx, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// A token lives its TTL plus the tolerated clock skew.
	e.Clock.Advance(ca.MaxClockSkew + time.Second)
	if err := server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), short.String(), cfg); !errors.As(err, &p) || p.Code != api.CodeJoinTokenExpired {
		t.Fatalf("expired token: %v", err)
	}

	forged := tok
	forged.ID, forged.Secret = short.ID, tok.Secret
	if err := server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), forged.String(), cfg); !errors.As(err, &p) || p.Code != api.CodeJoinTokenInvalid {
		t.Fatalf("wrong secret: %v", err)
	}

	// A token pinning another root is refused before it is ever sent.
	fresh, _ := e.App.CreateJoinToken(ctx, time.Minute)
	pinned := fresh
	pinned.RootHash = strings.Repeat("0", 64)
	if err := server.Join(ctx, t.TempDir(), servertest.Password, e.App.Addr(), pinned.String(), cfg); err == nil || !strings.Contains(err.Error(), "does not match the token's pin") {
		t.Fatalf("impostor pin: %v", err)
	}
	if err := server.Join(ctx, t.TempDir(), []byte("another password"), e.App.Addr(), fresh.String(), cfg); err == nil || !strings.Contains(err.Error(), "password") {
		t.Fatalf("wrong cluster password: %v", err)
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stranger"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// Removing a member works from any node (a follower forwards it to the
// leader); the leader does not remove itself.
func TestRemoveMember(t *testing.T) {
	e, nodes, dirs := threeNodes(t)
	ctx := context.Background()
	li := leaderIndex(nodes)
	fi := (li + 1) % 3
	victim := (li + 2) % 3
	victimID := []string{"node-1", "node-2", "node-3"}[victim]
	if err := server.NewAdminClient(dirs[fi]).RemoveMember(ctx, victimID); err != nil {
		t.Fatalf("remove through a follower: %v", err)
	}
	servertest.WaitFor(t, "two members", 10*time.Second, func() bool {
		ms, _ := nodes[li].Node().Members()
		return len(ms) == 2
	})
	leaderID := []string{"node-1", "node-2", "node-3"}[li]
	var p *api.Problem
	if err := server.NewAdminClient(dirs[li]).RemoveMember(ctx, leaderID); !errors.As(err, &p) || p.Status != 409 {
		t.Fatalf("the leader removed itself: %v", err)
	}
	// The two remaining nodes still commit.
	d := servertest.NewDevice(t, e.Mfr)
	if _, err := fwclient.NewClient("https://"+nodes[fi].Addr(), nodes[fi].Root()).Enroll(ctx, d.TPM); err != nil {
		t.Fatalf("enroll after removal: %v", err)
	}
}
