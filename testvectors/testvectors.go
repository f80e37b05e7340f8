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

// ReplaceDigest returns a copy of an event log with the one occurrence of
// digest old replaced by new (of the same length): the event then claims
// its data while its digest measures something else.
func ReplaceDigest(log, old, new []byte) ([]byte, error) {
	i := bytes.Index(log, old)
	if len(old) != len(new) || i < 0 || bytes.Index(log[i+1:], old) >= 0 {
		return nil, fmt.Errorf("digest %x does not occur exactly once, or %x is not of its length", old, new)
	}
	out := bytes.Clone(log)
	copy(out[i:], new)
	return out, nil
}
