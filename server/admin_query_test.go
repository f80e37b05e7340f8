package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The admin API's filters and paging against a live node with swtpm
// devices enrolled, pending and refused, over the socket and over HTTPS
// with an auditor certificate.
func TestAdminQueriesOnSwtpm(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	applyPolicy(t, e, `{"groups":[{"name":"lab","mode":"auto","match":{"models":["m-lab"]}},{"name":"floor","mode":"approve","match":{"models":["m-floor"]}}]}`)
	enroll := func(m *swtpm.Manufacturer, model string) (string, error) {
		t.Helper()
		d := servertest.NewDevice(t, m)
		id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithClaims(api.Claims{Model: model, Serial: "SN-" + model}))
		if err != nil {
			return "", err
		}
		return id.DeviceID, nil
	}
	labA, err := enroll(e.Mfr, "m-lab")
	if err != nil {
		t.Fatal(err)
	}
	labB, err := enroll(e.Mfr, "m-lab")
	if err != nil {
		t.Fatal(err)
	}
	mid := time.Now()
	var pending *api.Pending
	if _, err := enroll(e.Mfr, "m-floor"); !errors.As(err, &pending) {
		t.Fatalf("floor device: %v", err)
	}
	if _, err := enroll(e.Mfr, "m-none"); problemCode(err) != api.CodePolicyDenied {
		t.Fatalf("device of no group: %v", err)
	}
	// Refused before proving TPM possession: no record (admission control).
	if _, err := enroll(swtpm.NewTestManufacturer(t), "m-lab"); problemCode(err) != api.CodeEKUntrusted {
		t.Fatalf("foreign device: %v", err)
	}
	admin := server.NewAdminClient(e.Dir)
	if _, err := admin.LabelDevice(ctx, labA, "test", map[string]string{"site": "north"}, nil); err != nil {
		t.Fatal(err)
	}

	auditor := server.NewRemoteAdminClient("https://"+e.App.Addr(), adminCert(t, e, ca.RoleAuditor, "carol"), e.App.Root())
	allDevs, err := admin.Devices(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var pendingID string
	for _, d := range allDevs {
		if d.Status == cluster.DevicePending {
			pendingID = d.ID
		}
	}
	ids := func(devs []cluster.Device) []string {
		out := []string{}
		for _, d := range devs {
			out = append(out, d.ID)
		}
		return out
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	for _, c := range []struct {
		f    server.DeviceFilter
		want []string
	}{
		{server.DeviceFilter{}, ids(allDevs)},
		{server.DeviceFilter{State: cluster.DevicePending}, []string{pendingID}},
		{server.DeviceFilter{Group: "lab"}, sorted(labA, labB)},
		{server.DeviceFilter{Model: "m-floor"}, []string{pendingID}},
		{server.DeviceFilter{Labels: []string{"site=north"}}, []string{labA}},
		{server.DeviceFilter{State: cluster.DeviceActive, Group: "lab", Labels: []string{"site=north"}}, []string{labA}},
		{server.DeviceFilter{State: cluster.DevicePending, Group: "lab"}, []string{}},
		{server.DeviceFilter{Flags: []string{cluster.FlagStale}}, []string{}},
	} {
		for name, cl := range map[string]*server.AdminClient{"socket": admin, "https": auditor} {
			devs, next, err := cl.DevicePage(ctx, c.f, "", 0)
			if err != nil || next != "" || !slices.Equal(ids(devs), c.want) {
				t.Fatalf("%s %+v: %v (next %q, %v), want %v", name, c.f, ids(devs), next, err, c.want)
			}
		}
	}
	if len(allDevs) != 3 || !slices.IsSorted(ids(allDevs)) {
		t.Fatalf("devices %v", ids(allDevs))
	}

	allRecs, err := admin.Attestations(ctx, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	match := func(keep func(cluster.AttestationRecord) bool) []uint64 {
		out := []uint64{}
		for _, a := range allRecs {
			if keep(a) {
				out = append(out, a.ID)
			}
		}
		return out
	}
	recIDs := func(recs []cluster.AttestationRecord) []uint64 {
		out := []uint64{}
		for _, a := range recs {
			out = append(out, a.ID)
		}
		return out
	}
	group := func(a cluster.AttestationRecord) string {
		if a.Policy == nil {
			return ""
		}
		return a.Policy.Group
	}
	for _, c := range []struct {
		f     server.AttestationFilter
		keep  func(cluster.AttestationRecord) bool
		least int
	}{
		{server.AttestationFilter{Outcome: cluster.OutcomeRejected}, func(a cluster.AttestationRecord) bool { return a.Outcome == cluster.OutcomeRejected }, 1},
		{server.AttestationFilter{Outcome: cluster.OutcomePending}, func(a cluster.AttestationRecord) bool { return a.Outcome == cluster.OutcomePending }, 1},
		{server.AttestationFilter{Code: api.CodePolicyDenied}, func(a cluster.AttestationRecord) bool { return a.Code == api.CodePolicyDenied }, 1},
		{server.AttestationFilter{Outcome: cluster.OutcomeRejected, Code: api.CodePolicyDenied}, func(a cluster.AttestationRecord) bool {
			return a.Outcome == cluster.OutcomeRejected && a.Code == api.CodePolicyDenied
		}, 1},
		{server.AttestationFilter{Group: "lab"}, func(a cluster.AttestationRecord) bool { return group(a) == "lab" }, 2},
		{server.AttestationFilter{Group: "floor", Outcome: cluster.OutcomePending}, func(a cluster.AttestationRecord) bool {
			return group(a) == "floor" && a.Outcome == cluster.OutcomePending
		}, 1},
		{server.AttestationFilter{Device: labA}, func(a cluster.AttestationRecord) bool { return a.DeviceID == labA }, 1},
		{server.AttestationFilter{Since: mid}, func(a cluster.AttestationRecord) bool { return !a.Time.Before(mid) }, 2},
		{server.AttestationFilter{Until: mid}, func(a cluster.AttestationRecord) bool { return !a.Time.After(mid) }, 2},
		{server.AttestationFilter{Until: mid, Outcome: cluster.OutcomeRejected}, func(a cluster.AttestationRecord) bool {
			return !a.Time.After(mid) && a.Outcome == cluster.OutcomeRejected
		}, 0},
	} {
		want := match(c.keep)
		if len(want) < c.least {
			t.Fatalf("%+v: the fleet has %d such records, the test wants at least %d", c.f, len(want), c.least)
		}
		for name, cl := range map[string]*server.AdminClient{"socket": admin, "https": auditor} {
			recs, _, err := cl.AttestationPage(ctx, c.f, "", 0)
			if err != nil || !slices.Equal(recIDs(recs), want) {
				t.Fatalf("%s %+v: %v (%v), want %v", name, c.f, recIDs(recs), err, want)
			}
		}
	}

	// Paging by one, following the Link header as a browser or curl would.
	hc := mtlsClient(e, ptr(adminCert(t, e, ca.RoleAuditor, "dave")))
	var walked []uint64
	next := adminAttestationsURL(e, url.Values{"limit": {"1"}, "outcome": {cluster.OutcomeRejected}})
	for pages := 0; next != ""; pages++ {
		var page []cluster.AttestationRecord
		status, link := auditorGet(t, hc, next, &page)
		if status != http.StatusOK || len(page) != 1 {
			t.Fatalf("GET %s: %d, %d records", next, status, len(page))
		}
		walked = append(walked, page[0].ID)
		next = ""
		if link != "" {
			if !strings.HasSuffix(link, `>; rel="next"`) || !strings.Contains(link, "outcome=rejected") || !strings.Contains(link, "limit=1") {
				t.Fatalf("Link %q", link)
			}
			next = "https://" + e.App.Addr() + strings.TrimPrefix(strings.TrimSuffix(link, `>; rel="next"`), "<")
		}
	}
	if want := match(func(a cluster.AttestationRecord) bool { return a.Outcome == cluster.OutcomeRejected }); !slices.Equal(walked, want) {
		t.Fatalf("walked %v, want %v", walked, want)
	}

	if err := e.App.Node().VerifyIndexes(); err != nil {
		t.Fatal(err)
	}

	// Bad input is the client's fault.
	for _, q := range []string{
		"/admin/v1/devices?cursor=!!", "/admin/v1/devices?state=sleeping", "/admin/v1/devices?flag=shiny", "/admin/v1/devices?label=nokv",
		"/admin/v1/devices?limit=0", "/admin/v1/attestations?cursor=AAAA", "/admin/v1/attestations?outcome=maybe",
		"/admin/v1/attestations?since=yesterday", "/admin/v1/attestations?limit=x", "/admin/v1/enrollments?cursor=%25",
		"/admin/v1/policy/history?cursor=ZA", "/admin/v1/admin-certs?cursor=~",
	} {
		var p api.Problem
		if status, _ := auditorGet(t, hc, "https://"+e.App.Addr()+q, &p); status != http.StatusBadRequest || p.Code != api.CodeMalformed {
			t.Errorf("GET %s: %d %q, want 400 %s", q, status, p.Code, api.CodeMalformed)
		}
	}
}

func adminAttestationsURL(e *env, q url.Values) string {
	return "https://" + e.App.Addr() + "/admin/v1/attestations?" + q.Encode()
}

// auditorGet GETs u with an auditor certificate and returns the status and
// the Link header.
func auditorGet(t *testing.T, hc *http.Client, u string, out any) (int, string) {
	t.Helper()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s: %s", u, b)
	}
	return resp.StatusCode, resp.Header.Get("Link")
}

// The small lists page too: admin certificates, enrollments and policy
// versions come back whole through the client's Link following.
func TestAdminListsPage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := server.NewAdminClient(e.Dir)
	for i := 0; i < 3; i++ {
		applyPolicy(t, e, fmt.Sprintf(`{"groups":[{"name":"g%d","mode":"auto"}]}`, i))
		adminCert(t, e, ca.RoleAuditor, "a")
	}
	hc := mtlsClient(e, ptr(adminCert(t, e, ca.RoleAuditor, "pager")))
	for _, path := range []string{"/admin/v1/policy/history", "/admin/v1/admin-certs"} {
		var whole []json.RawMessage
		resp, err := hc.Get("https://" + e.App.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&whole)
		resp.Body.Close()
		if len(whole) < 3 {
			t.Fatalf("%s: %d items", path, len(whole))
		}
		var paged []json.RawMessage
		for next := path + "?limit=2"; next != ""; {
			resp, err := hc.Get("https://" + e.App.Addr() + next)
			if err != nil {
				t.Fatal(err)
			}
			var page []json.RawMessage
			json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || len(page) == 0 || len(page) > 2 {
				t.Fatalf("%s: %d, %d items", next, resp.StatusCode, len(page))
			}
			paged = append(paged, page...)
			next = strings.TrimSuffix(strings.TrimPrefix(resp.Header.Get("Link"), "<"), `>; rel="next"`)
		}
		if len(paged) != len(whole) {
			t.Fatalf("%s: %d items paged, %d whole", path, len(paged), len(whole))
		}
		for i := range whole {
			if string(paged[i]) != string(whole[i]) {
				t.Fatalf("%s: item %d differs when paged", path, i)
			}
		}
	}
	certs, err := admin.AdminCertificates(ctx)
	if err != nil || len(certs) != 4 {
		t.Fatalf("%d admin certificates, %v", len(certs), err)
	}
	hist, err := admin.PolicyHistory(ctx)
	if err != nil || len(hist) != 3 {
		t.Fatalf("%d policy versions, %v", len(hist), err)
	}
}

// Every replica derives the same indexes in apply: a filtered page read on
// any node (linearizable) is the same, and each node's indexes match its
// registry.
func TestAdminQueriesReplicated(t *testing.T) {
	e, nodes, dirs := threeNodes(t)
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
	// Writes through a follower's socket are forwarded to the leader.
	if _, err := server.NewAdminClient(dirs[1]).LabelDevice(ctx, ids[0], "t", map[string]string{"site": "b"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := server.NewAdminClient(dirs[2]).TransitionDevice(ctx, ids[1], cluster.OpQuarantine, "t", "test"); err != nil {
		t.Fatal(err)
	}
	for i, dir := range dirs {
		c := server.NewAdminClient(dir)
		for _, f := range []server.DeviceFilter{{Labels: []string{"site=b"}}, {State: cluster.DeviceQuarantined}, {State: cluster.DeviceActive}} {
			devs, _, err := c.DevicePage(ctx, f, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range devs {
				got = append(got, d.ID)
			}
			want := map[string][]string{"site=b": ids[:1], cluster.DeviceQuarantined: ids[1:2], cluster.DeviceActive: {ids[0], ids[2]}}[f.State+strings.Join(f.Labels, "")]
			if !slices.Equal(got, want) {
				t.Fatalf("node %d, %+v: %v, want %v", i+1, f, got, want)
			}
		}
		recs, _, err := c.AttestationPage(ctx, server.AttestationFilter{Outcome: cluster.OutcomeAccepted, Device: ids[2]}, "", 0)
		if err != nil || len(recs) != 1 || recs[0].DeviceID != ids[2] {
			t.Fatalf("node %d: records of %s: %v %v", i+1, ids[2], recs, err)
		}
		if err := nodes[i].Node().VerifyIndexes(); err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
	}
}
