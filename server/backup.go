package server

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"go.step.sm/crypto/pemutil"
)

// A backup is a tar archive, self-describing and checksummed like Consul's
// snapshots:
//
//	meta.json           format, time, node, trust domain, root fingerprint, Raft index
//	state.db            the registry (bbolt), consistent as of a linearizable read
//	ca/root.crt         the cluster CA: certificates and the intermediate key,
//	ca/intermediate.crt   still encrypted under the cluster password
//	ca/intermediate.key
//	ek-roots.pem        the manufacturer roots (as served; state.db holds the replicated set)
//	SHA256SUMS          sha256sum-style lines for every file above
//	SIGNATURE           {"key_certificate": PEM, "signature": base64}: an
//	                    Ed25519 signature over "gatehouse-backup-signature/v1\n"
//	                    followed by SHA256SUMS, by the audit key (ca.AuditKey),
//	                    whose certificate and the intermediate's are included
//
// Restoring checks the signature and every checksum before anything
// changes, and refuses an archive with a file changed, added or removed, a
// missing signature, or a signing key that the CA does not certify: the
// backup's own CA when a node is made from it (init --from-backup, where
// the cluster password must open that CA's key), this cluster's CA when a
// registry is restored into it.
//
// Guarantees: whoever can write to backup storage but holds no CA key
// cannot make a restore accept a registry or manufacturer roots other than
// those the cluster wrote (say, un-revoked devices or an added EK root).
// Non-guarantees: an older, genuine backup of the same cluster still
// restores (a rollback; meta.json's time and Raft index say how old it is,
// and the restore is audited); the holder of the CA key can sign anything.
const backupFormat = "gatehouse-backup/1"

// ErrBadBackup means an archive is not a complete, intact Gatehouse backup.
var ErrBadBackup = errors.New("not a valid Gatehouse backup")

// BackupMeta describes a backup.
type BackupMeta struct {
	Format      string    `json:"format"`
	Created     time.Time `json:"created"`
	NodeID      string    `json:"node_id"`
	TrustDomain string    `json:"trust_domain"`
	RootSHA256  string    `json:"root_sha256"`
	RaftIndex   uint64    `json:"raft_index"`
	StateSHA256 string    `json:"state_sha256"`
}

const (
	backupMetaFile  = "meta.json"
	backupStateFile = "state.db"
	backupSumsFile  = "SHA256SUMS"
	backupSigFile   = "SIGNATURE"
)

// backupSignature is the SIGNATURE file.
type backupSignature struct {
	KeyCertificate string `json:"key_certificate"` // PEM: the signing key's certificate, then the intermediate
	Signature      string `json:"signature"`       // base64 Ed25519 over backupSigMessage(SHA256SUMS)
}

func backupSigMessage(sums []byte) []byte {
	return append([]byte("gatehouse-backup-signature/v1\n"), sums...)
}

// WriteBackup writes a backup of the cluster to w.
func (a *Appliance) WriteBackup(ctx context.Context, w io.Writer) (BackupMeta, error) {
	if err := a.node.Linearize(ctx); err != nil {
		return BackupMeta{}, err
	}
	var state bytes.Buffer
	idx, err := a.node.WriteState(&state)
	if err != nil {
		return BackupMeta{}, fmt.Errorf("copy registry: %w", err)
	}
	stateSum := sha256.Sum256(state.Bytes())
	meta := BackupMeta{Format: backupFormat, Created: time.Now().UTC(), NodeID: a.cfg.NodeID, TrustDomain: a.cfg.TrustDomain,
		RootSHA256: rootHash(a.ca.Root()), RaftIndex: idx, StateSHA256: hex.EncodeToString(stateSum[:])}
	metaJSON, _ := json.MarshalIndent(meta, "", "  ")
	files := map[string][]byte{backupMetaFile: metaJSON, backupStateFile: state.Bytes()}
	for _, f := range []string{"ca/" + ca.RootCertFile, "ca/" + ca.IntermediateCertFile} {
		if files[f], err = os.ReadFile(filepath.Join(a.dataDir, f)); err != nil {
			return BackupMeta{}, err
		}
	}
	// The set also travels in state.db; the file seeds a node made with
	// init --from-backup until the restore brings the replicated set.
	if files[ekRootsFile], err = a.ekRootsFile(); err != nil {
		return BackupMeta{}, err
	}
	if files["ca/intermediate.key"], err = ca.EncryptedKeyPEM(filepath.Join(a.dataDir, caDir)); err != nil {
		return BackupMeta{}, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var sums strings.Builder
	for _, n := range names {
		s := sha256.Sum256(files[n])
		fmt.Fprintf(&sums, "%x  %s\n", s, n)
	}
	names = append(names, backupSumsFile, backupSigFile)
	files[backupSumsFile] = []byte(sums.String())
	key, chain := a.ca.AuditKey()
	files[backupSigFile], _ = json.Marshal(backupSignature{KeyCertificate: string(pemChain(chain)),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, backupSigMessage(files[backupSumsFile])))})

	tw := tar.NewWriter(w)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(files[n])), ModTime: meta.Created, Typeflag: tar.TypeReg}); err != nil {
			return BackupMeta{}, err
		}
		if _, err := tw.Write(files[n]); err != nil {
			return BackupMeta{}, err
		}
	}
	return meta, tw.Close()
}

// Backup is a verified backup archive.
type Backup struct {
	Meta   BackupMeta
	files  map[string][]byte
	signer []*x509.Certificate // the signing key's certificate, then the intermediate
}

const maxBackupFile = 4 << 30

// ReadBackup reads an archive and verifies its format, its signature under
// the CA in the archive, and every checksum. Restoring checks the signer
// again, against the CA that must have made it (InitFromBackup,
// RestoreBackup).
func ReadBackup(r io.Reader) (*Backup, error) {
	b := &Backup{files: map[string][]byte{}}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadBackup, err)
		}
		if h.Typeflag != tar.TypeReg || h.Size > maxBackupFile {
			return nil, fmt.Errorf("%w: unexpected entry %q", ErrBadBackup, h.Name)
		}
		data, err := io.ReadAll(io.LimitReader(tr, h.Size))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrBadBackup, h.Name, err)
		}
		b.files[h.Name] = data
	}
	sums, ok := b.files[backupSumsFile]
	if !ok {
		return nil, fmt.Errorf("%w: no %s", ErrBadBackup, backupSumsFile)
	}
	if err := b.verifySignature(sums); err != nil {
		return nil, err
	}
	listed := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(sums))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			return nil, fmt.Errorf("%w: bad %s line %q", ErrBadBackup, backupSumsFile, sc.Text())
		}
		data, present := b.files[name]
		got := sha256.Sum256(data)
		if !present || hex.EncodeToString(got[:]) != sum {
			return nil, fmt.Errorf("%w: %s is missing or does not match its checksum", ErrBadBackup, name)
		}
		listed[name] = true
	}
	for _, need := range []string{backupMetaFile, backupStateFile, "ca/" + ca.RootCertFile, "ca/" + ca.IntermediateCertFile, "ca/intermediate.key", ekRootsFile} {
		if !listed[need] {
			return nil, fmt.Errorf("%w: %s is missing", ErrBadBackup, need)
		}
	}
	for name := range b.files {
		if name != backupSumsFile && name != backupSigFile && !listed[name] {
			return nil, fmt.Errorf("%w: %s is not covered by %s", ErrBadBackup, name, backupSumsFile)
		}
	}
	if err := json.Unmarshal(b.files[backupMetaFile], &b.Meta); err != nil || b.Meta.Format != backupFormat {
		return nil, fmt.Errorf("%w: meta.json is not %s", ErrBadBackup, backupFormat)
	}
	return b, nil
}

// verifySignature checks SIGNATURE over sums, and that its key is certified
// by the CA in the archive.
func (b *Backup) verifySignature(sums []byte) error {
	raw, ok := b.files[backupSigFile]
	if !ok {
		return fmt.Errorf("%w: the archive is not signed (no %s)", ErrBadBackup, backupSigFile)
	}
	var sig backupSignature
	if err := json.Unmarshal(raw, &sig); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBadBackup, backupSigFile, err)
	}
	chain, err := attest.ParseCertificates([]byte(sig.KeyCertificate))
	if err != nil {
		return fmt.Errorf("%w: %s: key certificate: %v", ErrBadBackup, backupSigFile, err)
	}
	root, err := attest.ParseCertificates(b.files["ca/"+ca.RootCertFile])
	if err != nil || len(root) != 1 {
		return fmt.Errorf("%w: ca/%s is missing or not one certificate", ErrBadBackup, ca.RootCertFile)
	}
	key, err := ca.VerifyAuditKey(chain, root[0])
	if err != nil {
		return fmt.Errorf("%w: the signing key is not certified by the backup's CA: %v", ErrBadBackup, err)
	}
	s, err := base64.StdEncoding.DecodeString(sig.Signature)
	if err != nil || !ed25519.Verify(key, backupSigMessage(sums), s) {
		return fmt.Errorf("%w: the signature over %s does not verify (the archive changed after it was signed)", ErrBadBackup, backupSumsFile)
	}
	b.signer = chain
	return nil
}

// verifySigner checks that the backup's signing key is certified under root.
func (b *Backup) verifySigner(root *x509.Certificate, whose string) error {
	if _, err := ca.VerifyAuditKey(b.signer, root); err != nil {
		return fmt.Errorf("%w: the backup is signed by a key not certified by %s: %v", ErrBadBackup, whose, err)
	}
	return nil
}

// InitFromBackup creates a new node that takes the backup's CA, trust domain
// and manufacturer roots, so a restored registry's certificates still chain.
// The registry itself is loaded with RestoreBackup once the node runs. The
// password must open the backup's intermediate key, and that key must be
// the one its intermediate certificate (which certifies the signer) names.
func InitFromBackup(dataDir string, password []byte, cfg Config, b *Backup) error {
	if _, err := os.Stat(filepath.Join(dataDir, configFile)); err == nil {
		return fmt.Errorf("%s: %w", dataDir, ErrAlreadyInitialized)
	}
	if err := b.verifyCA(password); err != nil {
		return err
	}
	cfg.TrustDomain = b.Meta.TrustDomain
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	f := b.files
	if err := ca.Install(filepath.Join(dataDir, caDir), f["ca/"+ca.RootCertFile], f["ca/"+ca.IntermediateCertFile], f["ca/intermediate.key"], password); err != nil {
		return err
	}
	if _, err := attest.ParseCertificates(f[ekRootsFile]); err != nil {
		return fmt.Errorf("%w: EK roots: %v", ErrBadBackup, err)
	}
	return writeNodeFiles(dataDir, cfg, f[ekRootsFile])
}

// verifyCA checks that password opens the backup's intermediate key, that
// the key is the intermediate certificate's, and that this certificate,
// under the backup's root, certifies the signer.
func (b *Backup) verifyCA(password []byte) error {
	f := b.files
	roots, err := attest.ParseCertificates(f["ca/"+ca.RootCertFile])
	if err != nil || len(roots) != 1 {
		return fmt.Errorf("%w: ca/%s is not one certificate", ErrBadBackup, ca.RootCertFile)
	}
	inter, err := attest.ParseCertificates(f["ca/"+ca.IntermediateCertFile])
	if err != nil || len(inter) != 1 {
		return fmt.Errorf("%w: ca/%s is not one certificate", ErrBadBackup, ca.IntermediateCertFile)
	}
	k, err := pemutil.Parse(f["ca/intermediate.key"], pemutil.WithPassword(password))
	if err != nil {
		return fmt.Errorf("the backup's CA key: %w (it needs the cluster's password file)", ca.ErrBadPassword)
	}
	signer, ok := k.(crypto.Signer)
	if !ok || !publicKeysEqual(signer.Public(), inter[0].PublicKey) {
		return fmt.Errorf("%w: the CA key does not match ca/%s", ErrBadBackup, ca.IntermediateCertFile)
	}
	if len(b.signer) < 2 || !b.signer[1].Equal(inter[0]) {
		return fmt.Errorf("%w: the backup was not signed under ca/%s", ErrBadBackup, ca.IntermediateCertFile)
	}
	return b.verifySigner(roots[0], "the backup's CA")
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// RestoreBackup replaces the cluster's registry with the backup's. The
// cluster must share the backup's CA (InitFromBackup), and the backup must
// be signed by a key this cluster's CA certifies. Leader only.
func (a *Appliance) RestoreBackup(ctx context.Context, b *Backup) error {
	if b.Meta.RootSHA256 != rootHash(a.ca.Root()) {
		return fmt.Errorf("%w: the backup's CA root %s is not this cluster's %s: create the cluster with init --from-backup", ErrBadBackup, b.Meta.RootSHA256, rootHash(a.ca.Root()))
	}
	if err := b.verifySigner(a.ca.Root(), "this cluster's CA"); err != nil {
		return err
	}
	state := b.files[backupStateFile]
	if err := a.node.RestoreState(bytes.NewReader(state), int64(len(state))); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	// The restored state carries the old cluster's member addresses: record
	// this node's again (other nodes do when they join or restart). A backup
	// from before EK roots and settings were replicated carries neither:
	// seed them again from this node's files.
	if err := a.node.SetMember(ctx, a.self()); err != nil {
		return err
	}
	return a.seed(ctx)
}
