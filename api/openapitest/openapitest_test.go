package openapitest_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/api/openapitest"
)

// TestDocumentValid: api/openapi.yaml loads and is a valid OpenAPI document.
func TestDocumentValid(t *testing.T) {
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" || doc.Paths.Len() == 0 {
		t.Fatalf("document: openapi %q, %d paths", doc.OpenAPI, doc.Paths.Len())
	}
}

const smallDoc = `
openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /thing/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: string}}
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema:
                type: object
                required: [n]
                properties:
                  n: {type: integer}
`

// exchange serves one canned answer through a validating client and
// returns the violations.
func exchange(t *testing.T, path string, status int, body string) []string {
	t.Helper()
	doc, err := openapitest.LoadData([]byte(smallDoc))
	if err != nil {
		t.Fatal(err)
	}
	v, err := openapitest.New(doc)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	defer srv.Close()
	hc := &http.Client{Transport: v.Wrap(http.DefaultTransport)}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != body || resp.StatusCode != status {
		t.Fatalf("the client got %d %q, the server sent %d %q", resp.StatusCode, got, status, body)
	}
	if v.Checked() != 1 {
		t.Fatalf("%d exchanges checked, want 1", v.Checked())
	}
	for _, s := range v.Violations() {
		t.Log("caught:", s)
	}
	return v.Violations()
}

// The negative controls: the validator the contract test relies on bites
// on a wrong field type, an undocumented status and an undocumented
// route, naming route, status and error, and passes a matching answer.
func TestValidatorCatchesWrongType(t *testing.T) {
	vs := exchange(t, "/thing/a", 200, `{"n":"seven"}`)
	if len(vs) != 1 || !strings.Contains(vs[0], "GET /thing/{id} -> 200") || !strings.Contains(vs[0], `"n"`) {
		t.Fatalf("violations %q, want one naming GET /thing/{id} -> 200 and field n", vs)
	}
}

func TestValidatorCatchesMissingField(t *testing.T) {
	vs := exchange(t, "/thing/a", 200, `{}`)
	if len(vs) != 1 || !strings.Contains(vs[0], "GET /thing/{id} -> 200") || !strings.Contains(vs[0], `"n"`) {
		t.Fatalf("violations %q, want one naming the missing field n", vs)
	}
}

func TestValidatorCatchesUndocumentedStatus(t *testing.T) {
	vs := exchange(t, "/thing/a", 418, `{"n":1}`)
	if len(vs) != 1 || !strings.Contains(vs[0], "GET /thing/{id} -> 418") {
		t.Fatalf("violations %q, want one naming GET /thing/{id} -> 418", vs)
	}
}

func TestValidatorCatchesUndocumentedRoute(t *testing.T) {
	vs := exchange(t, "/other", 200, `{"n":1}`)
	if len(vs) != 1 || !strings.Contains(vs[0], "GET /other -> 200") || !strings.Contains(vs[0], "not in the OpenAPI document") {
		t.Fatalf("violations %q, want one naming GET /other as undocumented", vs)
	}
}

// A 404 or 405 to an undocumented route is the server agreeing that it
// has no such route: tests probe unknown paths on purpose.
func TestValidatorAcceptsNotFoundOnUndocumentedRoute(t *testing.T) {
	if vs := exchange(t, "/other", 404, `{"n":1}`); len(vs) != 0 {
		t.Fatalf("violations %q on a 404 to an undocumented route", vs)
	}
	if vs := exchange(t, "/thing/a", 404, `{"n":1}`); len(vs) != 1 {
		t.Fatalf("violations %q, want one: 404 is not documented on GET /thing/{id}", vs)
	}
}

func TestValidatorPassesMatchingResponse(t *testing.T) {
	if vs := exchange(t, "/thing/a", 200, `{"n":7}`); len(vs) != 0 {
		t.Fatalf("violations %q on a matching answer", vs)
	}
}

// TestDocumentBites: the real document refuses a device record with a
// state outside the enum and a problem with an unknown code.
func TestDocumentBites(t *testing.T) {
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	v, err := openapitest.New(doc)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "https://node:8443/v1/whoami", nil)
	h := http.Header{"Content-Type": {"application/json"}}
	if err := v.Check(req, nil, 200, h, []byte(`{"device_id":"d","status":"active","certificate_serial":"1f"}`)); err != nil {
		t.Fatalf("a valid whoami answer refused: %v", err)
	}
	if err := v.Check(req, nil, 200, h, []byte(`{"device_id":"d","status":"asleep","certificate_serial":"1f"}`)); err == nil {
		t.Fatal("a device state outside the enum was accepted")
	}
	ph := http.Header{"Content-Type": {api.ContentTypeProblem}}
	if err := v.Check(req, nil, 401, ph, []byte(`{"type":"urn:gatehouse:problem:x","title":"Unauthorized","status":401,"code":"no_such_code"}`)); err == nil {
		t.Fatal("a problem with an unknown code was accepted")
	}
	if err := v.Check(req, nil, 401, h, []byte(`{"type":"urn:gatehouse:problem:unauthenticated","title":"Unauthorized","status":401,"code":"unauthenticated"}`)); err == nil {
		t.Fatal("a problem served as application/json was accepted")
	}
}

// TestProblemCodesDocumented: the ProblemCode enum is exactly the Code
// constants of api/problem.go, so a new code cannot go undocumented.
func TestProblemCodesDocumented(t *testing.T) {
	doc, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, v := range doc.Components.Schemas["ProblemCode"].Value.Enum {
		documented[v.(string)] = true
	}
	f, err := parser.ParseFile(token.NewFileSet(), "../problem.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || len(vs.Values) != 1 || !strings.HasPrefix(vs.Names[0].Name, "Code") {
			return true
		}
		if lit, ok := vs.Values[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			codes[strings.Trim(lit.Value, `"`)] = true
		}
		return true
	})
	if len(codes) < 30 {
		t.Fatalf("found only %d codes in api/problem.go", len(codes))
	}
	for c := range codes {
		if !documented[c] {
			t.Errorf("problem code %q (api/problem.go) is not in the ProblemCode enum", c)
		}
	}
	for c := range documented {
		if !codes[c] {
			t.Errorf("ProblemCode %q is not a code of api/problem.go", c)
		}
	}
}
