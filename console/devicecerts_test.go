package console_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The device page lists every certificate the device was issued, with the
// revoked status the CA has, not one inferred from the device's state: a
// revocation interrupted after its state change leaves the certificates
// valid, and the page says so until the CA has revoked them.
func TestDevicePageCertificates(t *testing.T) {
	e := servertest.New(t)
	ctx := context.Background()
	d := servertest.NewDevice(t, e.Mfr)
	id, err := e.Client.Enroll(ctx, d.TPM)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := e.Client.Renew(ctx, d.TPM, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := startConsole(t, e, ca.RoleAuditor, "ada")
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(s.LoginURL())
	if err != nil || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp.Body.Close()
	cookie := resp.Cookies()[0]
	base, _, _ := strings.Cut(s.LoginURL(), "/login")
	rows := func() map[string]string { // serial -> its row's text
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/devices/"+id.DeviceID, nil)
		req.AddCookie(cookie)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("device page: %s: %s", resp.Status, b)
		}
		table := regexp.MustCompile(`(?s)<table id="certs">(.*?)</table>`).FindSubmatch(b)
		if table == nil {
			t.Fatalf("no certificates table: %s", b)
		}
		out := map[string]string{}
		for _, tr := range regexp.MustCompile(`(?s)<tr id="cert-([0-9a-f]+)">(.*?)</tr>`).FindAllSubmatch(table[1], -1) {
			out[string(tr[1])] = regexp.MustCompile(`<[^>]*>`).ReplaceAllString(string(tr[2]), " ")
		}
		return out
	}
	first, second := id.Certificate.SerialNumber.Text(16), renewed.Certificate.SerialNumber.Text(16)
	check := func(when, status string) {
		t.Helper()
		r := rows()
		if len(r) != 2 {
			t.Fatalf("%s: certificate rows %v, want %s and %s", when, r, first, second)
		}
		for serial, want := range map[string]string{first: "superseded", second: "current"} {
			if status != "" {
				want = status
			}
			if !strings.Contains(r[serial], want) {
				t.Fatalf("%s: row of %s is %q, want %q", when, serial, r[serial], want)
			}
		}
		if !strings.Contains(r[second], renewed.Certificate.NotAfter.UTC().Format("2006-01-02")) {
			t.Fatalf("%s: the current row %q has no expiry", when, r[second])
		}
	}
	check("active", "")
	// Only the state change: the CA has revoked nothing yet.
	if _, err := e.App.Node().TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "stolen"); err != nil {
		t.Fatal(err)
	}
	check("state revoked, serials not yet", "")
	if _, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "again"); err != nil {
		t.Fatal(err)
	}
	check("revoked", "revoked")
}
