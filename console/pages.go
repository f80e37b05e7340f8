package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

//go:embed templates/*.html static/style.css
var assets embed.FS

type pages struct {
	byName map[string]*template.Template
	static http.Handler
}

var funcs = template.FuncMap{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"dash": func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	},
	"short": func(s string) string {
		if len(s) > 16 {
			return s[:16] + "…"
		}
		return s
	},
	"upper":    strings.ToUpper,
	"issuedBy": server.StageDescription,
	"pathName": server.PathDescription,
}

func mustPages() *pages {
	p := &pages{byName: map[string]*template.Template{}}
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		if n == "templates/layout.html" {
			continue
		}
		t := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", n))
		p.byName[strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")] = t
	}
	static, _ := fs.Sub(assets, "static")
	p.static = http.StripPrefix("/static/", http.FileServer(http.FS(static)))
	return p
}

// view is what every page template gets.
type view struct {
	Title    string
	Nav      string
	Identity Identity
	Operator bool
	CSRF     string
	Data     any
}

type sessionKey struct{}

func withSession(ctx context.Context, s *session) context.Context {
	return context.WithValue(ctx, sessionKey{}, s)
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, name, title string, data any) {
	sess, _ := r.Context().Value(sessionKey{}).(*session)
	v := view{Title: title, Nav: name, Identity: s.id, Operator: s.id.Role == ca.RoleOperator, Data: data}
	if sess != nil {
		v.CSRF = sess.csrf
	}
	var buf bytes.Buffer
	if err := s.pages.byName[name].Execute(&buf, v); err != nil {
		http.Error(w, "template: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// fail shows an error from the cluster with its status: a 403 from the
// cluster stays a 403.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusBadGateway
	code := ""
	var p *api.Problem
	if errors.As(err, &p) {
		status, code = p.Status, p.Code
	}
	s.render(w, r, status, "error", "Error", struct {
		Status int
		Code   string
		Err    string
	}{status, code, err.Error()})
}

func (s *Server) routes(mux *http.ServeMux) {
	mux.Handle("GET /static/", s.pages.static)
	mux.HandleFunc("GET /{$}", s.fleet)
	mux.HandleFunc("GET /devices", s.devices)
	mux.HandleFunc("GET /devices/{id}", s.device)
	mux.HandleFunc("POST /devices/{id}/{op}", s.deviceOp)
	mux.HandleFunc("GET /attestations", s.attestations)
	mux.HandleFunc("GET /attestations/{id}", s.attestation)
	mux.HandleFunc("GET /attestations/{id}/evidence", s.evidence)
	mux.HandleFunc("GET /attestations/{id}/recheck", s.recheck)
	mux.HandleFunc("GET /audit", s.audit)
	mux.HandleFunc("GET /audit/export", s.auditExport)
	mux.HandleFunc("GET /audit/verify", s.auditVerifyLive)
	mux.HandleFunc("POST /audit/verify", s.auditVerifyFile)
	mux.HandleFunc("GET /policies", s.policies)
	mux.HandleFunc("POST /policies/dryrun", s.dryRun)
}

// ---- fleet

type count struct {
	Name string
	N    int
}

func counts(m map[string]int) []count {
	out := make([]count, 0, len(m))
	for k, v := range m {
		out = append(out, count{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (s *Server) fleet(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, err := s.client.StatusBrief(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The counts and the chart come from the cluster's counters
	// (GET /admin/v1/fleet); the lists below them are one indexed page each.
	fc, err := s.client.Fleet(ctx, chartHours)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	byGroup := map[string]int{}
	for g, n := range fc.ByGroup {
		byGroup[orNone(g)] += n
	}
	queue, _, err := s.client.DevicePage(ctx, server.DeviceFilter{State: cluster.DevicePending}, "", queueMax)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var since time.Time
	if len(fc.Hours) > 0 {
		since = fc.Hours[0].Start
	}
	refusals, _, err := s.client.AttestationPage(ctx, server.AttestationFilter{Outcome: cluster.OutcomeRejected, Since: since}, "", 20)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	accepted, refused := totals(fc.Hours)
	s.render(w, r, http.StatusOK, "fleet", "Fleet", struct {
		Status          server.Status
		Total           int
		ByState         []count
		ByGroup         []count
		Pending         int
		Queue           []cluster.Device
		Chart           template.HTML
		Legend          []legend
		Accepted, Refus int
		Refusals        []cluster.AttestationRecord // newest first
	}{st, fc.Devices, counts(fc.ByState), counts(byGroup), fc.Pending, queue, chart(fc.Hours), legendOf(fc.Hours), accepted, refused, refusals})
}

// chartHours is the fleet chart's window; queueMax bounds the approval
// queue the fleet page lists (its length is counted in full).
const (
	chartHours = 24
	queueMax   = 100
)

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// ---- devices

// pageSize is how many devices or records a list page shows.
const pageSize = 50

// nextPageURL is the link to the page after this one (path with the same
// query q and the cluster's next cursor), or "" on the last page.
func nextPageURL(path string, q url.Values, next string) string {
	if next == "" {
		return ""
	}
	nq := url.Values{}
	for k, v := range q {
		nq[k] = v
	}
	nq.Set("cursor", next)
	return path + "?" + nq.Encode()
}

// deviceForm is the devices page's filter form: one label and one flag.
type deviceForm struct{ State, Group, Label, Flag, Model string }

func (f deviceForm) filter() server.DeviceFilter {
	df := server.DeviceFilter{State: f.State, Group: f.Group, Model: f.Model}
	if f.Label != "" {
		df.Labels = []string{f.Label}
	}
	if f.Flag != "" {
		df.Flags = []string{f.Flag}
	}
	return df
}

// attestationForm is the attestations page's filter form; times are RFC 3339.
type attestationForm struct{ Outcome, Code, Group, Device, Since, Until string }

func (f attestationForm) filter() (server.AttestationFilter, error) {
	since, err1 := parseTime(f.Since)
	until, err2 := parseTime(f.Until)
	if err := errors.Join(err1, err2); err != nil {
		return server.AttestationFilter{}, errors.New("since/until: want RFC 3339 times such as 2026-11-01T00:00:00Z")
	}
	return server.AttestationFilter{Outcome: f.Outcome, Code: f.Code, Group: f.Group, Device: f.Device, Since: since, Until: until}, nil
}

func (s *Server) devices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	form := deviceForm{State: q.Get("state"), Group: q.Get("group"), Label: q.Get("label"), Flag: q.Get("flag"), Model: q.Get("model")}
	devs, next, err := s.client.DevicePage(r.Context(), form.filter(), q.Get("cursor"), pageSize)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	nextURL := nextPageURL("/devices", q, next)
	s.render(w, r, http.StatusOK, "devices", "Devices", struct {
		Filter  deviceForm
		States  []string
		Devices []cluster.Device
		Next    string
	}{form, cluster.DeviceStates(), devs, nextURL})
}

// ops lists the lifecycle actions the console offers, for a device in
// state st.
func ops(st string) []string {
	switch st {
	case cluster.DevicePending:
		return []string{cluster.OpApprove, cluster.OpRevoke}
	case cluster.DeviceActive:
		return []string{cluster.OpQuarantine, cluster.OpDisable, cluster.OpRevoke}
	case cluster.DeviceDisabled, cluster.DeviceQuarantined:
		return []string{cluster.OpEnable, cluster.OpRevoke}
	}
	return nil
}

func (s *Server) device(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	d, err := s.client.Device(ctx, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	recs, err := s.client.Attestations(ctx, d.ID, 50)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Revoked is the CA's answer per serial: a device whose revocation
	// was interrupted after its state change still has valid certificates.
	list, err := s.client.DeviceCertificates(ctx, d.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	type cert struct {
		server.DeviceCertificate
		Expired bool // by the console's clock; false when NotAfter is not recorded
	}
	certs := make([]cert, len(list))
	for i, c := range list {
		certs[i] = cert{c, !c.NotAfter.IsZero() && !s.now().Before(c.NotAfter)}
	}
	var labels []count
	keys := make([]string, 0, len(d.Labels))
	for k := range d.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		labels = append(labels, count{Name: k + "=" + d.Labels[k]})
	}
	var cfg string
	if len(d.Config) > 0 {
		var b bytes.Buffer
		if json.Indent(&b, d.Config, "", "  ") == nil {
			cfg = b.String()
		}
	}
	s.render(w, r, http.StatusOK, "device", "Device "+d.ID, struct {
		Device       cluster.Device
		Path         []string
		Ops          []string
		Certs        []cert
		Labels       []count
		Config       string
		Attestations []cluster.AttestationRecord
	}{d.Device, d.Path, ops(d.Status), certs, labels, cfg, recs})
}

func (s *Server) deviceOp(w http.ResponseWriter, r *http.Request) {
	id, op := r.PathValue("id"), r.PathValue("op")
	if !slices.Contains([]string{cluster.OpApprove, cluster.OpQuarantine, cluster.OpDisable, cluster.OpEnable, cluster.OpRevoke}, op) {
		http.Error(w, "unknown action", http.StatusNotFound)
		return
	}
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if reason == "" && op != cluster.OpApprove {
		s.render(w, r, http.StatusBadRequest, "error", "Error", struct {
			Status int
			Code   string
			Err    string
		}{http.StatusBadRequest, api.CodeMalformed, op + " needs a reason"})
		return
	}
	// The cluster records the certificate's identity as the actor; the
	// claimed one only says it came through the console.
	if _, err := s.client.TransitionDevice(r.Context(), id, op, "console:"+s.id.Name, reason); err != nil {
		s.fail(w, r, err)
		return
	}
	http.Redirect(w, r, "/devices/"+url.PathEscape(id), http.StatusSeeOther)
}

// ---- attestations

func (s *Server) attestations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	form := attestationForm{Outcome: q.Get("outcome"), Code: q.Get("code"), Group: q.Get("group"), Device: q.Get("device"),
		Since: q.Get("since"), Until: q.Get("until")}
	f, err := form.filter()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	recs, next, err := s.client.AttestationPage(r.Context(), f, q.Get("cursor"), pageSize)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	nextURL := nextPageURL("/attestations", q, next)
	s.render(w, r, http.StatusOK, "attestations", "Attestations", struct {
		Filter   attestationForm
		Outcomes []string
		Records  []cluster.AttestationRecord
		Next     string
	}{form, []string{cluster.OutcomeAccepted, cluster.OutcomeRejected, cluster.OutcomePending}, recs, nextURL})
}

func attID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		http.Error(w, "attestation IDs are positive integers", http.StatusBadRequest)
		return 0, false
	}
	return id, true
}

func (s *Server) attestation(w http.ResponseWriter, r *http.Request) {
	id, ok := attID(w, r)
	if !ok {
		return
	}
	b, err := s.client.Evidence(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var events []attest.LogEvent
	var pcrs []int
	var logErr string
	pcr := -1
	if p := r.URL.Query().Get("pcr"); p != "" {
		if n, err := strconv.Atoi(p); err == nil {
			pcr = n
		}
	}
	if len(b.EventLog) > 0 {
		if l, err := attest.ParseEventLog(b.EventLog); err != nil {
			logErr = err.Error()
		} else {
			seen := map[int]bool{}
			for _, e := range l.Events {
				if !seen[e.PCR] {
					seen[e.PCR] = true
					pcrs = append(pcrs, e.PCR)
				}
				if pcr < 0 || e.PCR == pcr {
					events = append(events, e)
				}
			}
			sort.Ints(pcrs)
		}
	}
	s.render(w, r, http.StatusOK, "attestation", fmt.Sprintf("Attestation %d", id), struct {
		Rec    cluster.AttestationRecord
		Raw    bool
		Events []attest.LogEvent
		PCRs   []int
		PCR    int
		LogErr string
		Bank   string
	}{b.Record, b.Raw != nil, events, pcrs, pcr, logErr, orDefault(b.Record.Evidence.PCRBank, "sha256")})
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (s *Server) evidence(w http.ResponseWriter, r *http.Request) {
	id, ok := attID(w, r)
	if !ok {
		return
	}
	b, err := s.client.Evidence(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="attestation-%d.json"`, id))
	w.Write(append(data, '\n'))
}

// recheck re-verifies the decision from its evidence alone, as
// `gatehouse attestations verify ID` does, against the manufacturer CAs
// the cluster serves.
func (s *Server) recheck(w http.ResponseWriter, r *http.Request) {
	id, ok := attID(w, r)
	if !ok {
		return
	}
	b, err := s.client.Evidence(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	served, err := s.client.EKRoots(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rootsPEM := server.EKRootsBundle(served)
	roots, err := attest.ParseCertificates(rootsPEM)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rep := server.Recheck(b, roots, attest.EKRootsOptions(rootsPEM)...)
	s.render(w, r, http.StatusOK, "recheck", fmt.Sprintf("Re-check of attestation %d", id), rep)
}
