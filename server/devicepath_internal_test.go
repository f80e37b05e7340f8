package server

import (
	"slices"
	"testing"
)

// A device's path lists each path in the order its accepted records used
// it, a repeat of the previous one left out, so the last is the path of
// its newest certificate; serials no record names add nothing.
func TestDevicePathOrder(t *testing.T) {
	certs := func(stages ...string) []DeviceCertificate {
		var out []DeviceCertificate
		for _, s := range stages {
			out = append(out, DeviceCertificate{Stage: s, Path: stagePath(s)})
		}
		return out
	}
	for _, c := range []struct {
		stages []string
		want   []string
	}{
		{nil, []string{}},
		{[]string{""}, []string{}}, // a serial known only from the device record
		{[]string{"complete", "renew", "renew"}, []string{PathNative}},
		{[]string{"ak_certificate", "acme", "acme"}, []string{PathACME}},
		{[]string{"complete", "renew", "ak_certificate", "acme"}, []string{PathNative, PathACME}},
		{[]string{"ak_certificate", "acme", "complete", "renew"}, []string{PathACME, PathNative}},
		{[]string{"complete", "acme", "renew"}, []string{PathNative, PathACME, PathNative}},
	} {
		if got := devicePath(certs(c.stages...)); !slices.Equal(got, c.want) || got == nil {
			t.Errorf("stages %q: path %q, want %q", c.stages, got, c.want)
		}
	}
}
