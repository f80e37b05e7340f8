package cluster

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Audit export formats.
const (
	AuditJSONL = "jsonl"
	AuditCSV   = "csv"
)

// AuditFormatVersion is the "format" of a JSONL export header.
const AuditFormatVersion = "gatehouse-audit/v1"

// AuditHeader is the first line of a JSONL export. The certificate names
// the checkpoint key; a verifier anchors it in the appliance root it trusts.
type AuditHeader struct {
	Format           string    `json:"format"`
	ExportedAt       time.Time `json:"exported_at"`
	Since            time.Time `json:"since,omitempty"`
	KeyCertificate   string    `json:"key_certificate"` // PEM, leaf then intermediates
	CheckpointKeyIDs []string  `json:"checkpoint_key_ids,omitempty"`
}

var csvHeader = []string{"seq", "time", "type", "actor", "subject", "detail", "prev", "hash"}

// WriteAudit writes entries in format; header is used by JSONL only (CSV
// verifiers take the key certificate separately).
func WriteAudit(w io.Writer, format string, h AuditHeader, entries []AuditEntry) error {
	switch format {
	case AuditJSONL:
		h.Format = AuditFormatVersion
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(h); err != nil {
			return err
		}
		for i := range entries {
			if err := enc.Encode(&entries[i]); err != nil {
				return err
			}
		}
		return nil
	case AuditCSV:
		cw := csv.NewWriter(w)
		if err := cw.Write(csvHeader); err != nil {
			return err
		}
		for _, e := range entries {
			if err := cw.Write([]string{strconv.FormatUint(e.Seq, 10), e.Time.UTC().Format(time.RFC3339Nano), e.Type, e.Actor, e.Subject, e.Detail, e.Prev, e.Hash}); err != nil {
				return err
			}
		}
		cw.Flush()
		return cw.Error()
	default:
		return fmt.Errorf("unknown audit format %q (want %s or %s)", format, AuditJSONL, AuditCSV)
	}
}

// AuditLine is an entry with where it was read from (1-based line).
type AuditLine struct {
	Line  int
	Entry AuditEntry
	Err   error // the line could not be read as an entry
}

// ReadAudit reads an export, detecting the format from its first line. The
// header is zero for CSV.
func ReadAudit(r io.Reader) (AuditHeader, []AuditLine, error) {
	br := bufio.NewReader(r)
	first, err := br.Peek(1)
	if err != nil {
		return AuditHeader{}, nil, fmt.Errorf("empty audit file")
	}
	if first[0] == '{' {
		return readAuditJSONL(br)
	}
	return readAuditCSV(br)
}

func readAuditJSONL(r io.Reader) (AuditHeader, []AuditLine, error) {
	var h AuditHeader
	var out []AuditLine
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if line == 1 && bytes.Contains(b, []byte(`"format"`)) {
			if err := json.Unmarshal(b, &h); err != nil || h.Format != AuditFormatVersion {
				return h, nil, fmt.Errorf("line 1: not a %s header", AuditFormatVersion)
			}
			continue
		}
		var e AuditEntry
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		l := AuditLine{Line: line}
		if err := dec.Decode(&e); err != nil {
			l.Err = err
		}
		l.Entry = e
		out = append(out, l)
	}
	return h, out, sc.Err()
}

func readAuditCSV(r io.Reader) (AuditHeader, []AuditLine, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	var out []AuditLine
	for first := true; ; first = false {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return AuditHeader{}, out, nil
		}
		line := csvLine(cr, err)
		if first {
			if err != nil || strings.Join(rec, ",") != strings.Join(csvHeader, ",") {
				return AuditHeader{}, nil, fmt.Errorf("line 1: want CSV header %q", strings.Join(csvHeader, ","))
			}
			continue
		}
		l := AuditLine{Line: line}
		if err != nil {
			l.Err = err
		} else if len(rec) != len(csvHeader) {
			l.Err = fmt.Errorf("%d fields, want %d", len(rec), len(csvHeader))
		} else {
			e := AuditEntry{Type: rec[2], Actor: rec[3], Subject: rec[4], Detail: rec[5], Prev: rec[6], Hash: rec[7]}
			var perr error
			if e.Seq, perr = strconv.ParseUint(rec[0], 10, 64); perr == nil {
				e.Time, perr = time.Parse(time.RFC3339Nano, rec[1])
			}
			l.Entry, l.Err = e, perr
		}
		out = append(out, l)
	}
}

// AuditProblem is one finding of VerifyAudit.
type AuditProblem struct {
	Line   int    `json:"line"`
	Seq    uint64 `json:"seq,omitempty"`
	Kind   string `json:"kind"` // unreadable | modified | removed | reordered | bad_signature | unsigned_tail | empty
	Detail string `json:"detail"`
}

func (p AuditProblem) String() string {
	if p.Seq > 0 {
		return fmt.Sprintf("line %d (seq %d): %s: %s", p.Line, p.Seq, p.Kind, p.Detail)
	}
	return fmt.Sprintf("line %d: %s: %s", p.Line, p.Kind, p.Detail)
}

// AuditReport is the outcome of VerifyAudit.
type AuditReport struct {
	Entries     int            `json:"entries"`
	FirstSeq    uint64         `json:"first_seq"`
	LastSeq     uint64         `json:"last_seq"`
	Checkpoints int            `json:"checkpoints"` // with a valid signature
	SignedUpTo  uint64         `json:"signed_up_to"`
	Problems    []AuditProblem `json:"problems,omitempty"`
}

// OK reports whether nothing was found.
func (r *AuditReport) OK() bool { return len(r.Problems) == 0 }

// VerifyAudit checks a chain read by ReadAudit: every entry's hash, each
// link to the entry before, sequence numbers, and checkpoint signatures
// under key. The chain may start anywhere (an export --since): its first
// Prev is taken as given. A chain that does not end on a valid checkpoint
// is reported, since its tail could have been cut.
func VerifyAudit(lines []AuditLine, key ed25519.PublicKey) AuditReport {
	var rep AuditReport
	add := func(l AuditLine, kind, format string, args ...any) {
		rep.Problems = append(rep.Problems, AuditProblem{Line: l.Line, Seq: l.Entry.Seq, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	hashes := map[uint64]string{} // seq → hash as recomputed, for checkpoints
	var prev *AuditEntry
	lastValidCheckpoint := -1
	for i, l := range lines {
		if l.Err != nil {
			add(l, "unreadable", "%v", l.Err)
			prev = nil
			continue
		}
		e := l.Entry
		rep.Entries++
		if rep.FirstSeq == 0 {
			rep.FirstSeq = e.Seq
		}
		rep.LastSeq = e.Seq
		computed := e.ComputeHash()
		if computed != e.Hash {
			add(l, "modified", "content does not match its hash")
		}
		hashes[e.Seq] = computed
		if prev != nil {
			switch {
			case e.Seq <= prev.Seq:
				add(l, "reordered", "seq %d follows seq %d", e.Seq, prev.Seq)
			case e.Seq > prev.Seq+1:
				add(l, "removed", "entries %d..%d are missing before this line", prev.Seq+1, e.Seq-1)
			case e.Prev != prev.Hash:
				add(l, "modified", "prev does not match the hash of seq %d (that entry or this link was changed)", prev.Seq)
			}
		}
		if e.Type == AuditCheckpoint {
			if err := verifyCheckpoint(e, key, hashes); err != nil {
				add(l, "bad_signature", "%v", err)
			} else {
				rep.Checkpoints++
				rep.SignedUpTo = e.Seq - 1
				lastValidCheckpoint = i
			}
		}
		p := e
		prev = &p
	}
	if len(lines) == 0 {
		rep.Problems = append(rep.Problems, AuditProblem{Kind: "empty", Detail: "the file holds no entries"})
	}
	if n := len(lines); n > 0 && lastValidCheckpoint != n-1 {
		l := lines[n-1]
		covered := "no checkpoint verifies"
		if rep.SignedUpTo > 0 {
			covered = fmt.Sprintf("the last valid signature covers seq %d", rep.SignedUpTo)
		}
		add(l, "unsigned_tail", "the export does not end on a valid checkpoint (%s), so a cut tail would go unnoticed", covered)
	}
	return rep
}

func verifyCheckpoint(e AuditEntry, key ed25519.PublicKey, hashes map[uint64]string) error {
	var cp CheckpointDetail
	if err := json.Unmarshal([]byte(e.Detail), &cp); err != nil {
		return fmt.Errorf("checkpoint detail: %v", err)
	}
	if key == nil {
		return errors.New("no checkpoint key to verify against")
	}
	if cp.KeyID != KeyID(key) {
		return fmt.Errorf("signed by key %s, not the given key %s", cp.KeyID, KeyID(key))
	}
	sig, err := base64.StdEncoding.DecodeString(cp.Signature)
	if err != nil || !ed25519.Verify(key, CheckpointMessage(cp.Seq, cp.Hash), sig) {
		return errors.New("signature does not verify")
	}
	if cp.Seq != e.Seq-1 {
		return fmt.Errorf("signs seq %d, not the entry before it", cp.Seq)
	}
	if h, ok := hashes[cp.Seq]; ok && h != cp.Hash {
		return fmt.Errorf("signed hash of seq %d differs from that entry's content", cp.Seq)
	}
	return nil
}

// csvLine is the line a record (or its read error) starts on. FieldPos
// panics for a record that failed to read, so the error's line is used.
func csvLine(cr *csv.Reader, err error) int {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.StartLine
	}
	if err != nil {
		return 0
	}
	line, _ := cr.FieldPos(0)
	return line
}
