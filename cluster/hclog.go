package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// slogHCLog is an hclog.Logger that hands Raft's messages to slog: hclog's
// levels become slog's (Trace below Debug), key/value arguments become
// attributes, and the hclog name ("raft", "raft.snapshot") is the "logger"
// attribute. Level filtering is the slog handler's, so the node's
// --log-level governs Raft too; SetLevel is therefore a no-op.
type slogHCLog struct {
	log     *slog.Logger
	name    string
	implied []any
}

// levelTrace is where hclog's Trace lands in slog (below Debug).
const levelTrace = slog.LevelDebug - 4

// newHCLog bridges Raft's logger to log under the name "raft".
func newHCLog(log *slog.Logger) hclog.Logger {
	return &slogHCLog{log: log, name: "raft"}
}

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo // Info, Default, NoLevel
}

func (l *slogHCLog) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	lv := slogLevel(level)
	ctx := context.Background()
	if !l.log.Enabled(ctx, lv) {
		return
	}
	l.log.Log(ctx, lv, msg, l.attrs(args)...)
}

// attrs turns hclog's alternating keys and values (implied ones first) into
// slog attributes. A key that is not a string is printed; a lone trailing
// value gets hclog's own key for it.
func (l *slogHCLog) attrs(args []any) []any {
	all := append(append([]any(nil), l.implied...), args...)
	out := make([]any, 0, len(all)/2+1)
	if l.name != "" {
		out = append(out, slog.String("logger", l.name))
	}
	for i := 0; i < len(all); i += 2 {
		key, ok := all[i].(string)
		if !ok {
			key = fmt.Sprint(all[i])
		}
		if i+1 == len(all) {
			out = append(out, slog.Any(hclog.MissingKey, all[i]))
			break
		}
		out = append(out, slog.Any(key, hclogValue(all[i+1])))
	}
	return out
}

// hclogValue renders hclog's formatting wrappers the way hclog would.
func hclogValue(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) > 0 {
			if f, ok := v[0].(string); ok {
				return fmt.Sprintf(f, v[1:]...)
			}
		}
		return fmt.Sprint(v...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(v))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(v))
	case hclog.Binary:
		return fmt.Sprintf("0b%b", int(v))
	case hclog.Quote:
		return fmt.Sprintf("%q", string(v))
	case error, fmt.Stringer: // Raft passes itself ("leader", r) for its String form
		return fmt.Sprint(v) // fmt survives a nil receiver
	}
	return v
}

func (l *slogHCLog) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *slogHCLog) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *slogHCLog) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *slogHCLog) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *slogHCLog) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l *slogHCLog) enabled(level hclog.Level) bool {
	return l.log.Enabled(context.Background(), slogLevel(level))
}

func (l *slogHCLog) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *slogHCLog) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *slogHCLog) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *slogHCLog) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *slogHCLog) IsError() bool { return l.enabled(hclog.Error) }

func (l *slogHCLog) ImpliedArgs() []any { return l.implied }

func (l *slogHCLog) With(args ...any) hclog.Logger {
	c := *l
	c.implied = append(append([]any(nil), l.implied...), args...)
	return &c
}

func (l *slogHCLog) Name() string { return l.name }

func (l *slogHCLog) Named(name string) hclog.Logger {
	c := *l
	if c.name != "" {
		name = c.name + "." + name
	}
	c.name = name
	return &c
}

func (l *slogHCLog) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

// SetLevel does nothing: the slog handler's level decides.
func (l *slogHCLog) SetLevel(hclog.Level) {}

// GetLevel is the lowest hclog level the slog handler lets through.
func (l *slogHCLog) GetLevel() hclog.Level {
	for _, lv := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if l.enabled(lv) {
			return lv
		}
	}
	return hclog.Off
}

func (l *slogHCLog) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(opts), "", 0)
}

// StandardWriter takes lines from a standard library logger: at Info, or
// at ForceLevel, or, with InferLevels, at the level of a leading
// "[ERROR]"-style tag, which is then cut from the message.
func (l *slogHCLog) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	return &stdlogWriter{l: l, opts: *opts}
}

type stdlogWriter struct {
	l    *slogHCLog
	opts hclog.StandardLoggerOptions
}

var stdlogTags = []struct {
	tag   string
	level hclog.Level
}{
	{"[TRACE]", hclog.Trace}, {"[DEBUG]", hclog.Debug}, {"[INFO]", hclog.Info},
	{"[WARN]", hclog.Warn}, {"[ERR]", hclog.Error}, {"[ERROR]", hclog.Error},
}

func (w *stdlogWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimRight(p, " \t\r\n"))
	level := hclog.Info
	if w.opts.ForceLevel != hclog.NoLevel {
		level = w.opts.ForceLevel
	}
	if w.opts.InferLevels || w.opts.InferLevelsWithTimestamp {
		for _, t := range stdlogTags {
			if i := strings.Index(msg, t.tag); i >= 0 && (i == 0 || w.opts.InferLevelsWithTimestamp) {
				level, msg = t.level, strings.TrimSpace(msg[i+len(t.tag):])
				break
			}
		}
	}
	w.l.Log(level, msg)
	return len(p), nil
}

var _ hclog.Logger = (*slogHCLog)(nil)
