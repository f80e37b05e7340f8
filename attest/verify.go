package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strings"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/legacy/tpm2/credactivation"
	tpm2new "github.com/google/go-tpm/tpm2"
)

// Check names, as recorded in attestation records.
const (
	CheckEKChain           = "ek_chain"
	CheckAK                = "ak_parameters"
	CheckActivation        = "credential_activation"
	CheckQuoteNonce        = "quote_nonce"
	CheckPCRDigest         = "pcr_digest"
	CheckQuoteSignature    = "quote_signature"
	CheckEventLog          = "event_log_replay"
	CheckCertifyBinding    = "device_key_binding"
	CheckCertify           = "device_key_certification"
	CheckCSRSignature      = "csr_signature"
	CheckCSRKey            = "csr_key"
	activationSymBlockSize = 16 // AES-128 inner wrapping, as go-attestation uses
)

// Check is the outcome of one verification step.
type Check struct {
	Name   string
	Passed bool
	Detail string
}

// AK is a verified attestation key.
type AK struct {
	Public       *goattest.AKPublic
	PublicSHA256 string
	Algorithm    string // "rsa" | "ecdsa"
	params       goattest.AttestationParameters
}

// VerifyAK checks that the AK is a restricted signing key created inside a
// TPM: its creation attestation is TPM-generated, self-signed, names this key,
// and the key is fixedTPM, fixedParent, sensitiveDataOrigin and restricted.
func VerifyAK(p goattest.AttestationParameters) (*AK, error) {
	// Parsed first: go-attestation's check dereferences the key's signing
	// scheme and the signature's structure without looking (issue 9).
	pub, err := goattest.ParseAKPublic(p.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAKInvalid, err)
	}
	if err := checkSignature(p.CreateSignature, pub.Public, pub.Hash); err != nil {
		return nil, fmt.Errorf("%w: creation signature: %v", ErrAKInvalid, err)
	}
	ap := goattest.ActivationParameters{AK: p}
	if err := ap.CheckAKParameters(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAKInvalid, err)
	}
	sum, err := PublicKeySHA256(pub.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAKInvalid, err)
	}
	return &AK{Public: pub, PublicSHA256: sum, Algorithm: KeyAlgorithm(pub.Public), params: p}, nil
}

// MakeCredential returns a credential-activation challenge that only the TPM
// holding ek can open, and only for the AK whose name it names, plus the
// secret it wraps. ekArea, the EK's TPM2B_PUBLIC, is needed for any EK but
// the default RSA-2048 template: it must hold ek's key and be a restricted
// decryption key, and its name algorithm and symmetric scheme shape the
// wrapping. Credential and Secret are TPM2B-encoded, as go-attestation's
// ActivateCredential expects.
func (ak *AK) MakeCredential(ek crypto.PublicKey, ekArea, secret []byte) (*goattest.EncryptedCredential, error) {
	att, err := tpm2.DecodeAttestationData(ak.params.CreateAttestation)
	if err != nil || att.AttestedCreationInfo == nil || att.AttestedCreationInfo.Name.Digest == nil {
		return nil, fmt.Errorf("%w: creation attestation has no name", ErrAKInvalid)
	}
	name := att.AttestedCreationInfo.Name.Digest
	if len(ekArea) == 0 {
		cred, encSecret, err := credactivation.Generate(name, ek, activationSymBlockSize, secret)
		if err != nil {
			return nil, fmt.Errorf("%w: make credential: %v", ErrEKInvalid, err)
		}
		return &goattest.EncryptedCredential{Credential: cred, Secret: encSecret}, nil
	}
	area, err := tpm2new.Unmarshal[tpm2new.TPM2BPublic](ekArea)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public area: %v", ErrEKInvalid, err)
	}
	pub, err := area.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: EK public area: %v", ErrEKInvalid, err)
	}
	if !pub.ObjectAttributes.Restricted || !pub.ObjectAttributes.Decrypt || pub.ObjectAttributes.SignEncrypt {
		return nil, fmt.Errorf("%w: the EK public area is not a restricted decryption key", ErrEKInvalid)
	}
	areaKey, err := ParseTPM2BPublic(ekArea)
	if err != nil {
		return nil, err
	}
	if !PublicKeysEqual(areaKey, ek) {
		return nil, fmt.Errorf("%w: the EK public area holds a different key than the EK", ErrEKInvalid)
	}
	kem, err := tpm2new.ImportEncapsulationKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: EK public area: %v", ErrEKInvalid, err)
	}
	nameBytes := binary.BigEndian.AppendUint16(nil, uint16(name.Alg))
	nameBytes = append(nameBytes, name.Value...)
	idObject, encSecret, err := tpm2new.CreateCredential(rand.Reader, kem, nameBytes, secret)
	if err != nil {
		return nil, fmt.Errorf("%w: make credential: %v", ErrEKInvalid, err)
	}
	return &goattest.EncryptedCredential{Credential: tpm2b(idObject), Secret: tpm2b(encSecret)}, nil
}

func tpm2b(b []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...) }

// Completion is the evidence of an enrollment's second round trip, together
// with what the first round trip fixed (AK, nonce, secret).
type Completion struct {
	AK                    *goattest.AKPublic
	Nonce                 []byte
	ExpectedSecret        []byte
	ActivatedSecret       []byte
	Quote                 goattest.Quote
	PCRs                  []goattest.PCR
	EventLog              []byte // optional
	DeviceKey             goattest.CertificationParameters
	CertifyQualifyingData []byte
	CSR                   []byte
}

// Result describes what VerifyCompletion established. On failure it holds the
// checks that passed and the one that failed.
type Result struct {
	Checks             []Check
	DeviceKey          crypto.PublicKey
	DeviceKeySHA256    string
	DeviceKeyAlgorithm string
	CSR                *x509.CertificateRequest
	EventLogEvents     int
	EventLog           *EventLog // parsed and verified against the quote; nil when none was sent
	// PCRs are the quoted values, in index order: the quote's one bank
	// (QuotedBank) and its selection (QuotedPCRs). Nothing else the device
	// sent about PCRs is evidence.
	PCRs       []goattest.PCR
	QuotedBank string
	QuotedPCRs []int
}

func (r *Result) pass(name, detail string) { r.Checks = append(r.Checks, Check{name, true, detail}) }

func (r *Result) fail(name string, err error) error {
	r.Checks = append(r.Checks, Check{name, false, err.Error()})
	return err
}

// VerifyCompletion verifies the second round trip: activation, quote, event
// log, device-key certification and CSR, in that order. It stops at the
// first failure and returns an error wrapping one of the package's sentinels.
func VerifyCompletion(c Completion) (*Result, error) {
	r := &Result{}

	if len(c.ExpectedSecret) == 0 || subtle.ConstantTimeCompare(c.ExpectedSecret, c.ActivatedSecret) != 1 {
		return r, r.fail(CheckActivation, fmt.Errorf("%w: the activated secret is wrong, so the AK is not in the TPM that holds the EK", ErrActivationFailed))
	}
	r.pass(CheckActivation, "")
	return r, verifyEvidence(r, c)
}

// VerifyEvidence re-checks a completion's stored evidence: quote, event
// log, device-key certification and CSR. Credential activation is not
// among them: it was an exchange with the TPM and cannot be repeated from
// evidence, so an offline re-check trusts the record for it.
func VerifyEvidence(c Completion) (*Result, error) {
	r := &Result{}
	return r, verifyEvidence(r, c)
}

func verifyEvidence(r *Result, c Completion) error {
	if err := verifyQuote(r, c); err != nil {
		return err
	}
	if err := verifyEventLog(r, c.EventLog); err != nil {
		return err
	}
	pub, err := verifyCertify(r, c)
	if err != nil {
		return err
	}
	return verifyCSR(r, c.CSR, pub, "the CSR is signed by a different key than the one the TPM certified", "")
}

// verifyEventLog parses a log, if one was sent, and binds it to the quoted
// PCRs in r.
func verifyEventLog(r *Result, log []byte) error {
	if len(log) == 0 {
		return nil
	}
	el, err := ParseEventLog(log)
	if err != nil {
		return r.fail(CheckEventLog, err)
	}
	if err := el.Verify(r.PCRs); err != nil {
		return r.fail(CheckEventLog, err)
	}
	r.EventLog, r.EventLogEvents = el, len(el.Events)
	r.pass(CheckEventLog, fmt.Sprintf("%d events replay to the quoted PCRs", len(el.Events)))
	return nil
}

// verifyCSR checks the CSR's signature, that it asks for nothing (the
// appliance alone decides a certificate's names and constraints, so a CSR
// requesting extensions is refused rather than silently trimmed), and that
// its key is key.
func verifyCSR(r *Result, der []byte, key crypto.PublicKey, mismatch, passDetail string) error {
	csr, err := x509.ParseCertificateRequest(der)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err == nil && len(csr.Extensions) > 0 {
		// A few are named, the rest counted: the detail is recorded.
		const maxNamed = 8
		oids := make([]string, 0, maxNamed+1)
		for _, e := range csr.Extensions[:min(len(csr.Extensions), maxNamed)] {
			oids = append(oids, e.Id.String())
		}
		if n := len(csr.Extensions) - maxNamed; n > 0 {
			oids = append(oids, fmt.Sprintf("and %d more", n))
		}
		err = fmt.Errorf("the CSR requests extensions %v; the appliance decides names and constraints, so a device CSR carries only its key and subject", oids)
	}
	if err != nil {
		return r.fail(CheckCSRSignature, fmt.Errorf("%w: %v", ErrCSRInvalid, err))
	}
	r.pass(CheckCSRSignature, "")
	if !PublicKeysEqual(csr.PublicKey, key) {
		return r.fail(CheckCSRKey, fmt.Errorf("%w: %s", ErrCSRKeyMismatch, mismatch))
	}
	r.pass(CheckCSRKey, passDetail)
	r.CSR = csr
	return nil
}

func verifyQuote(r *Result, c Completion) error {
	att, err := tpm2.DecodeAttestationData(c.Quote.Quote)
	if err != nil || att.Type != tpm2.TagAttestQuote || att.AttestedQuoteInfo == nil {
		return r.fail(CheckQuoteSignature, fmt.Errorf("%w: not a TPM quote", ErrQuoteInvalid))
	}
	if !bytes.Equal(att.ExtraData, c.Nonce) {
		return r.fail(CheckQuoteNonce, fmt.Errorf("%w: quote nonce %s, session nonce %x", ErrQuoteNonce, hexPrefix(att.ExtraData), c.Nonce))
	}
	r.pass(CheckQuoteNonce, "")

	sel := att.AttestedQuoteInfo.PCRSelection
	hashAlg, err := sel.Hash.Hash()
	if err != nil {
		return r.fail(CheckPCRDigest, fmt.Errorf("%w: quoted bank %v: %v", ErrQuoteInvalid, sel.Hash, err))
	}
	bank := BankName(hashAlg)
	indexes := append([]int(nil), sel.PCRs...)
	sort.Ints(indexes)
	selected := make(map[int]bool, len(indexes))
	for _, i := range indexes {
		selected[i] = true
	}
	// The quote's bank and selection define the only PCRs that exist: a
	// value outside them is bound to nothing and is refused, not ignored.
	byIndex := make(map[int][]byte, len(indexes))
	var unquoted []string
	for _, p := range c.PCRs {
		_, dup := byIndex[p.Index]
		switch {
		case p.DigestAlg != hashAlg || !selected[p.Index]:
			unquoted = append(unquoted, fmt.Sprintf("PCR %d (%s)", p.Index, BankName(p.DigestAlg)))
		case len(p.Digest) != hashAlg.Size():
			// The quoted digest hashes the values concatenated: values of
			// other lengths could move bytes from one PCR to another.
			return r.fail(CheckPCRDigest, fmt.Errorf("%w: %s PCR %d is %d bytes, not one %s digest", ErrPCRMismatch, bank, p.Index, len(p.Digest), bank))
		case dup:
			return r.fail(CheckPCRDigest, fmt.Errorf("%w: %s PCR %d was sent twice", ErrPCRMismatch, bank, p.Index))
		default:
			byIndex[p.Index] = p.Digest
		}
	}
	if len(unquoted) > 0 {
		if len(unquoted) > 8 {
			unquoted = append(unquoted[:8], fmt.Sprintf("%d more", len(unquoted)-8))
		}
		return r.fail(CheckPCRDigest, fmt.Errorf("%w: the quote covers %s PCRs %v; also sent: %s", ErrPCRNotQuoted, bank, indexes, strings.Join(unquoted, ", ")))
	}
	h := c.AK.Hash.New()
	var missing []int
	quoted := make([]goattest.PCR, 0, len(indexes))
	for _, i := range indexes {
		d, ok := byIndex[i]
		if !ok {
			missing = append(missing, i)
		}
		h.Write(d)
		quoted = append(quoted, goattest.PCR{Index: i, Digest: d, DigestAlg: hashAlg})
	}
	if len(missing) > 0 {
		return r.fail(CheckPCRDigest, fmt.Errorf("%w: quoted PCRs %v were not sent", ErrPCRMismatch, missing))
	}
	if !bytes.Equal(h.Sum(nil), att.AttestedQuoteInfo.PCRDigest) {
		return r.fail(CheckPCRDigest, fmt.Errorf("%w: the digest of the sent %v PCRs %v differs from the quoted digest", ErrPCRMismatch, hashAlg, indexes))
	}
	r.pass(CheckPCRDigest, fmt.Sprintf("%v PCRs %v", hashAlg, indexes))

	if err := checkSignature(c.Quote.Signature, c.AK.Public, c.AK.Hash); err != nil {
		return r.fail(CheckQuoteSignature, fmt.Errorf("%w: %v", ErrQuoteInvalid, err))
	}
	if err := c.AK.Verify(c.Quote, quoted, c.Nonce); err != nil {
		return r.fail(CheckQuoteSignature, fmt.Errorf("%w: %v", ErrQuoteInvalid, err))
	}
	r.pass(CheckQuoteSignature, "")
	r.PCRs, r.QuotedBank, r.QuotedPCRs = quoted, bank, indexes
	return nil
}

// QuotedPCRs returns the values among pcrs that a quote's TPMS_ATTEST
// covers: its one bank and its selection. It does not verify the quote:
// it re-applies, to evidence verified earlier, the rule that nothing
// outside the quote's selection is evidence. A quoted value that is not
// one digest of the bank long is refused (ErrPCRMismatch).
func QuotedPCRs(quote []byte, pcrs []goattest.PCR) ([]goattest.PCR, error) {
	att, err := tpm2.DecodeAttestationData(quote)
	if err != nil || att.Type != tpm2.TagAttestQuote || att.AttestedQuoteInfo == nil {
		return nil, fmt.Errorf("%w: not a TPM quote", ErrQuoteInvalid)
	}
	sel := att.AttestedQuoteInfo.PCRSelection
	hashAlg, err := sel.Hash.Hash()
	if err != nil {
		return nil, fmt.Errorf("%w: quoted bank %v: %v", ErrQuoteInvalid, sel.Hash, err)
	}
	var out []goattest.PCR
	for _, p := range pcrs {
		if p.DigestAlg == hashAlg && slices.Contains(sel.PCRs, p.Index) {
			if len(p.Digest) != hashAlg.Size() {
				return nil, fmt.Errorf("%w: PCR %d is %d bytes, not one %s digest", ErrPCRMismatch, p.Index, len(p.Digest), BankName(hashAlg))
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// checkSignature decodes a TPMT_SIGNATURE and checks that its scheme is the
// one key signs with (RSASSA for RSA, ECDSA for ECC) and its hash is hash.
// go-attestation reads the RSA or ECC part of a signature by the key's type
// and dereferences nil when the signature is of the other kind, so every
// TPM signature passes here before it reaches the library.
func checkSignature(sig []byte, key crypto.PublicKey, hash crypto.Hash) error {
	s, err := tpm2.DecodeSignature(bytes.NewBuffer(sig))
	if err != nil {
		return err
	}
	var alg tpm2.Algorithm
	switch key.(type) {
	case *rsa.PublicKey:
		if s.Alg != tpm2.AlgRSASSA || s.RSA == nil {
			return fmt.Errorf("a signature of algorithm 0x%x for an RSA key (RSASSA expected)", uint16(s.Alg))
		}
		alg = s.RSA.HashAlg
	case *ecdsa.PublicKey:
		if s.Alg != tpm2.AlgECDSA || s.ECC == nil || s.ECC.R == nil || s.ECC.S == nil {
			return fmt.Errorf("a signature of algorithm 0x%x for an ECC key (ECDSA expected)", uint16(s.Alg))
		}
		alg = s.ECC.HashAlg
	default:
		return fmt.Errorf("unsupported key type %T", key)
	}
	if h, err := alg.Hash(); err != nil || h != hash {
		return fmt.Errorf("the signature's hash 0x%x is not the key's %v", uint16(alg), hash)
	}
	return nil
}

// verifyCertify checks the TPM2_Certify of the device key. go-attestation's
// Verify checks signature and attributes but not the qualifying data, so the
// session binding is checked here.
func verifyCertify(r *Result, c Completion) (crypto.PublicKey, error) {
	att, err := tpm2.DecodeAttestationData(c.DeviceKey.CreateAttestation)
	if err != nil {
		return nil, r.fail(CheckCertify, fmt.Errorf("%w: decode attestation: %v", ErrCertifyInvalid, err))
	}
	if len(c.CertifyQualifyingData) == 0 || !bytes.Equal(att.ExtraData, c.CertifyQualifyingData) {
		return nil, r.fail(CheckCertifyBinding, fmt.Errorf("%w: qualifying data %s, expected %x", ErrCertifyBinding, hexPrefix(att.ExtraData), c.CertifyQualifyingData))
	}
	r.pass(CheckCertifyBinding, "")
	if err := checkSignature(c.DeviceKey.CreateSignature, c.AK.Public, c.AK.Hash); err != nil {
		return nil, r.fail(CheckCertify, fmt.Errorf("%w: signature: %v", ErrCertifyInvalid, err))
	}
	if err := c.DeviceKey.Verify(goattest.VerifyOpts{Public: c.AK.Public, Hash: c.AK.Hash}); err != nil {
		return nil, r.fail(CheckCertify, fmt.Errorf("%w: %v", ErrCertifyInvalid, err))
	}
	tpub, err := tpm2.DecodePublic(c.DeviceKey.Public)
	if err != nil {
		return nil, r.fail(CheckCertify, fmt.Errorf("%w: %v", ErrCertifyInvalid, err))
	}
	pub, err := tpub.Key()
	if err != nil {
		return nil, r.fail(CheckCertify, fmt.Errorf("%w: %v", ErrCertifyInvalid, err))
	}
	sum, err := PublicKeySHA256(pub)
	if err != nil {
		return nil, r.fail(CheckCertify, fmt.Errorf("%w: %v", ErrCertifyInvalid, err))
	}
	r.DeviceKey, r.DeviceKeySHA256, r.DeviceKeyAlgorithm = pub, sum, KeyAlgorithm(pub)
	r.pass(CheckCertify, "fixedTPM, fixedParent, sensitiveDataOrigin, not restricted; signed by the AK")
	return pub, nil
}

// hexPrefix is b in hex, at most its first 64 bytes: it is read before the
// signature over it is checked, and details are recorded.
func hexPrefix(b []byte) string {
	if len(b) > 64 {
		return fmt.Sprintf("%x… (%d bytes)", b[:64], len(b))
	}
	return fmt.Sprintf("%x", b)
}

// PublicKeysEqual reports whether two public keys are the same key.
func PublicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// KeyAlgorithm names a public key's algorithm and size, e.g. "ecdsa-P-256".
func KeyAlgorithm(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ecdsa-" + k.Curve.Params().Name
	}
	return fmt.Sprintf("%T", pub)
}

// Renewal is the evidence of a re-attestation by an enrolled device: a
// fresh quote by its enrolled AK and a CSR from its enrolled device key.
type Renewal struct {
	AK        *goattest.AKPublic // the AK the registry holds for the device
	Nonce     []byte
	Quote     goattest.Quote
	PCRs      []goattest.PCR
	EventLog  []byte           // optional
	DeviceKey crypto.PublicKey // the key of the device's current certificate
	CSR       []byte
}

// VerifyRenewal verifies a renewal: quote, event log and CSR, in that order.
//
// Guarantees: the quote is fresh (nonce) and by the enrolled AK, the PCRs
// are the quoted ones, a log replays to them, and the CSR is signed by the
// key the TPM certified at enrollment (it is the certificate's key).
// Non-guarantees: the caller establishes that the AK and device key belong
// to the authenticated device; the policy judges the boot state.
func VerifyRenewal(rn Renewal) (*Result, error) {
	r := &Result{}
	if err := verifyQuote(r, Completion{AK: rn.AK, Nonce: rn.Nonce, Quote: rn.Quote, PCRs: rn.PCRs}); err != nil {
		return r, err
	}
	if err := verifyEventLog(r, rn.EventLog); err != nil {
		return r, err
	}
	if err := verifyCSR(r, rn.CSR, rn.DeviceKey, "the CSR is not signed by the enrolled device key", "same TPM key as the current certificate"); err != nil {
		return r, err
	}
	r.DeviceKey = rn.DeviceKey
	if sum, err := PublicKeySHA256(rn.DeviceKey); err == nil {
		r.DeviceKeySHA256, r.DeviceKeyAlgorithm = sum, KeyAlgorithm(rn.DeviceKey)
	}
	return r, nil
}
