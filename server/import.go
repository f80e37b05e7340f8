package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// ImportRow is one individual enrollment to import: an EK certificate (PEM,
// or base64 DER) or an EK public-key hash, the group it enrolls into, and
// labels the device starts with.
type ImportRow struct {
	Row            int               `json:"row"` // line or index in the source, for the summary
	EKCertificate  string            `json:"ek_certificate,omitempty"`
	EKPublicSHA256 string            `json:"ek_public_sha256,omitempty"`
	Group          string            `json:"group"`
	Labels         map[string]string `json:"labels,omitempty"`
	// ParseError is set for a row the file reader could not read; the
	// appliance refuses it with this reason.
	ParseError string `json:"parse_error,omitempty"`
}

// ImportRequest is the body of POST /admin/v1/enrollments/import.
type ImportRequest struct {
	Actor  string      `json:"actor,omitempty"`
	Source string      `json:"source"`
	Rows   []ImportRow `json:"rows"`
	// DryRun validates every row and reports what would be accepted and
	// refused, writing nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// ImportResult says, row by row, what was imported and what was refused.
type ImportResult struct {
	Accepted []ImportedRow `json:"accepted"`
	Refused  []RefusedRow  `json:"refused"`
}

// ImportedRow is an accepted row.
type ImportedRow struct {
	Row            int    `json:"row"`
	EKPublicSHA256 string `json:"ek_public_sha256"`
	Group          string `json:"group"`
}

// RefusedRow is a refused row and why.
type RefusedRow struct {
	Row    int    `json:"row"`
	Reason string `json:"reason"`
}

// MaxImportBatch bounds one import request (one Raft entry).
const MaxImportBatch = 500

var hexSHA256 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseImportFile reads individual enrollments from CSV (a header row with
// ek_certificate and/or ek_public_sha256, group, labels as "k=v;k=v") or
// JSON (an array of ImportRow). Rows are numbered by their line (CSV) or
// position from 1 (JSON). Rows are not validated here: the appliance
// validates each and reports every refusal.
func ParseImportFile(r io.Reader) ([]ImportRow, error) {
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		var rows []ImportRow
		if err := json.Unmarshal(t, &rows); err != nil {
			return nil, fmt.Errorf("JSON import file: %w", err)
		}
		for i := range rows {
			rows[i].Row = i + 1
		}
		return rows, nil
	}
	cr := csv.NewReader(bytes.NewReader(b))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("CSV import file: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(strings.ToLower(h))] = i
	}
	_, hasCert := col["ek_certificate"]
	_, hasHash := col["ek_public_sha256"]
	if !hasCert && !hasHash {
		return nil, errors.New("CSV import file: the header needs an ek_certificate or ek_public_sha256 column")
	}
	field := func(rec []string, name string) string {
		if i, ok := col[name]; ok && i < len(rec) {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	var rows []ImportRow
	lineBase := 0 // lines before the reader's input, after a resync
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		row := ImportRow{Row: csvLine(cr, err) + lineBase}
		if err != nil {
			row.ParseError = err.Error()
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				row.ParseError = fmt.Sprintf("line %d: %v", pe.StartLine+lineBase, pe.Err)
				if pe.Line > pe.StartLine {
					// A quote left open ran on into later lines: refuse only
					// the row it opened in, and read on from the next line,
					// so the rows it swallowed are judged on their own.
					lineBase += pe.StartLine
					cr = csv.NewReader(bytes.NewReader(afterLine(b, lineBase)))
					cr.FieldsPerRecord = -1
				}
			}
			rows = append(rows, row)
			continue
		}
		row.EKCertificate, row.EKPublicSHA256, row.Group = field(rec, "ek_certificate"), strings.ToLower(field(rec, "ek_public_sha256")), field(rec, "group")
		if l := field(rec, "labels"); l != "" {
			row.Labels = map[string]string{}
			for _, kv := range strings.Split(l, ";") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					row.ParseError = fmt.Sprintf("label %q is not KEY=VALUE", strings.TrimSpace(kv))
					break
				}
				row.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
		rows = append(rows, row)
	}
}

// afterLine is b from the start of line n+1 (lines numbered from 1).
func afterLine(b []byte, n int) []byte {
	for ; n > 0; n-- {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil
		}
		b = b[i+1:]
	}
	return b
}

// ImportEnrollments validates rows against the policy in force and commits
// the valid ones as one batch (none with req.DryRun). A batch is idempotent:
// entries are keyed by EK public hash, so re-sending a batch that was
// committed (its answer lost to a leader change) neither fails nor
// duplicates.
func (a *Appliance) ImportEnrollments(ctx context.Context, req ImportRequest) (ImportResult, error) {
	res := ImportResult{Accepted: []ImportedRow{}, Refused: []RefusedRow{}}
	if len(req.Rows) > MaxImportBatch {
		return res, malformed(fmt.Sprintf("at most %d rows per request", MaxImportBatch))
	}
	if err := a.node.Linearize(ctx); err != nil {
		return res, a.clusterProblem(err)
	}
	p, err := a.enroller.policies.current()
	if err != nil {
		return res, a.enroller.internal(err)
	}
	seen := map[string]int{}
	var entries []cluster.IndividualEnrollment
	for _, row := range req.Rows {
		e, err := validateImportRow(row, p)
		if err == nil {
			if first, dup := seen[e.EKPublicSHA256]; dup {
				err = fmt.Errorf("the same EK as row %d", first)
			}
		}
		if err != nil {
			res.Refused = append(res.Refused, RefusedRow{Row: row.Row, Reason: err.Error()})
			continue
		}
		seen[e.EKPublicSHA256] = row.Row
		e.Source = fmt.Sprintf("%s:%d", req.Source, row.Row)
		entries = append(entries, e)
		res.Accepted = append(res.Accepted, ImportedRow{Row: row.Row, EKPublicSHA256: e.EKPublicSHA256, Group: e.Group})
	}
	if len(entries) > 0 && !req.DryRun {
		if err := a.node.ImportEnrollments(ctx, req.Actor, entries); err != nil {
			return ImportResult{}, a.clusterProblem(err)
		}
	}
	return res, nil
}

func validateImportRow(row ImportRow, p *attest.Policy) (cluster.IndividualEnrollment, error) {
	var e cluster.IndividualEnrollment
	if row.ParseError != "" {
		return e, errors.New(row.ParseError)
	}
	if row.EKCertificate == "" && row.EKPublicSHA256 == "" {
		return e, errors.New("neither ek_certificate nor ek_public_sha256 is set")
	}
	if row.EKPublicSHA256 != "" && !hexSHA256.MatchString(row.EKPublicSHA256) {
		return e, fmt.Errorf("ek_public_sha256 %q is not 64 lower-case hex digits", row.EKPublicSHA256)
	}
	e.EKPublicSHA256 = row.EKPublicSHA256
	if row.EKCertificate != "" {
		der := []byte(row.EKCertificate)
		if blk, _ := pem.Decode(der); blk != nil {
			der = blk.Bytes
		} else if raw, err := base64.StdEncoding.DecodeString(row.EKCertificate); err == nil {
			der = raw
		}
		ek, err := attest.ParseEKCertificate(der)
		if err != nil {
			return e, fmt.Errorf("ek_certificate: %v", err)
		}
		sum, err := attest.PublicKeySHA256(ek.Cert.PublicKey)
		if err != nil {
			return e, fmt.Errorf("ek_certificate: %v", err)
		}
		if e.EKPublicSHA256 != "" && e.EKPublicSHA256 != sum {
			return e, fmt.Errorf("ek_public_sha256 does not match the certificate's key (%s)", sum)
		}
		c := sha256.Sum256(ek.Cert.Raw)
		e.EKPublicSHA256, e.EKCertificateSHA256 = sum, hex.EncodeToString(c[:])
	}
	if row.Group == "" {
		return e, errors.New("no group")
	}
	if p.GroupNamed(row.Group) == nil {
		return e, fmt.Errorf("policy v%d has no group %q", p.Version, row.Group)
	}
	if err := cluster.ValidateLabels(row.Labels); err != nil {
		return e, err
	}
	e.Group, e.Labels = row.Group, row.Labels
	return e, nil
}

func (a *Appliance) registerImportAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	add(ca.RoleOperator, "POST "+adminImport, func(w http.ResponseWriter, r *http.Request) {
		var req ImportRequest
		if err := decodeBody(r, 64<<20, &req); err != nil {
			writeProblem(w, err)
			return
		}
		req.Actor = actor(r, req.Actor)
		res, err := a.ImportEnrollments(r.Context(), req)
		writeResult(w, http.StatusOK, res, err)
	})
	add(ca.RoleAuditor, "GET "+adminEnrollments, a.read(func(w http.ResponseWriter, r *http.Request) {
		cursor, limit, err := pageParams(r)
		if err != nil {
			writeProblem(w, err)
			return
		}
		list, next, err := a.node.IndividualEnrollmentsPage(cursor, limit)
		writePage(w, r, list, next, a.queryErr(err))
	}))
	add(ca.RoleOperator, "DELETE "+adminEnrollments+"/{ek}", func(w http.ResponseWriter, r *http.Request) {
		var req DeviceOp
		if r.ContentLength != 0 {
			if err := decodeBody(r, 64<<10, &req); err != nil {
				writeProblem(w, err)
				return
			}
		}
		ek := strings.ToLower(r.PathValue("ek"))
		if !hexSHA256.MatchString(ek) {
			writeProblem(w, malformed("want the EK public SHA-256 as 64 hex digits"))
			return
		}
		// New in the build that gates commands (version.go membersApply).
		if err := a.membersApply(r.Context(), "enrollment.delete/1"); err != nil {
			writeProblem(w, err) // errMembersBehind: 503
			return
		}
		err := a.node.DeleteEnrollment(r.Context(), actor(r, req.Actor), ek, req.Reason)
		writeResult(w, http.StatusOK, struct{}{}, a.errProblem(err))
	})
}

// DeleteEnrollment removes the individual enrollment of an EK (its public
// SHA-256); an EK not listed is a not_found problem.
func (c *AdminClient) DeleteEnrollment(ctx context.Context, ekPublicSHA256, actor, reason string) error {
	return c.do(ctx, http.MethodDelete, adminEnrollments+"/"+url.PathEscape(ekPublicSHA256), DeviceOp{Actor: actor, Reason: reason}, &struct{}{})
}

// ImportEnrollments sends one batch of rows (with dryRun, only to be
// judged). The batch is idempotent, so it is retried on 503 and on a lost
// connection (c.Retry).
func (c *AdminClient) ImportEnrollments(ctx context.Context, actor, source string, rows []ImportRow, dryRun bool) (ImportResult, error) {
	var out ImportResult
	return out, c.retry(ctx, func() error {
		return c.do(ctx, http.MethodPost, adminImport, ImportRequest{Actor: actor, Source: source, Rows: rows, DryRun: dryRun}, &out)
	})
}

// IndividualEnrollments lists imported enrollments, every page.
func (c *AdminClient) IndividualEnrollments(ctx context.Context) ([]cluster.IndividualEnrollment, error) {
	return allPages(ctx, func(cursor string) ([]cluster.IndividualEnrollment, string, error) {
		var out []cluster.IndividualEnrollment
		next, err := c.getPage(ctx, adminEnrollments, nil, cursor, cluster.MaxPageLimit, &out)
		return out, next, err
	})
}

// csvLine is the line a record (or its read error) starts on. FieldPos
// panics for a record that failed to read, so the error's line is used.
func csvLine(cr *csv.Reader, err error) int {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.StartLine
	}
	if err != nil {
		return 0
	}
	line, _ := cr.FieldPos(0)
	return line
}
