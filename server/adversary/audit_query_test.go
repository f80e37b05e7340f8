package adversary_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

const pathAuditEntries = "/admin/v1/audit/entries"

// auditQueryCalls are GET /admin/v1/audit/entries as an attacker asks it:
// the newest entries, and one device's.
func (h *Harness) auditQueryCalls() []call {
	return []call{
		{method: http.MethodGet, path: pathAuditEntries},
		{method: http.MethodGet, path: pathAuditEntries + "?limit=1000&device=" + url.QueryEscape(h.peer().ID.DeviceID)},
	}
}

// auditQueryOK is the control: an auditor gets a page of entries, newest
// first, and a Link to the next one when there is more.
func (h *Harness) auditQueryOK() error {
	c, err := h.auditor()
	if err != nil {
		return err
	}
	hc := h.tlsClient(c)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(h.Env.URL() + pathAuditEntries + "?limit=2")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var es []cluster.AuditEntry
	if err := json.NewDecoder(resp.Body).Decode(&es); err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s as an auditor: %d %v", pathAuditEntries, resp.StatusCode, err)
	}
	if len(es) != 2 || es[0].Time.Before(es[1].Time) || es[0].Hash == "" {
		return fmt.Errorf("GET %s?limit=2: %d entries, not the newest two: %+v", pathAuditEntries, len(es), es)
	}
	if !strings.Contains(resp.Header.Get("Link"), `rel="next"`) {
		return fmt.Errorf("GET %s?limit=2: no Link rel=next (%q)", pathAuditEntries, resp.Header.Get("Link"))
	}
	return nil
}

// auditQueryDenied is a row presenting a certificate made by forge (nil:
// the peer device's; a forge that returns nil: none): refused as a caller
// denial before the handler.
func auditQueryDenied(name string, forge func(h *Harness) (*tls.Certificate, error)) Attack {
	return Attack{Name: name, Category: catAudit, Expect: ExpectProblem, Control: (*Harness).auditQueryOK,
		Attack: func(h *Harness) Result {
			if forge == nil {
				return h.withPeerCert(func(c *tls.Certificate) Result { return h.allDenied(c, h.auditQueryCalls()) })
			}
			c, err := forge(h)
			if err != nil {
				return harnessErr("%v", err)
			}
			return h.allDenied(c, h.auditQueryCalls())
		}}
}

// auditQueryInput is a row where an auditor sends a malformed query: every
// one refused as malformed_request.
func auditQueryInput(name string, queries ...string) Attack {
	return Attack{Name: name, Category: catAudit, Expect: ExpectProblem, Control: (*Harness).auditQueryOK,
		Attack: func(h *Harness) Result {
			c, err := h.auditor()
			if err != nil {
				return harnessErr("%v", err)
			}
			hc := h.tlsClient(c)
			defer hc.CloseIdleConnections()
			var last Result
			for _, q := range queries {
				last = h.send(hc, http.MethodGet, pathAuditEntries+"?"+q, "", nil).Result
				if last.Harness != nil || last.Err != nil {
					return last
				}
				if last.Problem == nil || last.Problem.Code != api.CodeMalformed {
					last.Violation = fmt.Sprintf("GET %s?%s: %s, not %s", pathAuditEntries, q, last, api.CodeMalformed)
					return last
				}
			}
			return last
		}}
}

func auditQueryAttacks() []Attack {
	return []Attack{
		auditQueryDenied("audit entries query with a device certificate: refused", nil),
		auditQueryDenied("audit entries query with a genuine node certificate: refused", (*Harness).nodeCert),
		auditQueryDenied("audit entries query without a client certificate: refused", func(h *Harness) (*tls.Certificate, error) { return nil, nil }),
		auditQueryInput("audit entries query with a garbage cursor, another list's cursor, a cut cursor, a bad time or limit: malformed_request",
			"cursor=garbage!!", "cursor="+url.QueryEscape(strings.Repeat("A", 40)), "cursor=YQ", "cursor=dGhpcyBpcyBub3QgYSBjdXJzb3I",
			"since=yesterday", "since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z", "limit=-1", "type="+strings.Repeat("x", cluster.MaxIndexedValue+1)),
	}
}
