package server

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

func TestSessionToken(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	in := &session{ID: "abc", Expires: now.Add(time.Minute), Nonce: []byte{1, 2}, Secret: []byte("secret"), DeviceID: "dev"}
	tok, err := s.seal(in)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains([]byte(tok), []byte("secret")) || bytes.Contains(mustDecode(t, tok), []byte("secret")) {
		t.Fatal("the activation secret is readable in the token")
	}
	out, err := s.open(tok, now)
	if err != nil || out.ID != "abc" || !bytes.Equal(out.Secret, in.Secret) || out.DeviceID != "dev" {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	if _, err := s.open(tok, now.Add(2*time.Minute)); !errors.Is(err, cluster.ErrSessionExpired) {
		t.Fatalf("expired: %v", err)
	}
	raw := mustDecode(t, tok)
	for i := range raw {
		flipped := append([]byte(nil), raw...)
		flipped[i] ^= 0x01
		if _, err := s.open(base64.RawURLEncoding.EncodeToString(flipped), now); !errors.Is(err, errTokenInvalid) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	other, _ := newSealer(bytes.Repeat([]byte{8}, 32))
	for _, bad := range []string{"", "!!!", tok[:10], mustEncode(other, t, in)} {
		if _, err := s.open(bad, now); !errors.Is(err, errTokenInvalid) {
			t.Fatalf("token %q: %v", bad, err)
		}
	}
}

func mustDecode(t *testing.T, tok string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEncode(s *sealer, t *testing.T, sess *session) string {
	t.Helper()
	tok, err := s.seal(sess)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
