package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"strings"
	"sync"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// A checkpoint sink keeps signed heads outside the appliance: each time
// this node commits an audit checkpoint, it writes a signed head over the
// chain up to that checkpoint (cluster.AuditRange, kind "checkpoint") as one
// JSON line. Whoever later holds the CA key can re-sign a rewritten chain,
// but not the lines already in the sink, so an auditor who compares the
// sink with an export (`audit verify --expect-head SINKFILE`) sees the
// rewrite or a cut tail. The sink is configured per node (audit_sink) and
// written by the node that made the checkpoint; configure it on every node,
// since any of them can lead.
//
// Specs: "file:PATH" (append-only JSON lines, fsynced), "syslog" (the local
// syslog daemon) or "syslog:NETWORK:ADDRESS" (e.g. syslog:unixgram:/dev/log,
// syslog:udp:logs.example:514).
//
// Non-guarantees: a write that fails is logged, not retried, and does not
// undo the checkpoint; a sink on the appliance's own disk protects only as
// far as that disk is out of an attacker's reach.
type checkpointSink struct {
	mu   sync.Mutex
	w    io.WriteCloser
	file *os.File // set for file sinks, to fsync
	// The last head written, so the same one is not written twice. A lower
	// seq is written: the chain was rolled back (a restore), and its new
	// checkpoints are heads an auditor needs.
	last     uint64
	lastHash string
}

// ErrAuditSink: an audit_sink spec that cannot be used.
var ErrAuditSink = errors.New("audit_sink")

func parseAuditSink(spec string) error {
	switch {
	case spec == "", spec == "syslog":
		return nil
	case strings.HasPrefix(spec, "file:"):
		if strings.TrimPrefix(spec, "file:") == "" {
			return fmt.Errorf("%w: file: needs a path", ErrAuditSink)
		}
		return nil
	case strings.HasPrefix(spec, "syslog:"):
		if network, addr, ok := strings.Cut(strings.TrimPrefix(spec, "syslog:"), ":"); !ok || network == "" || addr == "" {
			return fmt.Errorf("%w: %q: want syslog:NETWORK:ADDRESS", ErrAuditSink, spec)
		}
		return nil
	}
	return fmt.Errorf("%w: %q: want file:PATH, syslog or syslog:NETWORK:ADDRESS", ErrAuditSink, spec)
}

// openCheckpointSink opens spec; nil for "".
func openCheckpointSink(spec string) (*checkpointSink, error) {
	if err := parseAuditSink(spec); err != nil || spec == "" {
		return nil, err
	}
	const prio, tag = syslog.LOG_AUTHPRIV | syslog.LOG_NOTICE, cluster.SyslogTag
	var s checkpointSink
	var err error
	switch {
	case strings.HasPrefix(spec, "file:"):
		s.file, err = os.OpenFile(strings.TrimPrefix(spec, "file:"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		s.w = s.file
	case spec == "syslog":
		s.w, err = syslog.New(prio, tag)
	default:
		network, addr, _ := strings.Cut(strings.TrimPrefix(spec, "syslog:"), ":")
		s.w, err = syslog.Dial(network, addr, prio, tag)
	}
	if err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrAuditSink, spec, err)
	}
	return &s, nil
}

func (s *checkpointSink) write(r cluster.AuditRange) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.LastSeq == s.last && r.LastHash == s.lastHash {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := s.w.Write(append(b, '\n')); err != nil {
		return err
	}
	if s.file != nil {
		if err := s.file.Sync(); err != nil {
			return err
		}
	}
	s.last, s.lastHash = r.LastSeq, r.LastHash
	return nil
}

func (s *checkpointSink) Close() error {
	if s == nil {
		return nil
	}
	return s.w.Close()
}

// checkpoint signs the audit head (cluster.Node.Checkpoint) and writes the
// checkpoint to the sink, if one is configured.
func (a *Appliance) checkpoint(ctx context.Context, actor string) (uint64, error) {
	key, _ := a.ca.AuditKey()
	seq, err := a.node.Checkpoint(ctx, actor, key)
	if err != nil || a.sink == nil {
		return seq, err
	}
	e, err := a.node.AuditEntry(seq)
	if err == nil {
		err = a.sink.write(cluster.SignHead(key, cluster.RangeCheckpoint, a.cfg.TrustDomain, a.enroller.now(), e))
	}
	if err != nil {
		a.log.Error("could not write the audit checkpoint to the sink", "seq", seq, "sink", a.cfg.AuditSink, "err", err)
	}
	return seq, nil
}

// auditHead signs the live head of the chain, read linearizably.
func (a *Appliance) auditHead(ctx context.Context) (cluster.AuditRange, error) {
	if err := a.node.Linearize(ctx); err != nil {
		return cluster.AuditRange{}, err
	}
	head, err := a.node.AuditHead()
	if err != nil {
		return cluster.AuditRange{}, err
	}
	key, _ := a.ca.AuditKey()
	return cluster.SignHead(key, cluster.RangeHead, a.cfg.TrustDomain, a.enroller.now(), head), nil
}
