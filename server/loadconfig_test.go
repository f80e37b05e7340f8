package server

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A misspelt key in config.json stops the node instead of leaving the
// default silently in force, and the error names the key and the file.
func TestConfigUnknownKeyRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, configFile)
	write := func(extra map[string]any) {
		b, err := json.Marshal(DefaultConfig())
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range extra {
			m[k] = v
		}
		if b, err = json.Marshal(m); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(map[string]any{"approval_retry": "45s"})
	cfg, err := LoadConfig(dir)
	if err != nil || cfg.ApprovalRetry.Seconds() != 45 {
		t.Fatalf("known keys: %v %v", cfg.ApprovalRetry, err)
	}

	write(map[string]any{"aproval_retry": "45s"})
	_, err = LoadConfig(dir)
	if !errors.Is(err, ErrUnknownConfigKey) || !strings.Contains(err.Error(), `"aproval_retry"`) || !strings.Contains(err.Error(), path) {
		t.Fatalf("LoadConfig with a misspelt key: %v", err)
	}
	if _, err := Open(dir, []byte("pw")); !errors.Is(err, ErrUnknownConfigKey) || !strings.Contains(err.Error(), `"aproval_retry"`) {
		t.Fatalf("Open with a misspelt key: %v", err)
	}
}
