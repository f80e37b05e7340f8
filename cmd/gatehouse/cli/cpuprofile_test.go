package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// serve --cpu-profile: the profile is written (gzip-compressed pprof
// protobuf) once profiling stops, and an unwritable path is refused
// before the node starts.
func TestStartCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.cpu.pprof")
	stop, err := startCPUProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
		x++
	}
	stop()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 20 || !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Fatalf("profile: %d bytes, %v (busy loop %d)", len(b), err, x)
	}
	if _, err := startCPUProfile(filepath.Join(t.TempDir(), "missing", "x.pprof")); err == nil {
		t.Fatal("a profile in a missing directory was accepted")
	}
}
