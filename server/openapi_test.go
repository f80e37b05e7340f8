package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/api/openapitest"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// TestMain checks every exchange of the clients Gatehouse builds (device,
// admin, node, join, servertest's) against api/openapi.yaml: the run fails
// listing each response that does not match the document.
func TestMain(m *testing.M) { os.Exit(openapitest.Main(m)) }

// TestOpenAPIRoutes: every route registered on the HTTPS port is in the
// document, every documented operation is registered, and each admin
// operation names the least role registerAdmin gives it.
func TestOpenAPIRoutes(t *testing.T) {
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	registered := map[string]bool{}
	for _, p := range e.App.RoutesForTest() {
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			t.Errorf("route %q is registered without a method: the document cannot describe it", p)
			continue
		}
		path = strings.TrimSuffix(path, "{$}")
		path = strings.ReplaceAll(path, "...}", "}")
		registered[method+" "+path] = true
	}
	if len(registered) < 30 {
		t.Fatalf("only %d routes registered: the route registry misses some", len(registered))
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	for r := range registered {
		if !documented[r] {
			t.Errorf("route %s is registered but not in api/openapi.yaml", r)
		}
	}
	for r := range documented {
		if !registered[r] {
			t.Errorf("operation %s is in api/openapi.yaml but not registered", r)
		}
	}
	for _, r := range e.App.AdminRoutes() {
		method, path, _ := strings.Cut(r.Pattern, " ")
		item := doc.Paths.Value(path)
		if item == nil || item.GetOperation(method) == nil {
			continue // reported above
		}
		op := item.GetOperation(method)
		if got := op.Extensions["x-gatehouse-role"]; got != r.Role {
			t.Errorf("%s: x-gatehouse-role %v, registered with role %s", r.Pattern, got, r.Role)
		}
		var roles []string
		for _, req := range *op.Security {
			roles = append(roles, req["adminCert"]...)
		}
		if !slices.Contains(roles, r.Role) || (r.Role == "operator" && slices.Contains(roles, "auditor")) {
			t.Errorf("%s: security allows roles %v, registered with least role %s", r.Pattern, roles, r.Role)
		}
	}
}

// TestOpenAPIServed: GET /openapi.json serves the embedded document as
// JSON, without a client certificate.
func TestOpenAPIServed(t *testing.T) {
	e := newEnv(t)
	resp, err := e.HTTP.Get(e.URL() + api.PathOpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %s %q", api.PathOpenAPI, resp.Status, resp.Header.Get("Content-Type"))
	}
	if !json.Valid(body) {
		t.Fatalf("GET %s: not JSON: %.200s", api.PathOpenAPI, body)
	}
	served, err := openapitest.LoadData(body)
	if err != nil {
		t.Fatal(err)
	}
	want, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := json.Marshal(served)
	wb, _ := json.Marshal(want)
	if string(sb) != string(wb) {
		t.Fatalf("the served document differs from api/openapi.yaml")
	}
}

// TestOpenAPIDeviceOperations: the document's DeviceOperation enum is the
// lifecycle's operations.
func TestOpenAPIDeviceOperations(t *testing.T) {
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, v := range doc.Components.Schemas["DeviceOperation"].Value.Enum {
		documented = append(documented, v.(string))
	}
	slices.Sort(documented)
	if !slices.Equal(documented, cluster.Ops()) {
		t.Fatalf("DeviceOperation enum %v, the lifecycle has %v", documented, cluster.Ops())
	}
}
