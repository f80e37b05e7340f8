package ca

import (
	"crypto/x509"
	"net/url"
	"slices"
	"strings"
	"time"
)

// AdminCertificate is one issued admin certificate, as step-ca's database
// (replicated in the registry) holds it.
type AdminCertificate struct {
	Serial   string    `json:"serial"` // hex, as revoke-cert takes it
	Name     string    `json:"name"`
	Role     string    `json:"role"`
	NotAfter time.Time `json:"not_after"`
	Revoked  bool      `json:"revoked"`
}

// AdminCertificates lists every admin certificate this CA issued (authDB
// stores only those), oldest expiry first. Without a database the list is
// empty: nothing was recorded.
func (c *CA) AdminCertificates() ([]AdminCertificate, error) {
	out := []AdminCertificate{}
	if c.db == nil {
		return out, nil
	}
	entries, err := c.db.List([]byte("x509_certs"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		crt, err := x509.ParseCertificate(e.Value)
		if err != nil || !isAdmin(crt) {
			continue
		}
		a := AdminCertificate{Serial: crt.SerialNumber.Text(16), NotAfter: crt.NotAfter}
		for _, u := range crt.URIs {
			a.Role, a.Name = adminRoleName(u)
		}
		if a.Revoked, err = c.IsRevoked(crt.SerialNumber); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y AdminCertificate) int {
		if c := x.NotAfter.Compare(y.NotAfter); c != 0 {
			return c
		}
		return strings.Compare(x.Serial, y.Serial)
	})
	return out, nil
}

// adminRoleName reads role and name from spiffe://TD/admin/ROLE/NAME.
func adminRoleName(u *url.URL) (role, name string) {
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if u.Scheme != "spiffe" || len(parts) != 3 || parts[0] != string(PathAdmin) {
		return "", ""
	}
	return parts[1], parts[2]
}
