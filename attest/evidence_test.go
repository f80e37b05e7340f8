package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"math/big"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// Crafted TPM structures, built with go-tpm's encoders and signed by
// software keys: what a device can send, not what a TPM would produce.

const tpmGenerated = 0xff544347

var zeroName = tpm2.Name{Digest: &tpm2.HashValue{Alg: tpm2.AlgSHA256, Value: make([]byte, 32)}}

const (
	akAttrs  = tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth | tpm2.FlagRestricted | tpm2.FlagSign
	keyAttrs = tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagUserWithAuth | tpm2.FlagSign
)

func eccPublic(pub *ecdsa.PublicKey, attrs tpm2.KeyProp) tpm2.Public {
	p := tpm2.Public{Type: tpm2.AlgECC, NameAlg: tpm2.AlgSHA256, Attributes: attrs,
		ECCParameters: &tpm2.ECCParams{CurveID: tpm2.CurveNISTP256, Point: tpm2.ECPoint{XRaw: pub.X.FillBytes(make([]byte, 32)), YRaw: pub.Y.FillBytes(make([]byte, 32))}}}
	if attrs&tpm2.FlagRestricted != 0 {
		p.ECCParameters.Sign = &tpm2.SigScheme{Alg: tpm2.AlgECDSA, Hash: tpm2.AlgSHA256}
	}
	return p
}

func rsaPublic(pub *rsa.PublicKey, attrs tpm2.KeyProp) tpm2.Public {
	return tpm2.Public{Type: tpm2.AlgRSA, NameAlg: tpm2.AlgSHA256, Attributes: attrs,
		RSAParameters: &tpm2.RSAParams{Sign: &tpm2.SigScheme{Alg: tpm2.AlgRSASSA, Hash: tpm2.AlgSHA256}, KeyBits: 2048, ModulusRaw: pub.N.Bytes()}}
}

func encode(t *testing.T, v interface{ Encode() ([]byte, error) }) []byte {
	t.Helper()
	b, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tpmSign signs msg as a TPM would for a key with a SHA-256 scheme.
func tpmSign(t *testing.T, key crypto.Signer, msg []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(msg)
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		return encode(t, tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA256, R: r, S: s}})
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		return encode(t, tpm2.Signature{Alg: tpm2.AlgRSASSA, RSA: &tpm2.SignatureRSA{HashAlg: tpm2.AlgSHA256, Signature: sig}})
	}
	t.Fatalf("key %T", key)
	return nil
}

// The other kind of signature than the key makes.
var (
	rsaTypedSig  = tpm2.Signature{Alg: tpm2.AlgRSASSA, RSA: &tpm2.SignatureRSA{HashAlg: tpm2.AlgSHA256, Signature: make([]byte, 256)}}
	eccTypedSig  = tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA256, R: big.NewInt(1), S: big.NewInt(1)}}
	sha1ECDSASig = tpm2.Signature{Alg: tpm2.AlgECDSA, ECC: &tpm2.SignatureECC{HashAlg: tpm2.AlgSHA1, R: big.NewInt(1), S: big.NewInt(1)}}
	pssTypedSig  = tpm2.Signature{Alg: tpm2.AlgRSAPSS, RSA: &tpm2.SignatureRSA{HashAlg: tpm2.AlgSHA256, Signature: make([]byte, 256)}}
)

// noPanic runs f and turns a panic into a test failure naming it.
func noPanic(t *testing.T, what string, f func() error) (err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("%s panicked: %v", what, p)
		}
	}()
	return f()
}

// akParams crafts a well-formed AK creation for key, signed by sign.
func akParams(t *testing.T, pub tpm2.Public, sign func(att []byte) []byte) goattest.AttestationParameters {
	t.Helper()
	cd := tpm2.CreationData{PCRSelection: tpm2.PCRSelection{Hash: tpm2.AlgSHA256}, Locality: 1, ParentNameAlg: tpm2.AlgSHA256, ParentName: zeroName, ParentQualifiedName: zeroName}
	createData, err := cd.EncodeCreationData()
	if err != nil {
		t.Fatal(err)
	}
	name, err := pub.Name()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(createData)
	att := encode(t, tpm2.AttestationData{Magic: tpmGenerated, Type: tpm2.TagAttestCreation, QualifiedSigner: zeroName,
		AttestedCreationInfo: &tpm2.CreationInfo{Name: name, OpaqueDigest: sum[:]}})
	return goattest.AttestationParameters{Public: encode(t, pub), CreateData: createData, CreateAttestation: att, CreateSignature: sign(att)}
}

// Issue 9, item 3: an AK creation signature of the other kind than the AK
// (RSA-typed for an ECDSA AK, ECDSA-typed for an RSA AK) made go-attestation
// dereference nil. It is refused as ErrAKInvalid; the well-signed control
// passes, so the crafting is right.
func TestVerifyAKSignatureKind(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		pub  tpm2.Public
		key  crypto.Signer
		bad  []tpm2.Signature
	}{
		{"ecdsa", eccPublic(&ec.PublicKey, akAttrs), ec, []tpm2.Signature{rsaTypedSig, sha1ECDSASig}},
		{"rsa", rsaPublic(&rk.PublicKey, akAttrs), rk, []tpm2.Signature{eccTypedSig, pssTypedSig}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := akParams(t, tc.pub, func(att []byte) []byte { return tpmSign(t, tc.key, att) })
			if _, err := VerifyAK(good); err != nil {
				t.Fatalf("control: %v", err)
			}
			for _, sig := range tc.bad {
				p := akParams(t, tc.pub, func([]byte) []byte { return encode(t, sig) })
				err := noPanic(t, "VerifyAK", func() error { _, err := VerifyAK(p); return err })
				if !errors.Is(err, ErrAKInvalid) {
					t.Fatalf("signature alg %v: %v, want ErrAKInvalid", sig.Alg, err)
				}
			}
		})
	}
}

// quoteFor crafts a quote over sel's PCRs of bank, as pcrs hold them.
func quoteFor(t *testing.T, ak *ecdsa.PrivateKey, nonce []byte, bank tpm2.Algorithm, sel []int, pcrs []goattest.PCR) goattest.Quote {
	t.Helper()
	h := sha256.New()
	for _, i := range sel {
		for _, p := range pcrs {
			if p.Index == i && BankName(p.DigestAlg) == map[tpm2.Algorithm]string{tpm2.AlgSHA1: "sha1", tpm2.AlgSHA256: "sha256"}[bank] {
				h.Write(p.Digest)
			}
		}
	}
	att := encode(t, tpm2.AttestationData{Magic: tpmGenerated, Type: tpm2.TagAttestQuote, QualifiedSigner: zeroName, ExtraData: nonce,
		AttestedQuoteInfo: &tpm2.QuoteInfo{PCRSelection: tpm2.PCRSelection{Hash: bank, PCRs: sel}, PCRDigest: h.Sum(nil)}})
	return goattest.Quote{Quote: att, Signature: tpmSign(t, ak, att)}
}

func pcr(bank crypto.Hash, i int, b byte) goattest.PCR {
	d := make([]byte, bank.Size())
	d[0] = b
	return goattest.PCR{Index: i, Digest: d, DigestAlg: bank}
}

// Issue 9, item 1: the quote's bank and selection are the only PCRs. A
// value of another bank, or of the quoted bank outside the selection, is
// refused with ErrPCRNotQuoted; and a quote of an empty (unallocated) bank
// does not lend its signature to values of another. Honest evidence passes
// and the result holds exactly the quoted values.
func TestQuoteCoverage(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ak := &goattest.AKPublic{Public: &key.PublicKey, Hash: crypto.SHA256}
	nonce := []byte("0123456789abcdef0123456789abcdef")
	honest := []goattest.PCR{pcr(crypto.SHA256, 0, 1), pcr(crypto.SHA256, 4, 2), pcr(crypto.SHA256, 7, 3)}
	sel := []int{0, 4, 7}

	r := &Result{}
	if err := verifyQuote(r, Completion{AK: ak, Nonce: nonce, Quote: quoteFor(t, key, nonce, tpm2.AlgSHA256, sel, honest), PCRs: honest}); err != nil {
		t.Fatalf("honest quote: %v", err)
	}
	if r.QuotedBank != "sha256" || len(r.PCRs) != 3 || len(r.QuotedPCRs) != 3 || r.PCRs[1].Index != 4 {
		t.Fatalf("result: bank %q PCRs %v selection %v", r.QuotedBank, r.PCRs, r.QuotedPCRs)
	}

	for _, tc := range []struct {
		name  string
		bank  tpm2.Algorithm
		sel   []int
		pcrs  []goattest.PCR
		names string
	}{
		{"another bank beside the quoted one", tpm2.AlgSHA256, sel, append(append([]goattest.PCR(nil), honest...), pcr(crypto.SHA1, 4, 9)), "PCR 4 (sha1)"},
		{"a PCR outside the selection", tpm2.AlgSHA256, sel, append(append([]goattest.PCR(nil), honest...), pcr(crypto.SHA256, 5, 9)), "PCR 5 (sha256)"},
		{"an empty SHA-1 quote with SHA-256 values", tpm2.AlgSHA1, nil, honest, "PCR 4 (sha256)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Result{}
			err := verifyQuote(r, Completion{AK: ak, Nonce: nonce, Quote: quoteFor(t, key, nonce, tc.bank, tc.sel, tc.pcrs), PCRs: tc.pcrs})
			if !errors.Is(err, ErrPCRNotQuoted) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("got %v, want ErrPCRNotQuoted naming %s", err, tc.names)
			}
			if len(r.PCRs) != 0 {
				t.Fatalf("refused quote returned PCRs %v", r.PCRs)
			}
		})
	}

	// Renewal shares the rule.
	extra := append(append([]goattest.PCR(nil), honest...), pcr(crypto.SHA1, 7, 9))
	_, err = VerifyRenewal(Renewal{AK: ak, Nonce: nonce, Quote: quoteFor(t, key, nonce, tpm2.AlgSHA256, sel, honest), PCRs: extra})
	if !errors.Is(err, ErrPCRNotQuoted) {
		t.Fatalf("renewal with an unquoted PCR: %v", err)
	}

	// The stored-evidence filter keeps exactly the quoted values.
	q := quoteFor(t, key, nonce, tpm2.AlgSHA1, nil, honest)
	if got, err := QuotedPCRs(q.Quote, honest); err != nil || len(got) != 0 {
		t.Fatalf("QuotedPCRs of an empty SHA-1 quote: %v %v", got, err)
	}
	q = quoteFor(t, key, nonce, tpm2.AlgSHA256, []int{4}, honest)
	if got, err := QuotedPCRs(q.Quote, honest); err != nil || len(got) != 1 || got[0].Index != 4 {
		t.Fatalf("QuotedPCRs of a PCR 4 quote: %v %v", got, err)
	}

	// Item 3 on the quote: a signature of the wrong kind is refused.
	q = quoteFor(t, key, nonce, tpm2.AlgSHA256, sel, honest)
	q.Signature = encode(t, rsaTypedSig)
	err = noPanic(t, "verifyQuote", func() error { return verifyQuote(&Result{}, Completion{AK: ak, Nonce: nonce, Quote: q, PCRs: honest}) })
	if !errors.Is(err, ErrQuoteInvalid) {
		t.Fatalf("RSA-typed quote signature for an ECDSA AK: %v", err)
	}
}

// Issue 9, item 3: a TPM2_Certify signature typed RSA for an ECDSA AK made
// go-attestation dereference nil. It is refused as ErrCertifyInvalid; the
// well-signed control passes.
func TestCertifySignatureKind(t *testing.T) {
	akKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	devKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ak := &goattest.AKPublic{Public: &akKey.PublicKey, Hash: crypto.SHA256}
	pub := eccPublic(&devKey.PublicKey, keyAttrs)
	name, err := pub.Name()
	if err != nil {
		t.Fatal(err)
	}
	qd := []byte("session-binding")
	att := encode(t, tpm2.AttestationData{Magic: tpmGenerated, Type: tpm2.TagAttestCertify, QualifiedSigner: zeroName, ExtraData: qd,
		AttestedCertifyInfo: &tpm2.CertifyInfo{Name: name, QualifiedName: zeroName}})
	c := Completion{AK: ak, CertifyQualifyingData: qd, DeviceKey: goattest.CertificationParameters{Public: encode(t, pub), CreateAttestation: att, CreateSignature: tpmSign(t, akKey, att)}}
	if _, err := verifyCertify(&Result{}, c); err != nil {
		t.Fatalf("control: %v", err)
	}
	for _, sig := range []tpm2.Signature{rsaTypedSig, sha1ECDSASig} {
		c.DeviceKey.CreateSignature = encode(t, sig)
		err := noPanic(t, "verifyCertify", func() error { _, err := verifyCertify(&Result{}, c); return err })
		if !errors.Is(err, ErrCertifyInvalid) {
			t.Fatalf("signature alg %v: %v, want ErrCertifyInvalid", sig.Alg, err)
		}
	}
}
