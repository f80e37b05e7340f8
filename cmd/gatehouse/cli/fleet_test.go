package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// gatehouse fleet prints the aggregate of GET /admin/v1/fleet.
func TestFleetCommand(t *testing.T) {
	e := servertest.New(t)
	d := servertest.NewDevice(t, e.Mfr)
	if _, err := e.Client.Enroll(context.Background(), d.TPM); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "fleet", "--data-dir", e.Dir, "--hours", "3", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var fc cluster.FleetCounts
	if err := json.Unmarshal([]byte(out), &fc); err != nil || fc.Devices != 1 || fc.ByState[cluster.DeviceActive] != 1 || len(fc.Hours) != 3 || fc.Hours[1].Accepted+fc.Hours[2].Accepted != 1 {
		t.Fatalf("fleet -o json: %v %s", err, out)
	}
	out, err = run(t, "fleet", "--data-dir", e.Dir)
	if err != nil || !strings.Contains(out, "approval queue:  0 pending") || strings.Count(out, "\n") < 24 {
		t.Fatalf("fleet: %v\n%s", err, out)
	}
	if _, err := run(t, "fleet", "--data-dir", e.Dir, "--hours", "169"); err == nil || !strings.Contains(err.Error(), "--hours") {
		t.Fatalf("--hours 169: %v", err)
	}
}
