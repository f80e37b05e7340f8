package console_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The device page says which path a device came through, and each
// certificate row what issued it: agent enrollment or renewal, or ACME
// device-attest; the AK certificate the attestation CA issued is labelled
// as such, not as a (current or superseded) device certificate.
func TestDevicePagePath(t *testing.T) {
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
	renewed, err := e.Client.Renew(ctx, d.TPM, native, nil)
	if err != nil {
		t.Fatal(err)
	}
	acmeID, akCert, chain := servertest.EnrollThroughACME(t, e)

	s, _ := startConsole(t, e, ca.RoleAuditor, "ada")
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(s.LoginURL())
	if err != nil || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %v %v", resp, err)
	}
	resp.Body.Close()
	cookie := resp.Cookies()[0]
	base, _, _ := strings.Cut(s.LoginURL(), "/login")
	tags := regexp.MustCompile(`<[^>]*>`)
	page := func(id string) (path string, rows map[string]string) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/devices/"+id, nil)
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
		m := regexp.MustCompile(`<td id="path">(.*?)</td>`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("no path on the device page: %s", b)
		}
		rows = map[string]string{}
		for _, tr := range regexp.MustCompile(`(?s)<tr id="cert-([0-9a-f]+)"[^>]*>(.*?)</tr>`).FindAllSubmatch(b, -1) {
			rows[string(tr[1])] = strings.Join(strings.Fields(tags.ReplaceAllString(string(tr[2]), " ")), " ")
		}
		return string(m[1]), rows
	}
	for _, c := range []struct {
		id, path string
		rows     map[string][]string // serial -> what its row must say
		not      map[string][]string // serial -> what it must not
	}{
		{native.DeviceID, "native (gatehouse-agent)", map[string][]string{
			native.Certificate.SerialNumber.Text(16):  {"agent enrollment", "superseded"},
			renewed.Certificate.SerialNumber.Text(16): {"agent renewal", "current"},
		}, nil},
		{acmeID, "ACME device-attest", map[string][]string{
			akCert.SerialNumber.Text(16):   {"AK certificate from the attestation CA", "not a device certificate"},
			chain[0].SerialNumber.Text(16): {"ACME device-attest", "current"},
		}, map[string][]string{akCert.SerialNumber.Text(16): {"current", "superseded"}}},
	} {
		path, rows := page(c.id)
		if path != c.path {
			t.Errorf("device %s: path %q, want %q", c.id, path, c.path)
		}
		if len(rows) != len(c.rows) {
			t.Errorf("device %s: rows %q, want %d", c.id, rows, len(c.rows))
		}
		for serial, wants := range c.rows {
			for _, want := range wants {
				if !strings.Contains(rows[serial], want) {
					t.Errorf("device %s: row of %s is %q, want %q", c.id, serial, rows[serial], want)
				}
			}
			for _, bad := range c.not[serial] {
				if strings.Contains(rows[serial], bad) {
					t.Errorf("device %s: row of %s is %q, must not say %q", c.id, serial, rows[serial], bad)
				}
			}
		}
	}
}
