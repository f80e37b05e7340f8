package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// The admin API over HTTPS (on the device API's port) admits only client
// certificates from this appliance's CA that carry an admin identity,
// spiffe://<trust domain>/admin/<role>/<name>, and are not revoked:
//   - operator: every route;
//   - auditor: read-only routes (devices, attestations, audit, policies).
//
// Device and node certificates and certificates of any other CA get
// nothing (the latter fail the TLS handshake): ca.ParseIdentity requires
// exactly one SPIFFE ID, in the admin namespace, marked by the admin
// issuance path. Revocation is checked after a linearizable read, also for
// ?stale=true reads. Refusals are appended to the audit log,
// at most adminDeniedBurst per second per node so a flood cannot grow the
// log without bound.

// AdminRoute is one admin endpoint and the least role it needs.
type AdminRoute struct {
	Pattern string // "METHOD /path"
	Role    string // ca.RoleAuditor or ca.RoleOperator
}

// AdminRoutes lists every admin endpoint (authorization tests iterate it).
func (a *Appliance) AdminRoutes() []AdminRoute {
	var out []AdminRoute
	a.registerAdmin(func(role, pattern string, _ http.HandlerFunc) { out = append(out, AdminRoute{pattern, role}) })
	return out
}

// identityOf returns the one identity a certificate from this CA names
// (ca.ParseIdentity), refusing it unless it belongs to want's namespace.
// Device mTLS, admin and cluster authorization all go through it.
func (a *Appliance) identityOf(c *x509.Certificate, want ca.Path) (ca.Identity, error) {
	id, err := ca.ParseIdentity(c, a.cfg.TrustDomain)
	if err != nil {
		return ca.Identity{}, err
	}
	if id.Path != want {
		return ca.Identity{}, fmt.Errorf("%w: a %s identity, not a %s identity", ca.ErrNoIdentity, id.Path, want)
	}
	return id, nil
}

// verifiedLeaf is the client certificate the TLS layer verified, or nil
// when there is none or it, or a certificate of its chain, is no longer
// (or not yet) valid: the handshake checks validity once, and a kept-alive
// connection outlives it.
func verifiedLeaf(r *http.Request, now time.Time) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return nil
	}
	for _, c := range r.TLS.VerifiedChains[0] {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return nil
		}
	}
	return r.TLS.VerifiedChains[0][0]
}

// adminIdentity is an authenticated admin.
type adminIdentity struct {
	Role, Name string
}

// String is how logs and the audit log name an admin: admin:<name>(<role>).
func (id adminIdentity) String() string { return "admin:" + id.Name + "(" + id.Role + ")" }

type adminKey struct{}

// actor names who did something: the certificate's admin over HTTPS; over
// the unix socket, what the local CLI said (its OS user).
func actor(r *http.Request, claimed string) string {
	if id, ok := r.Context().Value(adminKey{}).(adminIdentity); ok {
		return id.String()
	}
	if claimed == "" {
		return "local"
	}
	return claimed
}

// remoteAdminRoutes mounts the admin API on the HTTPS mux behind role checks.
func (a *Appliance) remoteAdminRoutes(mux *routeMux) {
	a.registerAdmin(func(role, pattern string, h http.HandlerFunc) {
		mux.HandleFunc(pattern, a.requireRole(role, adminBody(pattern, h)))
	})
}

func (a *Appliance) requireRole(role string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := a.authAdmin(r)
		if err == nil && role == ca.RoleOperator && id.Role != ca.RoleOperator {
			err = newProblem(http.StatusForbidden, api.CodeForbidden, "role "+id.Role+" may not "+r.Method+" "+r.URL.Path)
		}
		if err != nil {
			a.auditDenied(r, id, err)
			writeProblem(w, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), adminKey{}, id)))
	}
}

func (a *Appliance) authAdmin(r *http.Request) (adminIdentity, error) {
	leaf := verifiedLeaf(r, time.Now())
	if leaf == nil {
		return adminIdentity{}, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, "a valid admin client certificate is required")
	}
	cid, err := a.identityOf(leaf, ca.PathAdmin)
	if err != nil {
		return adminIdentity{}, newProblem(http.StatusForbidden, api.CodeForbidden, "the certificate carries no admin role: "+err.Error())
	}
	id := adminIdentity{Role: cid.Role, Name: cid.ID}
	// Revocation is judged on the committed state, whatever ?stale says: a
	// lagging follower must not serve a revoked admin.
	if err := a.node.Linearize(r.Context()); err != nil {
		return adminIdentity{}, a.enroller.commitFailed(err)
	}
	revoked, err := a.ca.IsRevoked(leaf.SerialNumber)
	if err != nil {
		return adminIdentity{}, a.enroller.internal(err)
	}
	if revoked {
		return adminIdentity{}, newProblem(http.StatusUnauthorized, api.CodeCertificateRevoked, "certificate "+leaf.SerialNumber.Text(16)+" is revoked")
	}
	return id, nil
}

const adminDeniedBurst = 10

// tlsRefusedPerMinute bounds tls.refused entries: anyone can offer a
// self-signed certificate, so their number is bounded by time; the rest go
// to the node's refusal summary.
const tlsRefusedPerMinute = 10

// deniedLimiter allows adminDeniedBurst audit entries per second (allow),
// or max per window (allowIn).
type deniedLimiter struct {
	mu     sync.Mutex
	second int64 // the current window's number
	n      int
}

func (l *deniedLimiter) allow(now time.Time) bool {
	return l.allowIn(now, time.Second, adminDeniedBurst)
}

func (l *deniedLimiter) allowIn(now time.Time, window time.Duration, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := now.UnixNano() / int64(window); s != l.second {
		l.second, l.n = s, 0
	}
	l.n++
	return l.n <= max
}

// auditDenied records a refused admin request in the audit log.
func (a *Appliance) auditDenied(r *http.Request, id adminIdentity, cause error) {
	who := "anonymous"
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c := r.TLS.PeerCertificates[0]
		who = "cert:" + c.Subject.CommonName + "/" + c.SerialNumber.Text(16)
	}
	if id.Name != "" {
		who = id.String()
	}
	p := problemFor(cause)
	a.log.Warn("admin request refused", "who", who, "method", r.Method, "path", r.URL.Path, "code", p.Code, "remote", r.RemoteAddr)
	// Without a certificate the request is anyone's to send: it goes to
	// the node's refusal summary, not one entry each (DESIGN.md, Admission
	// control); so do refusals past the per-second limit.
	if who == "anonymous" || !a.deniedLimit.allow(time.Now()) {
		a.countUnrecorded(stageAdmin, p.Code)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	detail := map[string]string{"method": r.Method, "path": r.URL.Path, "code": p.Code, "remote": r.RemoteAddr}
	if err := a.node.AppendAudit(ctx, cluster.AuditAdminDenied, who, r.URL.Path, detail); err != nil {
		a.log.Error("could not audit a refused admin request", "err", err)
	}
}

// tlsRefusals is the HTTPS server's error log. net/http reports a refused
// TLS handshake only there; one that failed to verify a client certificate
// (another CA's, or an expired one) is a failed login, so it goes to the
// audit log as well, at most tlsRefusedPerMinute per node (the rest are
// counted in the node's refusal summary).
type tlsRefusals struct{ a *Appliance }

func (t tlsRefusals) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	t.a.log.Warn(msg)
	const prefix = "http: TLS handshake error from "
	if rest, ok := strings.CutPrefix(msg, prefix); ok && strings.Contains(rest, "failed to verify certificate") {
		remote, reason, _ := strings.Cut(rest, ": ")
		if !t.a.tlsRefusedLimit.allowIn(time.Now(), time.Minute, tlsRefusedPerMinute) {
			t.a.countUnrecorded(stageTLS, codeTLSRefused)
		} else {
			go func() {
				ctx, cancel := context.WithTimeout(t.a.ctx, 5*time.Second)
				defer cancel()
				if err := t.a.node.AppendAudit(ctx, cluster.AuditTLSRefused, "tls:"+remote, "", map[string]string{"remote": remote, "reason": reason}); err != nil && t.a.ctx.Err() == nil {
					t.a.log.Error("could not audit a refused TLS handshake", "err", err)
				}
			}()
		}
	}
	return len(p), nil
}
