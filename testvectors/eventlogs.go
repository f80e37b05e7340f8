package testvectors

import (
	"bytes"
	"crypto"
	"crypto/sha512"
	"encoding/binary"
	"fmt"

	goattest "github.com/google/go-attestation/attest"
	tpm2 "github.com/google/go-tpm/tpm2"
)

// LogBank is one digest bank of a crypto-agile log: a TPM_ALG_ID and the
// digest size the Spec ID event declares for it.
type LogBank struct {
	ID   uint16
	Size int
}

// LogEvent is one TCG_PCR_EVENT2; Digests holds one digest per bank ID
// (a bank it lacks is left out of the event).
type LogEvent struct {
	PCR, Type uint32
	Data      []byte
	Digests   map[uint16][]byte
}

// WriteAgileLog serialises a crypto-agile TCG event log (PC Client PFP):
// a TCG_PCClientPCREvent carrying the Spec ID event (TCG_EfiSpecIDEvent,
// version 2.0, uintnSize 2 as UEFI firmware writes it), then the events,
// each with its digests in the banks' order.
func WriteAgileLog(banks []LogBank, events []LogEvent) []byte {
	var spec bytes.Buffer
	spec.WriteString("Spec ID Event03\x00")
	le := func(w *bytes.Buffer, v any) { _ = binary.Write(w, binary.LittleEndian, v) }
	le(&spec, uint32(0))           // platformClass: client
	spec.Write([]byte{0, 2, 0, 2}) // specVersionMinor, Major, errata, uintnSize
	le(&spec, uint32(len(banks)))
	for _, b := range banks {
		le(&spec, b.ID)
		le(&spec, uint16(b.Size))
	}
	spec.WriteByte(0) // vendorInfoSize
	var out bytes.Buffer
	le(&out, uint32(0))         // PCR
	le(&out, uint32(3))         // EV_NO_ACTION
	out.Write(make([]byte, 20)) // SHA-1 digest: zero
	le(&out, uint32(spec.Len()))
	out.Write(spec.Bytes())
	for _, e := range events {
		le(&out, e.PCR)
		le(&out, e.Type)
		le(&out, uint32(len(e.Digests)))
		for _, b := range banks {
			d, ok := e.Digests[b.ID]
			if !ok {
				continue
			}
			le(&out, b.ID)
			if len(d) != b.Size {
				panic(fmt.Sprintf("event digest for bank 0x%04x is %d bytes, not %d", b.ID, len(d), b.Size))
			}
			out.Write(d)
		}
		le(&out, uint32(len(e.Data)))
		out.Write(e.Data)
	}
	return out.Bytes()
}

// ReadAgileLog reads a crypto-agile log's banks and events with
// go-attestation's parser (so that the logs derived here do not depend on
// the parser they test).
func ReadAgileLog(log []byte) ([]LogBank, []LogEvent, error) {
	el, err := goattest.ParseEventLog(log)
	if err != nil {
		return nil, nil, err
	}
	var banks []LogBank
	var perBank [][]goattest.Event
	for _, a := range el.Algs {
		h, err := tpm2.TPMIAlgHash(a).Hash()
		if err != nil {
			return nil, nil, err
		}
		banks = append(banks, LogBank{ID: uint16(a), Size: h.Size()})
		perBank = append(perBank, el.Events(a))
	}
	events := make([]LogEvent, len(perBank[0]))
	for i, e := range perBank[0] {
		events[i] = LogEvent{PCR: uint32(e.Index), Type: uint32(e.Type), Data: e.Data, Digests: map[uint16][]byte{}}
		for j, b := range banks {
			events[i].Digests[b.ID] = perBank[j][i].Digest
		}
	}
	return banks, events, nil
}

// SM3Bank is the TPM_ALG_ID of SM3_256, a bank real TPMs for markets that
// require SM3 allocate; its digests are 32 bytes.
const SM3Bank = 0x0012

// FillerDigest is what the generated logs put in a bank this module does
// not implement (SM3_256): not an SM3 digest, but SHA-512 over the event's
// index and data, cut to size, so each is distinct and reproducible.
func FillerDigest(i int, data []byte, size int) []byte {
	h := sha512.New()
	_ = binary.Write(h, binary.LittleEndian, uint32(i))
	h.Write(data)
	return h.Sum(nil)[:size]
}

// WithSM3Bank re-serialises a crypto-agile log with an SM3_256 bank
// declared second in its Spec ID event and carried by every event (filler
// digests, see FillerDigest); the other banks are unchanged.
func WithSM3Bank(base []byte) ([]byte, error) {
	banks, events, err := ReadAgileLog(base)
	if err != nil {
		return nil, err
	}
	banks = append(banks[:1], append([]LogBank{{ID: SM3Bank, Size: 32}}, banks[1:]...)...)
	for i := range events {
		events[i].Digests[SM3Bank] = FillerDigest(i, events[i].Data, 32)
	}
	return WriteAgileLog(banks, events), nil
}

// HCRTMImage is the data the generated H-CRTM log's H-CRTM measured.
var HCRTMImage = []byte("gatehouse test vector: H-CRTM image")

// WithStartupLocality re-serialises a crypto-agile log with a StartupLocality
// EV_NO_ACTION event (TCG_EfiStartupLocalityEvent) first, and, when hcrtm
// is set, an EV_EFI_HCRTM_EVENT in PCR 0 after it ("HCRTM", digests of
// HCRTMImage in each bank), as PC Client firmware with an H-CRTM logs them.
func WithStartupLocality(base []byte, locality byte, hcrtm bool) ([]byte, error) {
	banks, events, err := ReadAgileLog(base)
	if err != nil {
		return nil, err
	}
	pre := []LogEvent{{PCR: 0, Type: 3, Data: append([]byte("StartupLocality\x00"), locality), Digests: map[uint16][]byte{}}}
	for _, b := range banks {
		pre[0].Digests[b.ID] = make([]byte, b.Size) // EV_NO_ACTION digests are zero
	}
	if hcrtm {
		e := LogEvent{PCR: 0, Type: 0x80000010, Data: []byte("HCRTM"), Digests: map[uint16][]byte{}}
		for _, b := range banks {
			h, _ := tpm2.TPMIAlgHash(b.ID).Hash()
			e.Digests[b.ID] = hashOf(h, HCRTMImage)
		}
		pre = append(pre, e)
	}
	return WriteAgileLog(banks, append(pre, events...)), nil
}

func hashOf(h crypto.Hash, b []byte) []byte {
	hh := h.New()
	hh.Write(b)
	return hh.Sum(nil)
}

// GeneratedLogs are the logs testvectors/mkeventlogs writes, by path under
// testvectors/, from the real log they derive from.
func GeneratedLogs(base []byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	var err error
	if out["eventlogs/generated/sm3-bank.bin"], err = WithSM3Bank(base); err != nil {
		return nil, err
	}
	if out["eventlogs/generated/hcrtm-locality4.bin"], err = WithStartupLocality(base, 4, true); err != nil {
		return nil, err
	}
	if out["eventlogs/generated/startup-locality3.bin"], err = WithStartupLocality(base, 3, false); err != nil {
		return nil, err
	}
	return out, nil
}

// GeneratedLogsBase is the real log GeneratedLogs derives from.
const GeneratedLogsBase = "eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"
