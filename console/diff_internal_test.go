package console

import (
	"strings"
	"testing"
)

func TestLineDiff(t *testing.T) {
	a := strings.Split("a\nb\nc\nd", "\n")
	b := strings.Split("a\nc\nd2\nd\ne", "\n")
	var got []string
	for _, l := range lineDiff(a, b) {
		got = append(got, l.Op+l.Text)
	}
	if want := " a|-b| c|+d2| d|+e"; strings.Join(got, "|") != want {
		t.Fatalf("diff %q, want %q", strings.Join(got, "|"), want)
	}
	if d := lineDiff(a, a); len(d) != len(a) || d[1].Op != " " {
		t.Fatalf("identical documents: %v", d)
	}
}
