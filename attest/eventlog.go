package attest

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"

	goattest "github.com/google/go-attestation/attest"
)

// TCG PC Client event types used here.
const (
	evNoAction             = 0x00000003
	evSeparator            = 0x00000004
	evAction               = 0x00000005
	evEventTag             = 0x00000006
	evSCRTMContents        = 0x00000007
	evSCRTMVersion         = 0x00000008
	evCompactHash          = 0x0000000c
	evEFIVariableDriver    = 0x80000001
	evEFIBootApplication   = 0x80000003
	evEFIBootDriver        = 0x80000004
	evEFIAction            = 0x80000007
	evEFIHCRTMEvent        = 0x80000010
	evEFIVariableAuthority = 0x800000e0
	maxPCR                 = 23
)

// EventLog is a parsed TCG event log with its own replay and the facts it
// states. Nothing in it is trusted until Verify matches the replay against
// PCR values from a verified quote. An EventLog is not safe for concurrent
// use (Replay and Verify update it).
type EventLog struct {
	// Banks are the digest banks present that this package implements,
	// e.g. "sha1", "sha256", in the Spec ID event's order. Replay returns
	// nil for one of them that cannot be replayed (see BankInfo).
	Banks []string
	// BankInfo is every bank the log declares, those not replayed here
	// (an algorithm not implemented, or events without its digest) with a
	// note saying why.
	BankInfo []BankInfo
	// Events are in log order. Number counts from 0 at the first event in
	// the file (the Spec ID event, when there is one), as tpm2_eventlog does.
	Events []LogEvent
	Facts  Facts
	// Problems are facts the log states badly (malformed SecureBoot or
	// S-CRTM events): they do not stop replay, and policy decides.
	Problems []string

	raw    []byte        // the log's own copy of its bytes
	hashes []crypto.Hash // per entry of Banks
	// Events and digests are offsets into raw, so the parsed log holds no
	// pointers but raw (nothing for the garbage collector to trace).
	evs      []event  // parallel to Events
	dig      []uint32 // offset of event i's digest in Banks[j] at i*len(Banks)+j; 0: none
	pcr0Init int      // PCR 0's initial locality; -1 when no event sets it
	agile    bool     // a crypto-agile log (Spec ID event first)
	replayed map[string]map[int][]byte
	sbBank   string // the bank the parsed Secure Boot state was read from
	sb       secureBootResult
}

// bank returns a bank's index in Banks, or -1.
func (l *EventLog) bank(name string) int {
	for i, b := range l.Banks {
		if b == name {
			return i
		}
	}
	return -1
}

// digest returns event i's digest in bank j, nil when it has none.
func (l *EventLog) digest(i, j int) []byte {
	o := l.dig[i*len(l.Banks)+j]
	if o == 0 {
		return nil
	}
	return l.raw[o : int(o)+l.hashes[j].Size() : int(o)+l.hashes[j].Size()]
}

// data returns an event's data.
func (l *EventLog) data(e event) []byte { return l.raw[e.data : e.data+e.size : e.data+e.size] }

// replayable reports whether bank j can be replayed.
func (l *EventLog) replayable(j int) bool {
	for _, bi := range l.BankInfo {
		if bi.Name == l.Banks[j] {
			return bi.Replayable
		}
	}
	return false
}

// Replay returns one bank's PCR values computed from the log alone,
// starting PCR0 at the locality a StartupLocality or H-CRTM event sets; nil
// for a bank the log does not carry or cannot replay (BankInfo says why).
// Banks are replayed on first use.
func (l *EventLog) Replay(bank string) map[int][]byte {
	if pcrs, ok := l.replayed[bank]; ok {
		return pcrs
	}
	j := l.bank(bank)
	if j < 0 || !l.replayable(j) {
		return nil
	}
	pcrs := l.replay(j)
	l.replayed[bank] = pcrs
	return pcrs
}

// LogEvent is one event.
type LogEvent struct {
	Number      int          `json:"number"`
	PCR         int          `json:"pcr"`
	Type        string       `json:"type"`
	TypeCode    uint32       `json:"type_code"`
	Digests     EventDigests `json:"digests"` // JSON: bank → hex
	Description string       `json:"description,omitempty"`
}

// EventDigests are an event's digests, one per bank it carries, in the
// log's bank order. In JSON they are an object of bank → lower-case hex.
type EventDigests []BankDigest

// BankDigest is one bank's digest of an event.
type BankDigest struct {
	Bank   string
	Digest []byte
}

// Get returns bank's digest in lower-case hex, "" when there is none.
func (d EventDigests) Get(bank string) string {
	for _, bd := range d {
		if bd.Bank == bank {
			return hex.EncodeToString(bd.Digest)
		}
	}
	return ""
}

// Map returns the digests as bank → hex.
func (d EventDigests) Map() map[string]string {
	m := make(map[string]string, len(d))
	for _, bd := range d {
		m[bd.Bank] = hex.EncodeToString(bd.Digest)
	}
	return m
}

// MarshalJSON writes {"sha1": "<hex>", …}, keys sorted.
func (d EventDigests) MarshalJSON() ([]byte, error) { return json.Marshal(d.Map()) }

// UnmarshalJSON reads what MarshalJSON writes; a value that is not hex is
// an error.
func (d *EventDigests) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*d = (*d)[:0]
	for _, bank := range sortedKeys(m) {
		v, err := hex.DecodeString(m[bank])
		if err != nil {
			return fmt.Errorf("digest %s: %w", bank, err)
		}
		*d = append(*d, BankDigest{Bank: bank, Digest: v})
	}
	return nil
}

// Facts are what the log says about the boot.
type Facts struct {
	StartupLocality int          `json:"startup_locality"`
	SCRTMVersion    string       `json:"scrtm_version,omitempty"`
	SecureBoot      *bool        `json:"secure_boot,omitempty"`
	PK              []string     `json:"pk,omitempty"`  // certificate subjects, or "sha256:<hex>" for hashes
	KEK             []string     `json:"kek,omitempty"` //
	DB              []string     `json:"db,omitempty"`
	DBXEntries      int          `json:"dbx_entries"`
	Authorities     []string     `json:"authorities,omitempty"` // db entries that authorized a boot binary
	BootApps        []DigestFact `json:"boot_applications,omitempty"`
	Drivers         []DigestFact `json:"boot_drivers,omitempty"` // option ROMs and other EFI drivers (PCR2)
	Separators      map[int]bool `json:"separators,omitempty"`   // PCR → separator seen (true: normal, false: error value)
	Actions         []string     `json:"actions,omitempty"`
}

// DigestFact is a measured binary: where it came from and its digests.
type DigestFact struct {
	Event   int               `json:"event"`
	PCR     int               `json:"pcr"`
	Path    string            `json:"path,omitempty"`
	Digests map[string]string `json:"digests"`
}

var bankHashes = map[string]crypto.Hash{"sha1": crypto.SHA1, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}

// BankHash returns the hash of a PCR bank named as in policies and the wire
// protocol ("sha1", "sha256", "sha384", "sha512").
func BankHash(bank string) (crypto.Hash, bool) {
	h, ok := bankHashes[bank]
	return h, ok
}

// ParseEventLog parses a TCG event log (legacy SHA-1 or crypto agile) in
// one pass with this package's own parser. Digests of algorithms it does
// not implement (SM3_256, say) are skipped by the sizes the Spec ID event
// declares; the other banks are still replayed, and BankInfo says which
// are not. A log that is empty, truncated or inconsistent with itself is
// refused with a *LogFormatError naming the event and byte offset; one that
// names a PCR beyond 23 or sets PCR 0's initial value out of place with an
// error naming the event. Every error wraps ErrEventLogInvalid. The input
// is copied; the log does not alias it.
func ParseEventLog(b []byte) (*EventLog, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: the log is empty", ErrEventLogInvalid)
	}
	l := &EventLog{replayed: map[string]map[int][]byte{}, pcr0Init: -1}
	if err := l.parseWire(bytes.Clone(b)); err != nil {
		return nil, err
	}
	return l.finish()
}

// finish numbers, checks and describes the parsed events and reads the
// facts they state.
func (l *EventLog) finish() (*EventLog, error) {
	if len(l.Banks) == 0 {
		return nil, fmt.Errorf("%w: no supported digest bank", ErrEventLogInvalid)
	}
	nb := len(l.Banks)
	offset := 0
	if l.agile {
		offset = 1 // the Spec ID event is event 0
	}
	// Every event's digests are copied into one array (the log's bytes
	// stay its own) and each event holds a slice of it: two allocations for
	// all events, not a map and strings per event.
	count, size := 0, 0
	for k, o := range l.dig {
		if o != 0 {
			count++
			size += l.hashes[k%nb].Size()
		}
	}
	// Exact capacities: appending never moves what events already hold.
	digestBytes := make([]byte, 0, size)
	all := make([]BankDigest, 0, count)
	l.Events = make([]LogEvent, 0, len(l.evs))
	pcr0, locality, hcrtm := false, false, false
	for i, e := range l.evs {
		n := i + offset
		// StartupLocality and H-CRTM set PCR 0's initial value, so they
		// must come before any other PCR 0 measurement, once: a later one
		// would let events before it replay to nothing.
		switch {
		case l.isStartupLocality(e):
			if pcr0 || locality {
				return nil, refuse(n, e, "a StartupLocality after PCR 0 was measured or set")
			}
			loc := int(l.data(e)[16])
			if loc != 0 && loc != 3 && loc != 4 {
				return nil, refuse(n, e, "StartupLocality %d; the PC Client PFP defines 0, 3 and 4", loc)
			}
			if hcrtm && loc != 4 {
				return nil, refuse(n, e, "StartupLocality %d after an H-CRTM event, which starts at locality 4", loc)
			}
			locality, l.pcr0Init = true, loc
		case e.pcr == 0 && e.typ == evEFIHCRTMEvent:
			// The H-CRTM digest is PCR 0's first extend, from locality 4.
			if pcr0 || (locality && l.pcr0Init != 4) {
				return nil, refuse(n, e, "an H-CRTM event after PCR 0 was measured, or after a StartupLocality other than 4")
			}
			hcrtm, pcr0 = true, true
			if !locality {
				l.pcr0Init = 4
			}
		case e.pcr == 0 && e.typ != evNoAction:
			pcr0 = true
		}
		// Windows logs EV_NO_ACTION events against PCR 0xFFFFFFFF; they
		// extend nothing, so only measured events must name a real PCR.
		if (e.pcr < 0 || e.pcr > maxPCR) && e.typ != evNoAction {
			return nil, refuse(n, e, "extends PCR %d (0x%x), beyond PCR %d: not a TCG log", e.pcr, e.pcr, maxPCR)
		}
		le := LogEvent{Number: n, PCR: e.pcr, Type: eventTypeName(e.typ), TypeCode: e.typ}
		first := len(all)
		for j, bank := range l.Banks {
			d := l.digest(i, j)
			if d == nil {
				// A measured event without this bank's digest: the TPM
				// extended something the log does not say, so the bank
				// cannot be replayed (never replayed as if it were zero).
				if e.typ != evNoAction {
					l.unreplayable(bank, fmt.Sprintf("event %d carries no %s digest", n, bank))
				}
				continue
			}
			at := len(digestBytes)
			digestBytes = append(digestBytes, d...)
			all = append(all, BankDigest{Bank: bank, Digest: digestBytes[at:len(digestBytes):len(digestBytes)]})
		}
		le.Digests = all[first:len(all):len(all)]
		le.Description = l.describe(i, e, le)
		l.Events = append(l.Events, le)
	}
	if l.pcr0Init > 0 {
		l.Facts.StartupLocality = l.pcr0Init // also when an H-CRTM event implies it
	}
	sbBank := "sha256"
	if l.bank(sbBank) < 0 {
		sbBank = l.Banks[0]
	}
	l.applySecureBoot(&l.Facts, l.secureBoot(sbBank))
	return l, nil
}

// refuse is the error for event n, e, that the log cannot hold where it is.
func refuse(n int, e event, format string, a ...any) error {
	return &LogFormatError{Event: n, Offset: int(e.offset), Reason: fmt.Sprintf(format, a...)}
}

// unreplayable marks a bank as one that cannot be replayed, keeping the
// first reason.
func (l *EventLog) unreplayable(bank, why string) {
	for i := range l.BankInfo {
		if l.BankInfo[i].Name == bank && l.BankInfo[i].Replayable {
			l.BankInfo[i].Replayable = false
			l.BankInfo[i].Note = why + ": the bank is not replayed"
		}
	}
}

// isStartupLocality reports whether e is a StartupLocality EV_NO_ACTION
// event for PCR 0 (TCG_EfiStartupLocalityEvent: "StartupLocality\0" and one
// byte).
func (l *EventLog) isStartupLocality(e event) bool {
	return e.typ == evNoAction && e.pcr == 0 && e.size == 17 && bytes.HasPrefix(l.data(e), []byte("StartupLocality\x00"))
}

// replay extends every measured event into bank j. EV_NO_ACTION events are
// never extended.
//
// PCR 0's initial value follows the TCG PC Client Platform Firmware
// Profile (PFP, rev. 1.05), "StartupLocality Event" (EV_NO_ACTION with
// TCG_EfiStartupLocalityEvent, section 10.4.5.3 as we read it): the TPM
// resets PCR 0 to zero with its last byte the locality TPM2_Startup came
// from, so 0x00..03 after a startup from locality 3. With an H-CRTM the
// TPM library's H-CRTM event sequence (_TPM_Hash_Start/_Data/_End, TPM 2.0
// Part 1, "H-CRTM Measurement") resets PCR 0 to 0x00..04 and extends it
// with the digest of the H-CRTM data, which the PFP logs as PCR 0's first
// event (EV_EFI_HCRTM_EVENT) after a StartupLocality of 4. So replay starts
// PCR 0 at 0x00..04 and extends the logged H-CRTM digest like any other.
func (l *EventLog) replay(j int) map[int][]byte {
	h := l.hashes[j]
	pcrs := map[int][]byte{}
	if l.pcr0Init >= 0 {
		init := make([]byte, h.Size())
		init[len(init)-1] = byte(l.pcr0Init)
		pcrs[0] = init
	}
	for i, e := range l.evs {
		d := l.digest(i, j)
		if e.typ == evNoAction || d == nil {
			continue // a measured event without d made the bank unreplayable
		}
		cur, ok := pcrs[e.pcr]
		if !ok {
			cur = make([]byte, h.Size())
			pcrs[e.pcr] = cur
		}
		extend(h, cur, d)
	}
	return pcrs
}

// hashEqual reports whether d is h(data), without a hash.Hash.
func hashEqual(h crypto.Hash, data, d []byte) bool {
	switch h {
	case crypto.SHA1:
		s := sha1.Sum(data)
		return bytes.Equal(s[:], d)
	case crypto.SHA256:
		s := sha256.Sum256(data)
		return bytes.Equal(s[:], d)
	case crypto.SHA384:
		s := sha512.Sum384(data)
		return bytes.Equal(s[:], d)
	default:
		s := sha512.Sum512(data)
		return bytes.Equal(s[:], d)
	}
}

// extend sets pcr to H(pcr || d), as TPM2_PCR_Extend does; pcr and d are
// one digest of h long. The fixed-size sums avoid a hash.Hash per event.
func extend(h crypto.Hash, pcr, d []byte) {
	var buf [2 * sha512.Size]byte
	n := copy(buf[:], pcr)
	n += copy(buf[n:], d)
	switch h {
	case crypto.SHA1:
		s := sha1.Sum(buf[:n])
		copy(pcr, s[:])
	case crypto.SHA256:
		s := sha256.Sum256(buf[:n])
		copy(pcr, s[:])
	case crypto.SHA384:
		s := sha512.Sum384(buf[:n])
		copy(pcr, s[:])
	default:
		s := sha512.Sum512(buf[:n])
		copy(pcr, s[:])
	}
}

// describe makes an event readable and collects its facts.
func (l *EventLog) describe(i int, e event, le LogEvent) string {
	f := &l.Facts
	switch le.TypeCode {
	case evNoAction:
		if l.isStartupLocality(e) {
			f.StartupLocality = int(l.data(e)[16])
			return fmt.Sprintf("StartupLocality %d", l.data(e)[16])
		}
		if e.pcr > maxPCR { // Windows' events on PCR 0xFFFFFFFF
			if d := describeSIPA(l.data(e)); d != "" {
				return d
			}
		}
		if i := bytes.IndexByte(l.data(e), 0); i > 0 {
			return "no action: " + printable(l.data(e)[:i])
		}
	case evSeparator:
		if f.Separators == nil {
			f.Separators = map[int]bool{}
		}
		ok := len(l.data(e)) == 4 && binary.LittleEndian.Uint32(l.data(e)) == 0
		f.Separators[e.pcr] = ok
		if !ok {
			return "separator (error value)"
		}
		return "separator"
	case evSCRTMVersion:
		// The digest must be the hash of the version string it describes;
		// otherwise the version the log states is not the one measured.
		if d := l.digest(i, 0); d != nil {
			hh := l.hashes[0].New()
			hh.Write(l.data(e))
			if !bytes.Equal(hh.Sum(nil), d) {
				l.Problems = append(l.Problems, fmt.Sprintf("event %d: invalid SCRTM version event for PCR%d: its %s digest is not the hash of its data", le.Number, e.pcr, l.Banks[0]))
			}
		}
		v := scrtmVersion(l.data(e))
		f.SCRTMVersion = v
		return "S-CRTM version " + v
	case evEFIBootApplication, evEFIBootDriver:
		path := imageLoadPath(l.data(e))
		fact := DigestFact{Event: le.Number, PCR: e.pcr, Path: path, Digests: le.Digests.Map()}
		kind := "EFI boot application"
		if le.TypeCode == evEFIBootDriver {
			kind = "EFI boot services driver"
			f.Drivers = append(f.Drivers, fact)
		} else {
			f.BootApps = append(f.BootApps, fact)
		}
		if path == "" {
			return kind
		}
		return kind + " " + path
	case evEventTag:
		return describeSIPA(l.data(e))
	case evCompactHash:
		if d := l.data(e); len(d) > 0 && len(d) <= 64 && printable(d) == strings.TrimRight(string(d), "\x00") {
			return "compact hash " + strconv.Quote(printable(d))
		}
		return fmt.Sprintf("compact hash (%d bytes)", e.size)
	case evEFIHCRTMEvent:
		return "H-CRTM measurement " + strconv.Quote(printable(l.data(e)))
	case evEFIAction, evAction:
		s := printable(l.data(e))
		f.Actions = append(f.Actions, s)
		return s
	case evEFIVariableDriver, evEFIVariableAuthority, 0x80000002:
		if name := efiVariableName(l.data(e)); name != "" {
			return "EFI variable " + name
		}
	}
	return ""
}

// secureBoot extracts Secure Boot facts with go-attestation's parser. That
// parser reads only PCR 2 and PCR 7 events, and decoding a dbx of hundreds
// of entries is most of a log's parsing cost, while a fleet's devices share
// a handful of Secure Boot configurations: so results are memoized under
// exactly those events (PCR, type, digest and data; see secureBootCache).
func (l *EventLog) secureBoot(bank string) secureBootResult {
	if bank == l.sbBank {
		return l.sb
	}
	j := l.bank(bank)
	// The key is exactly those events' bytes: a fast hash finds the entry
	// and an exact comparison confirms it, so two configurations can never
	// share a result (a collision is a miss).
	var key maphash.Hash
	key.SetSeed(secureBootMemo.seed)
	size := l.secureBootKey(j, func(b []byte) { key.Write(b) })
	sum := key.Sum64()
	if r, ok := secureBootMemo.get(sum, func(m []byte) bool {
		eq := len(m) == size
		l.secureBootKey(j, func(b []byte) {
			eq = eq && bytes.HasPrefix(m, b)
			if eq {
				m = m[len(b):]
			}
		})
		return eq
	}); ok {
		l.sbBank, l.sb = bank, r
		return r
	}
	material := make([]byte, 0, size)
	l.secureBootKey(j, func(b []byte) { material = append(material, b...) })
	var r secureBootResult
	// go-attestation checks that every PCR 7 variable, authority and
	// separator event's digest in this bank is the hash of its data (SHA-1
	// and SHA-256 only), so these facts are not re-verified here.
	// Only go-attestation's Secure Boot decoder is used (EFI variables and
	// signature lists), over events from this package's parser.
	events := make([]goattest.Event, len(l.evs))
	for i, e := range l.evs {
		events[i] = goattest.Event{Index: e.pcr, Type: goattest.EventType(e.typ), Data: l.data(e), Digest: l.digest(i, j)}
	}
	sb, err := goattest.ParseSecurebootState(events)
	if err != nil {
		r.problem = "Secure Boot state: " + err.Error()
	} else {
		r.enabled = sb.Enabled
		r.pk = certNames(sb.PlatformKeys, sb.PlatformKeyHashes)
		r.kek = certNames(sb.ExchangeKeys, sb.ExchangeKeyHashes)
		r.db = certNames(sb.PermittedKeys, sb.PermittedHashes)
		r.dbx = len(sb.ForbiddenKeys) + len(sb.ForbiddenHashes)
		r.authorities = certNames(append(sb.PreSeparatorAuthority, sb.PostSeparatorAuthority...), nil)
	}
	secureBootMemo.put(sum, material, r)
	l.sbBank, l.sb = bank, r
	return r
}

type secureBootResult struct {
	problem                  string
	enabled                  bool
	pk, kek, db, authorities []string
	dbx                      int
}

func (l *EventLog) applySecureBoot(f *Facts, r secureBootResult) {
	if r.problem != "" {
		l.addProblem(r.problem)
		return
	}
	enabled := r.enabled
	f.SecureBoot = &enabled
	f.PK, f.KEK, f.DB, f.Authorities = slices.Clone(r.pk), slices.Clone(r.kek), slices.Clone(r.db), slices.Clone(r.authorities)
	f.DBXEntries = r.dbx
}

// secureBootKey streams the PCR 2 and 7 events of bank j (PCR, type,
// digest and data, each length-prefixed) to w and returns their length.
func (l *EventLog) secureBootKey(j int, w func([]byte)) int {
	var hdr [16]byte
	n := 0
	for i, e := range l.evs {
		if e.pcr != 2 && e.pcr != 7 {
			continue
		}
		d := l.digest(i, j)
		binary.LittleEndian.PutUint32(hdr[0:], uint32(e.pcr))
		binary.LittleEndian.PutUint32(hdr[4:], e.typ)
		binary.LittleEndian.PutUint32(hdr[8:], uint32(len(d)))
		binary.LittleEndian.PutUint32(hdr[12:], e.size)
		w(hdr[:])
		w(d)
		w(l.data(e))
		n += len(hdr) + len(d) + int(e.size)
	}
	return n
}

// secureBootCache is a small bounded map; when full (entries or bytes of
// keys) it forgets everything, which is simple and keeps a flood of
// distinct configurations from growing memory.
type secureBootCache struct {
	seed  maphash.Seed
	mu    sync.Mutex
	m     map[uint64]secureBootEntry
	bytes int
}

type secureBootEntry struct {
	key []byte
	r   secureBootResult
}

const (
	secureBootCacheSize  = 256
	secureBootCacheBytes = 16 << 20
)

var secureBootMemo = &secureBootCache{seed: maphash.MakeSeed()}

// get returns the result stored under sum whose key same accepts.
func (c *secureBootCache) get(sum uint64, same func([]byte) bool) (secureBootResult, bool) {
	c.mu.Lock()
	e, ok := c.m[sum]
	c.mu.Unlock()
	if !ok || !same(e.key) { // keys are never modified once stored
		return secureBootResult{}, false
	}
	return e.r, true
}

func (c *secureBootCache) put(sum uint64, key []byte, v secureBootResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= secureBootCacheSize || c.bytes+len(key) > secureBootCacheBytes {
		c.m, c.bytes = make(map[uint64]secureBootEntry, secureBootCacheSize), 0
	}
	if old, ok := c.m[sum]; ok {
		c.bytes -= len(old.key)
	}
	c.m[sum] = secureBootEntry{key: key, r: v}
	c.bytes += len(key)
}

// Verify checks the log against PCR values from a verified quote: replaying
// the log must produce each quoted value it touches. It then rebuilds Facts
// from the quoted bank alone (see bindFacts): after Verify, every fact rests
// on an event of a quoted PCR in the quoted bank, and every fact read from
// event data on an event whose digest is the hash of that data. Events
// extending PCRs the quote does not cover are bound to nothing: a Problem
// says so. When only PCR 5 differs, the replay is retried with the
// ExitBootServices events some firmware extends without logging (the one
// workaround go-attestation applies); when that was needed, it is added to
// Problems so that policy and auditors see it. On a mismatch the error
// wraps ErrEventLogInvalid and a *PCRMismatch naming each PCR that differs.
// A quoted bank the log declares but cannot replay is refused.
func (l *EventLog) Verify(pcrs []goattest.PCR) error {
	quoted := map[string]map[int]bool{}
	for _, p := range pcrs {
		bank := BankName(p.DigestAlg)
		j := l.bank(bank)
		if j < 0 {
			continue // the log does not carry this bank
		}
		if !l.replayable(j) {
			for _, bi := range l.BankInfo {
				if bi.Name == bank {
					return fmt.Errorf("%w: the quoted %s bank cannot be replayed: %s", ErrEventLogInvalid, bank, bi.Note)
				}
			}
		}
		if quoted[bank] == nil {
			quoted[bank] = map[int]bool{}
		}
		quoted[bank][p.Index] = true
	}
	if len(quoted) == 0 {
		return fmt.Errorf("%w: no PCR in a bank the log carries was quoted", ErrEventLogInvalid)
	}
	var uncovered []string
	for bank, idx := range quoted {
		for i := range l.Replay(bank) {
			if !idx[i] {
				uncovered = append(uncovered, fmt.Sprintf("PCR %d (%s)", i, bank))
			}
		}
	}
	if len(uncovered) > 0 {
		sort.Strings(uncovered)
		l.addProblem(fmt.Sprintf("the quote does not cover %s: facts from those events are not trusted", strings.Join(uncovered, ", ")))
	}
	// One bank is quoted (a TPM quote selects one); should a caller pass
	// more, facts come from SHA-256 if quoted, else the log's first.
	factsBank := ""
	for _, b := range append([]string{"sha256"}, l.Banks...) {
		if quoted[b] != nil {
			factsBank = b
			break
		}
	}
	l.bindFacts(factsBank, quoted[factsBank])
	mm := l.diff(pcrs)
	if len(mm.PCRs) == 0 {
		return nil
	}
	if l.ebsWorkaround(mm) {
		l.addProblem(fmt.Sprintf("%s matches only with the ExitBootServices events the firmware did not log", mm.PCRs[0].label()))
		return nil
	}
	return fmt.Errorf("%w: %w", ErrEventLogInvalid, mm)
}

// ebsVariants are the EV_EFI_ACTION strings some firmware extends into
// PCR 5 at ExitBootServices without logging them, in the orders
// go-attestation's workaround tries (eventlog_workarounds.go).
var ebsVariants = [][]string{
	{"Exit Boot Services Invocation", "Exit Boot Services Returned with Success"},
	{"Exit Boot Services Invocation", "Exit Boot Services Returned with Failure"},
	{"Exit Boot Services Invocation", "Exit Boot Services Returned with Failure", "Exit Boot Services Returned with Success"},
}

// ebsWorkaround reports whether every mismatch is PCR 5 and one variant
// of the unlogged ExitBootServices events makes each bank's PCR 5 equal
// the quote.
func (l *EventLog) ebsWorkaround(mm *PCRMismatch) bool {
	for _, d := range mm.PCRs {
		if d.Index != 5 {
			return false
		}
	}
next:
	for _, v := range ebsVariants {
		for _, d := range mm.PCRs {
			h := bankHashes[d.Bank]
			pcr := bytes.Clone(l.Replay(d.Bank)[5])
			for _, s := range v {
				ev := h.New()
				ev.Write([]byte(s))
				ext := h.New()
				ext.Write(pcr)
				ext.Write(ev.Sum(nil))
				pcr = ext.Sum(pcr[:0])
			}
			if hex.EncodeToString(pcr) != d.Expected {
				continue next
			}
		}
		return true
	}
	return false
}

func (l *EventLog) addProblem(p string) {
	if !slices.Contains(l.Problems, p) {
		l.Problems = append(l.Problems, p)
	}
}

// bindFacts rebuilds Facts from one quoted bank's events. An event counts
// only when it extends a quoted PCR. A fact read from event data (S-CRTM
// version, separators, actions) counts only when the event's digest in this
// bank is the hash of its data; otherwise the fact is dropped with a
// Problem, so the rule that needs it fails. Secure Boot variables and
// authorities come from go-attestation, which checks their digests in this
// bank. Boot applications and drivers keep only this bank's digest: their
// digest is the image's hash, not of the event data, so the path is
// description, never evidence.
func (l *EventLog) bindFacts(bank string, quoted map[int]bool) {
	var f Facts
	j := l.bank(bank)
	hh := l.hashes[j].New()
	var dig []byte // the current event's digest in bank
	dataBound := func(e event) bool {
		return hashEqual(l.hashes[j], l.data(e), dig)
	}
	// A log may hold many such events (an OS can extend PCR 8-15 at will):
	// a few are named, the rest counted, so a log cannot bloat the record.
	const maxNamed = 8
	unboundN := 0
	unbound := func(n int, what string, pcr int) {
		if unboundN++; unboundN <= maxNamed {
			l.addProblem(fmt.Sprintf("event %d: %s in PCR %d: its %s digest is not the hash of its data, so it is not evidence", n, what, pcr, bank))
		}
	}
	// The OS can extend PCRs 0-7 after boot, so an S-CRTM version is the
	// firmware's only where the firmware measures it: in PCR 0, after
	// nothing but S-CRTM contents, before PCR 0's separator. Types are not
	// measured, so the separator is known by its type or by its digest
	// (Boot Guard measures that digest as S-CRTM contents, hence the
	// exception).
	sepDigests := make([][]byte, 0, 2)
	for _, v := range [][]byte{{0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff}} {
		hh.Reset()
		hh.Write(v)
		sepDigests = append(sepDigests, hh.Sum(nil))
	}
	firmwareOpen := true // no PCR 0 event yet but S-CRTM contents (or the H-CRTM's)
	if l.pcr0Init > 0 && quoted[0] {
		f.StartupLocality = l.pcr0Init // bound by PCR 0's replay
	}
	for i, e := range l.evs {
		typ := e.typ
		if typ == evNoAction {
			continue
		}
		dig = l.digest(i, j)
		if !quoted[e.pcr] {
			continue
		}
		le := &l.Events[i]
		scrtmOK := e.pcr == pcrFirmware && firmwareOpen
		if e.pcr == pcrFirmware && typ != evSCRTMContents && typ != evEFIHCRTMEvent && (typ != evSCRTMVersion || slices.ContainsFunc(sepDigests, func(d []byte) bool { return bytes.Equal(d, dig) })) {
			firmwareOpen = false
		}
		if e.pcr == pcrBootApps && typ != evEFIBootApplication && !dataBound(e) {
			// The type is the log's word: an event in PCR 4 whose digest
			// is not over its data is an image measurement whatever its
			// type says, so boot_digests judges it.
			f.BootApps = append(f.BootApps, DigestFact{Event: le.Number, PCR: e.pcr, Path: imageLoadPath(l.data(e)), Digests: map[string]string{bank: le.Digests.Get(bank)}})
			l.addProblem(fmt.Sprintf("event %d: %s in PCR %d is not bound to its data; judged as a boot application", le.Number, le.Type, e.pcr))
			continue
		}
		switch typ {
		case evSeparator:
			if !dataBound(e) {
				unbound(le.Number, "separator", e.pcr)
				continue
			}
			if f.Separators == nil {
				f.Separators = map[int]bool{}
			}
			f.Separators[e.pcr] = len(l.data(e)) == 4 && binary.LittleEndian.Uint32(l.data(e)) == 0
		case evSCRTMVersion:
			if !scrtmOK {
				l.addProblem(fmt.Sprintf("event %d: S-CRTM version %s in PCR %d: only one measured in PCR 0 before anything but S-CRTM contents is the firmware's", le.Number, strconv.Quote(scrtmVersion(l.data(e))), e.pcr))
				continue
			}
			if !dataBound(e) {
				unbound(le.Number, "S-CRTM version "+strconv.Quote(scrtmVersion(l.data(e))), e.pcr)
				continue
			}
			f.SCRTMVersion = scrtmVersion(l.data(e))
		case evEFIAction, evAction:
			if !dataBound(e) {
				unbound(le.Number, "action "+strconv.Quote(printable(l.data(e))), e.pcr)
				continue
			}
			f.Actions = append(f.Actions, printable(l.data(e)))
		case evEFIBootApplication, evEFIBootDriver:
			fact := DigestFact{Event: le.Number, PCR: e.pcr, Path: imageLoadPath(l.data(e)), Digests: map[string]string{bank: le.Digests.Get(bank)}}
			if typ == evEFIBootDriver {
				f.Drivers = append(f.Drivers, fact)
			} else {
				f.BootApps = append(f.BootApps, fact)
			}
		}
	}
	if unboundN > maxNamed {
		l.addProblem(fmt.Sprintf("%d more events: their %s digest is not the hash of their data", unboundN-maxNamed, bank))
	}
	if quoted[7] {
		l.applySecureBoot(&f, l.secureBoot(bank))
	}
	l.Facts = f
}

func (l *EventLog) diff(pcrs []goattest.PCR) *PCRMismatch {
	mm := &PCRMismatch{}
	for _, p := range pcrs {
		bank := BankName(p.DigestAlg)
		got, ok := l.Replay(bank)[p.Index]
		if !ok {
			continue // the log does not touch this PCR
		}
		if !bytes.Equal(got, p.Digest) {
			mm.PCRs = append(mm.PCRs, PCRDiff{Index: p.Index, Bank: bank, Expected: hex.EncodeToString(p.Digest), Actual: hex.EncodeToString(got)})
		}
	}
	return mm
}

// EventsFor returns the events that extend one PCR, in log order.
func (l *EventLog) EventsFor(pcr int) []LogEvent {
	var out []LogEvent
	for _, e := range l.Events {
		if e.PCR == pcr && e.TypeCode != evNoAction {
			out = append(out, e)
		}
	}
	return out
}

// PCRMismatch lists PCRs whose two values differ. For a log check, Expected
// is the quoted value and Actual the log's replay.
type PCRMismatch struct {
	PCRs []PCRDiff
}

// PCRDiff is one differing PCR.
type PCRDiff struct {
	Index    int    `json:"pcr"`
	Bank     string `json:"bank"`
	Expected string `json:"expected"`
	Actual   string `json:"actual"`
}

func (d PCRDiff) label() string { return fmt.Sprintf("PCR %d (%s)", d.Index, d.Bank) }

func (m *PCRMismatch) Error() string {
	var parts []string
	for _, d := range m.PCRs {
		parts = append(parts, fmt.Sprintf("%s: the log replays to %s, the quote has %s", d.label(), d.Actual, d.Expected))
	}
	return strings.Join(parts, "; ")
}

// BankName is BankHash's inverse; other hashes keep crypto's name.
func BankName(h crypto.Hash) string {
	switch h { // a switch, not a walk of bankHashes: Verify asks per PCR
	case crypto.SHA1:
		return "sha1"
	case crypto.SHA256:
		return "sha256"
	case crypto.SHA384:
		return "sha384"
	case crypto.SHA512:
		return "sha512"
	}
	return h.String()
}

// scrtmVersion decodes an EV_S_CRTM_VERSION: a NUL-terminated UCS-2 string,
// or a 16-byte GUID; anything else is shown as hex.
func scrtmVersion(b []byte) string {
	if len(b) == 16 && !bytes.HasSuffix(b, []byte{0, 0}) {
		return fmt.Sprintf("GUID %x", b)
	}
	if len(b) < 2 || len(b)%2 != 0 || !bytes.HasSuffix(b, []byte{0, 0}) {
		return "0x" + hex.EncodeToString(b)
	}
	return ucs2(b)
}

// imageLoadPath extracts the file path from a UEFI_IMAGE_LOAD_EVENT's device
// path (media file path nodes, type 4 subtype 4).
func imageLoadPath(b []byte) string {
	if len(b) < 32 {
		return ""
	}
	n := binary.LittleEndian.Uint64(b[24:32])
	if n > uint64(len(b)-32) {
		return ""
	}
	dp := b[32 : 32+n]
	var parts []string
	for len(dp) >= 4 {
		typ, sub, l := dp[0], dp[1], int(binary.LittleEndian.Uint16(dp[2:4]))
		if l < 4 || l > len(dp) || typ == 0x7f {
			break
		}
		if typ == 4 && sub == 4 {
			parts = append(parts, ucs2(dp[4:l]))
		}
		dp = dp[l:]
	}
	return strings.Join(parts, "")
}

// efiVariableName reads UEFI_VARIABLE_DATA's name.
func efiVariableName(b []byte) string {
	if len(b) < 32 {
		return ""
	}
	n := binary.LittleEndian.Uint64(b[16:24])
	if n > 256 || 32+2*n > uint64(len(b)) {
		return ""
	}
	return ucs2(b[32 : 32+2*n])
}

func ucs2(b []byte) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

func printable(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	var sb strings.Builder
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			sb.WriteByte(c)
		} else {
			sb.WriteByte('.')
		}
	}
	return sb.String()
}

func certNames(certs []x509.Certificate, hashes [][]byte) []string {
	var out []string
	for _, c := range certs {
		out = append(out, Name(c.Subject))
	}
	for _, h := range hashes {
		out = append(out, "sha256:"+hex.EncodeToString(h))
	}
	sort.Strings(out)
	return out
}

var eventTypeNames = map[uint32]string{
	0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION", 0x4: "EV_SEPARATOR", 0x5: "EV_ACTION",
	0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS", 0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE", 0xa: "EV_PLATFORM_CONFIG_FLAGS",
	0xb: "EV_TABLE_OF_DEVICES", 0xc: "EV_COMPACT_HASH", 0xd: "EV_IPL", 0xe: "EV_IPL_PARTITION_DATA", 0xf: "EV_NONHOST_CODE",
	0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO", 0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
	0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x80000002: "EV_EFI_VARIABLE_BOOT", 0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
	0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER", 0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT",
	0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB", 0x80000009: "EV_EFI_HANDOFF_TABLES",
	0x8000000a: "EV_EFI_PLATFORM_FIRMWARE_BLOB2", 0x8000000b: "EV_EFI_HANDOFF_TABLES2", 0x8000000c: "EV_EFI_VARIABLE_BOOT2",
	0x80000010: "EV_EFI_HCRTM_EVENT", 0x800000e0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000e1: "EV_EFI_SPDM_FIRMWARE_BLOB",
	0x800000e2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

func eventTypeName(t uint32) string {
	if n, ok := eventTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("0x%08x", t)
}
