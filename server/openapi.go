package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"go.yaml.in/yaml/v2"

	"github.com/gatehouse-dev/gatehouse/api"
)

// routeMux is the HTTPS port's mux; it records every pattern registered on
// it, so that a test can hold the routes against the OpenAPI document
// (api/openapi.yaml): a route missing from the document fails it.
type routeMux struct {
	*http.ServeMux
	patterns []string
}

func newRouteMux() *routeMux { return &routeMux{ServeMux: http.NewServeMux()} }

func (m *routeMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.HandleFunc(pattern, h)
}

// routes lists the patterns ("METHOD /path/{var}") of the HTTPS port, from
// the registration the port is served from (apiRoutes).
func (a *Appliance) routes() []string { return a.apiRoutes().patterns }

// openAPIJSON is the embedded document as JSON, converted once.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(api.OpenAPI(), &doc); err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	doc, err := jsonable(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	return json.Marshal(doc)
})

// jsonable turns yaml.v2's map[interface{}]interface{} into JSON objects.
func jsonable(v any) (any, error) {
	switch v := v.(type) {
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("non-string key %v", k)
			}
			var err error
			if out[ks], err = jsonable(e); err != nil {
				return nil, err
			}
		}
		return out, nil
	case []any:
		for i, e := range v {
			var err error
			if v[i], err = jsonable(e); err != nil {
				return nil, err
			}
		}
		return v, nil
	default:
		return v, nil
	}
}

// serveOpenAPI serves GET /openapi.json to anyone: the API's description
// is public, like the API itself.
func (a *Appliance) serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	b, err := openAPIJSON()
	if err != nil {
		writeProblem(w, a.enroller.internal(err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}
