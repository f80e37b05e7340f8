package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// progress draws a bar on stderr for a long operation (import, export,
// backup, restore). newProgress is the one place that decides whether to
// draw at all: only when both stdout and stderr are terminals and the
// output is not JSON, so a pipe, a file, a CI log or a script reading
// `-o json` never gets carriage returns and bars mixed in. A nil *progress
// draws nothing.
type progress struct {
	w     io.Writer
	label string
	drawn bool
}

func newProgress(cmd *cobra.Command, label string) *progress {
	if f, _ := cmd.Flags().GetString("output"); f == "json" {
		return nil
	}
	if !isTerminal(cmd.OutOrStdout()) || !isTerminal(cmd.ErrOrStderr()) {
		return nil
	}
	return &progress{w: cmd.ErrOrStderr(), label: label}
}

// isTerminal reports whether w is a file descriptor on a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// update redraws the bar; total < 0 means unknown (a byte count only).
func (p *progress) update(done, total int64, unit string) {
	if p == nil {
		return
	}
	p.drawn = true
	if total < 0 {
		fmt.Fprintf(p.w, "\r%s: %s", p.label, amount(done, unit))
		return
	}
	const width = 30
	n := int(width * done / max(total, 1))
	n = min(max(n, 0), width)
	fmt.Fprintf(p.w, "\r%s [%s%s] %s/%s", p.label, strings.Repeat("=", n), strings.Repeat(" ", width-n), amount(done, unit), amount(total, unit))
}

// done ends the bar's line.
func (p *progress) done() {
	if p != nil && p.drawn {
		fmt.Fprintln(p.w)
	}
}

func amount(n int64, unit string) string {
	if unit != "bytes" {
		return fmt.Sprint(n)
	}
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// byteCount draws the bytes that went through a countWriter or countReader.
type byteCount struct {
	p        *progress
	n, total int64
}

func (c *byteCount) add(n int) {
	c.n += int64(n)
	c.p.update(c.n, c.total, "bytes")
}

// countWriter reports the bytes written through it to p.
type countWriter struct {
	w io.Writer
	byteCount
}

func (p *progress) writer(w io.Writer, total int64) io.Writer {
	if p == nil {
		return w
	}
	return &countWriter{w, byteCount{p: p, total: total}}
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.add(n)
	return n, err
}

// countReader reports the bytes read through it to p.
type countReader struct {
	r io.Reader
	byteCount
}

func (p *progress) reader(r io.Reader, total int64) io.Reader {
	if p == nil {
		return r
	}
	return &countReader{r, byteCount{p: p, total: total}}
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.add(n)
	return n, err
}
