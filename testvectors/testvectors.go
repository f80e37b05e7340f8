// Package testvectors locates the real-world TPM data in this directory for
// tests, and holds the helpers that derive test inputs from it.
package testvectors

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"runtime"
)

// Path returns the absolute path of a file under testvectors/.
func Path(rel string) string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), rel)
}

// FlipDigest returns a copy of an event log with the one occurrence of
// digest (hex) changed in its last byte: the event it belongs to then
// measures something else, while the log stays well-formed.
func FlipDigest(log []byte, digest string) ([]byte, error) {
	d, err := hex.DecodeString(digest)
	if err != nil {
		return nil, err
	}
	i := bytes.Index(log, d)
	if i < 0 || bytes.Index(log[i+1:], d) >= 0 {
		return nil, fmt.Errorf("digest %s does not occur exactly once", digest)
	}
	out := bytes.Clone(log)
	out[i+len(d)-1] ^= 0xff
	return out, nil
}
