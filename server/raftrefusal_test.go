package server_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// Anyone who reaches the Raft port can open connections that fail the
// mutual-TLS handshake. Each is logged, but only so many a minute: a flood
// of them does not write a log line per connection (Raft's own "failed to
// decode incoming command" at error level is not reached).
func TestRaftHandshakeRefusalsLogBounded(t *testing.T) {
	dir, cfg := initNode(t)
	var logs syncBuffer
	a, err := server.Open(dir, servertest.Password, server.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		server.WithClusterOptions(cluster.WithRaftConfig(servertest.FastRaft)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	const n = 60
	for i := range n {
		c, err := net.DialTimeout("tcp", cfg.RaftAddr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			c.Write([]byte("GET / HTTP/1.0\r\n\r\n")) // not TLS at all
		} else {
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // TLS without a node certificate
			_ = tc.SetDeadline(time.Now().Add(2 * time.Second))
			_ = tc.Handshake()
			_, _ = tc.Read(make([]byte, 1))
			c = tc
		}
		c.Close()
	}
	servertest.WaitFor(t, "the refusals to be handled", 10*time.Second, func() bool {
		out := logs.String()
		return strings.Count(out, "refused an incoming connection")+strings.Count(out, "failed to decode incoming command") >= 5
	})
	time.Sleep(500 * time.Millisecond) // the rest of the connections
	out := logs.String()
	if c := strings.Count(out, "failed to decode incoming command"); c != 0 {
		t.Fatalf("Raft logged %d refused connections at error level:\n%s", c, out)
	}
	if c := strings.Count(out, "refused an incoming connection"); c > 10 {
		t.Fatalf("%d lines for %d refused connections, want at most 10 a minute", c, n)
	}
	if !strings.Contains(out, "refused an incoming connection") || !strings.Contains(out, "remote=127.0.0.1:") {
		t.Fatalf("the refusal lines do not name the remote address:\n%s", out)
	}
}
