package adversary_test

import (
	"crypto/tls"
	"net/http"
)

// ---- GET /admin/v1/fleet: the fleet aggregate, auditors and operators only ----

// fleetCalls are the fleet aggregate's reads, linearizable and stale.
func fleetCalls() []call {
	return []call{
		{method: http.MethodGet, path: "/admin/v1/fleet"},
		{method: http.MethodGet, path: "/admin/v1/fleet?hours=168&stale=true"},
	}
}

// fleetAuditorOK is the control: an auditor reads the aggregate.
func (h *Harness) fleetAuditorOK() error {
	c, err := h.auditor()
	if err != nil {
		return err
	}
	return h.allAllowed(c, fleetCalls())
}

// fleetDenied is a row presenting a certificate made by forge (nil: the
// peer device's) to the fleet aggregate: refused as a caller denial.
func fleetDenied(name string, forge func(h *Harness) (*tls.Certificate, error)) Attack {
	return Attack{Name: name, Category: catIdentity, Expect: ExpectProblem,
		Control: (*Harness).fleetAuditorOK,
		Attack: func(h *Harness) Result {
			if forge == nil {
				return h.withPeerCert(func(c *tls.Certificate) Result { return h.allDenied(c, fleetCalls()) })
			}
			c, err := forge(h)
			if err != nil {
				return harnessErr("%v", err)
			}
			h.Arm() // a certificate issued for the attack is not its doing
			return h.allDenied(c, fleetCalls())
		}}
}

func fleetAttacks() []Attack {
	return []Attack{
		fleetDenied("GET /admin/v1/fleet with a device certificate", nil),
		fleetDenied("GET /admin/v1/fleet with a genuine node certificate", (*Harness).nodeCert),
		fleetDenied("GET /admin/v1/fleet without a client certificate", func(h *Harness) (*tls.Certificate, error) { return nil, nil }),
	}
}
