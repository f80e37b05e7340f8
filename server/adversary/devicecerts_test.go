package adversary_test

// Issue 12's device certificates route, GET
// /admin/v1/devices/{id}/certificates: every serial issued to a device and
// its revoked status. It is an auditor read; a device (even the one it
// names), a node, a caller without a certificate, an admin SPIFFE ID the
// device issuance path made, and a foreign CA's admin certificate are
// refused, and an auditor reads the peer's current serial.

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

func (h *Harness) deviceCertsCalls() []call {
	return []call{{method: http.MethodGet, path: "/admin/v1/devices/" + h.peer().ID.DeviceID + "/certificates"}}
}

// deviceCertsOK is the control: an auditor lists the peer's certificates,
// its current one among them and not revoked.
func (h *Harness) deviceCertsOK() error {
	a, err := h.auditorGet(h.deviceCertsCalls()[0].path)
	if err != nil {
		return err
	}
	var certs []server.DeviceCertificate
	if err := json.Unmarshal(a.Body, &certs); err != nil {
		return err
	}
	want := h.peer().ID.Certificate.SerialNumber.Text(16)
	for _, c := range certs {
		if c.Serial == want {
			return mustf(c.Current && !c.Revoked, "the peer's certificate %+v", c)
		}
	}
	return fmt.Errorf("the peer's serial %s is not among %+v", want, certs)
}

func deviceCertsAttacks() []Attack {
	var as []Attack
	td := "spiffe://" + servertest.TrustDomain
	denied := func(name string, cert func(h *Harness) (*tls.Certificate, error)) Attack {
		return Attack{Name: "GET /admin/v1/devices/{id}/certificates " + name, Category: catIdentity, Expect: ExpectProblem,
			Control: (*Harness).deviceCertsOK,
			Attack: func(h *Harness) Result {
				c, err := cert(h)
				if err != nil {
					return harnessErr("%v", err)
				}
				return h.allDenied(c, h.deviceCertsCalls())
			}}
	}
	as = append(as,
		Attack{Name: "GET /admin/v1/devices/{id}/certificates with the named device's own certificate", Category: catIdentity, Expect: ExpectProblem,
			Control: (*Harness).deviceCertsOK,
			Attack: func(h *Harness) Result {
				return h.withPeerCert(func(c *tls.Certificate) Result { return h.allDenied(c, h.deviceCertsCalls()) })
			}},
		denied("with a genuine node certificate", (*Harness).nodeCert),
		denied("without a client certificate", func(h *Harness) (*tls.Certificate, error) { return nil, nil }),
		denied("with an auditor SPIFFE ID made by the device issuance path", func(h *Harness) (*tls.Certificate, error) {
			return h.forged([]string{td + "/admin/auditor/mallory"}, ca.PathDevice)
		}),
		Attack{Name: "GET /admin/v1/devices/{id}/certificates with a foreign CA's auditor certificate", Category: catIdentity, Expect: ExpectTLSRefused,
			Control: (*Harness).deviceCertsOK,
			Attack: func(h *Harness) Result {
				c, err := foreignClientCert(td + "/admin/auditor/mallory")
				if err != nil {
					return harnessErr("%v", err)
				}
				return h.allDenied(c, h.deviceCertsCalls())
			}},
	)
	return as
}
