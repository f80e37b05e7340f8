package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Path is the issuance path that made a certificate. Each path is one
// function of this package and owns one namespace of identities:
//
//	PathDevice: IssueDevice, spiffe://<trust domain>/device/<id>
//	PathAdmin:  IssueAdmin,  spiffe://<trust domain>/admin/<role>/<name>
//	PathNode:   IssueNode,   spiffe://<trust domain>/node/<id>
//	PathServer: IssueServer, no SPIFFE ID (the HTTPS server certificate)
//
// The path is marked in the certificate by a certificate-policy OID that
// only sign sets, after the path's own shaping and after every extension
// the CSR asked for has been dropped: the holder cannot choose it.
type Path string

// Issuance paths.
const (
	PathDevice Path = "device"
	PathAdmin  Path = "admin"
	PathNode   Path = "node"
	PathServer Path = "server"
)

// issuanceArc is Gatehouse's OID arc, a UUID-derived OID (ITU-T X.667,
// arc 2.25) since Gatehouse has no registered arc. Under it, .1.<n> names
// an issuance path as a certificate policy.
const issuanceArc = "2.25.125514506123980928048507234690993298589"

var pathOIDs = map[Path]x509.OID{
	PathDevice: mustOID(issuanceArc + ".1.1"),
	PathAdmin:  mustOID(issuanceArc + ".1.2"),
	PathNode:   mustOID(issuanceArc + ".1.3"),
	PathServer: mustOID(issuanceArc + ".1.4"),
}

func mustOID(s string) x509.OID {
	o, err := x509.ParseOID(s)
	if err != nil {
		panic(err)
	}
	return o
}

// PathOID returns the certificate-policy OID that marks p's certificates.
func PathOID(p Path) (x509.OID, bool) {
	o, ok := pathOIDs[p]
	return o, ok
}

// IssuedBy returns the issuance path a certificate's policy OIDs name. A
// certificate naming no path, or more than one, has none.
func IssuedBy(c *x509.Certificate) (Path, bool) {
	var found []Path
	for _, pol := range c.Policies {
		for p, o := range pathOIDs {
			if pol.Equal(o) {
				found = append(found, p)
			}
		}
	}
	if len(found) != 1 {
		return "", false
	}
	return found[0], true
}

// ErrNoIdentity: a certificate does not carry exactly one well-formed
// Gatehouse identity of this trust domain, issued by the path that owns its
// namespace.
var ErrNoIdentity = errors.New("not a Gatehouse identity certificate")

// Identity is the one identity a certificate from this CA names.
type Identity struct {
	Path Path   // PathDevice, PathAdmin or PathNode
	ID   string // the device ID, node ID or admin name
	Role string // PathAdmin only: RoleOperator or RoleAuditor
}

// SPIFFEID is the identity's URI.
func (id Identity) SPIFFEID(trustDomain string) *url.URL {
	p := "/" + string(id.Path) + "/"
	if id.Path == PathAdmin {
		p += id.Role + "/"
	}
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: p + id.ID}
}

// ParseIdentity is the only reader of identities in Gatehouse certificates;
// device mTLS, admin and cluster authorization all use it. It accepts a
// certificate whose SANs hold exactly one SPIFFE ID (any trust domain
// counts), in trustDomain, of the form device/<id>, admin/<role>/<name> or
// node/<id> with no escaping, query or fragment, and whose issuance-path
// mark is the path that owns that namespace.
//
// It does not verify the chain, validity or revocation: callers must (the
// TLS layer verifies the chain; IsRevoked the revocation).
func ParseIdentity(c *x509.Certificate, trustDomain string) (Identity, error) {
	bad := func(format string, a ...any) (Identity, error) {
		return Identity{}, fmt.Errorf("%w: %s", ErrNoIdentity, fmt.Sprintf(format, a...))
	}
	var ids []*url.URL
	for _, u := range c.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			ids = append(ids, u)
		}
	}
	if len(ids) != 1 {
		return bad("%d SPIFFE IDs (want exactly one)", len(ids))
	}
	u := ids[0]
	if u.Scheme != "spiffe" || u.Host != trustDomain || u.User != nil || u.Opaque != "" || u.RawPath != "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" {
		return bad("%q is not a SPIFFE ID of trust domain %q", u, trustDomain)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	var id Identity
	switch {
	case len(parts) == 2 && parts[0] == string(PathDevice) && idRE.MatchString(parts[1]):
		id = Identity{Path: PathDevice, ID: parts[1]}
	case len(parts) == 2 && parts[0] == string(PathNode) && idRE.MatchString(parts[1]):
		id = Identity{Path: PathNode, ID: parts[1]}
	case len(parts) == 3 && parts[0] == string(PathAdmin) && (parts[1] == RoleOperator || parts[1] == RoleAuditor) && idRE.MatchString(parts[2]):
		id = Identity{Path: PathAdmin, Role: parts[1], ID: parts[2]}
	default:
		return bad("%q is in no Gatehouse namespace", u)
	}
	if by, ok := IssuedBy(c); !ok || by != id.Path {
		return bad("%q is a %s identity, but the certificate was not issued by the %s path (mark: %q)", u, id.Path, id.Path, by)
	}
	return id, nil
}
