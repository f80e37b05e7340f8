package api

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// BuildInfo is what a binary knows about its own build, read from the build
// information the Go toolchain stamps into it. Both the appliance and the
// agent print it (`version`), and nodes hand it to each other so that
// `status` shows every node's version.
//
// It is informational: a node's answer about its own build is not evidence
// of what it runs (anyone who can build the binary can stamp anything).
type BuildInfo struct {
	// Version is the main module's version: a release tag, a
	// pseudo-version derived from the commit (with +dirty for a modified
	// tree), or "(devel)" when the toolchain knew neither.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, Modified
	// whether the work tree had uncommitted changes, Time the commit time
	// (RFC 3339). Empty when built without VCS information (go test,
	// -buildvcs=false, a source tarball).
	Revision  string `json:"revision,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	Time      string `json:"time,omitempty"`
	GoVersion string `json:"go_version"`
}

// develVersion is what the toolchain reports for a build without a version.
const develVersion = "(devel)"

// ReadBuildInfo returns this binary's build information.
func ReadBuildInfo() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return BuildInfo{Version: develVersion}
	}
	return BuildInfoFrom(bi)
}

// BuildInfoFrom extracts the version, the VCS settings and the Go version
// from the toolchain's build information.
func BuildInfoFrom(bi *debug.BuildInfo) BuildInfo {
	out := BuildInfo{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if out.Version == "" {
		out.Version = develVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			out.Revision = s.Value
		case "vcs.modified":
			out.Modified = s.Value == "true"
		case "vcs.time":
			out.Time = s.Value
		}
	}
	return out
}

// String is the one-line form: "v1.2.0 (abc123def456, modified) go1.26.8".
func (b BuildInfo) String() string {
	var vcs []string
	if b.Revision != "" {
		vcs = append(vcs, shortRevision(b.Revision))
	}
	if b.Modified {
		vcs = append(vcs, "modified")
	}
	s := b.Version
	if s == "" {
		s = "unknown"
	}
	if len(vcs) > 0 {
		s += " (" + strings.Join(vcs, ", ") + ")"
	}
	if b.GoVersion != "" {
		s += " " + b.GoVersion
	}
	return s
}

// Text is the multi-line form `version` prints, one "key: value" per line.
func (b BuildInfo) Text() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "version:  %s\n", b.Version)
	rev := b.Revision
	if rev == "" {
		rev = "unknown (built without VCS information)"
	}
	if b.Modified {
		rev += " (modified)"
	}
	fmt.Fprintf(&sb, "revision: %s\n", rev)
	if b.Time != "" {
		fmt.Fprintf(&sb, "time:     %s\n", b.Time)
	}
	fmt.Fprintf(&sb, "go:       %s\n", b.GoVersion)
	return sb.String()
}

func shortRevision(r string) string {
	if len(r) > 12 {
		return r[:12]
	}
	return r
}
