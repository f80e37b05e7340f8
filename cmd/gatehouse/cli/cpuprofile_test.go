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

// serve --heap-profile: a profile is written at start and rewritten when
// the in-use heap grows past its peak; an unwritable path is refused
// before the node starts.
func TestStartHeapProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.heap.pprof")
	stop, err := startHeapProfile(path, 5*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	var held [][]byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		held = append(held, make([]byte, 4<<20)) // a growing heap: a new peak
		time.Sleep(10 * time.Millisecond)
		if st, err := os.Stat(path); err == nil && st.ModTime().After(first.ModTime()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no profile rewritten at a new peak after %d MiB held", 4*len(held))
		}
	}
	stop()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 20 || !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Fatalf("profile: %d bytes, %v", len(b), err)
	}
	if _, err := startHeapProfile(filepath.Join(t.TempDir(), "missing", "x.pprof"), time.Second); err == nil {
		t.Fatal("a profile in a missing directory was accepted")
	}
}
