package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"
)

// A reissue that keeps failing (no Raft leader to record the certificate,
// say) is not tried again on every call: get runs on every TLS handshake
// and every /readyz probe, which is exempt from the rate limit, so an
// anonymous flood would otherwise sign, propose and log an error per
// request. The old certificate is served meanwhile, one error is logged
// per retry interval, and a retry after it succeeds.
func TestCertSourceBacksOffFailedReissue(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mint := func(notBefore time.Time) tls.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: notBefore, NotAfter: notBefore.Add(3 * time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	}
	// Two and a half of its three hours gone: due for reissue, still valid.
	old := mint(time.Now().Add(-150 * time.Minute))
	calls, fail := 0, true
	var logs bytes.Buffer
	s := &certSource{log: slog.New(slog.NewTextHandler(&logs, nil)), cert: &old, issue: func() (tls.Certificate, error) {
		calls++
		if fail {
			return tls.Certificate{}, errors.New("no leader")
		}
		return mint(time.Now()), nil
	}}
	for range 100 {
		c, err := s.get(nil)
		if err != nil || c != &old {
			t.Fatalf("get while the reissue fails: %v, old certificate served: %v", err, c == &old)
		}
	}
	if calls != 1 {
		t.Fatalf("100 calls tried the reissue %d times, want 1 per retry interval", calls)
	}
	if n := strings.Count(logs.String(), "certificate renewal failed"); n != 1 {
		t.Fatalf("%d error lines for 100 calls, want 1:\n%s", n, logs.String())
	}
	// After the retry interval it tries again, and a success is served.
	fail = false
	s.failedAt = s.failedAt.Add(-certRetryEvery)
	c, err := s.get(nil)
	if err != nil || c == &old || calls != 2 {
		t.Fatalf("after the retry interval: %v, new certificate %v, %d reissues", err, c != &old, calls)
	}
}
