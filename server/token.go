package server

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// errTokenInvalid: a session token that was not sealed by this cluster or
// was altered. An expired one is cluster.ErrSessionExpired, the error the
// FSM also gives when the leader's clock finds the session expired.
var errTokenInvalid = errors.New("session token is invalid")

const tokenVersion = 1

// tokenAAD binds sealed tokens to their purpose, so a ciphertext made with
// the same key for something else never opens as a session.
var tokenAAD = []byte("gatehouse/v1/enroll-session")

// session is the state carried between the two enrollment round trips.
// It travels sealed inside the token, so no node keeps per-session state and
// any node holding the shared key can complete any session.
type session struct {
	ID       string          `json:"id"`
	Expires  time.Time       `json:"exp"`
	Nonce    []byte          `json:"nonce"`
	Secret   []byte          `json:"secret"`
	AKSHA256 string          `json:"ak_sha256"`
	AKAlg    string          `json:"ak_alg"`
	DeviceID string          `json:"device_id"`
	EK       cluster.EKInfo  `json:"ek"`
	Claims   cluster.Claims  `json:"claims"`
	Checks   []cluster.Check `json:"checks"`
	// Purpose is "" for enrollment and purposeRenew for a renewal; a token
	// is accepted only for its own purpose.
	Purpose string `json:"purpose,omitempty"`
	// Serial (hex) is the certificate a renewal session was opened with.
	Serial string `json:"serial,omitempty"`
	// Raw is the first round trip's evidence (EK and AK), carried so the
	// record can keep every byte the decision rests on.
	Raw cluster.RawEvidence `json:"raw"`
}

const purposeRenew = "renew"

// sessionExpires is when a session made at now, by the making node's clock,
// expires: SessionTTL plus ca.MaxClockSkew. Whichever node completes the
// session and whichever leader commits it judge that time by their own
// clocks, so a session made on a node running MaxClockSkew slow still lives
// SessionTTL by theirs instead of being born expired. Non-guarantee: one
// made on a node running fast lives up to SessionTTL + 2*MaxClockSkew by
// the true time; the session stays single-use (the FSM records it used).
func (e *Enroller) sessionExpires(now time.Time) time.Time {
	return now.Add(e.conf.view().settings.SessionTTL.Duration + ca.MaxClockSkew)
}

// sealer seals sessions with AES-256-GCM. Format, base64url without padding:
// version(1) || nonce(12) || ciphertext+tag.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("session token key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(sess *session) (string, error) {
	plain, err := json.Marshal(sess)
	if err != nil {
		return "", err
	}
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	out[0] = tokenVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return "", err
	}
	out = s.aead.Seal(out, out[1:], plain, tokenAAD)
	return base64.RawURLEncoding.EncodeToString(out), nil
}

func (s *sealer) open(token string, now time.Time) (*session, error) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) < 1+s.aead.NonceSize()+s.aead.Overhead() || raw[0] != tokenVersion {
		return nil, errTokenInvalid
	}
	ns := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[1:1+ns], raw[1+ns:], tokenAAD)
	if err != nil {
		return nil, errTokenInvalid
	}
	var sess session
	if err := json.Unmarshal(plain, &sess); err != nil || sess.ID == "" {
		return nil, errTokenInvalid
	}
	if !now.Before(sess.Expires) {
		return &sess, cluster.ErrSessionExpired
	}
	return &sess, nil
}
