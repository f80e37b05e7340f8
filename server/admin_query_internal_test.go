package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

func TestNextCursor(t *testing.T) {
	for _, c := range []struct {
		links []string
		want  string
	}{
		{nil, ""},
		{[]string{`</admin/v1/devices?state=active&cursor=abc>; rel="next"`}, "abc"},
		{[]string{`</admin/v1/devices?cursor=x%2By>; rel=next`}, "x+y"},
		{[]string{`</admin/v1/devices?cursor=p>; rel="prev", </admin/v1/devices?cursor=n>; rel="next"`}, "n"},
		{[]string{`</admin/v1/devices?cursor=p>; rel="prev"`, `</admin/v1/devices?cursor=n>; rel="next last"`}, "n"},
		{[]string{`</admin/v1/devices?cursor=p>; rel="prev"`}, ""},
		{[]string{`/admin/v1/devices?cursor=n; rel="next"`}, ""}, // no <target>
		{[]string{`</admin/v1/devices?cursor=n>; title="next"`}, ""},
	} {
		h := http.Header{}
		for _, l := range c.links {
			h.Add("Link", l)
		}
		if got, err := nextCursor(h); err != nil || got != c.want {
			t.Errorf("%q: %q %v, want %q", c.links, got, err, c.want)
		}
	}
}

// DevicePage and AttestationPage send the shared contract's filters and
// return the cursor of the Link rel="next".
func TestPageQueries(t *testing.T) {
	var got []url.Values
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.URL.Query())
		w.Header().Set("Link", "<"+r.URL.Path+"?cursor=next-"+r.URL.Path[len("/admin/v1/"):]+">; rel=\"next\"")
		w.Write([]byte("[]"))
	}))
	defer ts.Close()
	c := &AdminClient{base: ts.URL, hc: ts.Client()}
	ctx := context.Background()
	_, next, err := c.DevicePage(ctx, DeviceFilter{State: "active", Group: "edge", Labels: []string{"site=lyon"}, Flags: []string{"clock_skew"}, Model: "m"}, "c1", 50)
	if err != nil || next != "next-devices" {
		t.Fatalf("devices: %q %v", next, err)
	}
	since, until := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	_, next, err = c.AttestationPage(ctx, AttestationFilter{Outcome: "rejected", Code: "policy_denied", Group: "edge", Device: "d", Since: since, Until: until}, "", 10)
	if err != nil || next != "next-attestations" {
		t.Fatalf("attestations: %q %v", next, err)
	}
	want := []url.Values{
		{"state": {"active"}, "group": {"edge"}, "label": {"site=lyon"}, "flag": {"clock_skew"}, "model": {"m"}, "limit": {"50"}, "cursor": {"c1"}},
		{"outcome": {"rejected"}, "code": {"policy_denied"}, "group": {"edge"}, "device": {"d"}, "since": {"2026-11-01T00:00:00Z"}, "until": {"2026-11-02T00:00:00Z"}, "limit": {"10"}},
	}
	for i := range want {
		if got[i].Encode() != want[i].Encode() {
			t.Errorf("request %d: %s, want %s", i, got[i].Encode(), want[i].Encode())
		}
	}
}
