package fwclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-attestation/attest"

	"github.com/gatehouse-dev/gatehouse/api"
)

// Files in an identity directory. No software private key is ever written:
// key.blob is the TPM-wrapped key, loadable only by the TPM that made it.
const (
	CertFile     = "cert.pem"
	ChainFile    = "chain.pem"
	ConfigFile   = "config.json"
	KeyBlobFile  = "key.blob"
	AKBlobFile   = "ak.blob"
	IdentityFile = "identity.json"
)

// ErrNoIdentity means the directory holds no complete identity.
var ErrNoIdentity = errors.New("no device identity")

type identityMeta struct {
	DeviceID      string `json:"device_id"`
	AttestationID uint64 `json:"attestation_id"`
	Server        string `json:"server"`
}

// Save writes the identity into dir. Each file is written to a temporary
// name and renamed, and the certificate goes last, so a crash never leaves a
// certificate without its key blob.
func (id *Identity) Save(dir, server string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var chain []byte
	for _, c := range id.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	meta, err := json.MarshalIndent(identityMeta{DeviceID: id.DeviceID, AttestationID: id.AttestationID, Server: server}, "", "  ")
	if err != nil {
		return err
	}
	cfg := id.Configuration
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyBlobFile, id.KeyBlob, 0o600},
		{AKBlobFile, id.AKBlob, 0o600},
		{ChainFile, chain, 0o644},
		{ConfigFile, append([]byte(cfg), '\n'), 0o644},
		{IdentityFile, append(meta, '\n'), 0o644},
		{CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.Certificate.Raw}), 0o644},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LoadIdentity reads an identity saved by Save.
func LoadIdentity(dir string) (*Identity, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoIdentity)
	} else if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return nil, fmt.Errorf("%s: not PEM", CertFile)
	}
	id := &Identity{}
	if id.Certificate, err = x509.ParseCertificate(blk.Bytes); err != nil {
		return nil, fmt.Errorf("%s: %w", CertFile, err)
	}
	chainPEM, err := os.ReadFile(filepath.Join(dir, ChainFile))
	if err != nil {
		return nil, err
	}
	for rest := chainPEM; ; {
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ChainFile, err)
		}
		id.Chain = append(id.Chain, c)
	}
	if id.KeyBlob, err = os.ReadFile(filepath.Join(dir, KeyBlobFile)); err != nil {
		return nil, err
	}
	if id.AKBlob, err = os.ReadFile(filepath.Join(dir, AKBlobFile)); err != nil {
		return nil, err
	}
	if id.Configuration, err = os.ReadFile(filepath.Join(dir, ConfigFile)); err != nil {
		return nil, err
	}
	var meta identityMeta
	if b, err := os.ReadFile(filepath.Join(dir, IdentityFile)); err != nil {
		return nil, err
	} else if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("%s: %w", IdentityFile, err)
	}
	id.DeviceID, id.AttestationID = meta.DeviceID, meta.AttestationID
	return id, nil
}

// Valid reports whether the identity's certificate is currently valid.
func (id *Identity) Valid(now time.Time) bool {
	return !now.Before(id.Certificate.NotBefore) && now.Before(id.Certificate.NotAfter)
}

// TLSCertificate loads the device key into tpm and returns a TLS client
// certificate whose signatures are made inside the TPM. The caller closes
// the returned key when done with the certificate.
func (id *Identity) TLSCertificate(tpm *TPM) (tls.Certificate, *attest.Key, error) {
	key, err := tpm.LoadKey(id.KeyBlob)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load device key into the TPM: %w", err)
	}
	cert, err := id.tlsCertificate(key)
	if err != nil {
		key.Close()
		return tls.Certificate{}, nil, err
	}
	return cert, key, nil
}

// DeviceTLSCertificate is TLSCertificate for any Device.
func (id *Identity) DeviceTLSCertificate(dev Device) (tls.Certificate, Key, error) {
	key, err := dev.OpenKey(id.KeyBlob)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("load device key into the TPM: %w", err)
	}
	cert, err := id.tlsCertificate(key)
	if err != nil {
		key.Close()
		return tls.Certificate{}, nil, err
	}
	return cert, key, nil
}

func (id *Identity) tlsCertificate(key Key) (tls.Certificate, error) {
	priv, err := key.Private(key.Public())
	if err != nil {
		return tls.Certificate{}, err
	}
	cert := tls.Certificate{Certificate: [][]byte{id.Certificate.Raw}, PrivateKey: priv, Leaf: id.Certificate}
	for _, c := range id.Chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert, nil
}

// WhoAmI calls GET /v1/whoami authenticated by the identity's TPM key.
func (c *Client) WhoAmI(ctx context.Context, dev Device, id *Identity) (*api.WhoAmIResponse, error) {
	var out api.WhoAmIResponse
	return &out, c.getMTLS(ctx, dev, id, api.PathWhoAmI, &out)
}
