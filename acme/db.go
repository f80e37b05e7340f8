// Package acme serves step-ca's ACME API (RFC 8555) for device-attest-01
// on Gatehouse's registry: see DESIGN.md for what it guarantees.
package acme

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	stepacme "github.com/smallstep/certificates/acme"
	stepnosql "github.com/smallstep/certificates/acme/db/nosql"
	"github.com/smallstep/nosql/database"
	"go.step.sm/crypto/jose"
)

// Gate decides whether a device may order an ACME certificate: nil, or an
// error that explains the refusal to the client (not active, its group
// does not admit ACME). It is a registry read; it writes nothing.
// (Gatehouse's admits a device ID the registry does not know yet: the step
// CLI orders before the attestation CA registers a new device; the CA's
// issuance hook refuses it unless it is registered by finalize.)
type Gate interface {
	MayOrder(ctx context.Context, deviceID string) error
}

// Limits of the node-local state. Both are bounded: an anonymous client can
// make this node forget, never grow.
const (
	NonceLifetime = 5 * time.Minute
	// MaxUsedNonces bounds the used-nonce set; when it is full of nonces
	// still alive, new nonces are refused (badNonce: the client retries).
	MaxUsedNonces = 1 << 16
	// MaxPending bounds the cache of pre-proof updates (a failed challenge,
	// an expired order); the oldest is forgotten first.
	MaxPending = 4096
	// MaxPendingBytes bounds the same cache in bytes (IDs and copies): an
	// entry's size follows its account key (up to maxAccountKey), so a
	// count alone would let a client's large keys hold tens of MiB.
	MaxPendingBytes = 8 << 20
	// maxAccountKey bounds the JWK an account ID carries.
	maxAccountKey = 2048
	// maxID bounds an object ID before it is decoded (an order's carries
	// its account's and its authorization's).
	maxID = 16 << 10
)

// Tables in step-ca's ACME layout (acme/db/nosql), in the registry KV.
var (
	challengeTable = []byte("acme_challenges")
	authzTable     = []byte("acme_authzs")
	orderTable     = []byte("acme_orders")
)

// DB is step-ca's acme.DB made safe for anonymous clients on a replicated
// store: nonces, accounts, and orders, authorizations and challenges before
// proof are stateless (MAC'd with a key derived from the CA intermediate),
// and only what follows a proven device attestation is written to kv
// (a valid challenge and authorization, a ready/processing/valid order, a
// certificate). See DESIGN.md.
type DB struct {
	store *stepnosql.DB // certificates, in step-ca's own format
	kv    database.DB
	gate  Gate
	idKey []byte
	nKey  []byte
	now   func() time.Time

	mu        sync.Mutex
	used      map[string]time.Time // nonce -> expiry
	usedOrder *list.List           // used nonces, in the order they were used
	pending   map[string][]byte    // object ID -> JSON of a pre-proof update
	order     *list.List           // pending IDs, oldest first
	pendingB  int                  // bytes of pending's keys and values
}

// NewDB wraps kv (normally the CA's view of the registry) for step-ca's
// ACME API. key is the CA's ACMEKey; gate decides new orders.
func NewDB(kv database.DB, key []byte, gate Gate) (*DB, error) {
	store, err := stepnosql.New(kv)
	if err != nil {
		return nil, err
	}
	return &DB{store: store, kv: kv, gate: gate,
		idKey: subKey(key, "gatehouse acme-id v1"), nKey: subKey(key, "gatehouse acme-nonce v1"),
		now: time.Now, used: map[string]time.Time{}, usedOrder: list.New(), pending: map[string][]byte{}, order: list.New()}, nil
}

func subKey(key []byte, purpose string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

var _ stepacme.DB = (*DB)(nil)

// ---- nonces

// CreateNonce returns base64url(issue time ‖ random ‖ MAC): nothing stored.
func (d *DB) CreateNonce(context.Context) (stepacme.Nonce, error) {
	b := make([]byte, 8+16, 8+16+16)
	binary.BigEndian.PutUint64(b, uint64(d.now().Unix()))
	if _, err := rand.Read(b[8:]); err != nil {
		return "", err
	}
	return stepacme.Nonce(base64.RawURLEncoding.EncodeToString(append(b, d.mac(d.nKey, b)...))), nil
}

// DeleteNonce accepts a nonce this appliance made, less than NonceLifetime
// old, once on this node.
func (d *DB) DeleteNonce(_ context.Context, n stepacme.Nonce) error {
	bad := stepacme.NewError(stepacme.ErrorBadNonceType, "nonce is not valid, expired or used")
	b, err := base64.RawURLEncoding.DecodeString(string(n))
	if err != nil || len(b) != 40 || !hmac.Equal(b[24:], d.mac(d.nKey, b[:24])) {
		return bad
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(b)), 0)
	now := d.now()
	expires := issued.Add(NonceLifetime)
	if now.Before(issued.Add(-time.Minute)) || !now.Before(expires) {
		return bad
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.used[string(n)]; ok {
		return bad
	}
	// Forget expired nonces in the order they were used: amortized O(1)
	// per request, so a full set costs no scan. (An entry behind a
	// longer-lived one waits for it; the set stays bounded either way.)
	for f := d.usedOrder.Front(); f != nil; f = d.usedOrder.Front() {
		k := f.Value.(string)
		if now.Before(d.used[k]) {
			break
		}
		delete(d.used, k)
		d.usedOrder.Remove(f)
	}
	if len(d.used) >= MaxUsedNonces {
		return stepacme.NewError(stepacme.ErrorBadNonceType, "too many nonces in use on this node; retry")
	}
	d.used[string(n)] = expires
	d.usedOrder.PushBack(string(n))
	return nil
}

func (d *DB) mac(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(p)))
		m.Write(l[:])
		m.Write(p)
	}
	return m.Sum(nil)[:16]
}

// ---- stateless IDs

// seal makes the ID of an object of kind from its payload:
// base64url(JSON) "." base64url(MAC).
func (d *DB) seal(kind string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b) + "." + base64.RawURLEncoding.EncodeToString(d.mac(d.idKey, []byte(kind), b)), nil
}

// open checks id's MAC for kind and decodes its payload into v.
func (d *DB) open(kind, id string, v any) error {
	p, m, ok := strings.Cut(id, ".")
	if !ok || len(id) > maxID {
		return errBadID
	}
	b, err1 := base64.RawURLEncoding.DecodeString(p)
	mac, err2 := base64.RawURLEncoding.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, d.mac(d.idKey, []byte(kind), b)) {
		return errBadID
	}
	return json.Unmarshal(b, v)
}

var errBadID = errors.New("not an ID this appliance made")

func notFound(kind, id string) error {
	return stepacme.NewError(stepacme.ErrorMalformedType, "%s %.40s… not found", kind, id)
}

// ---- accounts: the ID is the account's public JWK

// CreateAccount sets the account's ID to base64url of its public JWK and
// stores nothing.
func (d *DB) CreateAccount(_ context.Context, acc *stepacme.Account) error {
	if acc.Key == nil {
		return stepacme.NewError(stepacme.ErrorMalformedType, "account without key")
	}
	pub := acc.Key.Public()
	b, err := json.Marshal(&pub)
	if err != nil {
		return err
	}
	if len(b) > maxAccountKey {
		return stepacme.NewError(stepacme.ErrorBadPublicKeyType, "account key too large")
	}
	acc.ID = base64.RawURLEncoding.EncodeToString(b)
	acc.Contact = nil // not kept: accounts are stateless
	return nil
}

// GetAccount rebuilds the account from its ID.
func (d *DB) GetAccount(ctx context.Context, id string) (*stepacme.Account, error) {
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(b) > maxAccountKey {
		return nil, fmt.Errorf("account: %w", stepacme.ErrNotFound)
	}
	var k jose.JSONWebKey
	if err := json.Unmarshal(b, &k); err != nil || !k.Valid() || !k.IsPublic() {
		return nil, fmt.Errorf("account: %w", stepacme.ErrNotFound)
	}
	acc := &stepacme.Account{ID: id, Key: &k, Status: stepacme.StatusValid}
	if p, ok := stepacme.ProvisionerFromContext(ctx); ok {
		acc.ProvisionerID, acc.ProvisionerName = p.GetID(), p.GetName()
	}
	return acc, nil
}

// GetAccountByKeyID finds nothing: new-account "creates" the same ID again.
func (d *DB) GetAccountByKeyID(context.Context, string) (*stepacme.Account, error) {
	return nil, fmt.Errorf("account by key ID: %w", stepacme.ErrNotFound)
}

// ErrAccountImmutable: accounts are stateless, so they cannot change.
var errAccountImmutable = stepacme.NewError(stepacme.ErrorUnauthorizedType,
	"accounts on this server are stateless: contact updates, deactivation and key rollover are not supported")

// UpdateAccount is refused (see errAccountImmutable).
func (d *DB) UpdateAccount(context.Context, *stepacme.Account) error { return errAccountImmutable }

// ---- external account binding: not supported

var errNoEAB = stepacme.NewError(stepacme.ErrorServerInternalType, "external account binding is not supported")

func (d *DB) CreateExternalAccountKey(context.Context, string, string) (*stepacme.ExternalAccountKey, error) {
	return nil, errNoEAB
}
func (d *DB) GetExternalAccountKey(context.Context, string, string) (*stepacme.ExternalAccountKey, error) {
	return nil, errNoEAB
}
func (d *DB) GetExternalAccountKeys(context.Context, string, string, int) ([]*stepacme.ExternalAccountKey, string, error) {
	return nil, "", errNoEAB
}
func (d *DB) GetExternalAccountKeyByReference(context.Context, string, string) (*stepacme.ExternalAccountKey, error) {
	return nil, errNoEAB
}
func (d *DB) GetExternalAccountKeyByAccountID(context.Context, string, string) (*stepacme.ExternalAccountKey, error) {
	return nil, errNoEAB
}
func (d *DB) DeleteExternalAccountKey(context.Context, string, string) error { return errNoEAB }
func (d *DB) UpdateExternalAccountKey(context.Context, string, *stepacme.ExternalAccountKey) error {
	return errNoEAB
}

// ---- challenges

// chPayload is what a challenge ID says; everything else starts empty.
type chPayload struct {
	Account string                 `json:"a"`
	Type    stepacme.ChallengeType `json:"t"`
	Value   string                 `json:"v"`
	Token   string                 `json:"k"`
}

func (d *DB) challengeID(p chPayload) (string, error) { return d.seal("challenge", p) }

// CreateChallenge gives the pending challenge its stateless ID.
func (d *DB) CreateChallenge(_ context.Context, ch *stepacme.Challenge) error {
	if ch.Target != "" {
		return stepacme.NewErrorISE("challenge targets are not supported")
	}
	id, err := d.challengeID(chPayload{Account: ch.AccountID, Type: ch.Type, Value: ch.Value, Token: ch.Token})
	if err != nil {
		return err
	}
	ch.ID = id
	return nil
}

// dbChallenge is step-ca's stored challenge (acme/db/nosql).
type dbChallenge struct {
	ID          string                 `json:"id"`
	AccountID   string                 `json:"accountID"`
	Type        stepacme.ChallengeType `json:"type"`
	Status      stepacme.Status        `json:"status"`
	Token       string                 `json:"token"`
	Value       string                 `json:"value"`
	Target      string                 `json:"target,omitempty"`
	ValidatedAt string                 `json:"validatedAt"`
	CreatedAt   time.Time              `json:"createdAt"`
	Error       *stepacme.Error        `json:"error"`
}

// GetChallenge: the stored copy, else this node's pre-proof copy, else the
// one the ID describes (pending).
func (d *DB) GetChallenge(_ context.Context, id, _ string) (*stepacme.Challenge, error) {
	var p chPayload
	if err := d.open("challenge", id, &p); err != nil {
		return nil, notFound("challenge", id)
	}
	dc := dbChallenge{ID: id, AccountID: p.Account, Type: p.Type, Status: stepacme.StatusPending, Token: p.Token, Value: p.Value}
	if err := d.load(challengeTable, id, &dc); err != nil {
		return nil, err
	}
	return &stepacme.Challenge{ID: dc.ID, AccountID: dc.AccountID, Type: dc.Type, Status: dc.Status, Token: dc.Token,
		Value: dc.Value, ValidatedAt: dc.ValidatedAt, Error: dc.Error}, nil
}

// UpdateChallenge writes a valid challenge (the device proved its key);
// any other state stays on this node.
func (d *DB) UpdateChallenge(_ context.Context, ch *stepacme.Challenge) error {
	var p chPayload
	if err := d.open("challenge", ch.ID, &p); err != nil {
		return notFound("challenge", ch.ID)
	}
	dc := dbChallenge{ID: ch.ID, AccountID: p.Account, Type: p.Type, Status: ch.Status, Token: p.Token, Value: p.Value,
		ValidatedAt: ch.ValidatedAt, CreatedAt: d.now().UTC(), Error: ch.Error}
	return d.save(challengeTable, ch.ID, dc, ch.Status == stepacme.StatusValid)
}

// ---- authorizations

type azPayload struct {
	Account    string                   `json:"a"`
	Identifier stepacme.Identifier      `json:"i"`
	Token      string                   `json:"k"`
	Wildcard   bool                     `json:"w,omitempty"`
	Expires    int64                    `json:"e"`
	Types      []stepacme.ChallengeType `json:"t"`
}

// dbAuthz is step-ca's stored authorization.
type dbAuthz struct {
	ID           string              `json:"id"`
	AccountID    string              `json:"accountID"`
	Identifier   stepacme.Identifier `json:"identifier"`
	Status       stepacme.Status     `json:"status"`
	Token        string              `json:"token"`
	Fingerprint  string              `json:"fingerprint,omitempty"`
	ChallengeIDs []string            `json:"challengeIDs"`
	Wildcard     bool                `json:"wildcard"`
	CreatedAt    time.Time           `json:"createdAt"`
	ExpiresAt    time.Time           `json:"expiresAt"`
	Error        *stepacme.Error     `json:"error"`
}

func (d *DB) openAuthz(id string) (dbAuthz, error) {
	var p azPayload
	if err := d.open("authz", id, &p); err != nil {
		return dbAuthz{}, notFound("authorization", id)
	}
	az := dbAuthz{ID: id, AccountID: p.Account, Identifier: p.Identifier, Status: stepacme.StatusPending, Token: p.Token,
		Wildcard: p.Wildcard, ExpiresAt: time.Unix(p.Expires, 0).UTC()}
	for _, t := range p.Types {
		chID, err := d.challengeID(chPayload{Account: p.Account, Type: t, Value: p.Identifier.Value, Token: p.Token})
		if err != nil {
			return dbAuthz{}, err
		}
		az.ChallengeIDs = append(az.ChallengeIDs, chID)
	}
	return az, nil
}

// CreateAuthorization gives the pending authorization its stateless ID,
// from which its challenges' IDs follow.
func (d *DB) CreateAuthorization(_ context.Context, az *stepacme.Authorization) error {
	p := azPayload{Account: az.AccountID, Identifier: az.Identifier, Token: az.Token, Wildcard: az.Wildcard, Expires: az.ExpiresAt.Unix()}
	for _, ch := range az.Challenges {
		p.Types = append(p.Types, ch.Type)
	}
	id, err := d.seal("authz", p)
	if err != nil {
		return err
	}
	az.ID = id
	return nil
}

// GetAuthorization: stored copy, else pre-proof copy, else the ID's.
func (d *DB) GetAuthorization(ctx context.Context, id string) (*stepacme.Authorization, error) {
	dz, err := d.openAuthz(id)
	if err != nil {
		return nil, err
	}
	if err := d.load(authzTable, id, &dz); err != nil {
		return nil, err
	}
	az := &stepacme.Authorization{ID: dz.ID, AccountID: dz.AccountID, Identifier: dz.Identifier, Status: dz.Status,
		Token: dz.Token, Fingerprint: dz.Fingerprint, Wildcard: dz.Wildcard, ExpiresAt: dz.ExpiresAt, Error: dz.Error}
	for _, chID := range dz.ChallengeIDs {
		ch, err := d.GetChallenge(ctx, chID, id)
		if err != nil {
			return nil, err
		}
		az.Challenges = append(az.Challenges, ch)
	}
	return az, nil
}

// UpdateAuthorization writes a valid authorization; anything else stays on
// this node.
func (d *DB) UpdateAuthorization(_ context.Context, az *stepacme.Authorization) error {
	dz, err := d.openAuthz(az.ID)
	if err != nil {
		return err
	}
	dz.Status, dz.Fingerprint, dz.Error, dz.CreatedAt = az.Status, az.Fingerprint, az.Error, d.now().UTC()
	return d.save(authzTable, az.ID, dz, az.Status == stepacme.StatusValid)
}

// GetAuthorizationsByAccountID lists nothing: accounts keep no index.
func (d *DB) GetAuthorizationsByAccountID(context.Context, string) ([]*stepacme.Authorization, error) {
	return nil, nil
}

// ---- orders

type orderPayload struct {
	Account     string                `json:"a"`
	Provisioner string                `json:"p"`
	Identifiers []stepacme.Identifier `json:"i"`
	Authzs      []string              `json:"z"`
	NotBefore   int64                 `json:"nb"`
	NotAfter    int64                 `json:"na"`
	Expires     int64                 `json:"e"`
}

// dbOrder is step-ca's stored order.
type dbOrder struct {
	ID               string                `json:"id"`
	AccountID        string                `json:"accountID"`
	ProvisionerID    string                `json:"provisionerID"`
	Identifiers      []stepacme.Identifier `json:"identifiers"`
	AuthorizationIDs []string              `json:"authorizationIDs"`
	Status           stepacme.Status       `json:"status"`
	NotBefore        time.Time             `json:"notBefore,omitempty"`
	NotAfter         time.Time             `json:"notAfter,omitempty"`
	CreatedAt        time.Time             `json:"createdAt"`
	ExpiresAt        time.Time             `json:"expiresAt,omitempty"`
	CertificateID    string                `json:"certificate,omitempty"`
	Error            *stepacme.Error       `json:"error,omitempty"`
}

// CreateOrder refuses an order that is not for exactly one
// permanent-identifier, or that the Gate refuses; otherwise it gives the
// order its stateless ID. Nothing is written either way.
func (d *DB) CreateOrder(ctx context.Context, o *stepacme.Order) error {
	if len(o.Identifiers) != 1 || o.Identifiers[0].Type != stepacme.PermanentIdentifier {
		return stepacme.NewError(stepacme.ErrorRejectedIdentifierType,
			"an order names exactly one identifier of type permanent-identifier: the Gatehouse device ID")
	}
	if d.gate == nil {
		return stepacme.NewError(stepacme.ErrorRejectedIdentifierType, "no device may order")
	}
	if err := d.gate.MayOrder(ctx, o.Identifiers[0].Value); err != nil {
		var ae *stepacme.Error
		if errors.As(err, &ae) {
			return ae
		}
		return stepacme.NewDetailedError(stepacme.ErrorRejectedIdentifierType, "%s", err.Error())
	}
	id, err := d.seal("order", orderPayload{Account: o.AccountID, Provisioner: o.ProvisionerID, Identifiers: o.Identifiers,
		Authzs: o.AuthorizationIDs, NotBefore: o.NotBefore.Unix(), NotAfter: o.NotAfter.Unix(), Expires: o.ExpiresAt.Unix()})
	if err != nil {
		return err
	}
	o.ID = id
	return nil
}

// OrderInfo is what an order ID says, for the issuance hook.
type OrderInfo struct {
	Identifier stepacme.Identifier
	Expires    time.Time
}

// Order decodes an order ID this appliance made (its MAC checked), for the
// issuance hook: its one identifier and when it expires.
func (d *DB) Order(id string) (OrderInfo, bool) {
	var p orderPayload
	if err := d.open("order", id, &p); err != nil || len(p.Identifiers) != 1 {
		return OrderInfo{}, false
	}
	return OrderInfo{Identifier: p.Identifiers[0], Expires: time.Unix(p.Expires, 0).UTC()}, true
}

func (d *DB) openOrder(id string) (dbOrder, error) {
	var p orderPayload
	if err := d.open("order", id, &p); err != nil {
		return dbOrder{}, notFound("order", id)
	}
	return dbOrder{ID: id, AccountID: p.Account, ProvisionerID: p.Provisioner, Identifiers: p.Identifiers,
		AuthorizationIDs: p.Authzs, Status: stepacme.StatusPending, NotBefore: time.Unix(p.NotBefore, 0).UTC(),
		NotAfter: time.Unix(p.NotAfter, 0).UTC(), ExpiresAt: time.Unix(p.Expires, 0).UTC()}, nil
}

// GetOrder: stored copy, else pre-proof copy, else the ID's.
func (d *DB) GetOrder(_ context.Context, id string) (*stepacme.Order, error) {
	do, err := d.openOrder(id)
	if err != nil {
		return nil, err
	}
	if err := d.load(orderTable, id, &do); err != nil {
		return nil, err
	}
	return &stepacme.Order{ID: do.ID, AccountID: do.AccountID, ProvisionerID: do.ProvisionerID, Status: do.Status,
		ExpiresAt: do.ExpiresAt, Identifiers: do.Identifiers, NotBefore: do.NotBefore, NotAfter: do.NotAfter,
		Error: do.Error, AuthorizationIDs: do.AuthorizationIDs, CertificateID: do.CertificateID}, nil
}

// UpdateOrder writes an order once it is ready (its authorizations were
// proven) or valid; anything else stays on this node.
func (d *DB) UpdateOrder(_ context.Context, o *stepacme.Order) error {
	do, err := d.openOrder(o.ID)
	if err != nil {
		return err
	}
	do.Status, do.CertificateID, do.Error, do.CreatedAt = o.Status, o.CertificateID, o.Error, d.now().UTC()
	proven := o.Status == stepacme.StatusReady || o.Status == stepacme.StatusValid
	return d.save(orderTable, o.ID, do, proven)
}

// GetOrdersByAccountID lists nothing: accounts keep no index.
func (d *DB) GetOrdersByAccountID(context.Context, string) ([]string, error) { return nil, nil }

// ---- certificates (issued after proof): step-ca's own storage

func (d *DB) CreateCertificate(ctx context.Context, c *stepacme.Certificate) error {
	return d.store.CreateCertificate(ctx, c)
}
func (d *DB) GetCertificate(ctx context.Context, id string) (*stepacme.Certificate, error) {
	return d.store.GetCertificate(ctx, id)
}
func (d *DB) GetCertificateBySerial(ctx context.Context, serial string) (*stepacme.Certificate, error) {
	return d.store.GetCertificateBySerial(ctx, serial)
}

// ---- storage

// load overlays v with the stored copy of id, else this node's pending
// copy; v is left as decoded from the ID when there is neither.
func (d *DB) load(table []byte, id string, v any) error {
	b, err := d.kv.Get(table, []byte(id))
	switch {
	case err == nil:
		return json.Unmarshal(b, v)
	case !database.IsErrNotFound(err):
		return stepacme.WrapErrorISE(err, "read %s", table)
	}
	d.mu.Lock()
	b = d.pending[string(table)+"/"+id]
	d.mu.Unlock()
	if b == nil {
		return nil
	}
	return json.Unmarshal(b, v)
}

// save writes v under id if proven (compare-and-swap against the stored
// copy, so a state once written is only replaced by a later write), else
// keeps it in this node's bounded pending cache.
func (d *DB) save(table []byte, id string, v any, proven bool) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if !proven {
		d.remember(string(table)+"/"+id, b)
		return nil
	}
	old, err := d.kv.Get(table, []byte(id))
	if err != nil && !database.IsErrNotFound(err) {
		return stepacme.WrapErrorISE(err, "read %s", table)
	}
	if _, swapped, err := d.kv.CmpAndSwap(table, []byte(id), old, b); err != nil {
		return stepacme.WrapErrorISE(err, "write %s", table)
	} else if !swapped {
		return stepacme.NewErrorISE("%s changed since read; retry", table)
	}
	return nil
}

func (d *DB) remember(key string, b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.pending[key]; ok {
		d.pendingB -= len(key) + len(old)
	} else {
		d.order.PushBack(key)
	}
	d.pending[key] = b
	d.pendingB += len(key) + len(b)
	// The newest entry stays even alone over the byte bound (IDs are at
	// most maxID, so one entry is small).
	for d.order.Len() > MaxPending || d.pendingB > MaxPendingBytes && d.order.Len() > 1 {
		oldest := d.order.Remove(d.order.Front()).(string)
		d.pendingB -= len(oldest) + len(d.pending[oldest])
		delete(d.pending, oldest)
	}
}

// PendingBytes is the size of the pending cache (its IDs and copies), at
// most MaxPendingBytes.
func (d *DB) PendingBytes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pendingB
}

// Sizes reports the node-local state (used nonces, pending updates), for
// tests and metrics.
func (d *DB) Sizes() (usedNonces, pending int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.used), len(d.pending)
}
