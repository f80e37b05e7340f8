package cmdutil

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gatehouse-dev/gatehouse/api"
)

func TestVersionCmd(t *testing.T) {
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		c := VersionCmd()
		c.SetOut(&out)
		c.SetArgs(args)
		err := c.Execute()
		return out.String(), err
	}
	out, err := run()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "\ngo:       "+runtime.Version()+"\n") || !strings.HasPrefix(out, "version:  ") {
		t.Fatalf("version:\n%s", out)
	}
	out, err = run("-o", "json")
	var bi api.BuildInfo
	if err != nil || json.Unmarshal([]byte(out), &bi) != nil || bi.GoVersion != runtime.Version() || bi.Version == "" {
		t.Fatalf("version -o json: %v %s", err, out)
	}
	if _, err := run("-o", "yaml"); err == nil || !strings.Contains(err.Error(), "yaml") {
		t.Fatalf("version -o yaml: %v", err)
	}
}

func TestLogFlags(t *testing.T) {
	var lf LogFlags
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	lf.Register(fs)
	if err := fs.Parse([]string{"--log-level", "warn", "--log-format", "json"}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	log := lf.New(&buf)
	log.Info("dropped")
	log.Warn("kept", "k", 1)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["msg"] != "kept" || rec["level"] != "WARN" || rec["k"] != float64(1) {
		t.Fatalf("json log at warn: %v %q", err, buf.String())
	}
	if lf.Level() != slog.LevelWarn {
		t.Fatalf("Level() = %v", lf.Level())
	}
	for _, bad := range [][]string{{"--log-level", "loud"}, {"--log-format", "xml"}} {
		fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
		fs.SetOutput(&bytes.Buffer{})
		new(LogFlags).Register(fs)
		if err := fs.Parse(bad); err == nil || !strings.Contains(err.Error(), bad[1]) {
			t.Fatalf("%v: %v", bad, err)
		}
	}
	// Defaults: info, text.
	var def LogFlags
	def.Register(pflag.NewFlagSet("d", pflag.ContinueOnError))
	buf.Reset()
	def.New(&buf).Debug("dropped")
	def.New(&buf).Info("kept")
	if s := buf.String(); !strings.HasPrefix(s, "time=") || !strings.Contains(s, "level=INFO msg=kept") || strings.Contains(s, "dropped") {
		t.Fatalf("default logger: %q", s)
	}
}

func TestFlagsFromEnv(t *testing.T) {
	newCmd := func() (*cobra.Command, *string, *[]string, *LogFlags) {
		var dir string
		var hosts []string
		var lf LogFlags
		c := &cobra.Command{Use: "serve", RunE: func(*cobra.Command, []string) error { return nil }}
		c.Flags().StringVar(&dir, "data-dir", "default-dir", "")
		c.Flags().StringSliceVar(&hosts, "hostname", []string{"localhost"}, "")
		lf.Register(c.Flags())
		return c, &dir, &hosts, &lf
	}
	parse := func(args []string, env ...string) (*string, *[]string, *LogFlags, error) {
		c, dir, hosts, lf := newCmd()
		if err := c.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		return dir, hosts, lf, FlagsFromEnv(c.Flags(), env)
	}
	dir, hosts, lf, err := parse(nil, "PATH=/bin", "GATEHOUSE_DATA_DIR=/var/lib/gh", "GATEHOUSE_HOSTNAME=a.example,10.0.0.1", "GATEHOUSE_LOG_LEVEL=debug")
	if err != nil || *dir != "/var/lib/gh" || strings.Join(*hosts, " ") != "a.example 10.0.0.1" || lf.Level() != slog.LevelDebug {
		t.Fatalf("from env: %v %q %q %v", err, *dir, *hosts, lf.Level())
	}
	// The command line wins.
	dir, _, lf, err = parse([]string{"--data-dir", "cli-dir", "--log-level", "error"}, "GATEHOUSE_DATA_DIR=/var/lib/gh", "GATEHOUSE_LOG_LEVEL=debug")
	if err != nil || *dir != "cli-dir" || lf.Level() != slog.LevelError {
		t.Fatalf("command line over env: %v %q %v", err, *dir, lf.Level())
	}
	// Unset: the default.
	if dir, _, _, err = parse(nil, "OTHER=1"); err != nil || *dir != "default-dir" {
		t.Fatalf("default: %v %q", err, *dir)
	}
	// A garbled value, and a variable for no flag, name the variable.
	if _, _, _, err = parse(nil, "GATEHOUSE_LOG_LEVEL=loud"); err == nil || !strings.Contains(err.Error(), "$GATEHOUSE_LOG_LEVEL=\"loud\"") {
		t.Fatalf("garbled value: %v", err)
	}
	if _, _, _, err = parse(nil, "GATEHOUSE_LOGLEVEL=debug"); err == nil || !strings.Contains(err.Error(), "$GATEHOUSE_LOGLEVEL") {
		t.Fatalf("unknown variable: %v", err)
	}
	if EnvName("password-file") != "GATEHOUSE_PASSWORD_FILE" {
		t.Fatal(EnvName("password-file"))
	}
}
