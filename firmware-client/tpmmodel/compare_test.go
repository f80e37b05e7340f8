package tpmmodel

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"os"
	"testing"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// Fields that legitimately differ between the model and swtpm, and why.
// The comparisons below check everything else, and check the form (size,
// algorithm, derivation) of these.
var legitimateDifferences = map[string]string{
	"unique":                    "the public key itself: each device and key has its own",
	"name, qualified name":      "hashes over the public area (and the parent's name), so they follow the keys; their derivation is checked on both sides",
	"SRK":                       "the model's SRK public key is random (nothing is wrapped to it); its template and its name's form are swtpm's",
	"clockInfo":                 "the TPM's own clock, reset and restart counters: that TPM's state, signed in every TPMS_ATTEST but checked by no verifier; the model reports milliseconds since the device was made, no resets, safe",
	"firmwareVersion":           "the vendor's firmware version (swtpm reports libtpms'); checked by no verifier",
	"signature values":          "signatures by different keys (ECDSA is randomised too); algorithm, hash and encoding sizes are compared",
	"EK certificate and serial": "issued at a different time by the same manufacturer CA with swtpm_localca's extensions; its TPM model attribute says tpmmodel",
}

// observed is what one device answers to the enrollment's TPM operations.
type observed struct {
	akPub      tpm2.TPMTPublic
	akName     []byte
	createData tpm2.TPMSCreationData
	createAtt  tpm2.TPMSAttest
	createSig  tpm2.TPMTSignature
	quote      tpm2.TPMSAttest
	quoteSig   tpm2.TPMTSignature
	keyPub     tpm2.TPMTPublic
	keyName    []byte
	certify    tpm2.TPMSAttest
	certifySig tpm2.TPMTSignature
	pcrs       []goattest.PCR
}

// observe runs an enrollment's TPM operations on dev through the
// fwclient.Device interface, as the client does, and checks on the way
// that the appliance's verification accepts the AK and that credential
// activation returns the secret the appliance wrapped to ek.
func observe(t *testing.T, dev fwclient.Device, ekKind string, alg goattest.Algorithm, nonce, qualifying []byte) observed {
	t.Helper()
	var o observed
	ak, err := dev.CreateAK(alg)
	if err != nil {
		t.Fatalf("create AK: %v", err)
	}
	defer ak.Close()
	p := ak.AttestationParameters()
	verified, err := gatehouse.VerifyAK(p)
	if err != nil {
		t.Fatalf("VerifyAK: %v", err)
	}
	ek, err := dev.Endorsement(ekKind)
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{0x5a}, 32)
	ec, err := verified.MakeCredential(ek.Public, ek.Area, secret)
	if err != nil {
		t.Fatalf("MakeCredential: %v", err)
	}
	got, err := ak.ActivateCredential(ek, *ec)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("ActivateCredential: %x, %v; want %x", got, err, secret)
	}

	o.akPub = unmarshal[tpm2.TPMTPublic](t, "AK public", p.Public)
	o.akName = name(t, &o.akPub)
	o.createData = unmarshal[tpm2.TPMSCreationData](t, "creation data", p.CreateData)
	o.createAtt = unmarshal[tpm2.TPMSAttest](t, "creation attestation", p.CreateAttestation)
	o.createSig = unmarshal[tpm2.TPMTSignature](t, "creation signature", p.CreateSignature)

	q, err := ak.Quote(nonce, goattest.HashSHA256)
	if err != nil {
		t.Fatalf("quote: %v", err)
	}
	o.quote = unmarshal[tpm2.TPMSAttest](t, "quote", q.Quote)
	o.quoteSig = unmarshal[tpm2.TPMTSignature](t, "quote signature", q.Signature)
	if o.pcrs, err = dev.PCRs(goattest.HashSHA256); err != nil {
		t.Fatal(err)
	}
	if err := verified.Public.Verify(*q, o.pcrs, nonce); err != nil {
		t.Fatalf("quote does not verify: %v", err)
	}

	key, err := ak.NewKey(qualifying)
	if err != nil {
		t.Fatalf("new key: %v", err)
	}
	defer key.Close()
	cp := key.CertificationParameters()
	if err := cp.Verify(goattest.VerifyOpts{Public: verified.Public.Public, Hash: verified.Public.Hash}); err != nil {
		t.Fatalf("certification does not verify: %v", err)
	}
	o.keyPub = unmarshal[tpm2.TPMTPublic](t, "key public", cp.Public)
	o.keyName = name(t, &o.keyPub)
	o.certify = unmarshal[tpm2.TPMSAttest](t, "certify", cp.CreateAttestation)
	o.certifySig = unmarshal[tpm2.TPMTSignature](t, "certify signature", cp.CreateSignature)
	if _, err := fwclient.CSR(key); err != nil {
		t.Fatalf("CSR: %v", err)
	}
	return o
}

func unmarshal[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](t *testing.T, what string, b []byte) T {
	t.Helper()
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if re := tpm2.Marshal(*v); !bytes.Equal(re, b) {
		t.Fatalf("%s: re-marshals to %x, not %x", what, re, b)
	}
	return *v
}

func name(t *testing.T, p *tpm2.TPMTPublic) []byte {
	t.Helper()
	// tpm2.ObjectName marshals the area itself: the name as go-tpm
	// computes it, independently of the model's nameOf.
	n, err := tpm2.ObjectName(p)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}

// withoutUnique is a public area's marshalled form with its unique field
// zeroed at the same size: two areas of one template and key size are
// then byte-equal in type, nameAlg, attributes, authPolicy and parameters.
func withoutUnique(t *testing.T, p tpm2.TPMTPublic) []byte {
	t.Helper()
	switch p.Type {
	case tpm2.TPMAlgRSA:
		u, err := p.Unique.RSA()
		if err != nil {
			t.Fatal(err)
		}
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, len(u.Buffer))})
	case tpm2.TPMAlgECC:
		u, err := p.Unique.ECC()
		if err != nil {
			t.Fatal(err)
		}
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: make([]byte, len(u.X.Buffer))}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, len(u.Y.Buffer))}})
	}
	return tpm2.Marshal(&p)
}

// comparePublic compares two public areas field by field; only unique
// (the key) may differ, and only in value.
func comparePublic(t *testing.T, what string, model, tpm tpm2.TPMTPublic) {
	t.Helper()
	if model.Type != tpm.Type {
		t.Errorf("%s type: model 0x%x, swtpm 0x%x", what, model.Type, tpm.Type)
	}
	if model.NameAlg != tpm.NameAlg {
		t.Errorf("%s nameAlg: model 0x%x, swtpm 0x%x", what, model.NameAlg, tpm.NameAlg)
	}
	if a, b := tpm2.Marshal(&model.ObjectAttributes), tpm2.Marshal(&tpm.ObjectAttributes); !bytes.Equal(a, b) {
		t.Errorf("%s attributes: model %x %+v, swtpm %x %+v", what, a, model.ObjectAttributes, b, tpm.ObjectAttributes)
	}
	if !bytes.Equal(model.AuthPolicy.Buffer, tpm.AuthPolicy.Buffer) {
		t.Errorf("%s authPolicy: model %x, swtpm %x", what, model.AuthPolicy.Buffer, tpm.AuthPolicy.Buffer)
	}
	// Parameters (symmetric, scheme, key bits or curve, KDF) and unique's
	// sizing: everything but the key.
	if a, b := withoutUnique(t, model), withoutUnique(t, tpm); !bytes.Equal(a, b) {
		t.Errorf("%s parameters or unique sizing differ:\nmodel %x\nswtpm %x", what, a, b)
	}
}

func checkName(t *testing.T, what string, n []byte) {
	t.Helper()
	if len(n) != 2+sha256.Size || binary.BigEndian.Uint16(n) != uint16(tpm2.TPMAlgSHA256) {
		t.Errorf("%s %x is not a SHA-256 name (nameAlg || digest)", what, n)
	}
}

// compareAttest compares two TPMS_ATTEST of one operation: magic, type,
// the form of qualifiedSigner (and that each is the signing AK's qualified
// name under its SRK, derived as the TPM does), extraData.
func compareAttest(t *testing.T, what string, model, tpm tpm2.TPMSAttest, modelQN, tpmQN, extra []byte) {
	t.Helper()
	if model.Magic != tpm2.TPMGeneratedValue || tpm.Magic != tpm2.TPMGeneratedValue {
		t.Errorf("%s magic: model 0x%x, swtpm 0x%x", what, model.Magic, tpm.Magic)
	}
	if model.Type != tpm.Type {
		t.Errorf("%s type: model 0x%x, swtpm 0x%x", what, model.Type, tpm.Type)
	}
	checkName(t, what+" model qualifiedSigner", model.QualifiedSigner.Buffer)
	checkName(t, what+" swtpm qualifiedSigner", tpm.QualifiedSigner.Buffer)
	if !bytes.Equal(tpm.QualifiedSigner.Buffer, tpmQN) {
		t.Errorf("%s: swtpm's qualifiedSigner %x is not the AK's qualified name %x as the model derives it", what, tpm.QualifiedSigner.Buffer, tpmQN)
	}
	if !bytes.Equal(model.QualifiedSigner.Buffer, modelQN) {
		t.Errorf("%s: the model's qualifiedSigner %x is not its AK's qualified name %x", what, model.QualifiedSigner.Buffer, modelQN)
	}
	if !bytes.Equal(model.ExtraData.Buffer, extra) || !bytes.Equal(tpm.ExtraData.Buffer, extra) {
		t.Errorf("%s extraData: model %x, swtpm %x, want %x", what, model.ExtraData.Buffer, tpm.ExtraData.Buffer, extra)
	}
	// clockInfo and firmwareVersion: legitimate differences; both present.
	if !model.ClockInfo.Safe || !tpm.ClockInfo.Safe {
		t.Errorf("%s clock safe: model %v, swtpm %v", what, model.ClockInfo.Safe, tpm.ClockInfo.Safe)
	}
}

func compareSignature(t *testing.T, what string, model, tpm tpm2.TPMTSignature) {
	t.Helper()
	if model.SigAlg != tpm.SigAlg {
		t.Fatalf("%s algorithm: model 0x%x, swtpm 0x%x", what, model.SigAlg, tpm.SigAlg)
	}
	switch model.SigAlg {
	case tpm2.TPMAlgECDSA:
		m, _ := model.Signature.ECDSA()
		s, _ := tpm.Signature.ECDSA()
		if m.Hash != s.Hash || len(m.SignatureR.Buffer) != len(s.SignatureR.Buffer) || len(m.SignatureS.Buffer) != len(s.SignatureS.Buffer) {
			t.Errorf("%s: model hash 0x%x r %d s %d bytes; swtpm hash 0x%x r %d s %d bytes", what,
				m.Hash, len(m.SignatureR.Buffer), len(m.SignatureS.Buffer), s.Hash, len(s.SignatureR.Buffer), len(s.SignatureS.Buffer))
		}
	case tpm2.TPMAlgRSASSA:
		m, _ := model.Signature.RSASSA()
		s, _ := tpm.Signature.RSASSA()
		if m.Hash != s.Hash || len(m.Sig.Buffer) != len(s.Sig.Buffer) {
			t.Errorf("%s: model hash 0x%x %d bytes; swtpm hash 0x%x %d bytes", what, m.Hash, len(m.Sig.Buffer), s.Hash, len(s.Sig.Buffer))
		}
	default:
		t.Errorf("%s: unexpected signature algorithm 0x%x", what, model.SigAlg)
	}
}

// swtpmFacts are what only raw commands read from swtpm.
type swtpmFacts struct {
	rsaEK, eccEK      tpm2.TPMTPublic
	srkName, srkQN    []byte
	rsaEKCertificate  []byte
	srkPublic         tpm2.TPMTPublic
	ownerQN           []byte
	ownerQNFromHandle []byte
}

func readSWTPM(t *testing.T, p *swtpm.Process) swtpmFacts {
	t.Helper()
	rw, err := fwclient.OpenTransport(p.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	tp := transport.FromReadWriter(rw)
	var f swtpmFacts
	ek, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(fwclient.HandleRSA2048EK)}.Execute(tp)
	if err != nil {
		t.Fatalf("read RSA EK: %v", err)
	}
	f.rsaEK = contents(t, ek.OutPublic)
	srk, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(0x81000001)}.Execute(tp)
	if err != nil {
		t.Fatalf("read SRK: %v", err)
	}
	f.srkPublic = contents(t, srk.OutPublic)
	f.srkName, f.srkQN = srk.Name.Buffer, srk.QualifiedName.Buffer
	// The ECC P-256 EK from go-tpm's copy of the TCG template L-2 (an
	// independent source of the template the model uses): what a TPM
	// makes of it.
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCEKTemplate),
	}.Execute(tp)
	if err != nil {
		t.Fatalf("create the ECC P-256 EK: %v", err)
	}
	f.eccEK = contents(t, cp.OutPublic)
	if _, err := (tpm2.FlushContext{FlushHandle: cp.ObjectHandle}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	return f
}

func contents(t *testing.T, b tpm2.TPM2BPublic) tpm2.TPMTPublic {
	t.Helper()
	p, err := b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return *p
}

// TestModelMatchesSWTPM runs the same operations on a model device and on
// swtpm, both booted from the same real event log, and compares the
// structures field by field: EK public areas (RSA-2048, and ECC P-256
// from the TCG template), the SRK template, AK public areas, creation
// data, the TPMS_ATTEST of CertifyCreation, Quote and Certify, signatures'
// form, PCR selections and values, and the device key's public area.
// What legitimately differs is listed in legitimateDifferences; for those
// the form is checked (and the qualified-name derivation the model uses is
// checked against swtpm's own names).
func TestModelMatchesSWTPM(t *testing.T) {
	m := swtpm.NewTestManufacturer(t)
	proc := swtpm.StartTest(t, m)
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Boot(log); err != nil {
		t.Fatal(err)
	}
	facts := readSWTPM(t, proc)
	tpm, err := proc.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()

	key, err := m.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	mfr, err := NewManufacturer(m.Intermediate, key)
	if err != nil {
		t.Fatal(err)
	}
	plat, err := NewPlatform(log)
	if err != nil {
		t.Fatal(err)
	}
	rsaDev, err := mfr.NewDevice(plat, fwclient.EKRSA2048)
	if err != nil {
		t.Fatal(err)
	}
	eccDev, err := mfr.NewDevice(plat, fwclient.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("EK", func(t *testing.T) {
		for _, c := range []struct {
			what  string
			model *Device
			tpm   tpm2.TPMTPublic
		}{{"RSA EK", rsaDev, facts.rsaEK}, {"ECC P-256 EK", eccDev, facts.eccEK}} {
			pub, err := c.model.EKPublic()
			if err != nil {
				t.Fatalf("%s: %v", c.what, err)
			}
			comparePublic(t, c.what, *pub, c.tpm)
			area, err := gatehouse.ParseTPM2BPublic(append(binary.BigEndian.AppendUint16(nil, uint16(len(c.model.ekArea))), c.model.ekArea...))
			if err != nil || !gatehouse.PublicKeysEqual(area, c.model.ek.Public) {
				t.Fatalf("%s: the public area does not hold the EK (%v)", c.what, err)
			}
		}
		// The model's EK certificates parse and verify as swtpm's do.
		swEK, err := tpm.Endorsement(fwclient.EKRSA2048)
		if err != nil {
			t.Fatal(err)
		}
		for name, e := range map[string][]byte{"swtpm RSA": swEK.Certificate, "model RSA": rsaDev.ek.Certificate, "model ECC": eccDev.ek.Certificate} {
			c, err := gatehouse.ParseEKCertificate(e)
			if err != nil {
				t.Fatalf("%s EK certificate: %v", name, err)
			}
			if _, err := gatehouse.NewEKVerifier([]*x509.Certificate{m.Root, m.Intermediate}).Verify(c); err != nil {
				t.Fatalf("%s EK certificate: %v", name, err)
			}
			if !c.HasEKUsage() || c.Manufacturer != DefaultTPMManufacturer || c.Version != DefaultTPMVersion || len(c.Cert.UnhandledCriticalExtensions) != 0 {
				t.Errorf("%s EK certificate: EK usage %v, TPM %q %q %q, unhandled %v", name, c.HasEKUsage(), c.Manufacturer, c.Model, c.Version, c.Cert.UnhandledCriticalExtensions)
			}
		}
	})

	t.Run("SRK", func(t *testing.T) {
		srk := RSASRKTemplate()
		comparePublic(t, "SRK", withUniqueOf(t, srk, facts.srkPublic), facts.srkPublic)
		checkName(t, "model SRK name", rsaDev.srkName)
		// A persistent primary's qualified name: H(owner handle || name).
		owner := binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRHOwner))
		if got := qualifiedName(owner, facts.srkName); !bytes.Equal(got, facts.srkQN) {
			t.Fatalf("qualified name derivation: %x for swtpm's SRK, swtpm says %x", got, facts.srkQN)
		}
	})

	t.Run("PCRs", func(t *testing.T) {
		want, err := tpm.PCRs(goattest.HashSHA256)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := rsaDev.PCRs(goattest.HashSHA256)
		if len(got) != len(want) {
			t.Fatalf("model has %d PCRs, swtpm %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Index != want[i].Index || got[i].DigestAlg != want[i].DigestAlg || !bytes.Equal(got[i].Digest, want[i].Digest) {
				t.Errorf("PCR %d: model %x, swtpm (booted from the same log) %x", i, got[i].Digest, want[i].Digest)
			}
		}
	})

	// TPM2B_DATA's capacity: both quote a 66-byte nonce and refuse 67.
	t.Run("extraData capacity", func(t *testing.T) {
		for who, dev := range map[string]fwclient.Device{"swtpm": tpm, "model": eccDev} {
			ak, err := dev.CreateAK(goattest.ECDSA)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ak.Quote(make([]byte, maxData), goattest.HashSHA256); err != nil {
				t.Errorf("%s: a %d-byte nonce: %v", who, maxData, err)
			}
			if _, err := ak.Quote(make([]byte, maxData+1), goattest.HashSHA256); err == nil {
				t.Errorf("%s quoted a %d-byte nonce", who, maxData+1)
			}
			ak.Close()
		}
	})

	nonce := sha256.Sum256([]byte("session nonce"))
	qualifying := sha256.Sum256([]byte("certify qualifying data"))
	for _, tc := range []struct {
		name      string
		alg       goattest.Algorithm
		model     *Device
		swtpmEK   string
		modelKind string
	}{
		// swtpm activates with its RSA EK (go-attestation's path) and its
		// P-384 EK (the public-area path the model's P-256 EK also takes).
		{"ECDSA AK", goattest.ECDSA, eccDev, fwclient.EKECCP384, fwclient.EKECCP256},
		{"RSA AK", goattest.RSA, rsaDev, fwclient.EKRSA2048, fwclient.EKRSA2048},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sw := observe(t, tpm, tc.swtpmEK, tc.alg, nonce[:], qualifying[:])
			mo := observe(t, tc.model, tc.modelKind, tc.alg, nonce[:], qualifying[:])

			comparePublic(t, "AK public", mo.akPub, sw.akPub)
			checkName(t, "model AK name", mo.akName)
			swAKQN := qualifiedName(facts.srkQN, sw.akName)
			moAKQN := qualifiedName(tc.model.srkQN, mo.akName)

			// TPM2_Create's creation data.
			if a, b := tpm2.Marshal(&mo.createData.PCRSelect), tpm2.Marshal(&sw.createData.PCRSelect); !bytes.Equal(a, b) {
				t.Errorf("creation data pcrSelect: model %x, swtpm %x", a, b)
			}
			if !bytes.Equal(mo.createData.PCRDigest.Buffer, sw.createData.PCRDigest.Buffer) {
				t.Errorf("creation data pcrDigest: model %x, swtpm %x", mo.createData.PCRDigest.Buffer, sw.createData.PCRDigest.Buffer)
			}
			if a, b := tpm2.Marshal(&mo.createData.Locality), tpm2.Marshal(&sw.createData.Locality); !bytes.Equal(a, b) {
				t.Errorf("creation data locality: model %x, swtpm %x", a, b)
			}
			if mo.createData.ParentNameAlg != sw.createData.ParentNameAlg {
				t.Errorf("creation data parentNameAlg: model 0x%x, swtpm 0x%x", mo.createData.ParentNameAlg, sw.createData.ParentNameAlg)
			}
			if !bytes.Equal(sw.createData.ParentName.Buffer, facts.srkName) || !bytes.Equal(mo.createData.ParentName.Buffer, tc.model.srkName) {
				t.Errorf("creation data parentName: model %x (its SRK %x), swtpm %x (its SRK %x)", mo.createData.ParentName.Buffer, tc.model.srkName, sw.createData.ParentName.Buffer, facts.srkName)
			}
			if !bytes.Equal(sw.createData.ParentQualifiedName.Buffer, facts.srkQN) || !bytes.Equal(mo.createData.ParentQualifiedName.Buffer, tc.model.srkQN) {
				t.Errorf("creation data parentQualifiedName: model %x, swtpm %x (its SRK's %x)", mo.createData.ParentQualifiedName.Buffer, sw.createData.ParentQualifiedName.Buffer, facts.srkQN)
			}
			if len(mo.createData.OutsideInfo.Buffer) != 0 || len(sw.createData.OutsideInfo.Buffer) != 0 {
				t.Errorf("creation data outsideInfo: model %x, swtpm %x", mo.createData.OutsideInfo.Buffer, sw.createData.OutsideInfo.Buffer)
			}

			// TPM2_CertifyCreation.
			compareAttest(t, "creation attestation", mo.createAtt, sw.createAtt, moAKQN, swAKQN, nil)
			for who, o := range map[string]observed{"model": mo, "swtpm": sw} {
				ci, err := o.createAtt.Attested.Creation()
				if err != nil {
					t.Fatalf("%s creation attestation: %v", who, err)
				}
				sum := sha256.Sum256(tpm2.Marshal(&o.createData))
				if !bytes.Equal(ci.ObjectName.Buffer, o.akName) || !bytes.Equal(ci.CreationHash.Buffer, sum[:]) {
					t.Errorf("%s creation info: objectName %x (AK %x), creationHash %x (of the creation data %x)", who, ci.ObjectName.Buffer, o.akName, ci.CreationHash.Buffer, sum)
				}
			}
			compareSignature(t, "creation signature", mo.createSig, sw.createSig)

			// TPM2_Quote.
			compareAttest(t, "quote", mo.quote, sw.quote, moAKQN, swAKQN, nonce[:])
			mq, err := mo.quote.Attested.Quote()
			if err != nil {
				t.Fatal(err)
			}
			sq, err := sw.quote.Attested.Quote()
			if err != nil {
				t.Fatal(err)
			}
			if a, b := tpm2.Marshal(&mq.PCRSelect), tpm2.Marshal(&sq.PCRSelect); !bytes.Equal(a, b) {
				t.Errorf("quote PCR selection: model %x, swtpm %x", a, b)
			}
			// Same log, same PCRs: the same digest.
			if !bytes.Equal(mq.PCRDigest.Buffer, sq.PCRDigest.Buffer) {
				t.Errorf("quote PCR digest: model %x, swtpm %x", mq.PCRDigest.Buffer, sq.PCRDigest.Buffer)
			}
			compareSignature(t, "quote signature", mo.quoteSig, sw.quoteSig)

			// The device key and TPM2_Certify.
			comparePublic(t, "device key public", mo.keyPub, sw.keyPub)
			compareAttest(t, "certify", mo.certify, sw.certify, moAKQN, swAKQN, qualifying[:])
			for who, o := range map[string]observed{"model": mo, "swtpm": sw} {
				ci, err := o.certify.Attested.Certify()
				if err != nil {
					t.Fatalf("%s certify: %v", who, err)
				}
				srkQN := facts.srkQN
				if who == "model" {
					srkQN = tc.model.srkQN
				}
				if !bytes.Equal(ci.Name.Buffer, o.keyName) || !bytes.Equal(ci.QualifiedName.Buffer, qualifiedName(srkQN, o.keyName)) {
					t.Errorf("%s certify info: name %x (key %x), qualifiedName %x", who, ci.Name.Buffer, o.keyName, ci.QualifiedName.Buffer)
				}
			}
			compareSignature(t, "certify signature", mo.certifySig, sw.certifySig)
		})
	}
	for field, why := range legitimateDifferences {
		t.Logf("differs by design: %s: %s", field, why)
	}
}

// withUniqueOf gives template the unique field of p, so a template (whose
// unique is empty) compares with a key made from it.
func withUniqueOf(t *testing.T, template, p tpm2.TPMTPublic) tpm2.TPMTPublic {
	t.Helper()
	template.Unique = p.Unique
	return template
}
