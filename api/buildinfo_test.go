package api

import (
	"encoding/json"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildInfoFrom(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/gatehouse-dev/gatehouse", Version: "v1.4.0-0.20261129120000-0123456789ab+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "-tags", Value: "hashicorpmetrics"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-11-29T12:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	got := BuildInfoFrom(bi)
	want := BuildInfo{
		Version:   "v1.4.0-0.20261129120000-0123456789ab+dirty",
		Revision:  "0123456789abcdef0123456789abcdef01234567",
		Modified:  true,
		Time:      "2026-11-29T12:00:00Z",
		GoVersion: "go1.26.8",
	}
	if got != want {
		t.Fatalf("BuildInfoFrom = %+v, want %+v", got, want)
	}
	if s := got.String(); s != "v1.4.0-0.20261129120000-0123456789ab+dirty (0123456789ab, modified) go1.26.8" {
		t.Fatalf("String() = %q", s)
	}
	text := got.Text()
	for _, line := range []string{
		"version:  v1.4.0-0.20261129120000-0123456789ab+dirty",
		"revision: 0123456789abcdef0123456789abcdef01234567 (modified)",
		"time:     2026-11-29T12:00:00Z",
		"go:       go1.26.8",
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("Text() lacks %q:\n%s", line, text)
		}
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var back BuildInfo
	if err := json.Unmarshal(b, &back); err != nil || back != got {
		t.Fatalf("JSON round trip: %s -> %+v, %v", b, back, err)
	}
	if !strings.Contains(string(b), `"revision":"0123456789abcdef0123456789abcdef01234567"`) || !strings.Contains(string(b), `"modified":true`) {
		t.Fatalf("JSON field names: %s", b)
	}

	// A clean tree, and a build without any version or VCS information.
	bi.Settings[4].Value = "false"
	if got := BuildInfoFrom(bi); got.Modified || strings.Contains(got.String(), "modified") || strings.Contains(got.Text(), "(modified)") {
		t.Fatalf("clean tree reported as modified: %+v", got)
	}
	bare := BuildInfoFrom(&debug.BuildInfo{GoVersion: "go1.26.8"})
	if bare != (BuildInfo{Version: "(devel)", GoVersion: "go1.26.8"}) || bare.String() != "(devel) go1.26.8" || !strings.Contains(bare.Text(), "revision: unknown") {
		t.Fatalf("bare build: %+v %q %q", bare, bare.String(), bare.Text())
	}
}

// The binary's own build info: in a test binary there is no VCS
// information, but the Go version is always there.
func TestReadBuildInfo(t *testing.T) {
	if got := ReadBuildInfo(); got.GoVersion != runtime.Version() || got.Version == "" {
		t.Fatalf("ReadBuildInfo = %+v, want Go %s", got, runtime.Version())
	}
}
