package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"testing"
	"unicode/utf16"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// agileEvent encodes one crypto-agile event with a digest of data in every
// bank of banks (algorithm ID → hash), or zero digests when zero is set.
func agileEvent(pcr, typ uint32, data []byte, zero bool, banks []struct {
	id uint16
	h  crypto.Hash
}) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, pcr)
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(banks)))
	for _, bk := range banks {
		b = binary.LittleEndian.AppendUint16(b, bk.id)
		d := make([]byte, bk.h.Size())
		if !zero {
			h := bk.h.New()
			h.Write(data)
			d = h.Sum(nil)
		}
		b = append(b, d...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func ucs2z(s string) []byte {
	var b []byte
	for _, c := range utf16.Encode([]rune(s + "\x00")) {
		b = append(b, byte(c), byte(c>>8))
	}
	return b
}

// review 9: a StartupLocality event is the log's first PCR 0 statement
// (TCG PC Client PFP: before any PCR 0 measurement). The replay reset PCR 0
// wherever one appeared, so a log could put any data-bound PCR 0 events
// before a StartupLocality (they replay to nothing), then the measured
// events; the S-CRTM version fact then came from the inserted event. Here a
// device that measured "EVIL Virtual Firmware v0" inserts a bound "GCE
// Virtual Firmware v1" event and a StartupLocality before its real log:
// the log must be refused, not pass firmware_version.
func TestStartupLocalityCannotResetPCR0(t *testing.T) {
	raw := forgeSCRTM(t, readVector(t, ubuntuLog), "EVIL Virtual Firmware v0")
	measured, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	banks := []struct {
		id uint16
		h  crypto.Hash
	}{}
	for _, a := range measured.BankInfo {
		h, ok := bankHashes[a.Name]
		if !ok {
			t.Fatalf("bank %v", a)
		}
		banks = append(banks, struct {
			id uint16
			h  crypto.Hash
		}{a.AlgID, h})
	}
	specEnd := 32 + int(binary.LittleEndian.Uint32(raw[28:32]))
	var forged []byte
	forged = append(forged, raw[:specEnd]...)
	forged = append(forged, agileEvent(0, evSCRTMVersion, ucs2z("GCE Virtual Firmware v1"), false, banks)...)
	forged = append(forged, agileEvent(0, evNoAction, append([]byte("StartupLocality\x00"), byte(measured.Facts.StartupLocality)), true, banks)...)
	forged = append(forged, raw[specEnd:]...)

	p := &Policy{Groups: []Group{{Name: "edge", Mode: ModeAuto, Require: Requirements{FirmwareVersions: []string{"GCE Virtual Firmware v1"}}}}}
	bank := "sha256"
	quote := quoteOf(measured, bank) // what the TPM holds: the measured boot
	l, err := ParseEventLog(forged)
	if err == nil {
		err = l.Verify(quote)
	}
	if err == nil {
		d := p.Evaluate(&Input{PCRs: map[string]map[int][]byte{bank: measured.Replay(bank)}, Log: l})
		t.Fatalf("a log with PCR 0 events before a StartupLocality was accepted: S-CRTM version %q, firmware_version passed=%v", l.Facts.SCRTMVersion, d.Passed)
	}
	if !errors.Is(err, ErrEventLogInvalid) {
		t.Fatalf("got %v, want ErrEventLogInvalid", err)
	}

	// Control: the StartupLocality first, then the same events, is a
	// valid log (it replays to a locality-3 PCR 0).
	var ok []byte
	ok = append(ok, raw[:specEnd]...)
	ok = append(ok, agileEvent(0, evNoAction, append([]byte("StartupLocality\x00"), 3), true, banks)...)
	ok = append(ok, raw[specEnd:]...)
	l, err = ParseEventLog(ok)
	if err != nil {
		t.Fatalf("control: %v", err)
	}
	if l.Facts.StartupLocality != 3 || bytes.Equal(l.Replay(bank)[0], measured.Replay(bank)[0]) {
		t.Fatalf("control: locality %d, PCR 0 not replayed from locality 3", l.Facts.StartupLocality)
	}
}

// review 9: the quote's PCR digest is a hash over the concatenated values,
// so values of the wrong length that concatenate to the same bytes (one
// PCR's bytes moved into its neighbour) verify against it. attest must
// refuse a value that is not one digest of the quoted bank long, not rely
// on its caller (the server's convertPCRs checks; the offline re-check and
// library users did not).
func TestQuotedPCRLength(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ak := &goattest.AKPublic{Public: &key.PublicKey, Hash: crypto.SHA256}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	honest := []goattest.PCR{pcr(crypto.SHA256, 0, 1), pcr(crypto.SHA256, 4, 2), pcr(crypto.SHA256, 7, 3)}
	sel := []int{0, 4, 7}
	q := quoteFor(t, key, nonce, tpm2.AlgSHA256, sel, honest)
	if err := verifyQuote(&Result{}, Completion{AK: ak, Nonce: nonce, Quote: q, PCRs: honest}); err != nil {
		t.Fatalf("control: %v", err)
	}
	// PCR 0 swallows PCR 4's bytes, PCR 4 takes PCR 7's, PCR 7 is empty.
	shifted := []goattest.PCR{
		{Index: 0, DigestAlg: crypto.SHA256, Digest: append(append([]byte(nil), honest[0].Digest...), honest[1].Digest...)},
		{Index: 4, DigestAlg: crypto.SHA256, Digest: honest[2].Digest},
		{Index: 7, DigestAlg: crypto.SHA256, Digest: []byte{}},
	}
	r := &Result{}
	err = verifyQuote(r, Completion{AK: ak, Nonce: nonce, Quote: q, PCRs: shifted})
	if err == nil {
		t.Fatalf("shifted PCR values verified: %x", r.PCRs[1].Digest)
	}
	if !errors.Is(err, ErrPCRMismatch) {
		t.Fatalf("got %v, want ErrPCRMismatch", err)
	}
	// The stored-evidence filter refuses them too.
	if got, err := QuotedPCRs(q.Quote, shifted); !errors.Is(err, ErrPCRMismatch) {
		t.Fatalf("QuotedPCRs of shifted values: %v %v", got, err)
	}
}

// review 9: an event's type is not measured, only its digest. A device
// whose log shows a boot application the group does not allow relabels
// that event (here EV_POST_CODE; EV_EFI_ACTION or EV_SEPARATOR did the
// same, dropped as "not bound" with only a Problem): the replay is
// unchanged, the application vanished from the facts, and boot_digests
// judged only the allowed ones. An event in PCR 4 whose digest is not the
// hash of its data is an image measurement whatever its type says.
func TestBootDigestsSurviveRelabelling(t *testing.T) {
	raw := readVector(t, ubuntuLog)
	l, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	bank := "sha256"
	if err := l.Verify(quoteOf(l, bank)); err != nil {
		t.Fatal(err)
	}
	if len(l.Facts.BootApps) < 2 {
		t.Fatalf("vector has %d boot applications", len(l.Facts.BootApps))
	}
	// The group allows every boot application but the first (the
	// tampered shim).
	var allowed []string
	for _, app := range l.Facts.BootApps[1:] {
		allowed = append(allowed, app.Digests[bank])
	}
	p := &Policy{Groups: []Group{{Name: "edge", Mode: ModeAuto, Require: Requirements{BootDigests: allowed}}}}
	in := &Input{PCRs: map[string]map[int][]byte{bank: l.Replay(bank)}, Log: l}
	if d := p.Evaluate(in); d.Passed {
		t.Fatal("control: the unallowed first boot application passed")
	}

	hdr := []byte{4, 0, 0, 0, 0x03, 0, 0, 0x80} // PCR 4, EV_EFI_BOOT_SERVICES_APPLICATION
	i := bytes.Index(raw, hdr)
	if i < 0 {
		t.Fatal("no boot application header")
	}
	for _, typ := range []uint32{0x1 /* EV_POST_CODE */, evEFIAction, evSeparator, 0xd /* EV_IPL */} {
		forged := bytes.Clone(raw)
		binary.LittleEndian.PutUint32(forged[i+4:], typ)
		f, err := ParseEventLog(forged)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Verify(quoteOf(l, bank)); err != nil {
			t.Fatalf("relabelled log: %v", err)
		}
		d := p.Evaluate(&Input{PCRs: map[string]map[int][]byte{bank: l.Replay(bank)}, Log: f})
		if d.Passed {
			t.Fatalf("type 0x%x: a boot application relabelled passed boot_digests (%d apps judged)", typ, len(f.Facts.BootApps))
		}
	}
}

// review 9: PCRs 0-7 stay extendable by the OS after boot (locality 0), so
// a device can append a well-formed S-CRTM version event to PCR 0 after
// the firmware's separator: its digest is the hash of its data and the
// replay matches. The firmware version is the one measured before PCR 0's
// separator; later ones are not firmware measurements.
func TestSCRTMVersionOnlyBeforeSeparator(t *testing.T) {
	raw := forgeSCRTM(t, readVector(t, ubuntuLog), "EVIL Virtual Firmware v0")
	measured, err := ParseEventLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	var banks []struct {
		id uint16
		h  crypto.Hash
	}
	for _, a := range measured.BankInfo {
		banks = append(banks, struct {
			id uint16
			h  crypto.Hash
		}{a.AlgID, bankHashes[a.Name]})
	}
	p := &Policy{Groups: []Group{{Name: "edge", Mode: ModeAuto, Require: Requirements{FirmwareVersions: []string{"GCE Virtual Firmware v1"}}}}}
	bank := "sha256"
	for name, tc := range map[string]struct{ typ, pcr uint32 }{"as is": {0, 0}, "separator relabelled": {0x1, 0}, "in PCR 16": {0, 16}} {
		typ := tc.typ
		t.Run(name, func(t *testing.T) {
			log := bytes.Clone(raw)
			if typ != 0 {
				// Hide PCR 0's separator by its type.
				hdr := []byte{0, 0, 0, 0, evSeparator, 0, 0, 0}
				i := bytes.Index(log, hdr)
				if i < 0 {
					t.Fatal("no PCR 0 separator")
				}
				binary.LittleEndian.PutUint32(log[i+4:], typ)
			}
			// tpm2_pcrextend from the OS, and the event appended to the log.
			log = append(log, agileEvent(tc.pcr, evSCRTMVersion, ucs2z("GCE Virtual Firmware v1"), false, banks)...)
			l, err := ParseEventLog(log)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Verify(quoteOf(l, bank)); err != nil {
				t.Fatalf("the appended log replays to the extended PCRs: %v", err)
			}
			d := p.Evaluate(&Input{PCRs: map[string]map[int][]byte{bank: l.Replay(bank)}, Log: l})
			if d.Passed || l.Facts.SCRTMVersion != "" {
				t.Fatalf("S-CRTM version %q from an event after PCR 0's separator; firmware_version passed=%v", l.Facts.SCRTMVersion, d.Passed)
			}
		})
	}
	// Control: the honest log's version is a fact.
	good, err := ParseEventLog(readVector(t, ubuntuLog))
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Verify(quoteOf(good, bank)); err != nil || good.Facts.SCRTMVersion != "GCE Virtual Firmware v1" {
		t.Fatalf("control: %v, version %q", err, good.Facts.SCRTMVersion)
	}
}

// review 9: a refused CSR's requested extensions are named in the check's
// detail, which the record keeps; a CSR of thousands of extensions made a
// detail of hundreds of kilobytes in a committed record. A few are named,
// the rest counted.
func TestCSRExtensionsDetailBounded(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var exts []pkix.Extension
	for i := range 5000 {
		exts = append(exts, pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, i + 1}, Value: []byte{5, 0}})
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{ExtraExtensions: exts}, key)
	if err != nil {
		t.Fatal(err)
	}
	r := &Result{}
	err = verifyCSR(r, der, &key.PublicKey, "", "")
	if !errors.Is(err, ErrCSRInvalid) {
		t.Fatalf("got %v, want ErrCSRInvalid", err)
	}
	if n := len(r.Checks[len(r.Checks)-1].Detail); n > 2000 {
		t.Fatalf("the CSR check's detail is %d bytes", n)
	}
}

// review 9: the quote's and the certification's qualifying data are read
// before their signatures are checked, and a mismatch names them in the
// recorded detail: 60 KB of crafted extra data made 120 KB of hex in a
// committed record. Details name a bounded prefix.
func TestQualifyingDataDetailBounded(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ak := &goattest.AKPublic{Public: &key.PublicKey, Hash: crypto.SHA256}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	big := bytes.Repeat([]byte{0xee}, 60000)

	att := encode(t, tpm2.AttestationData{Magic: tpmGenerated, Type: tpm2.TagAttestQuote, QualifiedSigner: zeroName, ExtraData: big,
		AttestedQuoteInfo: &tpm2.QuoteInfo{PCRSelection: tpm2.PCRSelection{Hash: tpm2.AlgSHA256, PCRs: []int{0}}, PCRDigest: make([]byte, 32)}})
	r := &Result{}
	err = verifyQuote(r, Completion{AK: ak, Nonce: nonce, Quote: goattest.Quote{Quote: att, Signature: []byte{0}}, PCRs: []goattest.PCR{pcr(crypto.SHA256, 0, 1)}})
	if !errors.Is(err, ErrQuoteNonce) {
		t.Fatalf("got %v, want ErrQuoteNonce", err)
	}
	if n := len(r.Checks[len(r.Checks)-1].Detail); n > 1000 {
		t.Fatalf("the quote nonce check's detail is %d bytes", n)
	}

	cert := encode(t, tpm2.AttestationData{Magic: tpmGenerated, Type: tpm2.TagAttestCertify, QualifiedSigner: zeroName, ExtraData: big,
		AttestedCertifyInfo: &tpm2.CertifyInfo{Name: zeroName, QualifiedName: zeroName}})
	r = &Result{}
	_, err = verifyCertify(r, Completion{AK: ak, DeviceKey: goattest.CertificationParameters{CreateAttestation: cert}, CertifyQualifyingData: nonce})
	if !errors.Is(err, ErrCertifyBinding) {
		t.Fatalf("got %v, want ErrCertifyBinding", err)
	}
	if n := len(r.Checks[len(r.Checks)-1].Detail); n > 1000 {
		t.Fatalf("the certify binding check's detail is %d bytes", n)
	}
}

// specIDLog builds a crypto-agile log whose Spec ID event lists algs (ID,
// digest size), followed by events.
func specIDLog(algs [][2]uint16, events ...[]byte) []byte {
	var data []byte
	data = append(data, "Spec ID Event03\x00"...)
	data = binary.LittleEndian.AppendUint32(data, 0) // platform class
	data = append(data, 0, 2, 0, 2)                  // minor, major, errata, uintnSize
	data = binary.LittleEndian.AppendUint32(data, uint32(len(algs)))
	for _, a := range algs {
		data = binary.LittleEndian.AppendUint16(data, a[0])
		data = binary.LittleEndian.AppendUint16(data, a[1])
	}
	data = append(data, 0) // vendor info size
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, evNoAction)
	b = append(b, make([]byte, 20)...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	for _, e := range events {
		b = append(b, e...)
	}
	return b
}

// review 9: a Spec ID event may list one algorithm twice; the parser laid
// out each bank's digests once per listing and read past the end of them,
// a panic on the enrollment path (after activation, so a 500 and no
// record of the refusal). Such a log is refused.
func TestEventLogDuplicateBankRefused(t *testing.T) {
	sha256Bank := []struct {
		id uint16
		h  crypto.Hash
	}{{0x0b, crypto.SHA256}}
	ev := agileEvent(0, evSeparator, []byte{0, 0, 0, 0}, false, sha256Bank)
	// Control: listed once, the log parses.
	if _, err := ParseEventLog(specIDLog([][2]uint16{{0x0b, 32}}, ev)); err != nil {
		t.Fatalf("control: %v", err)
	}
	err := noPanic(t, "ParseEventLog", func() error {
		_, err := ParseEventLog(specIDLog([][2]uint16{{0x0b, 32}, {0x0b, 32}}, ev))
		return err
	})
	if !errors.Is(err, ErrEventLogInvalid) {
		t.Fatalf("got %v, want ErrEventLogInvalid", err)
	}
}

// review 9: the Spec ID event states each bank's digest size; a size that
// is not the hash's is refused, not replayed as if it were.
func TestEventLogDigestSizeRefused(t *testing.T) {
	ev := agileEvent(0, evSeparator, []byte{0, 0, 0, 0}, false, []struct {
		id uint16
		h  crypto.Hash
	}{{0x0b, crypto.SHA1}}) // a 20-byte digest under the SHA-256 ID
	_, err := ParseEventLog(specIDLog([][2]uint16{{0x0b, 20}}, ev))
	if !errors.Is(err, ErrEventLogInvalid) {
		t.Fatalf("got %v, want ErrEventLogInvalid", err)
	}
}
