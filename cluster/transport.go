package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStreamLayer carries Raft over mutual TLS. Both sides present node
// certificates; the tls.Config the appliance supplies decides which peers
// are members (chain to the cluster root, node identity). A peer without a
// valid node certificate fails the handshake and never reaches Raft.
type tlsStreamLayer struct {
	net.Listener
	cfg *tls.Config
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(addr string, cfg *tls.Config) (*tlsStreamLayer, error) {
	if cfg == nil || (cfg.GetCertificate == nil && len(cfg.Certificates) == 0) || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("cluster: the Raft TLS config must present a node certificate and require one from peers")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &tlsStreamLayer{Listener: ln, cfg: cfg}, nil
}

// Accept wraps each connection in TLS. The handshake runs on Raft's
// per-connection goroutine at the first read, so a stalled peer cannot block
// accepting others; a peer that fails it is disconnected before Raft decodes
// anything.
func (s *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := tls.Server(c, s.cfg)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	return &handshakeConn{Conn: tc}, nil
}

// handshakeConn clears the handshake deadline once the handshake is done.
type handshakeConn struct {
	*tls.Conn
	done bool
}

func (c *handshakeConn) Read(b []byte) (int, error) {
	if !c.done {
		if err := c.Conn.Handshake(); err != nil {
			c.Conn.Close()
			return 0, fmt.Errorf("raft peer refused: %w", err)
		}
		_ = c.Conn.SetDeadline(time.Time{})
		c.done = true
	}
	return c.Conn.Read(b)
}

// Dial connects to a peer and verifies it is a member.
func (s *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(addr), s.cfg)
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", addr, err)
	}
	return c, nil
}
