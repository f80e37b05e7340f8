package attest

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	tpm2new "github.com/google/go-tpm/tpm2"
)

// LogFormatError is a log refused while reading it: truncated, or
// inconsistent with itself (a digest of an algorithm the Spec ID event does
// not declare, a declared size that is not the algorithm's, a bank listed
// twice, an event extending a PCR beyond 23, a StartupLocality or H-CRTM
// event out of place). It names the event and the byte offset where
// reading stopped (for an event out of place, where the event starts). It
// wraps ErrEventLogInvalid.
type LogFormatError struct {
	Event  int // event number, counted as Events count them (the Spec ID event is 0)
	Offset int // byte offset into the log of the field that could not be read
	Reason string
}

func (e *LogFormatError) Error() string {
	return fmt.Sprintf("%v: event %d at byte %d: %s", ErrEventLogInvalid, e.Event, e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrEventLogInvalid) hold.
func (e *LogFormatError) Unwrap() error { return ErrEventLogInvalid }

// errTruncated is a sentinel for reads that run past the end.
var errTruncated = errors.New("truncated")

// BankInfo is one digest bank a log declares (the Spec ID event's
// algorithms; SHA-1 alone for a legacy log).
type BankInfo struct {
	Name       string `json:"name"` // "sha256", or "sm3_256", "alg_0x0027" for ones not replayed here
	AlgID      uint16 `json:"alg_id"`
	DigestSize int    `json:"digest_size"`
	Replayable bool   `json:"replayable"`
	// Note says why a bank is not replayed: its algorithm is not
	// implemented here (its digests were skipped by their declared size),
	// or some measured event carries no digest of it.
	Note string `json:"note,omitempty"`
}

// event is one parsed event; its data is raw[data:data+size].
type event struct {
	pcr    int
	typ    uint32
	offset uint32 // byte offset of the event's header
	data   uint32
	size   uint32
}

// specAlg is one TCG_EfiSpecIdEventAlgorithmSize.
type specAlg struct {
	id   tpm2new.TPMAlgID
	size int
	bank int // index into the log's known banks, or -1 when not replayed here
}

const (
	specIDSignature = "Spec ID Event03\x00"
	// TCG_EfiSpecIDEvent before its algorithm array: signature[16],
	// platformClass u32, specVersionMinor, specVersionMajor, specErrata,
	// uintnSize (u8 each), numberOfAlgorithms u32.
	specIDHeaderSize = 16 + 4 + 4 + 4
	legacyHeaderSize = 4 + 4 + 20 + 4 // TCG_PCClientPCREvent before its data
	maxAlgorithms    = 16
)

// algNames names TPM_ALG_IDs of hashes this parser does not replay.
var algNames = map[tpm2new.TPMAlgID]string{
	tpm2new.TPMAlgSM3256: "sm3_256", tpm2new.TPMAlgSHA3256: "sha3_256", 0x0028: "sha3_384", 0x0029: "sha3_512",
}

func algName(id tpm2new.TPMAlgID) string {
	if h, err := tpm2new.TPMIAlgHash(id).Hash(); err == nil {
		return BankName(h)
	}
	if n, ok := algNames[id]; ok {
		return n
	}
	return fmt.Sprintf("alg_0x%04x", uint16(id))
}

// reader reads little-endian fields and remembers where it is.
type reader struct {
	b   []byte
	off int
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) u32() (uint32, bool) {
	if r.left() < 4 {
		return 0, false
	}
	v := binary.LittleEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v, true
}

func (r *reader) u16() (uint16, bool) {
	if r.left() < 2 {
		return 0, false
	}
	v := binary.LittleEndian.Uint16(r.b[r.off:])
	r.off += 2
	return v, true
}

// skip steps over the next n bytes and returns where they start; n is
// checked against what remains first.
func (r *reader) skip(n uint64) (int, bool) {
	if n > uint64(r.left()) {
		return 0, false
	}
	at := r.off
	r.off += int(n)
	return at, true
}

// maxLogSize bounds a log so every offset fits the parsed log's uint32s.
const maxLogSize = 1 << 31

// parseWire reads a TCG event log in one pass: the legacy SHA-1 format
// (TCG_PCClientPCREvent throughout), or the crypto-agile one (a
// TCG_PCClientPCREvent carrying a "Spec ID Event03" TCG_EfiSpecIDEvent,
// then TCG_PCR_EVENT2 events whose TPML_DIGEST_VALUES hold one TPMT_HA per
// algorithm), per the TCG PC Client Platform Firmware Profile. Digests of
// algorithms not replayed here are skipped by the size the Spec ID event
// declares. Every length is checked against the bytes that remain before
// it is used; nothing is allocated by a length read from the log. b is
// retained.
func (l *EventLog) parseWire(b []byte) error {
	fail := func(n, off int, format string, a ...any) error {
		return &LogFormatError{Event: n, Offset: off, Reason: fmt.Sprintf(format, a...)}
	}
	if len(b) > maxLogSize {
		return fail(0, maxLogSize, "the log is larger than %d bytes", maxLogSize)
	}
	l.raw = b
	r := &reader{b: b}
	// The first event is always in the legacy format.
	first, sha1d, err := readLegacy(r)
	if err != nil {
		return fail(0, r.off, "the first event's %s", err)
	}
	var algs []specAlg
	number := 0
	// Events are a few hundred bytes: start with room for most logs.
	l.evs = make([]event, 0, min(len(b)/256+8, 512))
	if first.typ == evNoAction && bytes.HasPrefix(l.data(first), []byte(specIDSignature)) {
		algs, err = l.parseSpecID(l.data(first))
		if err != nil {
			return fail(0, int(first.data), "Spec ID event: %s", err)
		}
		number, l.agile = 1, true // the Spec ID event is event 0 and not an event of the log
	} else {
		l.BankInfo = []BankInfo{{Name: "sha1", AlgID: uint16(tpm2new.TPMAlgSHA1), DigestSize: 20, Replayable: true}}
		l.Banks = []string{"sha1"}
		l.hashes = []crypto.Hash{crypto.SHA1}
		l.evs = append(l.evs, first)
		l.dig = append(l.dig, sha1d)
	}
	nb := len(l.Banks)
	l.dig = slices.Grow(l.dig, cap(l.evs)*nb)
	for r.left() > 0 {
		start := r.off
		if algs == nil {
			e, d, err := readLegacy(r)
			if err != nil {
				return fail(number+len(l.evs), r.off, "%s", err)
			}
			l.evs = append(l.evs, e)
			l.dig = append(l.dig, d)
			continue
		}
		n := number + len(l.evs)
		pcr, ok1 := r.u32()
		typ, ok2 := r.u32()
		count, ok3 := r.u32()
		if !ok1 || !ok2 || !ok3 {
			return fail(n, r.off, "header truncated")
		}
		// One digest per declared algorithm at most: more would be two of
		// one bank, and which the TPM extended would be unknown.
		if int(count) > len(algs) {
			return fail(n, r.off-4, "%d digests, more than the %d algorithms the Spec ID event declares", count, len(algs))
		}
		base := len(l.dig)
		for range nb {
			l.dig = append(l.dig, 0)
		}
		digs := l.dig[base:]
		for range count {
			at := r.off
			id, _ := r.u16()
			a := findAlg(algs, tpm2new.TPMAlgID(id))
			if a == nil {
				return fail(n, at, "digest of algorithm 0x%04x, which the Spec ID event does not declare", id)
			}
			d, ok := r.skip(uint64(a.size))
			if !ok {
				return fail(n, r.off, "%s digest truncated (%d bytes declared, %d left)", algName(a.id), a.size, r.left())
			}
			if a.bank < 0 {
				continue // not replayed here: skipped by its declared size
			}
			if digs[a.bank] != 0 {
				return fail(n, at, "two %s digests", l.Banks[a.bank])
			}
			digs[a.bank] = uint32(d)
		}
		size, ok := r.u32()
		if !ok {
			return fail(n, r.off, "event size truncated")
		}
		data, ok := r.skip(uint64(size))
		if !ok {
			return fail(n, r.off, "event data of %d bytes, only %d left", size, r.left())
		}
		l.evs = append(l.evs, event{pcr: int(pcr), typ: typ, offset: uint32(start), data: uint32(data), size: size})
	}
	return nil
}

func findAlg(algs []specAlg, id tpm2new.TPMAlgID) *specAlg {
	for i := range algs {
		if algs[i].id == id {
			return &algs[i]
		}
	}
	return nil
}

// readLegacy reads one TCG_PCClientPCREvent: PCR, type, SHA-1 digest, size,
// data. It returns the digest's offset.
func readLegacy(r *reader) (event, uint32, error) {
	start := r.off
	if r.left() < legacyHeaderSize {
		return event{}, 0, fmt.Errorf("header truncated (%d bytes left)", r.left())
	}
	pcr, _ := r.u32()
	typ, _ := r.u32()
	d, _ := r.skip(20)
	size, _ := r.u32()
	data, ok := r.skip(uint64(size))
	if !ok {
		return event{}, 0, fmt.Errorf("data of %d bytes, only %d left", size, r.left())
	}
	return event{pcr: int(pcr), typ: typ, offset: uint32(start), data: uint32(data), size: size}, uint32(d), nil
}

// parseSpecID reads TCG_EfiSpecIDEvent and sets the log's banks.
func (l *EventLog) parseSpecID(b []byte) ([]specAlg, error) {
	r := &reader{b: b}
	if r.left() < specIDHeaderSize {
		return nil, errTruncated
	}
	r.off = 16 + 4
	minor, major := b[r.off], b[r.off+1]
	r.off += 4
	if major != 2 || minor != 0 {
		return nil, fmt.Errorf("version %d.%d, not 2.0", major, minor)
	}
	n, _ := r.u32()
	// A TPM has a few PCR banks; the bound keeps the per-digest lookups
	// below cheap whatever the log says.
	if n == 0 || n > maxAlgorithms {
		return nil, fmt.Errorf("%d algorithms (1 to %d expected)", n, maxAlgorithms)
	}
	if uint64(n)*4 > uint64(r.left()) {
		return nil, fmt.Errorf("%d algorithms do not fit in %d bytes", n, r.left())
	}
	algs := make([]specAlg, 0, n)
	for range n {
		id, _ := r.u16()
		size, _ := r.u16()
		a := specAlg{id: tpm2new.TPMAlgID(id), size: int(size), bank: -1}
		if size == 0 {
			return nil, fmt.Errorf("declares %s with 0-byte digests", algName(a.id))
		}
		if findAlg(algs, a.id) != nil {
			return nil, fmt.Errorf("lists %s twice", algName(a.id))
		}
		info := BankInfo{Name: algName(a.id), AlgID: id, DigestSize: a.size}
		if h, err := tpm2new.TPMIAlgHash(a.id).Hash(); err == nil {
			// A known algorithm declared with another size would be read,
			// replayed and compared as something else.
			if h.Size() != a.size {
				return nil, fmt.Errorf("declares %d-byte %s digests", a.size, info.Name)
			}
			a.bank = len(l.Banks)
			info.Replayable = true
			l.Banks = append(l.Banks, info.Name)
			l.hashes = append(l.hashes, h)
		} else {
			info.Note = fmt.Sprintf("%s is not implemented here: its digests were skipped by their declared size (%d bytes) and the bank is not replayed", info.Name, a.size)
		}
		l.BankInfo = append(l.BankInfo, info)
		algs = append(algs, a)
	}
	if r.left() < 1 {
		return nil, errTruncated
	}
	vlen := int(b[r.off])
	r.off++
	if vlen != r.left() {
		return nil, fmt.Errorf("vendor info of %d bytes, %d present", vlen, r.left())
	}
	return algs, nil
}
