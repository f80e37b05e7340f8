package api

import (
	_ "embed"
	"net/http"
	"sync/atomic"
)

// OpenAPI is the OpenAPI 3.1 document (YAML) of every HTTP API a node
// serves: the device API, the admin API, the cluster RPC and the
// operations routes. Nodes serve it as JSON at PathOpenAPI. It is
// embedded here, beside the wire types it describes, and converted to
// JSON by the server, so that this package stays free of dependencies.
//
//go:embed openapi.yaml
var openAPI []byte

// OpenAPI returns a copy of the OpenAPI document (YAML).
func OpenAPI() []byte { return append([]byte(nil), openAPI...) }

// PathOpenAPI serves the OpenAPI document as JSON, to anyone.
const PathOpenAPI = "/openapi.json"

var transportWrapper atomic.Pointer[func(http.RoundTripper) http.RoundTripper]

// SetTransportWrapper makes WrapTransport wrap every transport Gatehouse's
// HTTP clients build (device, admin, node and join clients) with wrap; nil
// removes it. It is for tests only, which install a transport that checks
// each exchange against the OpenAPI document. Nothing in a binary calls it.
func SetTransportWrapper(wrap func(http.RoundTripper) http.RoundTripper) {
	if wrap == nil {
		transportWrapper.Store(nil)
		return
	}
	transportWrapper.Store(&wrap)
}

// WrapTransport returns rt, wrapped when a test installed a wrapper
// (SetTransportWrapper).
func WrapTransport(rt http.RoundTripper) http.RoundTripper {
	if w := transportWrapper.Load(); w != nil {
		return (*w)(rt)
	}
	return rt
}
