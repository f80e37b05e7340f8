package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Paging on the admin API's lists: ?limit=N (default 100, at most 1000)
// and ?cursor=OPAQUE. A page with more after it carries an RFC 8288
// Link: <same path and filters, next cursor>; rel="next"; the last page
// carries none. The body stays a JSON array.

// pageParams reads limit and cursor.
func pageParams(r *http.Request) (cursor string, limit int, err error) {
	q := r.URL.Query()
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return "", 0, malformed("limit must be a positive integer")
		}
		limit = min(n, cluster.MaxPageLimit)
	}
	return q.Get("cursor"), limit, nil
}

// writePage writes a page of a list, with the Link to the next one.
func writePage(w http.ResponseWriter, r *http.Request, items any, next string, err error) {
	if err == nil && next != "" {
		q := r.URL.Query()
		q.Set("cursor", next)
		w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
	}
	writeResult(w, http.StatusOK, items, err)
}

// deviceQuery reads GET /admin/v1/devices' filters.
func deviceQuery(r *http.Request) (cluster.DeviceQuery, error) {
	cursor, limit, err := pageParams(r)
	q := r.URL.Query()
	return cluster.DeviceQuery{State: q.Get("state"), Group: q.Get("group"), Model: q.Get("model"),
		Labels: q["label"], Flags: q["flag"], Cursor: cursor, Limit: limit}, err
}

// attestationFilter reads GET /admin/v1/attestations' filters.
func attestationFilter(r *http.Request) (cluster.AttestationFilter, error) {
	cursor, limit, err := pageParams(r)
	if err != nil {
		return cluster.AttestationFilter{}, err
	}
	q := r.URL.Query()
	f := cluster.AttestationFilter{Outcome: q.Get("outcome"), Code: q.Get("code"), Group: q.Get("group"),
		DeviceID: q.Get("device"), Cursor: cursor, Limit: limit}
	return f, timeParams(r, &f.Since, &f.Until)
}

// timeParams reads ?since= and ?until= (RFC 3339).
func timeParams(r *http.Request, since, until *time.Time) (err error) {
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"since", since}, {"until", until}} {
		if s := r.URL.Query().Get(p.name); s != "" {
			if *p.t, err = time.Parse(time.RFC3339Nano, s); err != nil {
				return malformed(p.name + " must be an RFC 3339 time")
			}
		}
	}
	return nil
}

// auditQuery reads GET /admin/v1/audit/entries' filters.
func auditQuery(r *http.Request) (cluster.AuditQuery, error) {
	cursor, limit, err := pageParams(r)
	if err != nil {
		return cluster.AuditQuery{}, err
	}
	q := r.URL.Query()
	f := cluster.AuditQuery{Type: q.Get("type"), Actor: q.Get("actor"), Device: q.Get("device"), Cursor: cursor, Limit: limit}
	return f, timeParams(r, &f.Since, &f.Until)
}

// pageSlice pages a list held in memory (the admin certificates), whose
// items are in the order of key; the cursor is the last key returned.
func pageSlice[T any](items []T, key func(T) string, cursor string, limit int) ([]T, string, error) {
	if limit <= 0 {
		limit = cluster.DefaultPageLimit
	}
	if cursor != "" {
		last, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || len(last) == 0 {
			return nil, "", fmt.Errorf("%w: %q", cluster.ErrBadCursor, cursor)
		}
		i, _ := slices.BinarySearchFunc(items, string(last), func(x T, k string) int { return strings.Compare(key(x), k) })
		for i < len(items) && key(items[i]) <= string(last) {
			i++
		}
		items = items[i:]
	}
	if len(items) <= limit {
		return items, "", nil
	}
	return items[:limit], base64.RawURLEncoding.EncodeToString([]byte(key(items[limit-1]))), nil
}

// adminCertKey orders admin certificates as the CA lists them: by expiry,
// then serial.
func adminCertKey(c ca.AdminCertificate) string {
	return fmt.Sprintf("%020d/%s", max(c.NotAfter.UnixNano(), 0), c.Serial)
}

// DeviceFilter selects devices for AdminClient.DevicePage; the filters
// combine with AND.
type DeviceFilter struct {
	State, Group, Model string
	Labels              []string // KEY=VALUE
	Flags               []string
}

func (f DeviceFilter) values() url.Values {
	q := url.Values{}
	setNonEmpty(q, "state", f.State)
	setNonEmpty(q, "group", f.Group)
	setNonEmpty(q, "model", f.Model)
	q["label"], q["flag"] = f.Labels, f.Flags
	return q
}

// AttestationFilter selects attestation records for
// AdminClient.AttestationPage; the filters combine with AND.
type AttestationFilter struct {
	Outcome, Code, Group, Device string
	Since, Until                 time.Time
}

func (f AttestationFilter) values() url.Values {
	q := url.Values{}
	setNonEmpty(q, "outcome", f.Outcome)
	setNonEmpty(q, "code", f.Code)
	setNonEmpty(q, "group", f.Group)
	setNonEmpty(q, "device", f.Device)
	setTimes(q, f.Since, f.Until)
	return q
}

// AuditFilter selects audit entries for AdminClient.AuditPage; the filters
// combine with AND. Actor is the whole actor or its name (olga for
// admin:olga(operator)); Device the device of enrollment, renewal and
// device.* entries.
type AuditFilter struct {
	Type, Actor, Device string
	Since, Until        time.Time
}

func (f AuditFilter) values() url.Values {
	q := url.Values{}
	setNonEmpty(q, "type", f.Type)
	setNonEmpty(q, "actor", f.Actor)
	setNonEmpty(q, "device", f.Device)
	setTimes(q, f.Since, f.Until)
	return q
}

func setTimes(q url.Values, since, until time.Time) {
	if !since.IsZero() {
		q.Set("since", since.Format(time.RFC3339Nano))
	}
	if !until.IsZero() {
		q.Set("until", until.Format(time.RFC3339Nano))
	}
}

func setNonEmpty(q url.Values, k, v string) {
	if v != "" {
		q.Set(k, v)
	}
}

// DevicePage returns one page of devices (cursor "" for the first) and the
// cursor of the next ("" on the last).
func (c *AdminClient) DevicePage(ctx context.Context, f DeviceFilter, cursor string, limit int) ([]cluster.Device, string, error) {
	var devs []cluster.Device
	next, err := c.getPage(ctx, adminDevices, f.values(), cursor, limit, &devs)
	return devs, next, err
}

// AttestationPage returns one page of attestation records, newest first,
// and the cursor of the next ("" on the last).
func (c *AdminClient) AttestationPage(ctx context.Context, f AttestationFilter, cursor string, limit int) ([]cluster.AttestationRecord, string, error) {
	var recs []cluster.AttestationRecord
	next, err := c.getPage(ctx, adminAttestation, f.values(), cursor, limit, &recs)
	return recs, next, err
}

// AuditPage returns one page of audit entries, newest (by time, then seq)
// first, and the cursor of the next ("" on the last). The entries are as
// the cluster stores them; only an export verifies them (ExportAudit).
func (c *AdminClient) AuditPage(ctx context.Context, f AuditFilter, cursor string, limit int) ([]cluster.AuditEntry, string, error) {
	var es []cluster.AuditEntry
	next, err := c.getPage(ctx, adminAudit+"/entries", f.values(), cursor, limit, &es)
	return es, next, err
}

// allPages collects every page of a list.
func allPages[T any](ctx context.Context, page func(cursor string) ([]T, string, error)) ([]T, error) {
	out := []T{}
	for cursor := ""; ; {
		items, next, err := page(cursor)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if next == "" {
			return out, nil
		}
		if next == cursor {
			return nil, fmt.Errorf("admin API: the next page's cursor repeats")
		}
		cursor = next
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

var linkNextRE = regexp.MustCompile(`<([^>]*)>\s*;\s*rel="?next"?`)

// nextCursor is the cursor in a response's Link rel="next", or "".
func nextCursor(h http.Header) (string, error) {
	for _, l := range h.Values("Link") {
		if m := linkNextRE.FindStringSubmatch(l); m != nil {
			u, err := url.Parse(m[1])
			if err != nil {
				return "", fmt.Errorf("admin API: bad Link header %q", l)
			}
			return u.Query().Get("cursor"), nil
		}
	}
	return "", nil
}

func (c *AdminClient) getPage(ctx context.Context, path string, q url.Values, cursor string, limit int, v any) (string, error) {
	if q == nil {
		q = url.Values{}
	}
	setNonEmpty(q, "cursor", cursor)
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if c.StaleReads {
		path += map[bool]string{true: "&", false: "?"}[len(q) > 0] + "stale=true"
	}
	h, err := c.doHeader(ctx, http.MethodGet, path, nil, v)
	if err != nil {
		return "", err
	}
	return nextCursor(h)
}
