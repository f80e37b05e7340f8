package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/blakesmith/ar"
)

// entry is one file of a package's data or control tarball.
type entry struct {
	mode       int64
	owner, grp string
	dir        bool
	body       []byte
}

// readDeb opens a .deb the way dpkg does: an ar archive of debian-binary,
// control.tar.gz and data.tar.gz, in that order.
func readDeb(t *testing.T, path string) (control, data map[string]entry) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := ar.NewReader(f)
	var names []string
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		b, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "debian-binary":
			if string(b) != "2.0\n" {
				t.Fatalf("debian-binary %q", b)
			}
		case "control.tar.gz":
			control = readTarGz(t, b)
		case "data.tar.gz":
			data = readTarGz(t, b)
		}
	}
	if strings.Join(names, " ") != "debian-binary control.tar.gz data.tar.gz" {
		t.Fatalf("%s: ar members %v", path, names)
	}
	return control, data
}

func readTarGz(t *testing.T, b []byte) map[string]entry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	m := map[string]entry{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "."), "/")
		m[name] = entry{mode: h.Mode & 0o7777, owner: h.Uname, grp: h.Gname, dir: h.Typeflag == tar.TypeDir, body: body}
	}
}

func controlFields(t *testing.T, b []byte) map[string]string {
	t.Helper()
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ": "); ok && !strings.HasPrefix(k, " ") {
			m[k] = v
		}
	}
	return m
}

// fakeBin puts a small static Go binary (with build info, as the real
// ones have) in dir under name, and returns its bytes.
func fakeBin(t *testing.T, dir, name string) []byte {
	t.Helper()
	fakeOnce.Do(func() {
		src, err := os.MkdirTemp("", "fakebin")
		if err != nil {
			fakeErr = err
			return
		}
		defer os.RemoveAll(src)
		os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fake\n\ngo 1.26\n"), 0o644)
		os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644)
		cmd := exec.Command("go", "build", "-o", "fake")
		cmd.Dir, cmd.Env = src, append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			fakeErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		fake, fakeErr = os.ReadFile(filepath.Join(src, "fake"))
	})
	if fakeErr != nil {
		t.Fatal(fakeErr)
	}
	if err := os.WriteFile(filepath.Join(dir, name), fake, 0o755); err != nil {
		t.Fatal(err)
	}
	return fake
}

var (
	fakeOnce sync.Once
	fake     []byte
	fakeErr  error
)

// A dynamically linked binary is refused: its package would lack the
// Depends on the libraries it loads.
func TestDynamicBinaryRefused(t *testing.T) {
	bin := t.TempDir()
	fakeBin(t, bin, "gatehouse")
	sh, err := os.ReadFile("/bin/sh") // dynamically linked on every distribution that has dpkg
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "gatehouse-agent"), sh, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := run("..", bin, t.TempDir(), "1.2.3"); !errors.Is(err, ErrDynamic) {
		t.Fatalf("run with a dynamic binary: %v", err)
	}
	if err := Static(filepath.Join(bin, "gatehouse")); err != nil {
		t.Fatalf("the static fake: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The two packages hold exactly the files an operator expects, with their
// modes and owners, the units as shipped in the repository, /etc files as
// conffiles, and the maintainer scripts; dpkg-deb reads them.
func TestPackagesContents(t *testing.T) {
	bin, out := t.TempDir(), t.TempDir()
	bins := map[string][]byte{"gatehouse": fakeBin(t, bin, "gatehouse"), "gatehouse-agent": fakeBin(t, bin, "gatehouse-agent")}
	if err := run("..", bin, out, "1.2.3"); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		files     map[string]wantFile
		conffiles string
		scripts   map[string]string
		conflicts string
	}{
		"gatehouse": {
			files: map[string]wantFile{
				"/usr/bin/gatehouse":                        wantFile{0o755, ""},
				"/usr/lib/systemd/system/gatehouse.service": wantFile{0o644, "gatehouse/gatehouse.service"},
				"/usr/lib/sysusers.d/gatehouse.conf":        wantFile{0o644, "gatehouse/sysusers.conf"},
				"/etc/gatehouse":                            wantFile{0o755, ""},
				"/etc/gatehouse/gatehouse.env":              wantFile{0o644, "gatehouse/gatehouse.env"},
			},
			conffiles: "/etc/gatehouse/gatehouse.env\n",
			scripts:   map[string]string{"postinst": "gatehouse/postinst.sh", "prerm": "gatehouse/prerm.sh"},
			conflicts: "gatehouse-agent",
		},
		"gatehouse-agent": {
			files: map[string]wantFile{
				"/usr/bin/gatehouse-agent":                         wantFile{0o755, ""},
				"/usr/lib/systemd/system/gatehouse-enroll.service": wantFile{0o644, "../firmware-client/systemd/gatehouse-enroll.service"},
				"/usr/lib/systemd/system/gatehouse-agent.service":  wantFile{0o644, "../firmware-client/systemd/gatehouse-agent.service"},
				"/etc/gatehouse":                                   wantFile{0o755, ""},
				"/etc/gatehouse/agent.env":                         wantFile{0o644, "../firmware-client/systemd/agent.env.example"},
			},
			conffiles: "/etc/gatehouse/agent.env\n",
			scripts:   map[string]string{"postinst": "agent/postinst.sh", "prerm": "agent/prerm.sh"},
			conflicts: "gatehouse",
		},
	}
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	if len(debs) != len(want) {
		t.Fatalf("built %v", debs)
	}
	for name, w := range want {
		path := filepath.Join(out, name+"_1.2.3_amd64.deb")
		control, data := readDeb(t, path)
		fields := controlFields(t, control["/control"].body)
		if fields["Package"] != name || fields["Version"] != "1.2.3" || fields["Architecture"] != "amd64" || fields["Conflicts"] != w.conflicts {
			t.Errorf("%s: control %v", name, fields)
		}
		if got := string(control["/conffiles"].body); got != w.conffiles {
			t.Errorf("%s: conffiles %q, want %q", name, got, w.conffiles)
		}
		for script, src := range w.scripts {
			e, ok := control["/"+script]
			if !ok || e.mode != 0o755 || !bytes.Equal(e.body, mustRead(t, src)) {
				t.Errorf("%s: %s missing, not 0755 (%o) or not %s", name, script, e.mode, src)
			}
			if out, err := exec.Command("sh", "-n", src).CombinedOutput(); err != nil {
				t.Errorf("%s: %v\n%s", src, err, out)
			}
		}
		for path, f := range w.files {
			e, ok := data[path]
			switch {
			case !ok:
				t.Errorf("%s: no %s", name, path)
				continue
			case e.mode != f.mode || e.owner != "root" || e.grp != "root":
				t.Errorf("%s: %s is %o %s:%s, want %o root:root", name, path, e.mode, e.owner, e.grp, f.mode)
			case f.src != "" && !bytes.Equal(e.body, mustRead(t, f.src)):
				t.Errorf("%s: %s differs from %s", name, path, f.src)
			case strings.HasPrefix(path, "/usr/bin/") && !bytes.Equal(e.body, bins[filepath.Base(path)]):
				t.Errorf("%s: %s is not the binary", name, path)
			}
		}
		for path, e := range data {
			if _, ok := w.files[path]; !ok && !(e.dir && isParent(path, w.files)) {
				t.Errorf("%s: unexpected %s", name, path)
			}
		}
		dpkgDeb(t, path, name)
	}
}

// wantFile is a file a package must hold.
type wantFile struct {
	mode int64
	src  string // repository file whose bytes it holds ("" for directories and binaries)
}

func isParent(dir string, files map[string]wantFile) bool {
	for p := range files {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

// dpkgDeb has Debian's own tool read the package, when it is installed.
func dpkgDeb(t *testing.T, path, name string) {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Fatalf("dpkg-deb is not installed (Debian package dpkg; `make deps` installs it): %s cannot be read by Debian's own tool", filepath.Base(path))
	}
	out, err := exec.Command("dpkg-deb", "--field", path, "Package").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != name {
		t.Errorf("dpkg-deb --field %s: %v %s", path, err, out)
	}
	if out, err := exec.Command("dpkg-deb", "--contents", path).CombinedOutput(); err != nil {
		t.Errorf("dpkg-deb --contents %s: %v %s", path, err, out)
	}
}
