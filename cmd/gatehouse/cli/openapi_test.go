package cli

import (
	"os"
	"testing"

	"github.com/gatehouse-dev/gatehouse/api/openapitest"
)

// TestMain checks every exchange of Gatehouse's HTTP clients in these tests
// against api/openapi.yaml (see server/openapi_test.go).
func TestMain(m *testing.M) { os.Exit(openapitest.Main(m)) }
