package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

type auditFilter struct {
	Type, Actor, Device, Since, Until string
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339, s)
}

// audit lists one page of entries, newest first, filtered by the cluster
// (GET /admin/v1/audit/entries): it never reads the whole log.
func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := auditFilter{Type: q.Get("type"), Actor: q.Get("actor"), Device: q.Get("device"), Since: q.Get("since"), Until: q.Get("until")}
	since, err1 := parseTime(f.Since)
	until, err2 := parseTime(f.Until)
	if err := errors.Join(err1, err2); err != nil {
		http.Error(w, "since/until: want RFC 3339 times such as 2026-11-01T00:00:00Z", http.StatusBadRequest)
		return
	}
	entries, next, err := s.client.AuditPage(r.Context(), server.AuditFilter{Type: f.Type, Actor: f.Actor, Device: f.Device, Since: since, Until: until},
		q.Get("cursor"), pageSize)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	nextURL := nextPageURL("/audit", q, next)
	s.render(w, r, http.StatusOK, "audit", "Audit log", struct {
		Filter  auditFilter
		Types   []string
		Entries []cluster.AuditEntry
		Next    string
	}{f, cluster.AuditTypes(), entries, nextURL})
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

// showVerify checks an export as `gatehouse audit verify` does, through
// the same core (server.VerifyAuditExport): the audit key must be
// certified under the appliance root the console trusts (the admin
// configuration's root), then every hash, link and checkpoint. A CSV
// export carries no key certificate: the cluster's is used.
func (s *Server) showVerify(w http.ResponseWriter, r *http.Request, source string, export io.Reader) {
	res := auditResult{Source: source}
	var err error
	res.Report, res.Key, err = server.VerifyAuditExport(export, s.root, func(header []byte) ([]byte, error) {
		if len(header) > 0 {
			return header, nil
		}
		return s.client.AuditKey(r.Context())
	})
	if err != nil {
		res.Err = err.Error()
	}
	s.render(w, r, http.StatusOK, "auditverify", "Audit verification", res)
}

// auditVerifyLive verifies the cluster's log from since on (the export
// signs the head first, so it ends on a checkpoint).
func (s *Server) auditVerifyLive(w http.ResponseWriter, r *http.Request) {
	since, err := parseTime(r.URL.Query().Get("since"))
	if err != nil {
		http.Error(w, "since: want an RFC 3339 time", http.StatusBadRequest)
		return
	}
	var buf bytes.Buffer
	if err := s.client.ExportAudit(r.Context(), since, cluster.AuditJSONL, &buf); err != nil {
		s.fail(w, r, err)
		return
	}
	src := "the cluster's log"
	if !since.IsZero() {
		src += " since " + since.UTC().Format(time.RFC3339)
	}
	s.showVerify(w, r, src, &buf)
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
	s.showVerify(w, r, fh.Filename, io.LimitReader(f, 16<<20))
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
