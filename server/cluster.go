package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Cluster RPC lives on the HTTPS API port. /cluster/v1/ca and
// /cluster/v1/join are open (the join token is the credential); the others
// require a node certificate: a certificate from the cluster CA whose one
// SPIFFE ID is spiffe://<trust domain>/node/<id>, marked by the node
// issuance path (identityOf). Device and admin certificates do not qualify.
const (
	pathClusterCA      = "/cluster/v1/ca"
	pathClusterJoin    = "/cluster/v1/join"
	pathClusterCheck   = "/cluster/v1/join/check" // the join answer, without spending the token
	pathClusterMembers = "/cluster/v1/members"
	pathClusterApply   = "/cluster/v1/apply"
	pathClusterRead    = "/cluster/v1/read-index"
	pathClusterOp      = "/cluster/v1/leader-op"
	headerLeader       = "Gatehouse-Leader" // API address of the leader, on 421 answers
	nodeCertValidity   = 7 * 24 * time.Hour
	maxRPCBody         = 4 << 20
)

// joinResponse hands a new node what every node shares: the CA (key still
// encrypted under the cluster password) and cluster-wide settings.
type joinResponse struct {
	RootPEM         []byte   `json:"root_pem"`
	IntermediatePEM []byte   `json:"intermediate_pem"`
	EncryptedKeyPEM []byte   `json:"encrypted_key_pem"`
	EKRootsPEM      []byte   `json:"ek_roots_pem"`
	TrustDomain     string   `json:"trust_domain"`
	CertValidity    Duration `json:"cert_validity"`
	SessionTTL      Duration `json:"session_ttl"`
	// Settings are all the cluster-wide settings (the three above are
	// kept for joiners from before they were replicated).
	Settings *ClusterSettings `json:"settings,omitempty"`
}

type joinRequest struct {
	Token  string `json:"token"`
	NodeID string `json:"node_id"`
	// FeatureVersion is the highest cluster feature version the joiner's
	// build applies (absent: a build before feature versions); the
	// cluster refuses a joiner below its committed one.
	FeatureVersion int `json:"feature_version,omitempty"`
}

type readIndexResponse struct {
	Index uint64 `json:"index"`
}

// JoinToken is a parsed join token: "gh1.<id>.<secret>.<root sha256>". The
// last part pins the cluster root the way kubeadm's discovery hash does, so
// a joining node cannot be fooled by an impostor.
type JoinToken struct {
	ID       string
	Secret   []byte
	RootHash string // hex SHA-256 of the root certificate (DER)
	// Expires is the expiry stored with it: the leader refuses the token
	// once its own clock passes it (not part of the token's string form).
	Expires time.Time
}

func (t JoinToken) String() string {
	return "gh1." + t.ID + "." + hex.EncodeToString(t.Secret) + "." + t.RootHash
}

// ParseJoinToken parses a token made by CreateJoinToken.
func ParseJoinToken(s string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != "gh1" || len(parts[1]) != 16 || len(parts[3]) != 64 {
		return JoinToken{}, errors.New("malformed join token (want gh1.<id>.<secret>.<root sha256>)")
	}
	secret, err := hex.DecodeString(parts[2])
	if err != nil || len(secret) != 32 {
		return JoinToken{}, errors.New("malformed join token secret")
	}
	return JoinToken{ID: parts[1], Secret: secret, RootHash: parts[3]}, nil
}

func rootHash(root *x509.Certificate) string {
	sum := sha256.Sum256(root.Raw)
	return hex.EncodeToString(sum[:])
}

// CreateJoinToken makes a one-time token valid for ttl plus
// ca.MaxClockSkew by this node's clock. The leader judges its expiry by its
// own clock when the token is used, and the node serving a join check by
// its own: the added skew keeps a token made on a node running slow, or
// checked on one running fast, from being refused early. Non-guarantee: by
// the true time a token lives up to ttl + 2*ca.MaxClockSkew.
func (a *Appliance) CreateJoinToken(ctx context.Context, ttl time.Duration) (JoinToken, error) {
	t := JoinToken{ID: randomHex(8), Secret: randomBytes(32), RootHash: rootHash(a.ca.Root()),
		Expires: a.enroller.now().Add(ttl + ca.MaxClockSkew).UTC()}
	return t, a.node.CreateJoinToken(ctx, t.ID, t.Secret, t.Expires)
}

// verifyNode checks a peer's chain to the cluster root and its node identity.
func (a *Appliance) verifyNode(certs []*x509.Certificate) (string, error) {
	if len(certs) == 0 {
		return "", errors.New("no node certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(a.ca.Root())
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", fmt.Errorf("node certificate: %w", err)
	}
	id, err := a.identityOf(certs[0], ca.PathNode)
	if err != nil {
		return "", fmt.Errorf("the certificate is not a node certificate of this cluster: %w", err)
	}
	return id.ID, nil
}

// raftTLS is the mutual-TLS config of the Raft transport: each side presents
// its node certificate and admits only peers with one. Peers are addressed
// by IP, so the client side checks identity (node URI), not host names.
func (a *Appliance) raftTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(a.ca.Root())
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetCertificate:       a.nodeCert.get,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.nodeCert.get(nil) },
		ClientAuth:           tls.RequireAndVerifyClientCert,
		ClientCAs:            pool,
		InsecureSkipVerify:   true, // replaced by VerifyConnection below, on both sides
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := a.verifyNode(cs.PeerCertificates)
			return err
		},
	}
}

// nodeIdleConns is how many idle connections a node keeps to each peer.
const nodeIdleConns = 64

// nodeClient is an HTTPS client that authenticates as this node.
func (a *Appliance) nodeClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(a.ca.Root())
	return &http.Client{Timeout: 30 * time.Second, Transport: api.WrapTransport(&http.Transport{
		// A follower forwards every write it takes; with the default of
		// 2, connections beyond it closed after each command and the next
		// paid a mutual-TLS handshake on both nodes.
		MaxIdleConnsPerHost: nodeIdleConns,
		TLSClientConfig: &tls.Config{
			MinVersion:           tls.VersionTLS12,
			RootCAs:              pool,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.nodeCert.get(nil) },
		}})}
}

// publicAddr is the address clients are told to use for this node's API:
// its first configured host name (the HTTPS certificate names it, unlike a
// wildcard listen address such as [::]) with the port it listens on.
func (a *Appliance) publicAddr() string {
	_, port, _ := net.SplitHostPort(a.Addr())
	return net.JoinHostPort(a.cfg.Hostnames[0], port)
}

// apiAddr is the address peers use to reach this node's API.
func (a *Appliance) apiAddr() string {
	host, port, _ := net.SplitHostPort(a.Addr())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() && len(a.cfg.Hostnames) > 0 {
		host = a.cfg.Hostnames[0]
	}
	return net.JoinHostPort(host, port)
}

func (a *Appliance) clusterRoutes(mux *routeMux) {
	mux.HandleFunc("GET "+pathClusterCA, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.ca.Root().Raw}))
	})
	mux.HandleFunc("POST "+pathClusterJoin, requireJSON(a.handleJoin))
	mux.HandleFunc("POST "+pathClusterCheck, requireJSON(a.handleJoin))
	mux.HandleFunc("POST "+pathClusterMembers, a.requireNode(a.handleAddMember))
	mux.HandleFunc("POST "+pathClusterApply, a.requireNodeAs(requireCommand(a.handleApply)))
	mux.HandleFunc("POST "+pathClusterRead, a.requireNode(a.handleReadIndex))
	mux.HandleFunc("GET "+pathClusterInfo, a.requireNode(a.handleNodeInfo))
	mux.HandleFunc("POST "+pathClusterOp, a.requireNode(func(w http.ResponseWriter, r *http.Request) {
		var op leaderOp
		if err := json.NewDecoder(limitBody(w, r.Body, 64<<10)).Decode(&op); err != nil {
			writeProblem(w, malformed(err.Error()))
			return
		}
		if !a.node.IsLeader() {
			a.misdirected(w)
			return
		}
		writeResult(w, http.StatusOK, struct{}{}, a.leaderOp(r.Context(), op))
	}))
}

func (a *Appliance) requireNode(h http.HandlerFunc) http.HandlerFunc {
	return a.requireNodeAs(requireJSON(h))
}

// requireNodeAs is requireNode for a handler that judges the body's media
// type itself.
func (a *Appliance) requireNodeAs(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			writeProblem(w, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, "a node certificate is required"))
			return
		}
		if err := a.requestFromNode(r); err != nil {
			writeProblem(w, newProblem(http.StatusUnauthorized, api.CodeUnauthenticated, err.Error()))
			return
		}
		h(w, r)
	}
}

// requireCommand admits a forwarded command declared as JSON
// (requireJSON) or as the binary envelope (cluster.EnvelopeMediaType);
// handleApply checks that the body is what it is declared as.
func requireCommand(h http.HandlerFunc) http.HandlerFunc {
	asJSON := requireJSON(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == cluster.EnvelopeMediaType {
			h(w, r)
			return
		}
		asJSON(w, r)
	}
}

// requestFromNode checks that r comes from a node of this cluster. A
// certificate the TLS handshake verified (to the cluster root or one of its
// intermediates, for client authentication, still valid now) needs only its
// identity checked: verifying the chain again cost an ECDSA verification
// per forwarded command. Otherwise verifyNode does both.
func (a *Appliance) requestFromNode(r *http.Request) error {
	if leaf := verifiedLeaf(r, a.enroller.now()); leaf != nil {
		if _, err := a.identityOf(leaf, ca.PathNode); err != nil {
			return fmt.Errorf("the certificate is not a node certificate of this cluster: %w", err)
		}
		return nil
	}
	_, err := a.verifyNode(r.TLS.PeerCertificates)
	return err
}

func (a *Appliance) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := json.NewDecoder(limitBody(w, r.Body, 64<<10)).Decode(&req); err != nil {
		writeProblem(w, malformed("join request: "+err.Error()))
		return
	}
	tok, err := ParseJoinToken(req.Token)
	if err != nil {
		a.countJoinRefusal(api.CodeJoinTokenInvalid)
		writeProblem(w, newProblem(http.StatusForbidden, api.CodeJoinTokenInvalid, err.Error()))
		return
	}
	check := r.URL.Path == pathClusterCheck
	if check {
		// A joining node checks its password against the key before it
		// spends the token. It gets only what the join would give it,
		// and only for a token the join would accept now. The local
		// check comes first, so a guessed token costs no Raft round trip.
		err = a.node.CheckJoinToken(tok.ID, tok.Secret, a.enroller.now())
		if err == nil {
			err = a.node.Linearize(r.Context())
		}
		if err == nil {
			err = a.node.CheckJoinToken(tok.ID, tok.Secret, a.enroller.now())
		}
	} else {
		// As ConsumeJoinToken judges it (a read index, then the token;
		// expiry is the FSM's, by the leader's clock at apply).
		err = a.node.Linearize(r.Context())
		if err == nil {
			err = a.node.CheckJoinToken(tok.ID, tok.Secret, time.Time{})
		}
	}
	// Only for a valid token (the cluster's version is not for anyone who
	// asks), and before the token is spent: a build too old for the
	// cluster's feature version would halt on its log.
	if err == nil {
		if ferr := a.checkJoinFeature(req.FeatureVersion); ferr != nil {
			a.log.Warn("join refused", "node_id", req.NodeID, "check", check, "err", ferr)
			writeProblem(w, newProblem(http.StatusConflict, api.CodeBuildTooOld, ferr.Error()))
			return
		}
	}
	if err == nil && !check {
		// ConsumeJoinToken checks the token again before its Raft write:
		// a guess costs a read, counted in the node's refusal summary.
		err = a.node.ConsumeJoinToken(r.Context(), tok.ID, tok.Secret, req.NodeID)
	}
	if err != nil {
		a.log.Warn("join refused", "node_id", req.NodeID, "check", check, "err", err)
		p := a.clusterProblem(err)
		a.countJoinRefusal(p.Code)
		writeProblem(w, p)
		return
	}
	key, err := ca.EncryptedKeyPEM(filepath.Join(a.dataDir, caDir))
	if err != nil {
		writeProblem(w, a.enroller.internal(err))
		return
	}
	// The cluster's EK roots and settings as this node applies them (its
	// replica, after the linearizable read above for a check): the
	// joiner's files start from them, and its replica takes over.
	ekRoots, err := a.ekRootsFile()
	if err != nil {
		writeProblem(w, a.enroller.internal(err))
		return
	}
	s := a.conf.view().settings
	a.log.Info("node joining", "node_id", req.NodeID, "check", check)
	writeJSON(w, http.StatusOK, joinResponse{
		RootPEM:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.ca.Root().Raw}),
		IntermediatePEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.ca.Intermediates()[0].Raw}),
		EncryptedKeyPEM: key,
		EKRootsPEM:      ekRoots,
		TrustDomain:     s.TrustDomain,
		CertValidity:    s.CertValidity,
		SessionTTL:      s.SessionTTL,
		Settings:        &s,
	})
}

// handleAddMember makes the calling node (identified by its certificate) a
// voter. Only the leader can; others answer 421 naming the leader.
func (a *Appliance) handleAddMember(w http.ResponseWriter, r *http.Request) {
	var m cluster.Member
	if err := json.NewDecoder(limitBody(w, r.Body, 64<<10)).Decode(&m); err != nil {
		writeProblem(w, malformed("member: "+err.Error()))
		return
	}
	if id, _ := a.verifyNode(r.TLS.PeerCertificates); id != m.ID {
		writeProblem(w, newProblem(http.StatusForbidden, api.CodeUnauthenticated, "a node can only add itself"))
		return
	}
	if !a.node.IsLeader() {
		a.misdirected(w)
		return
	}
	if err := a.node.AddVoter(m.ID, m.RaftAddr); err != nil {
		writeProblem(w, a.clusterProblem(err))
		return
	}
	if err := a.node.SetMember(r.Context(), m); err != nil {
		writeProblem(w, a.clusterProblem(err))
		return
	}
	a.log.Info("voter added", "node_id", m.ID, "raft_addr", m.RaftAddr)
	writeJSON(w, http.StatusOK, struct{}{})
}

func (a *Appliance) handleApply(w http.ResponseWriter, r *http.Request) {
	cmd, err := io.ReadAll(limitBody(w, r.Body, maxRPCBody))
	if err != nil {
		writeProblem(w, malformed(err.Error()))
		return
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if cluster.IsEnvelope(cmd) != (mt == cluster.EnvelopeMediaType) {
		writeProblem(w, malformed("the command's framing is not its Content-Type, "+mt))
		return
	}
	res, err := a.node.ApplyForwarded(r.Context(), cmd)
	if errors.Is(err, cluster.ErrNotLeader) {
		a.misdirected(w)
		return
	}
	if err != nil {
		writeProblem(w, a.clusterProblem(err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *Appliance) handleReadIndex(w http.ResponseWriter, r *http.Request) {
	idx, err := a.node.ReadIndex(r.Context())
	if errors.Is(err, cluster.ErrNotLeader) {
		a.misdirected(w)
		return
	}
	if err != nil {
		writeProblem(w, a.clusterProblem(err))
		return
	}
	writeJSON(w, http.StatusOK, readIndexResponse{Index: idx})
}

func (a *Appliance) misdirected(w http.ResponseWriter) {
	if m, err := a.node.Member(a.node.LeaderID()); err == nil {
		w.Header().Set(headerLeader, m.APIAddr)
	}
	writeProblem(w, newProblem(http.StatusMisdirectedRequest, api.CodeUnavailable, "not the leader"))
}

// clusterErrors maps cluster sentinels to problem codes and back: the
// forwarding RPC must carry "session already used" as exactly that.
var clusterErrors = []struct {
	err    error
	status int
	code   string
}{
	{cluster.ErrSessionUsed, http.StatusConflict, api.CodeSessionReplayed},
	{cluster.ErrSessionExpired, http.StatusForbidden, api.CodeTokenExpired},
	{cluster.ErrJoinTokenInvalid, http.StatusForbidden, api.CodeJoinTokenInvalid},
	{cluster.ErrJoinTokenExpired, http.StatusForbidden, api.CodeJoinTokenExpired},
	{cluster.ErrJoinTokenUsed, http.StatusForbidden, api.CodeJoinTokenUsed},
	{cluster.ErrUnknownCommand, http.StatusBadRequest, api.CodeUnknownCommand},
	{cluster.ErrStorageFull, http.StatusServiceUnavailable, api.CodeStorageFull},
	{cluster.ErrNotLeader, http.StatusServiceUnavailable, api.CodeUnavailable},
	{cluster.ErrDeviceInactive, http.StatusForbidden, api.CodeDeviceInactive},
	{cluster.ErrIllegalTransition, http.StatusConflict, api.CodeIllegalTransition},
	{cluster.ErrNotFound, http.StatusNotFound, api.CodeNotFound},
	{cluster.ErrInvalidLabel, http.StatusBadRequest, api.CodeMalformed},
	{cluster.ErrInvalidConfig, http.StatusBadRequest, api.CodeMalformed},
	{cluster.ErrAuditCheckpoint, http.StatusConflict, api.CodeMalformed},
	{cluster.ErrUnknownMember, http.StatusNotFound, api.CodeNotFound},
	{cluster.ErrUnknownState, http.StatusBadRequest, api.CodeMalformed},
	{cluster.ErrBadCursor, http.StatusBadRequest, api.CodeMalformed},
	{cluster.ErrBadFilter, http.StatusBadRequest, api.CodeMalformed},
	{cluster.ErrLastEKRoot, http.StatusConflict, api.CodeEKRootLast},
	{cluster.ErrEKRootsLimit, http.StatusBadRequest, api.CodeEKRootInvalid},
	{cluster.ErrSettingsConflict, http.StatusConflict, api.CodeSettingsConflict},
	{cluster.ErrEKRootInvalid, http.StatusBadRequest, api.CodeEKRootInvalid},
	{cluster.ErrSettingsInvalid, http.StatusBadRequest, api.CodeSettingsInvalid},
	{cluster.ErrFeatureVersion, http.StatusConflict, api.CodeFeatureVersion},
	{cluster.ErrFeatureDisabled, http.StatusConflict, api.CodeFeatureDisabled},
	{cluster.ErrHalted, http.StatusServiceUnavailable, api.CodeHalted},
}

func (a *Appliance) clusterProblem(err error) *api.Problem {
	for _, m := range clusterErrors {
		if errors.Is(err, m.err) {
			return newProblem(m.status, m.code, err.Error())
		}
	}
	return a.enroller.internal(err)
}

func clusterError(p *api.Problem) error {
	for _, m := range clusterErrors {
		if p.Code == m.code {
			return fmt.Errorf("%w (leader said: %s)", m.err, p.Detail)
		}
	}
	return p
}

// forwarder sends commands to the leader's API (cluster.Forwarder).
type forwarder struct{ a *Appliance }

func (f forwarder) Forward(ctx context.Context, leaderID string, cmd []byte) (cluster.Applied, error) {
	var out cluster.Applied
	addr, err := f.leaderAPI(leaderID)
	if err != nil {
		return out, err
	}
	ct := "application/json"
	if cluster.IsEnvelope(cmd) {
		ct = cluster.EnvelopeMediaType
	}
	return out, f.a.nodeRPCAs(ctx, addr, pathClusterApply, ct, bytes.NewReader(cmd), &out)
}

func (f forwarder) ReadIndex(ctx context.Context, leaderID string) (uint64, error) {
	var out readIndexResponse
	addr, err := f.leaderAPI(leaderID)
	if err != nil {
		return 0, err
	}
	return out.Index, f.a.nodeRPC(ctx, addr, pathClusterRead, http.NoBody, &out)
}

func (f forwarder) leaderAPI(leaderID string) (string, error) {
	m, err := f.a.node.Member(leaderID)
	if err != nil {
		return "", fmt.Errorf("%w: %w: leader %s has not registered its address yet", cluster.ErrNotLeader, cluster.ErrNotSent, leaderID)
	}
	return m.APIAddr, nil
}

// nodeRPC POSTs to a peer as this node. A 421 answer is returned as
// ErrNotLeader, so callers retry; a peer that could not be dialled also
// as ErrNotSent (nothing reached it: the request may be sent again).
func (a *Appliance) nodeRPC(ctx context.Context, addr, path string, body io.Reader, out any) error {
	return a.nodeRPCAs(ctx, addr, path, "application/json", body, out)
}

// nodeRPCAs is nodeRPC with a body of media type contentType.
func (a *Appliance) nodeRPCAs(ctx context.Context, addr, path, contentType string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := a.nodeHTTP.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w: %w: %v", cluster.ErrNotLeader, cluster.ErrNotSent, err)
		}
		return fmt.Errorf("%w: %v", cluster.ErrNotLeader, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxRPCBody))
	if resp.StatusCode == http.StatusMisdirectedRequest {
		return &notLeaderError{addr: addr, leader: resp.Header.Get(headerLeader)}
	}
	if resp.StatusCode != http.StatusOK {
		var p api.Problem
		if json.Unmarshal(b, &p) == nil && p.Code != "" {
			return clusterError(&p)
		}
		return fmt.Errorf("%s%s: %s", addr, path, resp.Status)
	}
	return json.Unmarshal(b, out)
}

func (a *Appliance) self() cluster.Member {
	return cluster.Member{ID: a.cfg.NodeID, RaftAddr: a.node.RaftAddr(), APIAddr: a.apiAddr(), Hostnames: a.cfg.Hostnames}
}

// reservedNames are the host names of every node of the cluster, as far as
// this node knows (its own, and each member's registered names and API
// host): a device certificate may carry none of them.
func (a *Appliance) reservedNames() []string {
	names := append([]string(nil), a.cfg.Hostnames...)
	if a.node == nil { // the CA opens before Raft: only this node is known
		return names
	}
	ms, err := a.node.Members()
	if err != nil {
		return names
	}
	for _, m := range ms {
		names = append(names, m.Hostnames...)
		if host, _, err := net.SplitHostPort(m.APIAddr); err == nil && host != "" {
			names = append(names, host)
		}
	}
	return names
}

// notLeaderError is a peer's "not the leader" answer, naming the leader's
// API address when it knows it.
type notLeaderError struct{ addr, leader string }

func (e *notLeaderError) Error() string {
	return fmt.Sprintf("%s is not the leader (leader: %q)", e.addr, e.leader)
}

func (e *notLeaderError) Unwrap() error { return cluster.ErrNotLeader }

// registerLoop records this node's addresses in the replicated state and, for
// a node that joined, asks the leader to make it a voter. It retries until it
// succeeds or the appliance closes.
func (a *Appliance) registerLoop(joinSeed string, fresh bool) {
	self := a.self()
	body, _ := json.Marshal(self)
	target := joinSeed
	for attempt := 0; ; attempt++ {
		var err error
		if fresh && joinSeed != "" {
			err = a.nodeRPC(a.ctx, target, pathClusterMembers, bytes.NewReader(body), &struct{}{})
			var nl *notLeaderError
			if errors.As(err, &nl) && nl.leader != "" {
				target = nl.leader
			}
		} else if m, merr := a.node.Member(self.ID); merr == nil && m.RaftAddr == self.RaftAddr && m.APIAddr == self.APIAddr && slices.Equal(m.Hostnames, self.Hostnames) {
			// A restart with the same addresses: nothing to write (a Raft
			// entry and an audit entry per restart otherwise).
			return
		} else {
			err = a.node.SetMember(a.ctx, self)
		}
		if err == nil {
			a.log.Info("registered in the cluster", "node_id", self.ID, "api", self.APIAddr, "raft", self.RaftAddr)
			return
		}
		if attempt%20 == 19 {
			a.log.Warn("still registering in the cluster", "err", err)
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// ErrOtherCluster: a data directory, or its Raft state, belongs to another
// cluster than the one it is started for.
var ErrOtherCluster = errors.New("the data directory belongs to another cluster")

// clusterRootFile, in DATADIR/raft, records the SHA-256 of the root
// certificate of the cluster the Raft state belongs to.
const clusterRootFile = "cluster-root"

// checkClusterRoot refuses to start on Raft state that belongs to another
// cluster's CA (say, a data directory re-initialized over an old node's Raft
// state: its peers would refuse it), and records the root for state that
// has no record yet (a new node, or one from before the record existed).
func checkClusterRoot(raftDir, root string) error {
	path := filepath.Join(raftDir, clusterRootFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(raftDir, 0o700); err != nil {
			return err
		}
		return os.WriteFile(path, []byte(root+"\n"), 0o600)
	} else if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(b)); got != root {
		return fmt.Errorf("%w: the Raft state in %s belongs to the cluster whose root certificate has SHA-256 %s, but this node's CA root has %s; refusing to start (use the data directory's own CA, or an empty data directory)", ErrOtherCluster, raftDir, got, root)
	}
	return nil
}

// CheckJoinTarget is for `serve --join` on a data directory that is already
// initialized: the join token must pin this node's own cluster root.
// Otherwise the operator meant to join another cluster, and starting would
// serve this directory's CA instead: ErrOtherCluster.
func CheckJoinTarget(dataDir, token string) error {
	tok, err := ParseJoinToken(token)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dataDir, caDir, ca.RootCertFile))
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return fmt.Errorf("%s: no root certificate", filepath.Join(dataDir, caDir, ca.RootCertFile))
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	if h := rootHash(root); h != tok.RootHash {
		return fmt.Errorf("%w: %s is already a member of the cluster whose root has SHA-256 %s, but the join token is for the cluster whose root has %s; refusing to start (to join that cluster, use an empty data directory)", ErrOtherCluster, dataDir, h, tok.RootHash)
	}
	return nil
}

// Join prepares dataDir for a node joining the cluster that seedAddr
// (host:port of any member's API) belongs to. It pins the cluster root from
// the token before sending the token, installs the CA (checking that
// password unlocks it), and writes the node's configuration; Open then starts
// the node, which asks the leader to add it as a voter.
func Join(ctx context.Context, dataDir string, password []byte, seedAddr, token string, cfg Config) error {
	tok, err := ParseJoinToken(token)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dataDir, configFile)); err == nil {
		if err := CheckJoinTarget(dataDir, token); err != nil {
			return err
		}
		return fmt.Errorf("%s: %w", dataDir, ErrAlreadyInitialized)
	}
	// The root is public; fetch it without trust, then trust it only if it
	// matches the token's pin.
	insecure := &http.Client{Timeout: 30 * time.Second, Transport: api.WrapTransport(&http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}})}
	rootPEM, err := httpGet(ctx, insecure, "https://"+seedAddr+pathClusterCA)
	if err != nil {
		return fmt.Errorf("fetch cluster root from %s: %w", seedAddr, err)
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		return errors.New("the seed sent no root certificate")
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	if rootHash(root) != tok.RootHash {
		return fmt.Errorf("the seed's root %s does not match the token's pin %s: refusing to join (impostor, or a token for another cluster)", rootHash(root), tok.RootHash)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	trusted := &http.Client{Timeout: 30 * time.Second, Transport: api.WrapTransport(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}})}
	reqBody, _ := json.Marshal(joinRequest{Token: token, NodeID: cfg.NodeID, FeatureVersion: joinFeature()})
	post := func(path string) (joinResponse, error) {
		var jr joinResponse
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+seedAddr+path, bytes.NewReader(reqBody))
		if err != nil {
			return jr, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := trusted.Do(req)
		if err != nil {
			return jr, fmt.Errorf("join via %s: %w", seedAddr, err)
		}
		if err := decodeProblemOr(resp, &jr); err != nil {
			return jr, fmt.Errorf("join via %s: %w", seedAddr, err)
		}
		return jr, nil
	}
	// The password must unlock the CA key before the token is spent: a
	// typo in the password file must not use up a one-time token. The
	// check only reads, so it outlasts an election (503) like an admin
	// read.
	var jr joinResponse
	if err := DefaultRetry.Do(ctx, func() (err error) { jr, err = post(pathClusterCheck); return err }); err != nil {
		return err
	}
	if err := checkJoinCA(jr, root); err != nil {
		return fmt.Errorf("%w; the join token was not used", err)
	}
	if err := ca.CheckPassword(jr.EncryptedKeyPEM, password); err != nil {
		return fmt.Errorf("%w; the join token was not used", err)
	}
	// A join refused with 503 (no leader yet) consumed nothing and is
	// tried again; one whose answer was lost after the token was consumed
	// is then refused as used, which says what happened.
	if err := DefaultRetry.Do(ctx, func() (err error) { jr, err = post(pathClusterJoin); return err }); err != nil {
		return err
	}
	if err := checkJoinCA(jr, root); err != nil {
		return err
	}
	// The joiner's cluster-wide settings are the cluster's, whatever it
	// was given: its config.json records them, its replica governs.
	cfg.TrustDomain, cfg.CertValidity, cfg.SessionTTL, cfg.JoinSeed = jr.TrustDomain, jr.CertValidity, jr.SessionTTL, seedAddr
	if jr.Settings != nil {
		cfg = cfg.withClusterSettings(*jr.Settings)
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	if err := ca.Install(filepath.Join(dataDir, caDir), jr.RootPEM, jr.IntermediatePEM, jr.EncryptedKeyPEM, password); err != nil {
		return err
	}
	return writeNodeFiles(dataDir, cfg, jr.EKRootsPEM)
}

// checkJoinCA checks that a join answer's CA is the cluster's: its root is
// the one the token pinned, and its intermediate a CA that root issued.
func checkJoinCA(jr joinResponse, pinned *x509.Certificate) error {
	blk, _ := pem.Decode(jr.RootPEM)
	if blk == nil || !bytes.Equal(blk.Bytes, pinned.Raw) {
		return errors.New("the seed's join answer carries another root certificate than the token pins: refusing to join")
	}
	blk, _ = pem.Decode(jr.IntermediatePEM)
	if blk == nil {
		return errors.New("the seed's join answer carries no intermediate certificate")
	}
	inter, err := x509.ParseCertificate(blk.Bytes)
	if err == nil && (!inter.BasicConstraintsValid || !inter.IsCA) {
		err = errors.New("not a CA certificate")
	}
	if err == nil {
		err = inter.CheckSignatureFrom(pinned)
	}
	if err != nil {
		return fmt.Errorf("the seed's intermediate certificate is not one the pinned root issued (%v): refusing to join", err)
	}
	return nil
}

func httpGet(ctx context.Context, hc *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}

func decodeProblemOr(resp *http.Response, out any) error {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRPCBody))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var p api.Problem
		if json.Unmarshal(b, &p) == nil && p.Code != "" {
			return &p
		}
		return errors.New(resp.Status)
	}
	return json.Unmarshal(b, out)
}
