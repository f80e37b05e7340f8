package server

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// DeviceFilter selects devices for GET /admin/v1/devices (the shared
// query contract: state, group, label KEY=VALUE, flag, model; cursor
// paging with limit and cursor). Empty fields do not filter.
type DeviceFilter struct {
	State, Group, Label, Flag, Model string
	Limit                            int
	Cursor                           string
}

// AttestationFilter selects attestation records for GET
// /admin/v1/attestations, newest first.
type AttestationFilter struct {
	Outcome, Code, Group, Device string
	Since, Until                 string // RFC 3339
	Limit                        int
	Cursor                       string
}

func setNonEmpty(q url.Values, kv ...string) {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
}

func (f DeviceFilter) query() url.Values {
	q := url.Values{}
	setNonEmpty(q, "state", f.State, "group", f.Group, "label", f.Label, "flag", f.Flag, "model", f.Model, "cursor", f.Cursor)
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

func (f AttestationFilter) query() url.Values {
	q := url.Values{}
	setNonEmpty(q, "outcome", f.Outcome, "code", f.Code, "group", f.Group, "device", f.Device, "since", f.Since, "until", f.Until, "cursor", f.Cursor)
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

// DevicesPage returns one page of devices and the cursor of the next page
// ("" on the last page, or when the node does not page).
func (c *AdminClient) DevicesPage(ctx context.Context, f DeviceFilter) ([]cluster.Device, string, error) {
	var devs []cluster.Device
	next, err := c.page(ctx, adminDevices, f.query(), &devs)
	return devs, next, err
}

// AttestationsPage returns one page of attestation records, newest first,
// and the cursor of the next page ("" on the last page).
func (c *AdminClient) AttestationsPage(ctx context.Context, f AttestationFilter) ([]cluster.AttestationRecord, string, error) {
	var recs []cluster.AttestationRecord
	next, err := c.page(ctx, adminAttestation, f.query(), &recs)
	return recs, next, err
}

func (c *AdminClient) page(ctx context.Context, path string, q url.Values, v any) (string, error) {
	if c.StaleReads {
		q.Set("stale", "true")
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	h, err := c.doHeader(ctx, http.MethodGet, path, nil, v)
	if err != nil {
		return "", err
	}
	return nextCursor(h), nil
}

// nextCursor is the cursor parameter of the RFC 8288 Link rel="next"
// target in h, or "".
func nextCursor(h http.Header) string {
	for _, v := range h.Values("Link") {
		for _, link := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(link), ";")
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			isNext := false
			for _, p := range strings.Split(params, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "rel") && slices.Contains(strings.Fields(strings.Trim(val, `"`)), "next") {
					isNext = true
				}
			}
			if !isNext {
				continue
			}
			u, err := url.Parse(target[1 : len(target)-1])
			if err != nil {
				continue
			}
			return u.Query().Get("cursor")
		}
	}
	return ""
}
