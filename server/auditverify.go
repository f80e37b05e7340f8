package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"

	"go.step.sm/crypto/pemutil"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// ErrAuditExportUnreadable: the export is neither a JSONL nor a CSV audit
// export Gatehouse wrote.
var ErrAuditExportUnreadable = errors.New("unreadable audit export")

// ErrNoAuditKeyCert: nothing certifies the audit key (a CSV export carries
// no certificate: the caller must supply one).
var ErrNoAuditKeyCert = errors.New("no audit key certificate")

// VerifyAuditExport is the one audit-verification core of `gatehouse audit
// verify` and the console. It reads an export and checks it against the
// audit key that the chain keyCert returns certifies under root; keyCert
// gets the chain the export's header carries (empty for CSV) and returns
// the chain to trust (nil keyCert: the header's). It returns the report of
// cluster.VerifyAudit (opts: its options, e.g. cluster.ExpectHeads) and a
// line naming the key and the root.
//
// Guarantees: a report without problems means every entry's hash, every
// link and every checkpoint and range signature verify under a key that
// root certifies. Non-guarantees: it cannot tell a complete log from a
// consistent prefix newer heads would expose (ExpectHeads), and whoever
// holds the CA key can certify another audit key.
func VerifyAuditExport(export io.Reader, root *x509.Certificate, keyCert func(header []byte) ([]byte, error), opts ...cluster.VerifyOption) (cluster.AuditReport, string, error) {
	h, lines, err := cluster.ReadAudit(export)
	if err != nil {
		return cluster.AuditReport{}, "", fmt.Errorf("%w: %w", ErrAuditExportUnreadable, err)
	}
	chainPEM := []byte(h.KeyCertificate)
	if keyCert != nil {
		if chainPEM, err = keyCert(chainPEM); err != nil {
			return cluster.AuditReport{}, "", err
		}
	}
	if len(chainPEM) == 0 {
		return cluster.AuditReport{}, "", ErrNoAuditKeyCert
	}
	chain, err := pemutil.ParseCertificateBundle(chainPEM)
	if err != nil {
		return cluster.AuditReport{}, "", fmt.Errorf("audit key certificate: %w", err)
	}
	key, err := ca.VerifyAuditKey(chain, root)
	if err != nil {
		return cluster.AuditReport{}, "", err
	}
	return cluster.VerifyAudit(lines, key, opts...), fmt.Sprintf("%s, certified under %s", cluster.KeyID(key)[:16], root.Subject.CommonName), nil
}
