package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// lockedBuffer collects log output written from Raft's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// records decodes the JSON lines written so far.
func (w *lockedBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(w.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func jsonLogger(w *lockedBuffer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

// hclog's levels reach slog as slog levels, with the arguments as
// attributes, and slog's level filters them.
func TestHCLogBridgeLevelsAndAttrs(t *testing.T) {
	var buf lockedBuffer
	h := newHCLog(jsonLogger(&buf, slog.LevelInfo))
	h.Debug("dropped at info", "k", 1)
	h.Trace("dropped too")
	h.Error("failed to appendEntries to", "peer", "n2", "error", errors.New("connection refused"))
	h.Named("snapshot").With("path", "/x").Warn("slow", "took", hclog.Format{"%dms", 250})
	h.Info("odd", "lone")
	h.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}).Print("[ERR] from a std logger")

	recs := buf.records(t)
	if len(recs) != 4 {
		t.Fatalf("got %d records, want 4 (debug and trace filtered): %v", len(recs), recs)
	}
	want := []map[string]any{
		{"level": "ERROR", "msg": "failed to appendEntries to", "logger": "raft", "peer": "n2", "error": "connection refused"},
		{"level": "WARN", "msg": "slow", "logger": "raft.snapshot", "path": "/x", "took": "250ms"},
		{"level": "INFO", "msg": "odd", "logger": "raft", hclog.MissingKey: "lone"},
		{"level": "ERROR", "msg": "from a std logger", "logger": "raft"},
	}
	for i, w := range want {
		for k, v := range w {
			if recs[i][k] != v {
				t.Errorf("record %d: %s = %v, want %v (%v)", i, k, recs[i][k], v, recs[i])
			}
		}
	}
	if h.IsDebug() || h.IsTrace() || !h.IsInfo() || !h.IsError() || h.GetLevel() != hclog.Info {
		t.Errorf("level queries at info: debug %v trace %v info %v error %v level %v", h.IsDebug(), h.IsTrace(), h.IsInfo(), h.IsError(), h.GetLevel())
	}
	if d := newHCLog(jsonLogger(&buf, slog.LevelDebug)); !d.IsDebug() || d.IsTrace() || d.GetLevel() != hclog.Debug {
		t.Errorf("level queries at debug: %v %v %v", d.IsDebug(), d.IsTrace(), d.GetLevel())
	}
}

// A real node's Raft messages arrive once, at their own level, with their
// own attributes: no second timestamp and no "[INFO]  raft:" inside the
// message (what the old writer-based bridge produced, all at WARN).
func TestRaftLogsThroughSlog(t *testing.T) {
	var buf lockedBuffer
	openConfigured(t, Config{NodeID: "n1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", Bootstrap: true, Logger: jsonLogger(&buf, slog.LevelInfo)})

	stamped := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d|\[(TRACE|DEBUG|INFO|WARN|ERROR)\]`)
	leaderLine := false
	for _, r := range buf.records(t) {
		msg, _ := r["msg"].(string)
		if stamped.MatchString(msg) || strings.HasPrefix(msg, "raft:") {
			t.Errorf("Raft message re-wrapped: %q", msg)
		}
		if r["level"] == "DEBUG" {
			t.Errorf("debug message at info level: %v", r)
		}
		if leader, _ := r["leader"].(string); msg == "entering leader state" && r["level"] == "INFO" && strings.Contains(leader, "[Leader]") && r["logger"] == "raft" {
			leaderLine = true
		}
	}
	if !leaderLine {
		t.Fatalf("no INFO \"entering leader state\" with its leader attribute in:\n%s", buf.b.String())
	}
}
