// Package openapitest checks HTTP exchanges against Gatehouse's OpenAPI
// document (api/openapi.yaml) with kin-openapi. Tests install it on every
// client Gatehouse builds (api.SetTransportWrapper, see Main); only test
// binaries link it.
//
// Guarantees: every response a wrapped client receives is held against the
// document, once per exchange; a response to a route or status the
// document does not list is a violation (but for 404 and 405 to an
// undocumented route: the server agrees it has none), and so is a body,
// header or content type that does not match. A request the server accepted (2xx)
// must match the document too. Non-guarantees: requests the server refused
// are not checked (tests send malformed requests on purpose), and clients
// a test builds by hand are not wrapped.
package openapitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/gatehouse-dev/gatehouse/api"
)

func init() {
	// Bodies the document describes as opaque strings.
	for _, ct := range []string{"application/x-tar", "application/pkix-crl", "application/pem-certificate-chain", "application/x-pem-file", "application/jsonl", "application/vnd.gatehouse.raft-command"} {
		openapi3filter.RegisterBodyDecoder(ct, openapi3filter.FileBodyDecoder)
	}
}

// Load parses the embedded document and validates it as OpenAPI.
func Load() (*openapi3.T, error) { return LoadData(api.OpenAPI()) }

// LoadData parses and validates a document.
func LoadData(b []byte) (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		return nil, fmt.Errorf("load OpenAPI document: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("invalid OpenAPI document: %w", err)
	}
	return doc, nil
}

// Validator checks exchanges against one document and collects violations.
type Validator struct {
	router routers.Router

	mu         sync.Mutex
	violations []string
	checked    int
	spent      time.Duration // in Check: the contract test's cost
}

// New returns a Validator for doc.
func New(doc *openapi3.T) (*Validator, error) {
	r, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &Validator{router: r}, nil
}

// Violations returns every violation seen so far, one line each.
func (v *Validator) Violations() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.violations...)
}

// Checked counts the exchanges checked.
func (v *Validator) Checked() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.checked
}

// Check validates one exchange: req (its body already read into reqBody)
// and the response's status, header and body. It returns nil or the
// violation, naming the route, the status and the schema error.
func (v *Validator) Check(req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) error {
	start := time.Now()
	err := v.check(req, reqBody, status, header, respBody)
	v.mu.Lock()
	v.spent += time.Since(start)
	v.checked++
	if err != nil {
		v.violations = append(v.violations, err.Error())
	}
	v.mu.Unlock()
	return err
}

func (v *Validator) check(req *http.Request, reqBody []byte, status int, header http.Header, respBody []byte) error {
	name := req.Method + " " + req.URL.Path
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
			return nil // the server agrees: there is no such route
		}
		return fmt.Errorf("%s -> %d: the route is not in the OpenAPI document: %v", name, status, err)
	}
	name = route.Method + " " + route.Path
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(reqBody))
	in := &openapi3filter.RequestValidationInput{
		Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true},
	}
	if status >= 200 && status < 300 {
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			return fmt.Errorf("%s -> %d: the server accepted a request the document refuses: %v", name, status, err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: status, Header: header,
		Body:    io.NopCloser(bytes.NewReader(respBody)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		return fmt.Errorf("%s -> %d: response does not match the document: %v (body: %.300s)", name, status, err, respBody)
	}
	return nil
}

// Wrap returns a transport that checks every exchange through rt.
func (v *Validator) Wrap(rt http.RoundTripper) http.RoundTripper { return &transport{v: v, next: rt} }

type transport struct {
	v    *Validator
	next http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		reqBody = b
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		// A cut response is the test's to see, not a contract violation.
		resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), errReader{err}))
		return resp, nil
	}
	t.v.Check(req, reqBody, resp.StatusCode, resp.Header, body)
	return resp, nil
}

// CloseIdleConnections passes on to the wrapped transport, so clients that
// close theirs do not leak connections.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// Main runs a test binary's tests with every Gatehouse client checked
// against the embedded document, and fails the run, listing each
// violation once, when any exchange did not match. Use it as TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(openapitest.Main(m)) }
func Main(m *testing.M) int {
	doc, err := Load()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	v, err := New(doc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	api.SetTransportWrapper(v.Wrap)
	defer api.SetTransportWrapper(nil)
	code := m.Run()
	if testing.Verbose() {
		v.mu.Lock()
		fmt.Fprintf(os.Stderr, "openapitest: %d HTTP exchanges checked against api/openapi.yaml in %v\n", v.checked, v.spent.Round(time.Millisecond))
		v.mu.Unlock()
	}
	if vs := v.Violations(); len(vs) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d of %d HTTP exchanges do not match api/openapi.yaml:\n%s\n", len(vs), v.Checked(), strings.Join(dedup(vs), "\n"))
		return 1
	}
	return code
}

// dedup lists each violation once, by everything but the body it quotes,
// with how often it was seen.
func dedup(vs []string) []string {
	n := map[string]int{}
	first := map[string]string{}
	for _, s := range vs {
		k := s
		if i := strings.LastIndex(s, " (body: "); i >= 0 {
			k = s[:i]
		}
		if n[k]++; n[k] == 1 {
			first[k] = s
		}
	}
	out := make([]string, 0, len(n))
	for k, c := range n {
		s := first[k]
		if c > 1 {
			s = fmt.Sprintf("%s (%d times)", s, c)
		}
		out = append(out, "  "+s)
	}
	sort.Strings(out)
	return out
}
