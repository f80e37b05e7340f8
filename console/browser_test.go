package console_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/console"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// shotDir is where the browser test saves its screenshots (build/console
// at the top of the repository).
const shotDir = "../build/console"

// adminCert issues an admin certificate through the node's admin socket.
func adminCert(t testing.TB, e *servertest.Env, role, name string) tls.Certificate {
	t.Helper()
	return e.AdminCert(t, role, name)
}

// startConsole serves a console acting with a fresh certificate of role.
func startConsole(t testing.TB, e *servertest.Env, role, name string, opts ...console.Option) (*console.Server, *server.AdminClient) {
	t.Helper()
	ac := server.NewRemoteAdminClient(e.URL(), adminCert(t, e, role, name), e.App.Root())
	s := console.New(ac, console.Identity{Role: role, Name: name}, e.App.Root(), opts...)
	ln, err := console.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s.Bind(ln.Addr())
	go s.Serve(ln)
	return s, ac
}

// browser starts headless Chromium (Debian's chromium package, which
// `make deps` installs). It fails, never skips, without it.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: the console's browser test needs Debian's chromium package (run `make deps`, or apt-get install chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1280, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return bctx
}

// tab opens a tab in its own browser context (its own cookies). The first
// actions run without a deadline: a deadline on them would stop the browser.
func tab(t *testing.T, actx context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	return ctx
}

func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(shotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shotDir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(c, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.documentElement.outerHTML`))
		t.Fatalf("text of %s: %v; the page:\n%s", sel, err, page)
	}
	return s
}

// TestBrowser drives the console in headless Chromium against a live node
// with swtpm devices: an auditor reads why a device with another shim was
// refused; an auditor cannot approve (no button; a forced POST is refused
// 403 by the cluster); an operator approves a pending device and its agent
// gets its certificate; a tampered audit export is reported as such.
func TestBrowser(t *testing.T) {
	actx := browser(t)
	e := servertest.New(t)
	node := e.App.Node()
	ctx := context.Background()

	// A fleet booted from a real event log: a policy captured from a
	// reference device admits group edge by PCRs and refuses a shim with
	// another digest; group lab (model lab-1) waits for an operator.
	log, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	shim := parsed.Facts.BootApps[0]
	tampered, err := testvectors.FlipDigest(log, shim.Digests["sha256"])
	if err != nil {
		t.Fatal(err)
	}
	enroll := func(log []byte, model string) (*fwclient.Identity, error) {
		d := servertest.NewBootedDevice(t, e.Mfr, log)
		return e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(log), fwclient.WithClaims(api.Claims{Model: model}))
	}
	ref, err := enroll(log, "edge-1")
	if err != nil {
		t.Fatalf("reference device: %v", err)
	}
	pol, err := server.CapturePolicy(node, ref.DeviceID, "edge")
	if err != nil {
		t.Fatal(err)
	}
	pol.Groups = append(pol.Groups, attest.Group{Name: "lab", Mode: attest.ModeApprove, Match: attest.Match{Models: []string{"lab-1"}}})
	doc, err := json.Marshal(pol)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.ApplyPolicy(ctx, "test", doc); err != nil {
		t.Fatal(err)
	}
	_, err = enroll(tampered, "edge-1")
	var p *api.Problem
	if !errors.As(err, &p) || p.Code != api.CodePolicyDenied {
		t.Fatalf("the device with another shim: %v", err)
	}
	refused, err := node.Attestation(p.AttestationID)
	if err != nil {
		t.Fatal(err)
	}
	var expl *attest.PCRExplanation
	for _, o := range refused.Policy.Outcomes {
		for i := range o.PCRs {
			if o.PCRs[i].Index == 4 && o.PCRs[i].Event != nil {
				expl = &o.PCRs[i]
			}
		}
	}
	if expl == nil {
		t.Fatalf("no PCR 4 explanation recorded: %+v", refused.Policy)
	}

	// The agent of a lab device waits for approval (the appliance tells it
	// to retry every second).
	labDev := servertest.NewDevice(t, e.Mfr)
	agentCtx, stopAgent := context.WithTimeout(ctx, 3*time.Minute) // generous: make test loads the machine
	defer stopAgent()
	got := make(chan *fwclient.Identity, 1)
	agentErr := make(chan error, 1)
	go func() {
		id, err := e.Client.EnrollWaiting(agentCtx, labDev.TPM, nil, fwclient.WithClaims(api.Claims{Model: "lab-1"}))
		if err != nil {
			agentErr <- err
			return
		}
		got <- id
	}()
	var pendingID string
	for deadline := time.Now().Add(60 * time.Second); pendingID == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		devs, err := node.Devices()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			if d.Status == cluster.DevicePending {
				pendingID = d.ID
			}
		}
	}
	if pendingID == "" {
		t.Fatal("the lab device never became pending")
	}

	audS, _ := startConsole(t, e, ca.RoleAuditor, "audrey")
	opS, opAdmin := startConsole(t, e, ca.RoleOperator, "olga")
	aud, op := tab(t, actx), tab(t, actx)
	run := func(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(c, steps...); err != nil {
			page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.documentElement.outerHTML`))
			t.Fatalf("%s: %v; the page:\n%s", what, err, page)
		}
	}

	t.Run("auditor reads the shim refusal", func(t *testing.T) {
		run(t, aud, "log in", chromedp.Navigate(audS.LoginURL()), chromedp.WaitVisible(chromedp.CSS("#refusals")))
		if who := text(t, aud, "#who"); who != "audrey (auditor)" {
			t.Fatalf("signed in as %q", who)
		}
		if q := text(t, aud, "#queue"); !strings.Contains(q, pendingID) {
			t.Fatalf("approval queue %q lacks %s", q, pendingID)
		}
		// The counts come from the cluster's counters (GET /admin/v1/fleet).
		if n := text(t, aud, "#queue-length"); n != "1" {
			t.Fatalf("approval queue length %q, want 1", n)
		}
		if l := text(t, aud, "#legend"); !strings.Contains(l, api.CodePolicyDenied+" (1)") || !strings.Contains(l, "accepted (1)") {
			t.Fatalf("chart legend %q: want one accepted enrollment and one %s refusal", l, api.CodePolicyDenied)
		}
		if st := text(t, aud, "#by-state"); !strings.Contains(st, "pending") || !strings.Contains(st, "total") {
			t.Fatalf("devices by state %q", st)
		}
		shot(t, aud, "fleet")
		// The devices list, filtered by state on the server.
		run(t, aud, "pending devices", chromedp.Navigate(audS.URL()+"/devices?state=pending"), chromedp.WaitVisible(chromedp.CSS("#devices")))
		if l := text(t, aud, "#devices"); !strings.Contains(l, pendingID) || strings.Contains(l, ref.DeviceID) {
			t.Fatalf("pending devices:\n%s", l)
		}
		run(t, aud, "active devices", chromedp.Navigate(audS.URL()+"/devices?state=active"), chromedp.WaitVisible(chromedp.CSS("#devices")))
		if l := text(t, aud, "#devices"); strings.Contains(l, pendingID) || !strings.Contains(l, ref.DeviceID) {
			t.Fatalf("active devices:\n%s", l)
		}
		// Attestation records, filtered by device on the server.
		run(t, aud, "attestations of the pending device", chromedp.Navigate(audS.URL()+"/attestations?device="+pendingID), chromedp.WaitVisible(chromedp.CSS("#attestation-list")))
		devs, err := chromedp.Run(aud, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#attestation-list tr td:nth-child(7)')].map(td => td.textContent)`))
		if err != nil || len(devs) == 0 {
			t.Fatalf("attestation rows: %v %v", devs, err)
		}
		for _, d := range devs {
			if d != pendingID {
				t.Fatalf("filter device=%s lists a record of %s", pendingID, d)
			}
		}
		run(t, aud, "back to the fleet", chromedp.Navigate(audS.URL()+"/"), chromedp.WaitVisible(chromedp.CSS("#refusals")))
		link := fmt.Sprintf("#att-%d", refused.ID)
		run(t, aud, "open the refusal", chromedp.Click(chromedp.CSS(link)), chromedp.WaitVisible(chromedp.CSS("#rules")))
		if o := text(t, aud, "#outcome"); !strings.Contains(o, "REJECTED") || !strings.Contains(o, api.CodePolicyDenied) {
			t.Fatalf("outcome %q", o)
		}
		rules := text(t, aud, "#rules")
		for _, want := range []string{"PCR 4 (sha256)", fmt.Sprintf("event %d", expl.Event.Number), expl.Event.Type, "shimx64.efi",
			expl.Event.Expected, expl.Event.Actual, expl.Expected} {
			if !strings.Contains(rules, want) {
				t.Errorf("the explanation lacks %q:\n%s", want, rules)
			}
		}
		if expl.Event.Expected == expl.Event.Actual || !strings.Contains(rules, shim.Digests["sha256"]) {
			t.Errorf("the reference and device digests are not both shown")
		}
		shot(t, aud, "attestation")
		// The event log filtered to PCR 4: every row is PCR 4, the shim among them.
		run(t, aud, "filter PCR 4", chromedp.Click(chromedp.CSS("#pcr-4")), chromedp.WaitVisible(chromedp.CSS("#eventlog")))
		pcrs, err := chromedp.Run(aud, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#eventlog tr td:nth-child(2)')].map(td => td.textContent)`))
		if err != nil || len(pcrs) == 0 {
			t.Fatalf("event log rows: %v %v", pcrs, err)
		}
		for _, p := range pcrs {
			if p != "4" {
				t.Fatalf("PCR filter 4 shows a PCR %s event", p)
			}
		}
		if el := text(t, aud, "#eventlog"); !strings.Contains(el, "shimx64.efi") {
			t.Errorf("PCR 4 events lack the shim:\n%s", el)
		}
		run(t, aud, "re-check", chromedp.Click(chromedp.CSS("#recheck")), chromedp.WaitVisible(chromedp.CSS("#reproduced")))
		if r := text(t, aud, "#reproduced"); !strings.HasPrefix(r, "The recorded decision (rejected) is reproduced") {
			t.Errorf("re-check: %q\n%s", r, text(t, aud, "#recheck"))
		}
		if rows := text(t, aud, "#recheck"); !strings.Contains(rows, "policy") || strings.Contains(rows, "NO") {
			t.Errorf("re-check rows:\n%s", rows)
		}
	})

	t.Run("auditor cannot approve", func(t *testing.T) {
		run(t, aud, "open the pending device", chromedp.Navigate(audS.URL()+"/devices/"+pendingID), chromedp.WaitVisible(chromedp.CSS("#state")))
		n, err := chromedp.Run(aud, chromedp.Evaluate[int](`document.querySelectorAll('#actions, form[action*="/approve"]').length`))
		if err != nil || n != 0 {
			t.Fatalf("an auditor sees %d approve controls (%v)", n, err)
		}
		// Forced: a hand-made form with the session's CSRF token, so only
		// the cluster's role check stands in the way.
		csrf := csrfOf(t, aud, audS)
		force := chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](fmt.Sprintf(`(() => { const f = document.createElement('form'); f.method = 'post';
				f.action = '/devices/%s/approve';
				for (const [k, v] of [['csrf', %q], ['reason', 'forced']]) { const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i); }
				document.body.appendChild(f); f.submit(); return true })()`, pendingID, csrf))(ctx, tg)
			return err
		})
		c, cancel := context.WithTimeout(aud, 15*time.Second)
		defer cancel()
		resp, err := chromedp.RunResponse(c, force)
		if err != nil {
			t.Fatalf("forced POST: %v", err)
		}
		if resp.Status != 403 {
			t.Fatalf("forced approve by an auditor: HTTP %d", resp.Status)
		}
		if pr := text(t, aud, "#problem"); !strings.Contains(pr, "403") || !strings.Contains(pr, api.CodeForbidden) {
			t.Fatalf("problem shown: %q", pr)
		}
		shot(t, aud, "auditor-forbidden")
		if d, err := node.Device(pendingID); err != nil || d.Status != cluster.DevicePending {
			t.Fatalf("after the forced POST: %s %v", d.Status, err)
		}
	})

	t.Run("operator approves and the agent gets its certificate", func(t *testing.T) {
		base := opS.URL()
		run(t, op, "log in", chromedp.Navigate(opS.LoginURL()), chromedp.WaitVisible(chromedp.CSS("#queue")))
		run(t, op, "approve", chromedp.Navigate(base+"/devices/"+pendingID), chromedp.WaitVisible(chromedp.CSS("#op-approve")),
			chromedp.SendKeys(chromedp.CSS(`form[action$="/approve"] input[name=reason]`), "checked the serial with the site"),
			chromedp.Click(chromedp.CSS("#op-approve")), chromedp.WaitVisible(chromedp.CSS("#state.state-active")))
		hist := text(t, op, "#history")
		if !strings.Contains(hist, "approve") || !strings.Contains(hist, "admin:olga(operator)") || !strings.Contains(hist, "checked the serial with the site") {
			t.Fatalf("history after approval:\n%s", hist)
		}
		shot(t, op, "device-approved")
		select {
		case id := <-got:
			if id.DeviceID != pendingID || id.Certificate == nil {
				t.Fatalf("agent got %+v", id)
			}
			d, err := opAdmin.Device(ctx, pendingID)
			if err != nil || d.CertificateSerial != fmt.Sprintf("%x", id.Certificate.SerialNumber) {
				t.Fatalf("registry serial %q, agent's certificate %x (%v)", d.CertificateSerial, id.Certificate.SerialNumber, err)
			}
			// The device page lists the certificate with the validity it carries.
			run(t, op, "the device's certificates", chromedp.Navigate(base+"/devices/"+pendingID), chromedp.WaitVisible(chromedp.CSS("#certs")))
			certs := text(t, op, "#certs")
			for _, want := range []string{d.CertificateSerial, id.Certificate.NotBefore.UTC().Format("2006-01-02 15:04:05Z"), id.Certificate.NotAfter.UTC().Format("2006-01-02 15:04:05Z"), "current"} {
				if !strings.Contains(certs, want) {
					t.Fatalf("certificates table lacks %q:\n%s", want, certs)
				}
			}
		case err := <-agentErr:
			t.Fatalf("agent: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("the agent did not receive its certificate after the approval")
		}
	})

	t.Run("policy versions and dry run", func(t *testing.T) {
		run(t, aud, "policies", chromedp.Navigate(audS.URL()+"/policies"), chromedp.WaitVisible(chromedp.CSS("#versions")))
		if v := text(t, aud, "#versions"); !strings.Contains(v, "v1") {
			t.Fatalf("versions:\n%s", v)
		}
		want, err := opAdmin.TestPolicy(ctx, doc)
		if err != nil {
			t.Fatal(err)
		}
		pass := 0
		for _, r := range want {
			if r.Decision != nil && r.Decision.Passed {
				pass++
			}
		}
		if pass == 0 || pass == len(want) {
			t.Fatalf("the dry run should split the fleet: %d of %d pass", pass, len(want))
		}
		run(t, aud, "dry run", chromedp.Click(chromedp.CSS("#dryrun")), chromedp.WaitVisible(chromedp.CSS("#dryrun-summary")))
		if sum := text(t, aud, "#dryrun-summary"); sum != fmt.Sprintf("%d would pass, %d would fail.", pass, len(want)-pass) {
			t.Fatalf("dry run summary %q", sum)
		}
		if rows := text(t, aud, "#dryrun"); !strings.Contains(rows, "PCR 4") {
			t.Errorf("the dry run does not say why:\n%s", rows)
		}
	})

	t.Run("tampered audit range", func(t *testing.T) {
		base := audS.URL()
		// Browse: the operator's approval, found by actor and by device.
		run(t, aud, "audit by actor", chromedp.Navigate(base+"/audit?actor=olga&device="+pendingID), chromedp.WaitVisible(chromedp.CSS("#audit")))
		if rows := text(t, aud, "#audit"); !strings.Contains(rows, "admin:olga(operator)") || !strings.Contains(rows, pendingID) || strings.Contains(rows, "No entry matches") {
			t.Fatalf("audit entries by olga for %s:\n%s", pendingID, rows)
		}
		run(t, aud, "audit by another actor", chromedp.Navigate(base+"/audit?actor=nobody"), chromedp.WaitVisible(chromedp.CSS("#audit")))
		if rows := text(t, aud, "#audit"); !strings.Contains(rows, "No entry matches") {
			t.Fatalf("audit entries by nobody:\n%s", rows)
		}
		run(t, aud, "verify live", chromedp.Navigate(base+"/audit/verify"), chromedp.WaitVisible(chromedp.CSS("#audit-result")))
		if r := text(t, aud, "#audit-result"); r != "OK" {
			t.Fatalf("the live log: %q", r)
		}
		var buf bytes.Buffer
		if err := opAdmin.ExportAudit(ctx, time.Time{}, cluster.AuditJSONL, &buf); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
		victim := -1
		for i := len(lines) / 2; i < len(lines); i++ {
			if strings.Contains(lines[i], `"seq":`) && strings.Contains(lines[i], `"actor":`) {
				victim = i
				break
			}
		}
		if victim < 0 {
			t.Fatalf("no entry to tamper with in %d lines", len(lines))
		}
		var entry map[string]any
		if err := json.Unmarshal([]byte(lines[victim]), &entry); err != nil {
			t.Fatal(err)
		}
		entry["actor"] = "admin:mallory(operator)"
		b, _ := json.Marshal(entry)
		lines[victim] = string(b)
		file := filepath.Join(t.TempDir(), "audit-tampered.jsonl")
		if err := os.WriteFile(file, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, aud, "verify the tampered export", chromedp.Navigate(base+"/audit"), chromedp.WaitVisible(chromedp.CSS("#verify-file")),
			chromedp.SetUploadFiles(chromedp.CSS("#verify-file"), []string{file}),
			chromedp.Click(chromedp.CSS("#verify-upload")), chromedp.WaitVisible(chromedp.CSS("#audit-result")))
		if r := text(t, aud, "#audit-result"); !strings.HasPrefix(r, "FAILED") {
			t.Fatalf("tampered export: %q", r)
		}
		probs := text(t, aud, "#problems")
		if !strings.Contains(probs, "modified") || !strings.Contains(probs, fmt.Sprint(entry["seq"])) {
			t.Fatalf("problems do not name the modified entry %v:\n%s", entry["seq"], probs)
		}
		shot(t, aud, "audit-tampered")
	})
}

// csrfOf reads the session's CSRF token from the policies page's form.
func csrfOf(t *testing.T, ctx context.Context, s *console.Server) string {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(c, chromedp.Navigate(s.URL()+"/policies"), chromedp.WaitReady(chromedp.CSS("input[name=csrf]"))); err != nil {
		t.Fatal(err)
	}
	v, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("input[name=csrf]")))
	if err != nil || len(v) != 64 {
		t.Fatalf("CSRF token %q: %v", v, err)
	}
	return v
}
