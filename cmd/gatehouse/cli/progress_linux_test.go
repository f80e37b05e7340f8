package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// openPTY returns a pseudo-terminal's controller and its terminal end.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminals here: %v", err)
	}
	fd := int(ptmx.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ptmx, tty
}

// On a terminal the import draws its bar; with -o json on the same
// terminal it does not.
func TestProgressOnATerminal(t *testing.T) {
	e := servertest.New(t)
	file := enrollmentsCSV(t, 20)
	for _, tc := range []struct {
		args []string
		bar  bool
	}{
		{[]string{"enrollments", "import", file, "--batch", "5", "--data-dir", e.Dir}, true},
		{[]string{"enrollments", "import", file, "--batch", "5", "--data-dir", e.Dir, "-o", "json"}, false},
	} {
		ptmx, tty := openPTY(t)
		var screen bytes.Buffer
		read := make(chan struct{})
		go func() { io.Copy(&screen, ptmx); close(read) }()
		root := newRoot(tty, tty)
		root.SetArgs(tc.args)
		err := root.Execute()
		tty.Close()
		<-read
		ptmx.Close()
		if err != nil {
			t.Fatal(err)
		}
		got := screen.String()
		if drew := strings.Contains(got, "import [====="); drew != tc.bar || tc.bar && !strings.Contains(got, "20/20") {
			t.Errorf("%v on a terminal: bar drawn %v, want %v:\n%q", tc.args, drew, tc.bar, got)
		}
	}
}
