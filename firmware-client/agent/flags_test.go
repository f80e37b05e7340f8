package agent

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// pflag takes a `backticked` word of a flag's usage as its value
// placeholder: every placeholder must be one word (as in gatehouse's
// TestFlagPlaceholders).
func TestFlagPlaceholders(t *testing.T) {
	n := 0
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			n++
			if name, usage := pflag.UnquoteUsage(f); strings.ContainsAny(name, " \t") || strings.Contains(usage, "`") {
				t.Errorf("%s --%s: placeholder %q, usage %q", c.CommandPath(), f.Name, name, usage)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRoot())
	if n < 10 {
		t.Fatalf("walked only %d flags", n)
	}
}
