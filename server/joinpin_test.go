package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// A joining node installs the cluster root it pinned from the token, and
// nothing else: a seed whose HTTPS certificate the pinned root vouches for
// but whose join answer carries another root (or an intermediate that root
// did not issue) is refused, and nothing is written to the data directory.
func TestJoinInstallsOnlyThePinnedRoot(t *testing.T) {
	e := servertest.New(t)
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	real := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	otherRoot := selfSignedCert(t, "Another Root", true)
	for _, c := range []struct {
		name string
		edit func(m map[string]any)
		want string
	}{
		{"the cluster's own answer (control)", func(map[string]any) {}, ""},
		{"another root", func(m map[string]any) { m["root_pem"] = otherRoot }, "root"},
		{"an intermediate of another root", func(m map[string]any) { m["intermediate_pem"] = otherRoot }, "intermediate"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The impostor relays to the real seed and edits the answer.
			imp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				req, _ := http.NewRequestWithContext(r.Context(), r.Method, e.URL()+r.URL.Path, bytes.NewReader(body))
				req.Header = r.Header.Clone()
				resp, err := real.Do(req)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if strings.HasPrefix(r.URL.Path, "/cluster/v1/join") && resp.StatusCode == http.StatusOK {
					var m map[string]any
					if err := json.Unmarshal(b, &m); err != nil {
						t.Error(err)
					}
					c.edit(m)
					b, _ = json.Marshal(m)
				}
				w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
				w.WriteHeader(resp.StatusCode)
				w.Write(b)
			}))
			cert, err := e.App.ServerCertForTest()
			if err != nil {
				t.Fatal(err)
			}
			imp.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
			imp.StartTLS()
			defer imp.Close()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tok, err := e.App.CreateJoinToken(ctx, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "joiner")
			cfg := server.DefaultConfig()
			cfg.NodeID, cfg.Listen, cfg.RaftAddr = "node-2", "127.0.0.1:0", servertest.FreeAddr(t)
			err = server.Join(ctx, dir, servertest.Password, strings.TrimPrefix(imp.URL, "https://"), tok.String(), cfg)
			if c.want == "" {
				if err != nil {
					t.Fatalf("join through a relay: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("join through an impostor answering %s: %v", c.name, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "ca", "root.crt")); err == nil {
				t.Fatal("the joiner installed a CA from the impostor's answer")
			}
		})
	}
}
