package server_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A node whose clock runs ca.MaxClockSkew fast or slow issues certificates
// that are valid at the true time, the time of every other node, device and
// client: its HTTPS certificate (IssueServer), a device certificate
// (IssueDevice), an admin certificate (IssueAdmin). What the registry
// records is exactly the certificate's validity.
func TestCertificatesFromSkewedNodeValidAtTrueTime(t *testing.T) {
	for _, skew := range []time.Duration{ca.MaxClockSkew, -ca.MaxClockSkew} {
		t.Run(skew.String(), func(t *testing.T) {
			e := newEnv(t)
			e.App.Close()
			e.Clock.Advance(skew)
			// Restarting issues the HTTPS certificate by the skewed clock;
			// Start's client verifies it by the true one (crypto/tls).
			e.Start(server.WithCAClock(e.Clock.Now))

			verify := func(what string, leaf *x509.Certificate, chain []*x509.Certificate, eku x509.ExtKeyUsage) {
				t.Helper()
				inter := x509.NewCertPool()
				for _, c := range chain {
					inter.AddCert(c)
				}
				roots := x509.NewCertPool()
				roots.AddCert(e.App.Root())
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now(), KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
					t.Fatalf("%s issued by a node %v off, verified at the true time: %v (valid %v..%v)", what, skew, err, leaf.NotBefore, leaf.NotAfter)
				}
			}

			// Its certificates, issued before the clock moved (Init) or
			// after, pass its own readiness check.
			if c := e.App.Readiness(false).Checks[server.CheckCertificate]; !c.OK {
				t.Errorf("readiness of a node %v off: %v", skew, c.Reasons)
			}
			resp, err := e.HTTP.Get(e.URL() + "/healthz")
			if err != nil {
				t.Fatalf("HTTPS to a node %v off: %v", skew, err)
			}
			resp.Body.Close()
			st := resp.TLS.PeerCertificates
			verify("the HTTPS certificate", st[0], st[1:], x509.ExtKeyUsageServerAuth)

			d := servertest.NewDevice(t, e.Mfr)
			id, err := e.Client.Enroll(context.Background(), d.TPM)
			if err != nil {
				t.Fatalf("enroll through a node %v off: %v", skew, err)
			}
			verify("the device certificate", id.Certificate, id.Chain, x509.ExtKeyUsageClientAuth)
			dev, err := e.App.Node().Device(id.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			if !dev.CertificateNotAfter.Equal(id.Certificate.NotAfter) {
				t.Fatalf("the registry records notAfter %v, the certificate says %v", dev.CertificateNotAfter, id.Certificate.NotAfter)
			}
			recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: id.DeviceID, Limit: 1})
			if err != nil || len(recs) != 1 {
				t.Fatalf("attestations: %v, %v", recs, err)
			}
			if r := recs[0]; !r.CertificateNotBefore.Equal(id.Certificate.NotBefore) || !r.CertificateNotAfter.Equal(id.Certificate.NotAfter) {
				t.Fatalf("the record says %v..%v, the certificate %v..%v", r.CertificateNotBefore, r.CertificateNotAfter, id.Certificate.NotBefore, id.Certificate.NotAfter)
			}

			admin := e.AdminCert(t, "operator", "skew")
			leaf, err := x509.ParseCertificate(admin.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			var chain []*x509.Certificate
			for _, der := range admin.Certificate[1:] {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					t.Fatal(err)
				}
				chain = append(chain, c)
			}
			verify("the admin certificate", leaf, chain, x509.ExtKeyUsageClientAuth)
		})
	}
}

// skewedFollower joins a second node to e whose clock (its appliance's and
// its Raft node's) is skewed, set through the returned clock. e, whose
// clock is true, stays the leader.
func skewedFollower(t *testing.T, e *env) (*server.Appliance, *servertest.Clock) {
	t.Helper()
	ctx := context.Background()
	skewed := &servertest.Clock{}
	tok, err := e.App.CreateJoinToken(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := server.Join(ctx, dir, servertest.Password, e.App.Addr(), tok.String(), joinConfig(t, "node-2")); err != nil {
		t.Fatal(err)
	}
	f, err := server.Open(dir, servertest.Password, server.WithClock(skewed.Now), server.WithCAClock(skewed.Now),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft), cluster.WithClock(skewed.Now)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	servertest.WaitFor(t, "the follower to join", 20*time.Second, func() bool {
		_, err := f.Node().Member(e.App.Node().LeaderID())
		return voters(e.App) == 2 && err == nil
	})
	if !e.App.Node().IsLeader() {
		t.Fatalf("leader %q, want the node with the true clock", e.App.Node().LeaderID())
	}
	return f, skewed
}

func joinConfig(t *testing.T, id string) server.Config {
	cfg := server.DefaultConfig()
	cfg.NodeID, cfg.Listen, cfg.RaftAddr = id, "127.0.0.1:0", servertest.FreeAddr(t)
	servertest.Unthrottled(&cfg)
	return cfg
}

// routeComplete sends the second enrollment round trip to another node, as
// a load balancer may.
type routeComplete struct {
	rt   http.RoundTripper
	host string
}

func (r routeComplete) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path == api.PathComplete {
		req = req.Clone(req.Context())
		req.URL.Host, req.Host = r.host, r.host
	}
	return r.rt.RoundTrip(req)
}

// A session made on one node and completed on another, one of the two
// running ca.MaxClockSkew fast or slow, completes with the default
// SessionTTL: neither a slow maker nor a fast completer makes it expired at
// birth. It still expires: past its expiry by the completing node's clock
// it is refused.
func TestSessionAcrossSkewedNodes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	f, skewed := skewedFollower(t, e)

	enroll := func(maker, completer *server.Appliance) error {
		hc := &http.Client{Timeout: 30 * time.Second, Transport: routeComplete{e.HTTP.Transport, completer.Addr()}}
		d := servertest.NewDevice(t, e.Mfr)
		_, err := fwclient.NewClient("https://"+maker.Addr(), e.App.Root()).Enroll(ctx, d.TPM, fwclient.WithHTTPClient(hc))
		return err
	}
	for _, skew := range []time.Duration{ca.MaxClockSkew, -ca.MaxClockSkew} {
		skewed.Advance(skew)
		// Its clock stepped by skew after its certificates were issued.
		if c := f.Readiness(true).Checks[server.CheckCertificate]; !c.OK {
			t.Errorf("readiness of a node %v off: %v", skew, c.Reasons)
		}
		if err := enroll(f, e.App); err != nil {
			t.Errorf("session made on a node %v off, completed on the leader: %v", skew, err)
		}
		if err := enroll(e.App, f); err != nil {
			t.Errorf("session made on the leader, completed on a node %v off: %v", skew, err)
		}
		skewed.Advance(-skew)
	}

	// Sessions still expire: SessionTTL plus the tolerated skew past the
	// maker's clock, by the completer's.
	ttl := server.DefaultConfig().SessionTTL.Duration
	e.Clock.Advance(ttl + ca.MaxClockSkew + time.Second)
	err := enroll(f, e.App)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodeTokenExpired {
		t.Fatalf("a session completed past its expiry: %v, want %s", err, api.CodeTokenExpired)
	}
}

// Join tokens with one node ca.MaxClockSkew off, a one-minute TTL each:
// made on a slow node and used through the leader; made on the leader and
// checked on a fast node; judged by a fast leader. None is refused early,
// and a token past its TTL plus the tolerated skew by the leader's clock is
// still refused.
func TestJoinTokenAcrossSkewedNodes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	f, skewed := skewedFollower(t, e)
	n := 2
	join := func(maker, via *server.Appliance, ttl time.Duration) error {
		t.Helper()
		tok, err := maker.CreateJoinToken(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		// An operator copies the token: by then every node has it.
		servertest.WaitFor(t, "the token to replicate", 10*time.Second, func() bool {
			return via.Node().CheckJoinToken(tok.ID, tok.Secret, time.Time{}) == nil
		})
		n++
		return server.Join(ctx, t.TempDir(), servertest.Password, via.Addr(), tok.String(), joinConfig(t, fmt.Sprintf("node-%d", n)))
	}

	skewed.Advance(-ca.MaxClockSkew)
	if err := join(f, e.App, time.Minute); err != nil {
		t.Errorf("token made on a node %v off, used through the leader: %v", -ca.MaxClockSkew, err)
	}
	skewed.Advance(2 * ca.MaxClockSkew)
	if err := join(e.App, f, time.Minute); err != nil {
		t.Errorf("token made on the leader, checked on a node %v off: %v", ca.MaxClockSkew, err)
	}

	// The fast node leads: it judges expiry when the token is used.
	if err := e.App.Node().TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, "the fast node to lead", 10*time.Second, func() bool { return f.Node().IsLeader() && e.App.Node().LeaderID() != "" })
	if err := join(e.App, e.App, time.Minute); err != nil {
		t.Errorf("token made on a node with the true clock, used under a leader %v off: %v", ca.MaxClockSkew, err)
	}
	skewed.Advance(3 * time.Second)
	err := join(e.App, e.App, time.Second)
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodeJoinTokenExpired {
		t.Fatalf("token past its TTL plus %v by the leader's clock: %v, want %s", ca.MaxClockSkew, err, api.CodeJoinTokenExpired)
	}
}

// An ACME device-attest-01 certificate from a node ca.MaxClockSkew fast is
// valid at the true time, and the registry records its validity exactly.
func TestACMECertificateFromFastNode(t *testing.T) {
	e := newEnv(t)
	aca := servertest.NewTestAKCA(t)
	if err := e.App.Close(); err != nil {
		t.Fatal(err)
	}
	e.Clock.Advance(ca.MaxClockSkew)
	e.Start(aca.Option(), server.WithCAClock(e.Clock.Now))
	applyPolicy(t, e, acmePolicy)
	d := servertest.NewACMEDevice(t, e.Env, aca, "")
	c := servertest.ACMEClient(t, e.App)
	o, key, err := servertest.OrderAndProve(t, c, d, d.ID)
	if err != nil {
		t.Fatalf("order and prove: %v", err)
	}
	chain, err := servertest.Finalize(c, o, key, d.ID)
	if err != nil {
		t.Fatalf("finalize: %v", err)
	}
	leaf := chain[0]
	if now := time.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		t.Fatalf("ACME certificate from a node %v fast: valid %v..%v, not at the true time %v", ca.MaxClockSkew, leaf.NotBefore, leaf.NotAfter, now)
	}
	recs, err := e.App.Node().Attestations(cluster.AttestationQuery{DeviceID: d.ID, Limit: 1})
	if err != nil || len(recs) != 1 {
		t.Fatalf("attestations: %v, %v", recs, err)
	}
	if r := recs[0]; !r.CertificateNotBefore.Equal(leaf.NotBefore) || !r.CertificateNotAfter.Equal(leaf.NotAfter) {
		t.Fatalf("the record says %v..%v, the certificate %v..%v", r.CertificateNotBefore, r.CertificateNotAfter, leaf.NotBefore, leaf.NotAfter)
	}
}
