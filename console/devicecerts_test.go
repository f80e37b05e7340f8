package console_test

import (
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/console"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The device page lists every certificate the device was issued, with the
// validity each carries, current or superseded, expired ones marked by the
// console's clock, and the revoked status the CA has, not one inferred from
// the device's state: a revocation interrupted after its state change
// leaves the certificates valid, and the page says so until the CA has
// revoked them.
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
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	rowsOf := func(s *console.Server) func() map[string]string {
		resp, err := hc.Get(s.LoginURL())
		if err != nil || len(resp.Cookies()) != 1 {
			t.Fatalf("login: %v %v", resp, err)
		}
		resp.Body.Close()
		cookie := resp.Cookies()[0]
		base, _, _ := strings.Cut(s.LoginURL(), "/login")
		return func() map[string]string { // serial -> its row's text
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
	}
	s, _ := startConsole(t, e, ca.RoleAuditor, "ada")
	rows := rowsOf(s)
	stamp := func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }
	first, second := id.Certificate, renewed.Certificate
	check := func(when string, revoked bool) {
		t.Helper()
		r := rows()
		if len(r) != 2 {
			t.Fatalf("%s: certificate rows %v, want %x and %x", when, r, first.SerialNumber, second.SerialNumber)
		}
		for c, status := range map[*x509.Certificate]string{first: "superseded", second: "current"} {
			row := r[c.SerialNumber.Text(16)]
			for _, want := range []string{status, stamp(c.NotBefore), stamp(c.NotAfter)} {
				if !strings.Contains(row, want) {
					t.Fatalf("%s: row of %x is %q, want %q", when, c.SerialNumber, row, want)
				}
			}
			if strings.Contains(row, "revoked") != revoked || strings.Contains(row, "expired") || strings.Contains(row, "not recorded") {
				t.Fatalf("%s: row of %x is %q (revoked %v, none expired, all recorded)", when, c.SerialNumber, row, revoked)
			}
		}
	}
	check("active", false)
	// Only the state change: the CA has revoked nothing yet.
	if _, err := e.App.Node().TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "stolen"); err != nil {
		t.Fatal(err)
	}
	check("state revoked, serials not yet", false)
	if _, err := server.NewAdminClient(e.Dir).TransitionDevice(ctx, id.DeviceID, cluster.OpRevoke, "alice", "again"); err != nil {
		t.Fatal(err)
	}
	check("revoked", true)

	// A console whose clock is past both certificates' end marks them expired.
	later := second.NotAfter.Add(time.Second)
	late, _ := startConsole(t, e, ca.RoleAuditor, "ada-later", console.WithClock(func() time.Time { return later }))
	lateRows := rowsOf(late)()
	if len(lateRows) != 2 {
		t.Fatalf("certificate rows %v", lateRows)
	}
	for serial, row := range lateRows {
		if !strings.Contains(row, "expired") {
			t.Fatalf("row of %s past its notAfter: %q, want it marked expired", serial, row)
		}
	}
}
