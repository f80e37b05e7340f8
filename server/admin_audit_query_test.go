package server_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// GET /admin/v1/audit/entries over HTTPS with an auditor certificate: the
// pages, followed by their Link, are the chain newest first, and each
// filter selects what a scan of the export does.
func TestAdminAuditPage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		applyPolicy(t, e, fmt.Sprintf(`{"groups":[{"name":"g%d","mode":"auto"}]}`, i))
	}
	opCert := adminCert(t, e, ca.RoleOperator, "olga")
	op := server.NewRemoteAdminClient("https://"+e.App.Addr(), opCert, e.App.Root())
	if _, err := op.ApplyPolicy(ctx, "", []byte(`{"groups":[{"name":"by-olga","mode":"auto"}]}`)); err != nil {
		t.Fatal(err)
	}
	aud := server.NewRemoteAdminClient("https://"+e.App.Addr(), adminCert(t, e, ca.RoleAuditor, "audrey"), e.App.Root())

	var buf bytes.Buffer
	if err := aud.ExportAudit(ctx, time.Time{}, cluster.AuditJSONL, &buf); err != nil {
		t.Fatal(err)
	}
	_, lines, err := cluster.ReadAudit(&buf)
	if err != nil {
		t.Fatal(err)
	}
	var chain []cluster.AuditEntry // newest first, as pages list them: by time, then sequence
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i].Range == nil {
			chain = append(chain, lines[i].Entry)
		}
	}
	// Entries proposed at once (the node's start-up writes) commit in any
	// order: their times need not follow their sequence numbers.
	slices.SortStableFunc(chain, func(a, b cluster.AuditEntry) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return cmp.Compare(b.Seq, a.Seq)
	})
	newest := slices.MaxFunc(chain, func(a, b cluster.AuditEntry) int { return cmp.Compare(a.Seq, b.Seq) }).Seq
	for _, f := range []server.AuditFilter{
		{},
		{Type: cluster.AuditPolicyApplied},
		{Actor: "olga"},
		{Type: cluster.AuditPolicyApplied, Actor: "olga"},
		{Since: chain[len(chain)/2].Time},
		{Until: chain[len(chain)/2].Time},
		{Type: "no.such.type"},
	} {
		var want []uint64
		for _, en := range chain {
			if en.Seq > newest {
				continue
			}
			actorOK := f.Actor == "" || en.Actor == f.Actor || en.Actor == "admin:"+f.Actor+"(operator)"
			if (f.Type == "" || en.Type == f.Type) && actorOK && (f.Since.IsZero() || !en.Time.Before(f.Since)) && (f.Until.IsZero() || !en.Time.After(f.Until)) {
				want = append(want, en.Seq)
			}
		}
		var got []uint64
		for cursor := ""; ; {
			page, next, err := aud.AuditPage(ctx, f, cursor, 2)
			if err != nil {
				t.Fatalf("%+v: %v", f, err)
			}
			for _, en := range page {
				if en.Seq <= newest { // not the entries after the export (the reads' own audit, if any)
					got = append(got, en.Seq)
				}
			}
			if cursor = next; next == "" {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%+v: %v, want %v", f, got, want)
		}
		if f.Type == cluster.AuditPolicyApplied && f.Actor == "" && len(got) != 4 || f.Actor == "olga" && len(got) == 0 {
			t.Fatalf("%+v: %v: the filter found too little", f, got)
		}
	}

	hc := mtlsClient(e, ptr(adminCert(t, e, ca.RoleAuditor, "pager")))
	for _, q := range []string{"cursor=!!", "cursor=AAAA", "since=yesterday", "until=2026-13-01T00:00:00Z", "limit=0",
		"since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z"} {
		var p api.Problem
		if status, _ := auditorGet(t, hc, "https://"+e.App.Addr()+"/admin/v1/audit/entries?"+q, &p); status != http.StatusBadRequest || p.Code != api.CodeMalformed {
			t.Errorf("GET ?%s: %d %q, want 400 %s", q, status, p.Code, api.CodeMalformed)
		}
	}
	if _, _, err := aud.AuditPage(ctx, server.AuditFilter{}, "garbage", 0); problemCode(err) != api.CodeMalformed {
		t.Errorf("AuditPage with a garbage cursor: %v", err)
	}
}
