package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// setAuditSink restarts e's node with audit_sink set to spec.
func setAuditSink(t *testing.T, e *servertest.Env, spec string) {
	t.Helper()
	e.App.Close()
	cfg, err := server.LoadConfig(e.Dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AuditSink = spec
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(e.Dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	e.Start()
}

func readSink(t *testing.T, path string) []cluster.AuditRange {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	heads, err := cluster.ReadAuditHeads(b)
	if err != nil {
		t.Fatal(err)
	}
	return heads
}

// Each checkpoint the node makes (on request, or before an export) reaches
// the file sink as a signed head; an auditor who compares the sink with an
// export sees an export that ends before a later checkpoint.
func TestAuditCheckpointFileSink(t *testing.T) {
	e := servertest.New(t)
	path := filepath.Join(t.TempDir(), "checkpoints.jsonl")
	setAuditSink(t, e, "file:"+path)
	ctx := context.Background()
	adm := server.NewAdminClient(e.Dir)
	key, _ := e.App.AuditKey()
	pub := key.Public().(ed25519.PublicKey)
	note := func(what string) {
		t.Helper()
		if err := e.App.Node().AppendAudit(ctx, cluster.AuditAdminDenied, "test", what, nil); err != nil {
			t.Fatal(err)
		}
	}

	note("one")
	seq, err := adm.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.Checkpoint(ctx); err != nil { // the head is that checkpoint: nothing new
		t.Fatal(err)
	}
	heads := readSink(t, path)
	cp, err := e.App.Node().AuditEntry(seq)
	if err != nil {
		t.Fatal(err)
	}
	if len(heads) != 1 || heads[0].Kind != cluster.RangeCheckpoint || heads[0].LastSeq != seq || heads[0].LastHash != cp.Hash ||
		heads[0].FirstSeq != 1 || heads[0].TrustDomain != servertest.TrustDomain || heads[0].Verify(pub) != nil {
		t.Fatalf("sink after one checkpoint: %+v", heads)
	}

	// An export commits a checkpoint, which reaches the sink too.
	note("two")
	var export bytes.Buffer
	if err := adm.ExportAudit(ctx, time.Time{}, cluster.AuditJSONL, &export); err != nil {
		t.Fatal(err)
	}
	heads = readSink(t, path)
	_, lines, err := cluster.ReadAudit(bytes.NewReader(export.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	rep := cluster.VerifyAudit(lines, pub, cluster.ExpectHeads(heads...))
	if len(heads) != 2 || !rep.OK() || rep.HeadsSeen != 2 || rep.Range == nil || rep.Range.LastSeq != heads[1].LastSeq {
		t.Fatalf("export against the sink: %d heads, %+v", len(heads), rep)
	}

	// History goes on; the old export (or a new one cut back to it) no
	// longer reaches the sink's newest checkpoint.
	note("three")
	if _, err := adm.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	heads = readSink(t, path)
	rep = cluster.VerifyAudit(lines, pub, cluster.ExpectHeads(heads...))
	if len(heads) != 3 || rep.OK() || rep.Problems[0].Kind != "truncated_tail" || rep.Problems[0].Seq != heads[2].LastSeq {
		t.Fatalf("old export against the newer sink: %d heads, %+v", len(heads), rep.Problems)
	}

	// The live head, signed, as `audit head` prints it.
	live, err := adm.AuditHead(ctx)
	head, _ := e.App.Node().AuditHead()
	if err != nil || live.Kind != cluster.RangeHead || live.LastSeq != head.Seq || live.LastHash != head.Hash || live.Verify(pub) != nil {
		t.Fatalf("audit head: %v %+v", err, live)
	}
}

// The syslog sink sends each checkpoint to a local datagram socket.
func TestAuditCheckpointSyslogSink(t *testing.T) {
	e := servertest.New(t)
	dir, err := os.MkdirTemp("", "gh-syslog")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "log")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	setAuditSink(t, e, "syslog:unixgram:"+sock)
	ctx := context.Background()
	if err := e.App.Node().AppendAudit(ctx, cluster.AuditAdminDenied, "test", "x", nil); err != nil {
		t.Fatal(err)
	}
	seq, err := server.NewAdminClient(e.Dir).Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no syslog message: %v", err)
	}
	msg := string(buf[:n])
	if !strings.HasPrefix(msg, "<") || !strings.Contains(msg, "gatehouse-audit[") {
		t.Fatalf("syslog message %q", msg)
	}
	// As an auditor reads it from the collector's file, among other lines.
	heads, err := cluster.ReadAuditHeads([]byte("Nov 29 sshd[1]: accepted {x}\n" + msg + "\n"))
	key, _ := e.App.AuditKey()
	if err != nil || len(heads) != 1 || heads[0].LastSeq != seq || heads[0].Verify(key.Public().(ed25519.PublicKey)) != nil {
		t.Fatalf("syslog head: %v %+v", err, heads)
	}
}

// A sink that cannot be used stops the node from starting, with why.
func TestAuditSinkConfigRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := server.DefaultConfig()
	cfg.AuditSink = "ftp://logs"
	if err := server.Init(dir, servertest.Password, cfg, nil); !errors.Is(err, server.ErrAuditSink) {
		t.Fatalf("init with audit_sink %q: %v", cfg.AuditSink, err)
	}
}
