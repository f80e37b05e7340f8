package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// audit list filters by type, actor and device, prints one page with a
// hint for the next, and follows every page with --all.
func TestAuditList(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 2; i++ {
		id, err := e.Client.Enroll(ctx, servertest.NewDevice(t, e.Mfr).TPM)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id.DeviceID)
	}
	if _, err := server.NewAdminClient(e.Dir).LabelDevice(ctx, ids[1], "lucie", map[string]string{"site": "lyon"}, nil); err != nil {
		t.Fatal(err)
	}
	dd := []string{"--data-dir", e.Dir}
	list := func(args ...string) []cluster.AuditEntry {
		t.Helper()
		out, stderr, err := runAll(t, append(append([]string{"audit", "list", "-o", "json"}, args...), dd...)...)
		var es []cluster.AuditEntry
		if err != nil || json.Unmarshal([]byte(out), &es) != nil || stderr != "" {
			t.Fatalf("audit list %v: %v %s %s", args, err, out, stderr)
		}
		return es
	}
	types := func(es []cluster.AuditEntry) string {
		var ts []string
		for _, e := range es {
			ts = append(ts, e.Type)
		}
		return strings.Join(ts, ",")
	}
	if got := types(list("--device", ids[1])); got != "device.labels,enrollment.accepted" {
		t.Fatalf("--device: %s", got)
	}
	if got := list("--type", "device.labels", "--actor", "lucie"); len(got) != 1 || got[0].Subject != ids[1] {
		t.Fatalf("--type --actor: %+v", got)
	}
	if got := list("--actor", ids[0], "--since", "1h"); types(got) != "enrollment.accepted" {
		t.Fatalf("--actor DEVICE-ID: %s", types(got))
	}
	all := list("--limit", "1", "--all")
	if len(all) < 3 || all[0].Type != "device.labels" {
		t.Fatalf("--all: %s", types(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i].Time.After(all[i-1].Time) {
			t.Fatalf("not newest first at %d: %s", i, types(all))
		}
	}
	out, stderr, err := runAll(t, append([]string{"audit", "list", "--limit", "1"}, dd...)...)
	if m := regexp.MustCompile(`--cursor (\S+)`).FindStringSubmatch(stderr); err != nil || m == nil || !strings.Contains(out, "device.labels") || strings.Contains(out, "enrollment.accepted") {
		t.Fatalf("first page: %v %s %s", err, out, stderr)
	}
	for _, bad := range [][]string{{"--cursor", "garbage!"}, {"--since", "yesterday"}, {"--since", "1h", "--until", "2h"}} {
		if _, _, err := runAll(t, append(append([]string{"audit", "list"}, bad...), dd...)...); err == nil {
			t.Errorf("audit list %v: no error", bad)
		}
	}
}
