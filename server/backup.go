package server

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
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
)

// A backup is a tar archive, self-describing and checksummed like Consul's
// snapshots:
//
//	meta.json           format, time, node, trust domain, root fingerprint, Raft index
//	state.db            the registry (bbolt), consistent as of a linearizable read
//	ca/root.crt         the cluster CA: certificates and the intermediate key,
//	ca/intermediate.crt   still encrypted under the cluster password
//	ca/intermediate.key
//	ek-roots.pem        the manufacturer roots
//	SHA256SUMS          sha256sum-style lines for every file above
//
// Restoring checks every checksum before anything changes.
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
)

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
	for _, f := range []string{"ca/" + ca.RootCertFile, "ca/" + ca.IntermediateCertFile, ekRootsFile} {
		if files[f], err = os.ReadFile(filepath.Join(a.dataDir, f)); err != nil {
			return BackupMeta{}, err
		}
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
	names = append(names, backupSumsFile)
	files[backupSumsFile] = []byte(sums.String())

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
	Meta  BackupMeta
	files map[string][]byte
}

const maxBackupFile = 4 << 30

// ReadBackup reads an archive and verifies its format and every checksum.
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
		if name != backupSumsFile && !listed[name] {
			return nil, fmt.Errorf("%w: %s is not covered by %s", ErrBadBackup, name, backupSumsFile)
		}
	}
	if err := json.Unmarshal(b.files[backupMetaFile], &b.Meta); err != nil || b.Meta.Format != backupFormat {
		return nil, fmt.Errorf("%w: meta.json is not %s", ErrBadBackup, backupFormat)
	}
	return b, nil
}

// InitFromBackup creates a new node that takes the backup's CA, trust domain
// and manufacturer roots, so a restored registry's certificates still chain.
// The registry itself is loaded with RestoreBackup once the node runs.
func InitFromBackup(dataDir string, password []byte, cfg Config, b *Backup) error {
	if _, err := os.Stat(filepath.Join(dataDir, configFile)); err == nil {
		return fmt.Errorf("%s: %w", dataDir, ErrAlreadyInitialized)
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

// RestoreBackup replaces the cluster's registry with the backup's. The
// cluster must share the backup's CA (InitFromBackup). Leader only.
func (a *Appliance) RestoreBackup(ctx context.Context, b *Backup) error {
	if b.Meta.RootSHA256 != rootHash(a.ca.Root()) {
		return fmt.Errorf("the backup's CA root %s is not this cluster's %s: create the cluster with init --from-backup", b.Meta.RootSHA256, rootHash(a.ca.Root()))
	}
	state := b.files[backupStateFile]
	if err := a.node.RestoreState(bytes.NewReader(state), int64(len(state))); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	// The restored state carries the old cluster's member addresses: record
	// this node's again (other nodes do when they join or restart).
	return a.node.SetMember(ctx, a.self())
}
