package cmdutil

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"
)

// LogFlags are --log-level and --log-format. Both are checked when set, so
// a bad value is refused by flag parsing (and FlagsFromEnv names the
// variable it came from).
type LogFlags struct {
	level  levelValue
	format formatValue
}

// Register adds --log-level (default info) and --log-format (default text).
func (l *LogFlags) Register(fs *pflag.FlagSet) {
	l.level = levelValue(slog.LevelInfo)
	l.format = "text"
	fs.Var(&l.level, "log-level", "debug, info, warn or error")
	fs.Var(&l.format, "log-format", "text or json (one JSON object per line)")
}

// Level is the configured level.
func (l *LogFlags) Level() slog.Level { return slog.Level(l.level) }

// New builds the logger the flags describe, writing to w.
func (l *LogFlags) New(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.Level(l.level)}
	if l.format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

type levelValue slog.Level

func (v *levelValue) String() string { return strings.ToLower(slog.Level(*v).String()) }
func (v *levelValue) Type() string   { return "level" }
func (v *levelValue) Set(s string) error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("%q is not a log level (want debug, info, warn or error)", s)
	}
	*v = levelValue(lv)
	return nil
}

type formatValue string

func (v *formatValue) String() string { return string(*v) }
func (v *formatValue) Type() string   { return "format" }
func (v *formatValue) Set(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("%q is not a log format (want text or json)", s)
	}
	*v = formatValue(s)
	return nil
}
