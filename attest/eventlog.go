package attest

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
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
	evSCRTMContents        = 0x00000007
	evSCRTMVersion         = 0x00000008
	evEFIVariableDriver    = 0x80000001
	evEFIBootApplication   = 0x80000003
	evEFIBootDriver        = 0x80000004
	evEFIAction            = 0x80000007
	evEFIVariableAuthority = 0x800000e0
	maxPCR                 = 23
)

// EventLog is a parsed TCG event log with its own replay and the facts it
// states. Nothing in it is trusted until Verify matches the replay against
// PCR values from a verified quote. An EventLog is not safe for concurrent
// use (Replay and Verify update it).
type EventLog struct {
	Banks []string // digest banks present, e.g. "sha1", "sha256"
	// Events are in log order. Number counts from 0 at the first event in
	// the file (the Spec ID event, when there is one), as tpm2_eventlog does.
	Events []LogEvent
	Facts  Facts
	// Problems are facts the log states badly (malformed SecureBoot or
	// S-CRTM events): they do not stop replay, and policy decides.
	Problems []string

	log      *goattest.EventLog
	events   map[string][]goattest.Event // per bank, as go-attestation splits them
	replayed map[string]map[int][]byte
	sbBank   string // the bank the parsed Secure Boot state was read from
	sb       secureBootResult
}

// Replay returns one bank's PCR values computed from the log alone,
// starting PCR0 at the locality a StartupLocality event names; nil for a
// bank the log does not carry. Banks are replayed on first use.
func (l *EventLog) Replay(bank string) map[int][]byte {
	if pcrs, ok := l.replayed[bank]; ok {
		return pcrs
	}
	events, ok := l.events[bank]
	if !ok {
		return nil
	}
	pcrs := replay(events, bankHashes[bank])
	l.replayed[bank] = pcrs
	return pcrs
}

// LogEvent is one event.
type LogEvent struct {
	Number      int               `json:"number"`
	PCR         int               `json:"pcr"`
	Type        string            `json:"type"`
	TypeCode    uint32            `json:"type_code"`
	Digests     map[string]string `json:"digests"` // bank → hex
	Description string            `json:"description,omitempty"`
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

var bankNames = map[goattest.HashAlg]string{goattest.HashSHA1: "sha1", goattest.HashSHA256: "sha256", goattest.HashAlg(0x0C): "sha384", goattest.HashAlg(0x0D): "sha512"}

var bankHashes = map[string]crypto.Hash{"sha1": crypto.SHA1, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}

// BankHash returns the hash of a PCR bank named as in policies and the wire
// protocol ("sha1", "sha256", "sha384", "sha512").
func BankHash(bank string) (crypto.Hash, bool) {
	h, ok := bankHashes[bank]
	return h, ok
}

// ParseEventLog parses and replays a TCG event log (legacy SHA-1 or crypto
// agile). A log that is empty, truncated, or names a PCR beyond 23 is
// refused with an error wrapping ErrEventLogInvalid.
func ParseEventLog(b []byte) (*EventLog, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: the log is empty", ErrEventLogInvalid)
	}
	raw, err := goattest.ParseEventLog(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEventLogInvalid, err)
	}
	l := &EventLog{log: raw, replayed: map[string]map[int][]byte{}}
	for _, a := range raw.Algs {
		if name, ok := bankNames[a]; ok {
			// Each bank's digests are laid out once per listing.
			if slices.Contains(l.Banks, name) {
				return nil, fmt.Errorf("%w: the Spec ID event lists %s twice", ErrEventLogInvalid, name)
			}
			l.Banks = append(l.Banks, name)
		}
	}
	if len(l.Banks) == 0 {
		return nil, fmt.Errorf("%w: no supported digest bank", ErrEventLogInvalid)
	}
	offset := 0
	if len(raw.Algs) != 1 || raw.Algs[0] != goattest.HashSHA1 || isAgile(b) {
		offset = 1 // the Spec ID event is event 0
	}
	perBank := map[string][]goattest.Event{}
	for _, a := range raw.Algs {
		if name, ok := bankNames[a]; ok {
			perBank[name] = raw.Events(a)
		}
	}
	first := perBank[l.Banks[0]]
	// All hex digests go into one string and events hold substrings of it:
	// one allocation instead of one per digest.
	size := 0
	for _, bank := range l.Banks {
		for _, e := range perBank[bank] {
			size += 2 * min(len(e.Digest), 64)
		}
	}
	var sb strings.Builder // String() does not copy
	sb.Grow(size)
	next := make(map[string]int, len(l.Banks)) // each bank's next digest in sb
	var tmp [2 * 64]byte
	for _, bank := range l.Banks {
		next[bank] = sb.Len()
		for _, e := range perBank[bank] {
			n := hex.Encode(tmp[:], e.Digest[:min(len(e.Digest), 64)])
			sb.Write(tmp[:n])
		}
	}
	hexAll := sb.String()
	l.Events = make([]LogEvent, 0, len(first))
	pcr0, locality := false, false
	for i, e := range first {
		// A StartupLocality sets PCR 0's initial value, so it must come
		// before any PCR 0 measurement, once: a later one would let
		// events before it replay to nothing.
		if isStartupLocality(e) {
			if pcr0 || locality {
				return nil, fmt.Errorf("%w: event %d: a StartupLocality after PCR 0 was measured or set", ErrEventLogInvalid, i+offset)
			}
			locality = true
		} else if e.Index == 0 && uint32(e.Type) != evNoAction {
			pcr0 = true
		}
		// Windows logs EV_NO_ACTION events against PCR 0xFFFFFFFF; they
		// extend nothing, so only measured events must name a real PCR.
		if (e.Index < 0 || e.Index > maxPCR) && uint32(e.Type) != evNoAction {
			return nil, fmt.Errorf("%w: event %d extends PCR %d (0x%x), beyond PCR %d: not a TCG log", ErrEventLogInvalid, i+offset, e.Index, e.Index, maxPCR)
		}
		le := LogEvent{Number: i + offset, PCR: e.Index, Type: eventTypeName(uint32(e.Type)), TypeCode: uint32(e.Type), Digests: make(map[string]string, len(l.Banks))}
		for _, bank := range l.Banks {
			// The Spec ID event states each bank's digest size: one that is
			// not the hash's would be replayed and compared as something else.
			if d := perBank[bank][i].Digest; d != nil && len(d) != bankHashes[bank].Size() {
				return nil, fmt.Errorf("%w: event %d has a %d-byte %s digest", ErrEventLogInvalid, i+offset, len(d), bank)
			}
			if n := 2 * min(len(perBank[bank][i].Digest), 64); n > 0 {
				le.Digests[bank] = hexAll[next[bank] : next[bank]+n]
				next[bank] += n
			}
		}
		le.Description = l.describe(e, le)
		l.Events = append(l.Events, le)
	}
	l.events = perBank
	sbBank := "sha256"
	if _, ok := perBank[sbBank]; !ok {
		sbBank = l.Banks[0]
	}
	l.applySecureBoot(&l.Facts, l.secureBoot(sbBank))
	return l, nil
}

// isAgile reports whether the first event is a Spec ID event.
func isAgile(b []byte) bool {
	return len(b) > 32+16 && bytes.HasPrefix(b[32:], []byte("Spec ID Event03"))
}

// isStartupLocality reports whether e is a StartupLocality EV_NO_ACTION
// event for PCR 0.
func isStartupLocality(e goattest.Event) bool {
	return uint32(e.Type) == evNoAction && e.Index == 0 && len(e.Data) == 17 && bytes.HasPrefix(e.Data, []byte("StartupLocality\x00"))
}

// replay extends every measured event into a PCR bank. EV_NO_ACTION events
// are not measured; a StartupLocality event sets PCR0's initial value.
func replay(events []goattest.Event, h crypto.Hash) map[int][]byte {
	pcrs := map[int][]byte{}
	hh := h.New()
	for _, e := range events {
		if uint32(e.Type) == evNoAction {
			if isStartupLocality(e) {
				init := make([]byte, h.Size())
				init[len(init)-1] = e.Data[16]
				pcrs[0] = init
			}
			continue
		}
		if e.Digest == nil {
			continue
		}
		cur, ok := pcrs[e.Index]
		if !ok {
			cur = make([]byte, h.Size())
			pcrs[e.Index] = cur
		}
		hh.Reset()
		hh.Write(cur)
		hh.Write(e.Digest)
		hh.Sum(cur[:0])
	}
	return pcrs
}

// describe makes an event readable and collects its facts.
func (l *EventLog) describe(e goattest.Event, le LogEvent) string {
	f := &l.Facts
	switch le.TypeCode {
	case evNoAction:
		if e.Index == 0 && len(e.Data) == 17 && bytes.HasPrefix(e.Data, []byte("StartupLocality\x00")) {
			f.StartupLocality = int(e.Data[16])
			return fmt.Sprintf("StartupLocality %d", e.Data[16])
		}
		if i := bytes.IndexByte(e.Data, 0); i > 0 {
			return "no action: " + printable(e.Data[:i])
		}
	case evSeparator:
		if f.Separators == nil {
			f.Separators = map[int]bool{}
		}
		ok := len(e.Data) == 4 && binary.LittleEndian.Uint32(e.Data) == 0
		f.Separators[e.Index] = ok
		if !ok {
			return "separator (error value)"
		}
		return "separator"
	case evSCRTMVersion:
		// The digest must be the hash of the version string it describes;
		// otherwise the version the log states is not the one measured.
		if h, ok := bankHashes[l.Banks[0]]; ok && e.Digest != nil {
			hh := h.New()
			hh.Write(e.Data)
			if !bytes.Equal(hh.Sum(nil), e.Digest) {
				l.Problems = append(l.Problems, fmt.Sprintf("event %d: invalid SCRTM version event for PCR%d: its %s digest is not the hash of its data", le.Number, e.Index, l.Banks[0]))
			}
		}
		v := scrtmVersion(e.Data)
		f.SCRTMVersion = v
		return "S-CRTM version " + v
	case evEFIBootApplication, evEFIBootDriver:
		path := imageLoadPath(e.Data)
		fact := DigestFact{Event: le.Number, PCR: e.Index, Path: path, Digests: le.Digests}
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
	case evEFIAction, evAction:
		s := printable(e.Data)
		f.Actions = append(f.Actions, s)
		return s
	case evEFIVariableDriver, evEFIVariableAuthority, 0x80000002:
		if name := efiVariableName(e.Data); name != "" {
			return "EFI variable " + name
		}
	}
	return ""
}

// secureBoot extracts Secure Boot facts with go-attestation's parser. That
// parser reads only PCR 2 and PCR 7 events, and decoding a dbx of hundreds
// of entries is most of a log's parsing cost, while a fleet's devices share
// a handful of Secure Boot configurations: so results are memoized under a
// hash of exactly those events (PCR, type, digest and data).
func (l *EventLog) secureBoot(bank string) secureBootResult {
	if bank == l.sbBank {
		return l.sb
	}
	events := l.events[bank]
	h := sha256.New()
	var hdr [16]byte
	for _, e := range events {
		if e.Index != 2 && e.Index != 7 {
			continue
		}
		binary.LittleEndian.PutUint32(hdr[0:], uint32(e.Index))
		binary.LittleEndian.PutUint32(hdr[4:], uint32(e.Type))
		binary.LittleEndian.PutUint32(hdr[8:], uint32(len(e.Digest)))
		binary.LittleEndian.PutUint32(hdr[12:], uint32(len(e.Data)))
		h.Write(hdr[:])
		h.Write(e.Digest)
		h.Write(e.Data)
	}
	var key [32]byte
	h.Sum(key[:0])
	if r, ok := secureBootMemo.get(key); ok {
		l.sbBank, l.sb = bank, r
		return r
	}
	var r secureBootResult
	// go-attestation checks that every PCR 7 variable, authority and
	// separator event's digest in this bank is the hash of its data (SHA-1
	// and SHA-256 only), so these facts are not re-verified here.
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
	secureBootMemo.put(key, r)
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

// secureBootCache is a small bounded map; when full it forgets everything,
// which is simple and keeps a flood of distinct configurations from growing
// memory.
type secureBootCache struct {
	mu sync.Mutex
	m  map[[32]byte]secureBootResult
}

const secureBootCacheSize = 256

var secureBootMemo = &secureBootCache{}

func (c *secureBootCache) get(k [32]byte) (secureBootResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *secureBootCache) put(k [32]byte, v secureBootResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= secureBootCacheSize {
		c.m = make(map[[32]byte]secureBootResult, secureBootCacheSize)
	}
	c.m[k] = v
}

// Verify checks the log against PCR values from a verified quote: replaying
// the log must produce each quoted value it touches. It then rebuilds Facts
// from the quoted bank alone (see bindFacts): after Verify, every fact rests
// on an event of a quoted PCR in the quoted bank, and every fact read from
// event data on an event whose digest is the hash of that data. Events
// extending PCRs the quote does not cover are bound to nothing: a Problem
// says so. When the replay differs, go-attestation's replay is consulted for
// its workaround for one known firmware bug (ExitBootServices events missing
// from PCR5); when that workaround was needed, it is added to Problems so
// that policy and auditors see it. On a mismatch the error wraps
// ErrEventLogInvalid and a *PCRMismatch naming each PCR that differs.
func (l *EventLog) Verify(pcrs []goattest.PCR) error {
	quoted := map[string]map[int]bool{}
	for _, p := range pcrs {
		bank := BankName(p.DigestAlg)
		if _, ok := l.events[bank]; !ok {
			continue // the log does not carry this bank
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
	if _, err := l.log.Verify(pcrs); err == nil {
		l.addProblem(fmt.Sprintf("%s matches only with the ExitBootServices events the firmware did not log", mm.PCRs[0].label()))
		return nil
	}
	return fmt.Errorf("%w: %w", ErrEventLogInvalid, mm)
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
	hash := bankHashes[bank]
	hh := hash.New()
	var sum [64]byte
	dataBound := func(e goattest.Event) bool {
		hh.Reset()
		hh.Write(e.Data)
		return bytes.Equal(hh.Sum(sum[:0]), e.Digest)
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
	firmwareOpen := true // no PCR 0 event yet but S-CRTM contents
	for i, e := range l.events[bank] {
		typ := uint32(e.Type)
		if typ == evNoAction {
			if isStartupLocality(e) && quoted[0] {
				f.StartupLocality = int(e.Data[16]) // bound by PCR 0's replay
			}
			continue
		}
		if !quoted[e.Index] {
			continue
		}
		le := &l.Events[i]
		scrtmOK := e.Index == pcrFirmware && firmwareOpen
		if e.Index == pcrFirmware && typ != evSCRTMContents && (typ != evSCRTMVersion || slices.ContainsFunc(sepDigests, func(d []byte) bool { return bytes.Equal(d, e.Digest) })) {
			firmwareOpen = false
		}
		if e.Index == pcrBootApps && typ != evEFIBootApplication && !dataBound(e) {
			// The type is the log's word: an event in PCR 4 whose digest
			// is not over its data is an image measurement whatever its
			// type says, so boot_digests judges it.
			f.BootApps = append(f.BootApps, DigestFact{Event: le.Number, PCR: e.Index, Path: imageLoadPath(e.Data), Digests: map[string]string{bank: le.Digests[bank]}})
			l.addProblem(fmt.Sprintf("event %d: %s in PCR %d is not bound to its data; judged as a boot application", le.Number, le.Type, e.Index))
			continue
		}
		switch typ {
		case evSeparator:
			if !dataBound(e) {
				unbound(le.Number, "separator", e.Index)
				continue
			}
			if f.Separators == nil {
				f.Separators = map[int]bool{}
			}
			f.Separators[e.Index] = len(e.Data) == 4 && binary.LittleEndian.Uint32(e.Data) == 0
		case evSCRTMVersion:
			if !scrtmOK {
				l.addProblem(fmt.Sprintf("event %d: S-CRTM version %s in PCR %d: only one measured in PCR 0 before anything but S-CRTM contents is the firmware's", le.Number, strconv.Quote(scrtmVersion(e.Data)), e.Index))
				continue
			}
			if !dataBound(e) {
				unbound(le.Number, "S-CRTM version "+strconv.Quote(scrtmVersion(e.Data)), e.Index)
				continue
			}
			f.SCRTMVersion = scrtmVersion(e.Data)
		case evEFIAction, evAction:
			if !dataBound(e) {
				unbound(le.Number, "action "+strconv.Quote(printable(e.Data)), e.Index)
				continue
			}
			f.Actions = append(f.Actions, printable(e.Data))
		case evEFIBootApplication, evEFIBootDriver:
			fact := DigestFact{Event: le.Number, PCR: e.Index, Path: imageLoadPath(e.Data), Digests: map[string]string{bank: le.Digests[bank]}}
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
	for name, hh := range bankHashes {
		if hh == h {
			return name
		}
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
