package acme

import (
	"context"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	stepacme "github.com/smallstep/certificates/acme"
	acmeapi "github.com/smallstep/certificates/acme/api"
	stepapi "github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/api/render"
	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"

	"github.com/gatehouse-dev/gatehouse/ca"
)

// Prefix is where the ACME API is mounted: the directory of the one
// provisioner is Prefix + "/" + ca.ACMEProvisionerName + "/directory".
const Prefix = "/acme"

// PathProvisioners is the one route of step-ca's native API that is
// served: the stock step CLI lists the provisioners to learn that
// ca.ACMEProvisionerName is an ACME provisioner. It is read-only; the
// native signing routes (/sign, /renew, /rekey, /revoke, /1.0/sign, ...)
// are not served, as they would issue without attestation. ACME's own
// revoke-cert is refused too: revocation is the registry's.
const PathProvisioners = "/provisioners"

// MaxBody bounds an ACME request body (a JWS; the largest is the
// device-attest-01 payload with its AK certificate chain).
const MaxBody = 64 << 10

// Handler serves step-ca's ACME API under Prefix and GET PathProvisioners
// with auth (the CA's authority, whose ACME provisioner signs through the
// CA's hook) and db. publicHost ("host:port") names this node in the ACME
// links when a request carries no Host.
func Handler(auth *authority.Authority, db *DB, publicHost string) http.Handler {
	linker := orderLinker{stepacme.NewLinker(publicHost, strings.TrimPrefix(Prefix, "/"))}
	client := stepacme.NewClient()
	r := chi.NewRouter()
	r.Route(Prefix, func(r chi.Router) {
		r.Use(func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				if strings.HasSuffix(req.URL.Path, "/"+stepacme.RevokeCertLinkType.String()) {
					// Revocation is the registry's (devices revoke): a
					// revocation here would bypass its record and audit.
					render.Error(w, req, stepacme.NewError(stepacme.ErrorUnauthorizedType,
						"revocation through ACME is not supported: an operator revokes the device (gatehouse devices revoke)"))
					return
				}
				req.Body = http.MaxBytesReader(w, req.Body, MaxBody)
				ctx := authority.NewContext(req.Context(), auth)
				ctx = stepacme.NewContext(ctx, db, client, linker, nil)
				next.ServeHTTP(w, req.WithContext(ctx))
			})
		})
		acmeapi.Route(r)
	})
	r.Get(PathProvisioners, func(w http.ResponseWriter, req *http.Request) {
		stepapi.Provisioners(w, req.WithContext(authority.NewContext(req.Context(), auth)))
	})
	r.NotFound(http.NotFound)
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
	})
	return r
}

// orderLinker is step-ca's linker that, on the finalize route only, hands
// step-ca a provisioner whose sign options name the order being finalized
// (ca.ACMEOrderMark): the CA's hook needs the order, and step-ca passes
// its CAS nothing else that identifies it. The order ID is the one in the
// URL, which step-ca's finalize handler loaded and checked the account
// owns before it signs.
type orderLinker struct{ stepacme.Linker }

func (l orderLinker) Middleware(next http.Handler) http.Handler {
	return l.Linker.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if id := chi.URLParam(r, "ordID"); id != "" && strings.HasSuffix(r.URL.Path, "/finalize") {
			if p, ok := stepacme.ProvisionerFromContext(r.Context()); ok {
				r = r.WithContext(stepacme.NewProvisionerContext(r.Context(), orderProvisioner{Provisioner: p, orderID: id}))
			}
		}
		next.ServeHTTP(w, r)
	}))
}

type orderProvisioner struct {
	stepacme.Provisioner
	orderID string
}

func (p orderProvisioner) AuthorizeSign(ctx context.Context, token string) ([]provisioner.SignOption, error) {
	opts, err := p.Provisioner.AuthorizeSign(ctx, token)
	if err != nil {
		return nil, err
	}
	return append(opts, ca.ACMEOrderMark(p.orderID)), nil
}
