package agent

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
)

func TestAgentVersion(t *testing.T) {
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetArgs([]string{"version"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "go:       "+runtime.Version()+"\n") {
		t.Fatalf("gatehouse-agent version:\n%s", out.String())
	}
}
