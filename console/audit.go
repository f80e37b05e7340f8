package console

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// auditShown bounds the entries one audit page lists.
const auditShown = 500

type auditFilter struct {
	Type, Actor, Device, Since, Until string
}

func (f auditFilter) match(e cluster.AuditEntry, since, until time.Time) bool {
	return (f.Type == "" || e.Type == f.Type) &&
		(f.Actor == "" || strings.Contains(e.Actor, f.Actor)) &&
		(f.Device == "" || e.Subject == f.Device) &&
		(since.IsZero() || !e.Time.Before(since)) &&
		(until.IsZero() || e.Time.Before(until))
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, s)
}

// export reads the cluster's audit log from since on (it signs the head
// first, so the export ends on a checkpoint).
func (s *Server) export(ctx context.Context, since time.Time) (cluster.AuditHeader, []cluster.AuditLine, []byte, error) {
	var buf bytes.Buffer
	if err := s.client.ExportAudit(ctx, since, cluster.AuditJSONL, &buf); err != nil {
		return cluster.AuditHeader{}, nil, nil, err
	}
	h, lines, err := cluster.ReadAudit(bytes.NewReader(buf.Bytes()))
	return h, lines, buf.Bytes(), err
}

func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := auditFilter{Type: q.Get("type"), Actor: q.Get("actor"), Device: q.Get("device"), Since: q.Get("since"), Until: q.Get("until")}
	since, err1 := parseTime(f.Since)
	until, err2 := parseTime(f.Until)
	if err := errors.Join(err1, err2); err != nil {
		http.Error(w, "since/until: want RFC 3339 times such as 2026-11-01T00:00:00Z", http.StatusBadRequest)
		return
	}
	_, lines, _, err := s.export(r.Context(), since)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var shown []cluster.AuditEntry
	types := map[string]bool{}
	more := false
	for i := len(lines) - 1; i >= 0; i-- { // newest first
		l := lines[i]
		if l.Range != nil || l.Err != nil {
			continue
		}
		types[l.Entry.Type] = true
		if f.match(l.Entry, since, until) {
			if len(shown) == auditShown {
				more = true
				continue
			}
			shown = append(shown, l.Entry)
		}
	}
	var typeList []string
	for t := range types {
		typeList = append(typeList, t)
	}
	sort.Strings(typeList)
	s.render(w, r, http.StatusOK, "audit", "Audit log", struct {
		Filter  auditFilter
		Types   []string
		Entries []cluster.AuditEntry
		More    bool
	}{f, typeList, shown, more})
}

func (s *Server) auditExport(w http.ResponseWriter, r *http.Request) {
	since, err := parseTime(r.URL.Query().Get("since"))
	if err != nil {
		http.Error(w, "since: want an RFC 3339 time", http.StatusBadRequest)
		return
	}
	format := r.URL.Query().Get("format")
	if format != cluster.AuditCSV {
		format = cluster.AuditJSONL
	}
	var buf bytes.Buffer // whole, so a failure is an error page rather than a cut file
	if err := s.client.ExportAudit(r.Context(), since, format, &buf); err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="audit-%s.%s"`, s.now().UTC().Format("20060102T150405Z"), format))
	w.Write(buf.Bytes())
}

type auditResult struct {
	Source string
	Report cluster.AuditReport
	Key    string
	Err    string
}

// verify checks an export as `gatehouse audit verify` does: the audit key
// must be certified under the appliance root the console trusts (the
// admin configuration's root), then every hash, link and checkpoint.
func (s *Server) verify(ctx context.Context, h cluster.AuditHeader, lines []cluster.AuditLine) (cluster.AuditReport, string, error) {
	chainPEM := []byte(h.KeyCertificate)
	if len(chainPEM) == 0 { // CSV: ask the cluster for the key's chain
		var err error
		if chainPEM, err = s.client.AuditKey(ctx); err != nil {
			return cluster.AuditReport{}, "", err
		}
	}
	chain, err := pemutil.ParseCertificateBundle(chainPEM)
	if err != nil {
		return cluster.AuditReport{}, "", fmt.Errorf("audit key certificate: %w", err)
	}
	var key ed25519.PublicKey
	if key, err = ca.VerifyAuditKey(chain, s.root); err != nil {
		return cluster.AuditReport{}, "", err
	}
	return cluster.VerifyAudit(lines, key), fmt.Sprintf("%s, certified under %s", cluster.KeyID(key)[:16], s.root.Subject.CommonName), nil
}

func (s *Server) showVerify(w http.ResponseWriter, r *http.Request, source string, h cluster.AuditHeader, lines []cluster.AuditLine) {
	res := auditResult{Source: source}
	var err error
	if res.Report, res.Key, err = s.verify(r.Context(), h, lines); err != nil {
		res.Err = err.Error()
	}
	s.render(w, r, http.StatusOK, "auditverify", "Audit verification", res)
}

// auditVerifyLive verifies the cluster's log from since on.
func (s *Server) auditVerifyLive(w http.ResponseWriter, r *http.Request) {
	since, err := parseTime(r.URL.Query().Get("since"))
	if err != nil {
		http.Error(w, "since: want an RFC 3339 time", http.StatusBadRequest)
		return
	}
	h, lines, _, err := s.export(r.Context(), since)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	src := "the cluster's log"
	if !since.IsZero() {
		src += " since " + since.UTC().Format(time.RFC3339)
	}
	s.showVerify(w, r, src, h, lines)
}

// auditVerifyFile verifies an export the user uploads (one kept from
// earlier, or received from someone else).
func (s *Server) auditVerifyFile(w http.ResponseWriter, r *http.Request) {
	f, fh, err := r.FormFile("file")
	if err != nil {
		http.Error(w, "choose an export file to verify", http.StatusBadRequest)
		return
	}
	defer f.Close()
	h, lines, err := cluster.ReadAudit(io.LimitReader(f, 16<<20))
	if err != nil {
		s.render(w, r, http.StatusOK, "auditverify", "Audit verification", auditResult{Source: fh.Filename, Err: err.Error()})
		return
	}
	s.showVerify(w, r, fh.Filename, h, lines)
}

// ---- policies

type diffLine struct {
	Op   string // " ", "-", "+"
	Text string
}

// lineDiff is a longest-common-subsequence line diff: fine for policy
// documents of a few hundred lines.
func lineDiff(a, b []string) []diffLine {
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []diffLine
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			out = append(out, diffLine{" ", a[i]})
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, diffLine{"-", a[i]})
			i++
		default:
			out = append(out, diffLine{"+", b[j]})
			j++
		}
	}
	for ; i < n; i++ {
		out = append(out, diffLine{"-", a[i]})
	}
	for ; j < m; j++ {
		out = append(out, diffLine{"+", b[j]})
	}
	return out
}

func docLines(doc json.RawMessage) []string {
	var b bytes.Buffer
	if err := json.Indent(&b, doc, "", "  "); err != nil {
		return strings.Split(string(doc), "\n")
	}
	return strings.Split(b.String(), "\n")
}

func (s *Server) policies(w http.ResponseWriter, r *http.Request) {
	hist, err := s.client.PolicyHistory(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	byVersion := map[string]cluster.PolicyRecord{}
	for _, p := range hist {
		byVersion[fmt.Sprint(p.Version)] = p
	}
	a, b := r.URL.Query().Get("a"), r.URL.Query().Get("b")
	if len(hist) >= 2 && a == "" && b == "" { // newest first: the last change
		a, b = fmt.Sprint(hist[1].Version), fmt.Sprint(hist[0].Version)
	}
	var diff []diffLine
	pa, okA := byVersion[a]
	pb, okB := byVersion[b]
	if okA && okB {
		diff = lineDiff(docLines(pa.Document), docLines(pb.Document))
	}
	var current string
	if len(hist) > 0 {
		current = strings.Join(docLines(hist[0].Document), "\n")
	}
	s.render(w, r, http.StatusOK, "policies", "Policies", struct {
		History []cluster.PolicyRecord
		A, B    string
		Diff    []diffLine
		Current string
	}{hist, a, b, diff, current})
}

func (s *Server) dryRun(w http.ResponseWriter, r *http.Request) {
	doc := r.PostFormValue("document")
	res, err := s.client.TestPolicy(r.Context(), []byte(doc))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	pass := 0
	for _, d := range res {
		if d.Decision != nil && d.Decision.Passed {
			pass++
		}
	}
	s.render(w, r, http.StatusOK, "dryrun", "Policy dry run", struct {
		Results    any
		Pass, Fail int
	}{res, pass, len(res) - pass})
}
