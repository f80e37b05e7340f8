// Command mkeventlogs writes the generated event logs in
// testvectors/eventlogs/generated from a real one (see
// testvectors.GeneratedLogs and SOURCES.tsv): an SM3_256 bank that
// go-attestation cannot parse, and StartupLocality / H-CRTM events that set
// PCR 0's initial value. Run from the module root:
//
//	go run ./testvectors/mkeventlogs
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/gatehouse-dev/gatehouse/testvectors"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkeventlogs:", err)
		os.Exit(1)
	}
}

func run() error {
	base, err := os.ReadFile(testvectors.Path(testvectors.GeneratedLogsBase))
	if err != nil {
		return err
	}
	logs, err := testvectors.GeneratedLogs(base)
	if err != nil {
		return err
	}
	for rel, b := range logs {
		p := testvectors.Path(rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		fmt.Println(rel, len(b), "bytes")
	}
	return nil
}
