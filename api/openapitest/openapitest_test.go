package openapitest_test

import (
	"testing"

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
