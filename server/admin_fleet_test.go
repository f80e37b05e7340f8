package server_test

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// recountFleet is GET /admin/v1/fleet the slow way: every device and every
// record listed, counted into the hours the answer (got) names.
func recountFleet(t *testing.T, admin *server.AdminClient, got cluster.FleetCounts) cluster.FleetCounts {
	t.Helper()
	ctx := context.Background()
	devs, err := admin.Devices(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := admin.Attestations(ctx, "", 100000)
	if err != nil {
		t.Fatal(err)
	}
	want := cluster.FleetCounts{ByState: map[string]int{}, ByGroup: map[string]int{}, Hours: make([]cluster.FleetHour, len(got.Hours))}
	for _, d := range devs {
		want.Devices++
		want.ByState[d.Status]++
		want.ByGroup[d.Group]++
		if d.Status == cluster.DevicePending {
			want.Pending++
		}
	}
	for i, h := range got.Hours {
		want.Hours[i] = cluster.FleetHour{Start: h.Start, Refusals: map[string]int{}}
	}
	for _, a := range recs {
		for i := range want.Hours {
			h := &want.Hours[i]
			if a.Time.Before(h.Start) || !a.Time.Before(h.Start.Add(time.Hour)) {
				continue
			}
			switch a.Outcome {
			case cluster.OutcomeAccepted:
				h.Accepted++
			case cluster.OutcomePending:
				h.Pending++
			case cluster.OutcomeRejected:
				h.Rejected++
				h.Refusals[a.Code]++
			}
		}
	}
	return want
}

// GET /admin/v1/fleet on a live node with swtpm devices: after every step
// of a mixed workload (enroll, refuse, approve, quarantine, delete,
// retention compaction) it equals a recount of the full lists, over the
// socket and to an auditor over HTTPS, linearizable or stale.
func TestFleetOnSwtpm(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	applyPolicy(t, e, `{"groups":[{"name":"lab","mode":"auto","match":{"models":["m-lab"]}},{"name":"floor","mode":"approve","match":{"models":["m-floor"]}}]}`)
	admin := server.NewAdminClient(e.Dir)
	auditor := server.NewRemoteAdminClient("https://"+e.App.Addr(), adminCert(t, e, ca.RoleAuditor, "carol"), e.App.Root())
	staleAuditor := server.NewRemoteAdminClient("https://"+e.App.Addr(), adminCert(t, e, ca.RoleAuditor, "dave"), e.App.Root())
	staleAuditor.StaleReads = true
	check := func(after string) cluster.FleetCounts {
		t.Helper()
		var first cluster.FleetCounts
		for name, c := range map[string]*server.AdminClient{"socket": admin, "https": auditor, "stale": staleAuditor} {
			got, err := c.Fleet(ctx, 0)
			if err != nil {
				t.Fatalf("after %s, %s: %v", after, name, err)
			}
			if len(got.Hours) != server.DefaultFleetHours || !got.Hours[len(got.Hours)-1].Start.Equal(time.Now().UTC().Truncate(time.Hour)) {
				t.Fatalf("after %s, %s: %d hours ending %v", after, name, len(got.Hours), got.Hours[len(got.Hours)-1].Start)
			}
			if want := recountFleet(t, admin, got); !reflect.DeepEqual(got, want) {
				t.Fatalf("after %s, %s:\n%+v\nrecount:\n%+v", after, name, got, want)
			}
			first = got
		}
		if err := e.App.Node().VerifyIndexes(); err != nil {
			t.Fatalf("after %s: %v", after, err)
		}
		return first
	}
	enroll := func(model string) (string, error) {
		t.Helper()
		d := servertest.NewDevice(t, e.Mfr)
		id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithClaims(api.Claims{Model: model, Serial: "SN-" + model}))
		if err != nil {
			return "", err
		}
		return id.DeviceID, nil
	}
	check("nothing")
	labA, err := enroll("m-lab")
	if err != nil {
		t.Fatal(err)
	}
	labB, err := enroll("m-lab")
	if err != nil {
		t.Fatal(err)
	}
	var pending *api.Pending
	if _, err := enroll("m-floor"); !errors.As(err, &pending) {
		t.Fatalf("floor device: %v", err)
	}
	if _, err := enroll("m-none"); problemCode(err) != api.CodePolicyDenied {
		t.Fatalf("device of no group: %v", err)
	}
	c := check("enrollments and a refusal")
	now := c.Hours[len(c.Hours)-1]
	if c.Devices != 3 || c.Pending != 1 || c.ByGroup["lab"] != 2 || now.Refusals[api.CodePolicyDenied] < 1 || now.Accepted+c.Hours[len(c.Hours)-2].Accepted < 2 {
		t.Fatalf("after enrollments: %+v", c)
	}
	floor, err := admin.Devices(ctx, cluster.DevicePending)
	if err != nil || len(floor) != 1 {
		t.Fatalf("pending: %v %v", floor, err)
	}
	if _, err := admin.TransitionDevice(ctx, floor[0].ID, cluster.OpApprove, "test", "ok"); err != nil {
		t.Fatal(err)
	}
	check("approve")
	if _, err := admin.TransitionDevice(ctx, labB, cluster.OpQuarantine, "test", "look"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.TransitionDevice(ctx, labA, cluster.OpDelete, "test", "gone"); err != nil {
		t.Fatal(err)
	}
	c = check("quarantine and delete")
	if c.Pending != 0 || c.ByState[cluster.DeviceQuarantined] != 1 || c.ByState[cluster.DeviceDeleted] != 1 {
		t.Fatalf("after state changes: %+v", c)
	}
	if _, _, err := e.App.Node().Compact(ctx, "test", time.Nanosecond, time.Nanosecond); err != nil {
		t.Fatal(err)
	}
	c = check("retention compaction")
	for _, h := range c.Hours {
		if h.Rejected != 0 {
			t.Fatalf("compaction left refusals counted: %+v", h)
		}
	}

	// The window is bounded, and a week is the most.
	if got, err := auditor.Fleet(ctx, cluster.MaxFleetHours); err != nil || len(got.Hours) != cluster.MaxFleetHours {
		t.Fatalf("a week: %d hours, %v", len(got.Hours), err)
	}
	hc := mtlsClient(e, ptr(adminCert(t, e, ca.RoleAuditor, "erin")))
	for _, q := range []string{"0", "169", "-1", "x", "1e3"} {
		var p api.Problem
		if status, _ := auditorGet(t, hc, "https://"+e.App.Addr()+"/admin/v1/fleet?hours="+q, &p); status != http.StatusBadRequest || p.Code != api.CodeMalformed {
			t.Errorf("hours=%s: %d %q, want 400 %s", q, status, p.Code, api.CodeMalformed)
		}
	}
}
