package cli

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
)

func TestVersion(t *testing.T) {
	// Needs no admin credentials, even when the ones named are unusable.
	t.Setenv("GATEHOUSE_ADMIN_CONFIG", "/nonexistent/admin.json")
	out, err := run(t, "version")
	if err != nil || !strings.Contains(out, "go:       "+runtime.Version()+"\n") {
		t.Fatalf("version: %v\n%s", err, out)
	}
	out, err = run(t, "version", "-o", "json")
	var bi api.BuildInfo
	if err != nil || json.Unmarshal([]byte(out), &bi) != nil || bi.GoVersion != runtime.Version() {
		t.Fatalf("version -o json: %v %s", err, out)
	}
}
