package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"testing"

	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// `devices show` says which path a device came through: the agent's
// native enrollment, or ACME device-attest (the step CLI); -o json has it
// as "path".
func TestDevicesShowPath(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	if _, err := server.NewAdminClient(e.Dir).ApplyPolicy(ctx, "test", []byte(`{"groups":[{"name":"fleet","mode":"auto","acme":true}]}`)); err != nil {
		t.Fatal(err)
	}
	d := servertest.NewDevice(t, e.Mfr)
	native, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	acmeID, _, _ := servertest.EnrollThroughACME(t, e)
	for id, want := range map[string]struct {
		text string
		json []string
	}{
		native.DeviceID: {"native (gatehouse-agent)", []string{server.PathNative}},
		acmeID:          {"ACME device-attest", []string{server.PathACME}},
	} {
		out, err := run(t, "devices", "show", id, "--data-dir", e.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if m := regexp.MustCompile(`(?m)^path:\s+(.*)$`).FindStringSubmatch(out); m == nil || m[1] != want.text {
			t.Errorf("devices show %s: path line %q, want %q:\n%s", id, m, want.text, out)
		}
		out, err = run(t, "devices", "show", id, "--data-dir", e.Dir, "-o", "json")
		var dev server.DeviceDetail
		if err != nil || json.Unmarshal([]byte(out), &dev) != nil || dev.ID != id || !slices.Equal(dev.Path, want.json) {
			t.Errorf("devices show %s -o json: %v, path %q, want %q:\n%s", id, err, dev.Path, want.json, out)
		}
	}
}
