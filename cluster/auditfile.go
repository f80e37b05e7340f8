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

// csvRangeSeq marks the CSV row that carries the signed range (as JSON in
// the detail column).
const csvRangeSeq = "range"

// rangeLine is the JSONL form of the signed range that ends an export.
type rangeLine struct {
	Range *AuditRange `json:"range"`
}

// WriteAuditRange writes the signed range that ends an export (after
// WriteAudit, in the same format).
func WriteAuditRange(w io.Writer, format string, r AuditRange) error {
	switch format {
	case AuditJSONL:
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		return enc.Encode(rangeLine{Range: &r})
	case AuditCSV:
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		cw := csv.NewWriter(w)
		if err := cw.Write([]string{csvRangeSeq, r.Time.UTC().Format(time.RFC3339Nano), "audit.range", "", "", string(b), "", ""}); err != nil {
			return err
		}
		cw.Flush()
		return cw.Error()
	default:
		return fmt.Errorf("unknown audit format %q (want %s or %s)", format, AuditJSONL, AuditCSV)
	}
}

// AuditLine is an entry, or the signed range that ends an export, with
// where it was read from (1-based line).
type AuditLine struct {
	Line  int
	Entry AuditEntry
	Range *AuditRange // set on the range line; Entry is zero then
	Err   error       // the line could not be read as an entry
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
		l := AuditLine{Line: line}
		if bytes.HasPrefix(b, []byte(`{"range":`)) {
			var rl rangeLine
			if err := strictJSON(b, &rl); err != nil || rl.Range == nil {
				l.Err = fmt.Errorf("signed range: %v", err)
			}
			l.Range = rl.Range
			out = append(out, l)
			continue
		}
		var e AuditEntry
		if err := strictJSON(b, &e); err != nil {
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
		} else if rec[0] == csvRangeSeq {
			var r AuditRange
			if err := strictJSON([]byte(rec[5]), &r); err != nil {
				l.Err = fmt.Errorf("signed range: %v", err)
			} else {
				l.Range = &r
			}
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

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// AuditProblem is one finding of VerifyAudit.
type AuditProblem struct {
	Line   int    `json:"line"`
	Seq    uint64 `json:"seq,omitempty"`
	Kind   string `json:"kind"` // unreadable | modified | removed | reordered | bad_signature | unsigned_tail | truncated_head | truncated_tail | head_mismatch | head_not_covered | empty
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
	Range       *AuditRange    `json:"range,omitempty"`         // the export's signed range, if it verifies
	HeadsSeen   int            `json:"heads_checked,omitempty"` // signed heads compared (ExpectHeads)
	Problems    []AuditProblem `json:"problems,omitempty"`
}

// OK reports whether nothing was found.
func (r *AuditReport) OK() bool { return len(r.Problems) == 0 }

// VerifyOption adds a check to VerifyAudit.
type VerifyOption func(*verifyOptions)

type verifyOptions struct{ heads []AuditRange }

// ExpectHeads compares the export with signed heads the auditor kept (from
// `audit head` or a checkpoint sink): each must verify under the key, and
// the export must reach it with the same hash. An export that ends before
// one is reported as truncated_tail, a different hash as head_mismatch.
func ExpectHeads(heads ...AuditRange) VerifyOption {
	return func(o *verifyOptions) { o.heads = append(o.heads, heads...) }
}

// VerifyAudit checks a chain read by ReadAudit: every entry's hash, each
// link to the entry before, sequence numbers, checkpoint signatures under
// key, and the signed range that must end the export. The range signs the
// first entry's seq and prev and the last entry's seq and hash, so an
// export cut at its start (truncated_head) or end (truncated_tail) is
// reported, even where the cut falls on a checkpoint.
func VerifyAudit(lines []AuditLine, key ed25519.PublicKey, opts ...VerifyOption) AuditReport {
	var o verifyOptions
	for _, opt := range opts {
		opt(&o)
	}
	var rep AuditReport
	add := func(l AuditLine, kind, format string, args ...any) {
		rep.Problems = append(rep.Problems, AuditProblem{Line: l.Line, Seq: l.Entry.Seq, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	hashes := map[uint64]string{} // seq → hash as recomputed, for checkpoints
	var prev *AuditEntry
	var firstLine, lastLine AuditLine // the first and last entries' lines
	var rng *AuditLine
	lastValidCheckpoint := false
	for i, l := range lines {
		if l.Range != nil {
			if i != len(lines)-1 {
				add(l, "reordered", "the signed range must be the last line")
			} else {
				rng = &lines[i]
			}
			continue
		}
		if l.Err != nil {
			add(l, "unreadable", "%v", l.Err)
			prev = nil
			continue
		}
		e := l.Entry
		rep.Entries++
		if rep.FirstSeq == 0 {
			rep.FirstSeq = e.Seq
			firstLine = l
		}
		rep.LastSeq = e.Seq
		lastLine = l
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
		lastValidCheckpoint = false
		if e.Type == AuditCheckpoint {
			if err := verifyCheckpoint(e, key, hashes); err != nil {
				add(l, "bad_signature", "%v", err)
			} else {
				rep.Checkpoints++
				rep.SignedUpTo = e.Seq - 1
				lastValidCheckpoint = true
			}
		}
		p := e
		prev = &p
	}
	if rep.Entries == 0 {
		rep.Problems = append(rep.Problems, AuditProblem{Kind: "empty", Detail: "the file holds no entries"})
		return rep
	}
	if !lastValidCheckpoint {
		covered := "no checkpoint verifies"
		if rep.SignedUpTo > 0 {
			covered = fmt.Sprintf("the last valid signature covers seq %d", rep.SignedUpTo)
		}
		add(lastLine, "unsigned_tail", "the export does not end on a valid checkpoint (%s), so a cut tail would go unnoticed", covered)
	}
	verifyRange(&rep, rng, firstLine, lastLine, key, add)
	// The first entry's prev is the hash of the entry before the export
	// (signed by the range), so a head there can be compared too.
	if first := firstLine.Entry; first.Seq > 1 {
		if _, ok := hashes[first.Seq-1]; !ok {
			hashes[first.Seq-1] = first.Prev
		}
	}
	var uncovered []AuditRange
	for _, h := range o.heads {
		if !checkHead(&rep, h, lastLine, key, hashes, add) {
			uncovered = append(uncovered, h)
		}
	}
	// Heads that all predate the export (one filtered with --since)
	// compare nothing: a rewritten past would pass unseen. One head the
	// export reaches covers the chain before it.
	if len(uncovered) > 0 && rep.HeadsSeen == 0 {
		for _, h := range uncovered {
			add(AuditLine{Line: firstLine.Line, Entry: AuditEntry{Seq: h.LastSeq}}, "head_not_covered",
				"the export starts at seq %d, after the head at seq %d signed at %s: nothing could be compared (export without --since)", rep.FirstSeq, h.LastSeq, h.Time.Format(time.RFC3339))
		}
	}
	return rep
}

// verifyRange compares the export's ends with its signed range.
func verifyRange(rep *AuditReport, rl *AuditLine, firstLine, lastLine AuditLine, key ed25519.PublicKey, add func(AuditLine, string, string, ...any)) {
	if rl == nil {
		add(lastLine, "truncated_tail", "no signed range ends the export, so entries cut from its end (or start) would go unnoticed")
		return
	}
	r := rl.Range
	if err := r.Verify(key); err != nil {
		add(*rl, "bad_signature", "signed range: %v", err)
		return
	}
	if r.Kind != RangeExport {
		add(*rl, "bad_signature", "signed range: kind %q, not %q", r.Kind, RangeExport)
		return
	}
	rep.Range = r
	first := firstLine.Entry
	switch {
	case first.Seq > r.FirstSeq:
		add(firstLine, "truncated_head", "the export starts at seq %d, its signed range at seq %d: entries %d..%d were cut", first.Seq, r.FirstSeq, r.FirstSeq, first.Seq-1)
	case first.Seq < r.FirstSeq:
		add(firstLine, "truncated_head", "the export starts at seq %d, before its signed range (seq %d)", first.Seq, r.FirstSeq)
	case first.Prev != r.FirstPrev:
		add(firstLine, "modified", "prev differs from the one the signed range names")
	}
	if r.Since.IsZero() && (r.FirstSeq != 1 || r.FirstPrev != genesisHash) {
		add(firstLine, "truncated_head", "the signed range is of an unfiltered export but starts at seq %d", r.FirstSeq)
	}
	last := lastLine.Entry
	switch {
	case last.Seq < r.LastSeq:
		add(lastLine, "truncated_tail", "the export ends at seq %d, its signed range at seq %d: entries %d..%d were cut", last.Seq, r.LastSeq, last.Seq+1, r.LastSeq)
	case last.Seq > r.LastSeq:
		add(lastLine, "truncated_tail", "the export ends at seq %d, after its signed range (seq %d)", last.Seq, r.LastSeq)
	case last.Hash != r.LastHash:
		add(lastLine, "modified", "hash differs from the one the signed range names")
	}
}

// checkHead compares the export with one signed head the auditor kept. It
// returns false, reporting nothing, for a valid head before the export's
// entries (which it cannot compare).
func checkHead(rep *AuditReport, h AuditRange, lastLine AuditLine, key ed25519.PublicKey, hashes map[uint64]string, add func(AuditLine, string, string, ...any)) bool {
	at := AuditLine{Line: lastLine.Line, Entry: AuditEntry{Seq: h.LastSeq}}
	if err := h.Verify(key); err != nil {
		add(at, "bad_signature", "expected head: %v", err)
		return true
	}
	if _, ok := hashes[h.LastSeq]; !ok && h.LastSeq < rep.FirstSeq {
		return false
	}
	rep.HeadsSeen++
	if rep.Range != nil && h.TrustDomain != rep.Range.TrustDomain {
		add(at, "head_mismatch", "the expected head is of trust domain %q, the export of %q", h.TrustDomain, rep.Range.TrustDomain)
		return true
	}
	switch got, ok := hashes[h.LastSeq]; {
	case h.LastSeq > rep.LastSeq:
		add(at, "truncated_tail", "the export ends at seq %d, before the head at seq %d signed at %s", rep.LastSeq, h.LastSeq, h.Time.Format(time.RFC3339))
	case ok && got != h.LastHash:
		add(at, "head_mismatch", "the export's entry differs from the head signed at %s (the chain was rewritten)", h.Time.Format(time.RFC3339))
	}
	return true
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
