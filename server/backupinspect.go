package server

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// BackupInspection is what `cluster backup inspect` reports about an
// archive, read offline.
type BackupInspection struct {
	Meta  BackupMeta   `json:"meta"`
	Files []BackupFile `json:"files"`
	// Valid: the signature verifies under the CA in the archive and every
	// checksum matches (what ReadBackup checks). It does not say the backup
	// is this cluster's: restore checks that against the cluster's root.
	Valid bool   `json:"valid"`
	Error string `json:"error,omitempty"`
}

// BackupFile is one archive member.
type BackupFile struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// InspectBackup lists an archive's members and metadata and checks its
// signature and checksums, restoring nothing. An archive that is not a tar,
// or holds no readable meta.json, is an error wrapping ErrBadBackup; one
// that is readable but does not verify is reported with Valid false.
func InspectBackup(r io.Reader) (BackupInspection, error) {
	var in BackupInspection
	raw, err := io.ReadAll(io.LimitReader(r, maxBackupFile))
	if err != nil {
		return in, err
	}
	tr := tar.NewReader(bytes.NewReader(raw))
	var meta []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return in, fmt.Errorf("%w: %v", ErrBadBackup, err)
		}
		in.Files = append(in.Files, BackupFile{Name: h.Name, Size: h.Size})
		if h.Name == backupMetaFile && h.Size < 1<<20 {
			if meta, err = io.ReadAll(tr); err != nil {
				return in, fmt.Errorf("%w: %s: %v", ErrBadBackup, h.Name, err)
			}
		}
	}
	if meta == nil || json.Unmarshal(meta, &in.Meta) != nil {
		return in, fmt.Errorf("%w: no readable %s", ErrBadBackup, backupMetaFile)
	}
	if _, err := ReadBackup(bytes.NewReader(raw)); err != nil {
		in.Error = err.Error()
	} else {
		in.Valid = true
	}
	return in, nil
}
