package server

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"testing"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// gzipBytes keeps evidence as gzip every reader inflates, but in stored
// blocks, not deflated on the request path (deflating this 38 KB log cost
// 0.5 ms to save a third of it); a blob that fits maxStoredBlob only
// deflated is deflated, so nothing kept before is dropped.
func TestGzipBytesStoredUnlessTooBig(t *testing.T) {
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	inflate := func(gz []byte) []byte {
		t.Helper()
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	gz := gzipBytes(log)
	if !bytes.Equal(inflate(gz), log) {
		t.Fatal("the event log does not inflate back")
	}
	if len(gz) < len(log) || !bytes.Contains(gz, log[:1024]) {
		t.Fatalf("the event log (%d bytes) was deflated to %d bytes on the request path", len(log), len(gz))
	}
	// Stored, this would be over maxStoredBlob; deflated it fits.
	big := bytes.Repeat(log, maxStoredBlob/len(log)+2)
	gz = gzipBytes(big)
	if len(gz) > maxStoredBlob || bounded(gz) == nil || !bytes.Equal(inflate(gz), big) {
		t.Fatalf("a %d-byte blob that fits deflated was kept as %d bytes (limit %d)", len(big), len(gz), maxStoredBlob)
	}
}

// The request path's cost of keeping the 105-event log: deflated at the
// fastest level (before) against stored blocks (gzipBytes).
func BenchmarkGzipEvidence(b *testing.B) {
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		gz   func([]byte) []byte
	}{{"deflate-BestSpeed", func(p []byte) []byte { return gzipWith(&gzipWriters, p) }}, {"stored", gzipBytes}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var n int
			for b.Loop() {
				n = len(tc.gz(log))
			}
			b.ReportMetric(float64(n), "stored-bytes")
		})
	}
}
