package swtpm

import (
	"encoding/hex"
	"fmt"

	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"

	gatehouse "github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
)

// Boot plays firmware: it extends every measured event of a real TCG event
// log into the TPM's SHA-256 PCRs, as the platform would have at boot, so
// that the TPM quotes what the log replays to. Call it on a fresh TPM,
// before anything else opens it. A log that starts PCR0 at a locality other
// than 0 cannot be replayed this way and is refused.
func (p *Process) Boot(log []byte) error {
	l, err := gatehouse.ParseEventLog(log)
	if err != nil {
		return err
	}
	if l.Facts.StartupLocality != 0 {
		return fmt.Errorf("boot: the log starts PCR0 at locality %d; swtpm starts at 0", l.Facts.StartupLocality)
	}
	rw, err := fwclient.OpenTransport(p.URI())
	if err != nil {
		return err
	}
	defer rw.Close()
	n := 0
	for _, e := range l.Events {
		if e.Type == "EV_NO_ACTION" {
			continue
		}
		d, err := hex.DecodeString(e.Digests.Get("sha256"))
		if err != nil || len(d) != 32 {
			return fmt.Errorf("boot: event %d has no SHA-256 digest", e.Number)
		}
		if err := tpm2.PCRExtend(rw, tpmutil.Handle(e.PCR), tpm2.AlgSHA256, d, ""); err != nil {
			return fmt.Errorf("boot: extend PCR %d with event %d: %w", e.PCR, e.Number, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("boot: the log measures nothing")
	}
	return nil
}
