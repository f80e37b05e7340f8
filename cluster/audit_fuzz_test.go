package cluster

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"testing"
	"time"
)

// An audit export is untrusted input to its verifier: reading and
// verifying any bytes must not panic, and whatever verifies cleanly must
// end on a checkpoint and a signed range that covers it.
func FuzzVerifyAudit(f *testing.F) {
	pub, key, _ := ed25519.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 64)))
	var entries []AuditEntry
	prev := genesisHash
	for i := uint64(1); i <= 3; i++ {
		e := AuditEntry{Seq: i, Time: time.Unix(int64(i), 0).UTC(), Type: AuditDeviceState, Actor: "a", Subject: "d", Detail: `{"x":1}`, Prev: prev}
		e.Hash = e.ComputeHash()
		entries = append(entries, e)
		prev = e.Hash
	}
	cp := AuditEntry{Seq: 4, Time: time.Unix(4, 0).UTC(), Type: AuditCheckpoint, Actor: "n", Prev: prev,
		Detail: `{"seq":3,"hash":"` + prev + `","key_id":"` + KeyID(pub) + `","signature":"` + b64(ed25519.Sign(key, CheckpointMessage(3, prev))) + `"}`}
	cp.Hash = cp.ComputeHash()
	entries = append(entries, cp)
	for _, format := range []string{AuditJSONL, AuditCSV} {
		var buf bytes.Buffer
		if err := WriteAudit(&buf, format, AuditHeader{}, entries); err != nil {
			f.Fatal(err)
		}
		if err := WriteAuditRange(&buf, format, SignRange(key, RangeExport, "td", time.Time{}, time.Unix(5, 0), entries)); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte("{\"format\":\"x\"}\n"))
	f.Add([]byte("seq,time\n1,2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, lines, err := ReadAudit(bytes.NewReader(b))
		if err != nil {
			return
		}
		rep := VerifyAudit(lines, pub)
		if !rep.OK() {
			return
		}
		n := len(lines)
		if n < 2 || lines[n-1].Range == nil || lines[n-2].Entry.Type != AuditCheckpoint || rep.Range == nil ||
			rep.Range.LastSeq != lines[n-2].Entry.Seq || rep.Range.FirstSeq != rep.FirstSeq {
			t.Fatalf("a chain that does not end on a checkpoint and its signed range verified: %+v", rep)
		}
	})
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
