package server_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// archiveFiles reads a backup tar into name → contents.
func archiveFiles(t *testing.T, raw []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], _ = io.ReadAll(tr)
	}
}

// writeArchive writes files as a tar; with resum, SHA256SUMS is recomputed
// over every other file but the signature, as someone who can write to
// backup storage would.
func writeArchive(t *testing.T, files map[string][]byte, resum bool) []byte {
	t.Helper()
	if resum {
		var names []string
		for n := range files {
			if n != "SHA256SUMS" && n != "SIGNATURE" {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		var sums strings.Builder
		for _, n := range names {
			fmt.Fprintf(&sums, "%x  %s\n", sha256.Sum256(files[n]), n)
		}
		files["SHA256SUMS"] = []byte(sums.String())
	}
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Size: int64(len(files[n])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(files[n])
	}
	tw.Close()
	return buf.Bytes()
}

// A backup is signed by a key the cluster's intermediate certifies. Whoever
// can write to backup storage but holds no CA key cannot make a restore
// accept a changed, added or removed file, a recomputed SHA256SUMS, a
// dropped signature or a signature by another CA's key; the untouched
// backup restores.
func TestBackupTamperingRefused(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	if _, err := e.Client.Enroll(ctx, d.TPM); err != nil {
		t.Fatal(err)
	}
	adm := server.NewAdminClient(e.Dir)
	var archive bytes.Buffer
	if err := adm.Backup(ctx, &archive); err != nil {
		t.Fatal(err)
	}
	raw := archive.Bytes()
	other := servertest.New(t)
	otherKey, otherChain := other.App.AuditKey()

	flipState := func(f map[string][]byte) {
		s := append([]byte(nil), f["state.db"]...)
		i := bytes.Index(s, []byte("revoked"))
		if i < 0 {
			i = bytes.Index(s, []byte("active"))
		}
		s[i] ^= 0x20
		f["state.db"] = s
	}
	cases := []struct {
		name   string
		tamper func(map[string][]byte)
		resum  bool
		want   string
	}{
		{"flip a registry byte", flipState, false, "does not match its checksum"},
		{"flip a registry byte and recompute SHA256SUMS", flipState, true, "signature"},
		{"add an EK root", func(f map[string][]byte) {
			f["ek-roots.pem"] = append(append([]byte(nil), f["ek-roots.pem"]...), other.Mfr.RootPEM()...)
		}, true, "signature"},
		{"add a file", func(f map[string][]byte) { f["extra.pem"] = other.Mfr.RootPEM() }, true, "signature"},
		{"remove a file", func(f map[string][]byte) { delete(f, "ek-roots.pem") }, true, "signature"},
		{"drop the signature", func(f map[string][]byte) { delete(f, "SIGNATURE") }, false, "not signed"},
		// Another CA's files and key, with meta.json still naming this root.
		{"another CA's key signs", func(f map[string][]byte) {
			flipState(f)
			for _, n := range []string{"ca/root.crt", "ca/intermediate.crt"} {
				b, err := os.ReadFile(filepath.Join(other.Dir, n))
				if err != nil {
					t.Fatal(err)
				}
				f[n] = b
			}
			var sums strings.Builder
			var names []string
			for n := range f {
				if n != "SHA256SUMS" && n != "SIGNATURE" {
					names = append(names, n)
				}
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintf(&sums, "%x  %s\n", sha256.Sum256(f[n]), n)
			}
			f["SHA256SUMS"] = []byte(sums.String())
			var chain []byte
			for _, c := range otherChain {
				chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
			}
			sig, _ := json.Marshal(map[string]string{
				"key_certificate": string(chain),
				"signature":       base64.StdEncoding.EncodeToString(ed25519.Sign(otherKey, append([]byte("gatehouse-backup-signature/v1\n"), f["SHA256SUMS"]...))),
			})
			f["SIGNATURE"] = sig
		}, false, "not certified by this cluster's CA"},
	}
	for _, c := range cases {
		f := archiveFiles(t, raw)
		c.tamper(f)
		bad := writeArchive(t, f, c.resum)
		_, err := adm.Restore(ctx, bytes.NewReader(bad))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: restore answered %v, want a refusal naming %q", c.name, err, c.want)
		}
		t.Logf("%s: %v", c.name, err)
		// A new node is not made from it either.
		cfg := server.DefaultConfig()
		if b, err := server.ReadBackup(bytes.NewReader(bad)); err == nil {
			if err := server.InitFromBackup(t.TempDir(), servertest.Password, cfg, b); !errors.Is(err, server.ErrBadBackup) {
				t.Errorf("%s: init --from-backup answered %v", c.name, err)
			}
		} else if !errors.Is(err, server.ErrBadBackup) {
			t.Errorf("%s: read answered %v", c.name, err)
		}
	}
	b, err := server.ReadBackup(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := server.InitFromBackup(t.TempDir(), servertest.Password, server.DefaultConfig(), b); err != nil {
		t.Fatalf("init --from-backup from the untouched backup: %v", err)
	}
	if _, err := adm.Restore(ctx, bytes.NewReader(raw)); err != nil {
		t.Fatalf("untouched backup: %v", err)
	}
}
