package servertest

import (
	"debug/buildinfo"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// StepCLIVersion is the stock step CLI the end-to-end tests run (the
// Makefile's STEP_CLI_VERSION).
const StepCLIVersion = "v0.30.2"

// StepCLI returns the path of the pinned step CLI: $STEP_CLI_PATH (the
// Makefile sets it), else bin/step at the module root. It fails the test
// (never skips) when the binary is missing or was built from another
// version, which the binary's own build information says.
func StepCLI(t testing.TB) string {
	t.Helper()
	const hint = "run make test (it installs step " + StepCLIVersion + ") or make step-cli"
	path := os.Getenv("STEP_CLI_PATH")
	if path == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Fatalf("step CLI: STEP_CLI_PATH is not set and the module root is not found (%v): %s", err, hint)
		}
		path = filepath.Join(root, "bin", "step")
	}
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatalf("step CLI %s: %v: %s", path, err, hint)
	}
	if info.Main.Path != "github.com/smallstep/cli" || info.Main.Version != StepCLIVersion {
		t.Fatalf("step CLI %s is %s@%s, want github.com/smallstep/cli@%s: %s", path, info.Main.Path, info.Main.Version, StepCLIVersion, hint)
	}
	return path
}

// moduleRoot is the nearest directory above the working directory whose
// go.mod declares the gatehouse module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.HasPrefix(string(b), "module github.com/gatehouse-dev/gatehouse\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}
