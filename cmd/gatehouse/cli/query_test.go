package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// devices list and attestations list filter, print one page with a hint
// for the next, and follow every page with --all; -o json stays an array.
func TestListFiltersAndPages(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 3; i++ {
		id, err := e.Client.Enroll(ctx, servertest.NewDevice(t, e.Mfr).TPM)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id.DeviceID)
	}
	slices.Sort(ids)
	admin := server.NewAdminClient(e.Dir)
	if _, err := admin.LabelDevice(ctx, ids[1], "t", map[string]string{"site": "lyon"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.TransitionDevice(ctx, ids[2], cluster.OpDisable, "t", "test"); err != nil {
		t.Fatal(err)
	}
	dd := []string{"--data-dir", e.Dir}
	jsonIDs := func(out string) []string {
		t.Helper()
		var devs []cluster.Device
		if err := json.Unmarshal([]byte(out), &devs); err != nil {
			t.Fatalf("not a JSON array: %v %s", err, out)
		}
		var got []string
		for _, d := range devs {
			got = append(got, d.ID)
		}
		return got
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--label", "site=lyon"}, ids[1:2]},
		{[]string{"--state", "disabled"}, ids[2:]},
		{[]string{"--state", "active", "--label", "site=lyon"}, ids[1:2]},
		{[]string{"--state", "active", "--limit", "1", "--all"}, ids[:2]},
		{[]string{"--flag", "stale"}, nil},
	} {
		out, stderr, err := runAll(t, append(append([]string{"devices", "list", "-o", "json"}, c.args...), dd...)...)
		if err != nil || !slices.Equal(jsonIDs(out), c.want) || stderr != "" {
			t.Fatalf("devices list %v: %v %s %s", c.args, err, out, stderr)
		}
	}

	// One page, and the way to the next.
	out, stderr, err := runAll(t, append([]string{"devices", "list", "--limit", "2"}, dd...)...)
	m := regexp.MustCompile(`--cursor (\S+)`).FindStringSubmatch(stderr)
	if err != nil || m == nil || !strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || strings.Contains(out, ids[2]) {
		t.Fatalf("first page: %v %s %s", err, out, stderr)
	}
	out, stderr, err = runAll(t, append([]string{"devices", "list", "--limit", "2", "-o", "json", "--cursor", m[1]}, dd...)...)
	if err != nil || !slices.Equal(jsonIDs(out), ids[2:]) || stderr != "" {
		t.Fatalf("second page: %v %s %s", err, out, stderr)
	}

	out, stderr, err = runAll(t, append([]string{"attestations", "list", "--outcome", "accepted", "--device", ids[0], "--since", "1h", "-o", "json"}, dd...)...)
	var recs []cluster.AttestationRecord
	if err != nil || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || recs[0].DeviceID != ids[0] || stderr != "" {
		t.Fatalf("attestations list: %v %s %s", err, out, stderr)
	}
	out, _, err = runAll(t, append([]string{"attestations", "list", "--until", "2000-01-01T00:00:00Z", "-o", "json"}, dd...)...)
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("attestations list --until 2000: %v %s", err, out)
	}
	for _, bad := range [][]string{{"attestations", "list", "--outcome", "maybe"}, {"attestations", "list", "--since", "yesterday"}, {"devices", "list", "--flag", "shiny"}, {"devices", "list", "--cursor", "garbage!"}} {
		if _, _, err := runAll(t, append(bad, dd...)...); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
