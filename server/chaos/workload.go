package chaos

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
)

// Target is one node as the workload's clients reach it.
type Target struct {
	Name  string              // for reports
	URL   string              // the device API, https://host:port
	Root  *x509.Certificate   // the cluster root the API's certificate chains to
	Admin *server.AdminClient // the node's own admin API (server.NewAdminClient(its data directory))
}

// The join routes (server/cluster.go; api/openapi.yaml): anyone holding a
// token may call them.
const (
	pathJoin      = "/cluster/v1/join"
	pathJoinCheck = "/cluster/v1/join/check"
)

// Workload is a set of concurrent clients spread over a cluster's nodes:
// one enroller per device (a TPM is used by one goroutine at a time), and
// operators that transition and read those devices and make, check and
// spend join tokens. Every operation goes to a node picked at random, with
// its own timeout, and is recorded in the History with the outcome model.go
// reads from its answer.
//
// Not exercised: renewals, approve-mode groups (approve is sent, and must
// be refused), ACME, policy changes, stale reads. Device state is only ever
// read through the admin API (GET /admin/v1/devices/{id}, linearizable).
//
// From a test over a cluster of node processes:
//
//	targets := make([]chaos.Target, n)
//	for i := range targets {
//		targets[i] = chaos.Target{Name: id(i), URL: url(i), Root: root, Admin: server.NewAdminClient(dataDir(i))}
//	}
//	h, err := chaos.Workload{Devices: devices, Duration: d}.Run(ctx, targets)
//	res, err := chaos.Check(h.Ops(), 5*time.Minute, "build/chaos")
//	fmt.Println("invariants: ... " + res.String()) // linearizable=yes ops=N
type Workload struct {
	// Devices enroll again and again; swtpm TPMs (servertest.NewDevice)
	// or model devices (tpmmodel) both do. Required.
	Devices []fwclient.Device
	// EnrollOptions go to every Enroll (e.g. fwclient.WithEK); EK must be
	// the EK kind they choose ("" the device's default): the device IDs
	// operators use are derived from it before anything enrolls.
	EnrollOptions []fwclient.Option
	EK            string
	// Operators is how many concurrent operator clients transition and read
	// devices (default 3); TokenClients how many make, check and spend join
	// tokens (default 1; 0 with NoTokens).
	Operators, TokenClients int
	NoTokens                bool
	// Duration is how long clients start new operations (required).
	Duration time.Duration
	// OpTimeout bounds each operation (default 5 s): one cut off is Unknown.
	OpTimeout time.Duration
	// Pause is each operator's pause between operations (default 10 ms);
	// EnrollPause each enroller's (default 100 ms; enrollments cost the
	// cluster far more CPU than the rest); ErrorPause any client's after
	// an operation that failed without a refusal (default 300 ms).
	Pause, EnrollPause, ErrorPause time.Duration
	// Mortal is the fraction of device slots operators may also revoke
	// and delete (default 0.25; negative: none): both are final, so the
	// others stay alive to the end.
	Mortal float64
	// Logf, if set, gets a line per Unknown operation.
	Logf func(format string, args ...any)
	// Gate, if set, is held for reading through every operation: whoever
	// takes it for writing waits for the operations in flight, and none
	// starts until it lets go (a convergence check needs a quiet cluster).
	Gate *sync.RWMutex
}

// hold takes the gate, if any, for one operation; the result lets it go.
func (r *workloadRun) hold() func() {
	if r.w.Gate == nil {
		return func() {}
	}
	r.w.Gate.RLock()
	return r.w.Gate.RUnlock
}

func (w *Workload) defaults() error {
	if len(w.Devices) == 0 || w.Duration <= 0 {
		return errors.New("chaos: a workload needs devices and a duration")
	}
	if w.Operators == 0 {
		w.Operators = 3
	}
	if w.TokenClients == 0 && !w.NoTokens {
		w.TokenClients = 1
	}
	if w.NoTokens {
		w.TokenClients = 0
	}
	if w.OpTimeout == 0 {
		w.OpTimeout = 5 * time.Second
	}
	if w.Pause == 0 {
		w.Pause = 10 * time.Millisecond
	}
	if w.EnrollPause == 0 {
		w.EnrollPause = 100 * time.Millisecond
	}
	if w.ErrorPause == 0 {
		w.ErrorPause = 300 * time.Millisecond
	}
	if w.Mortal == 0 {
		w.Mortal = 0.25
	}
	return nil
}

// Run runs the workload against targets until its Duration has passed or
// ctx ends, waits for every operation in flight to return (each is bounded
// by OpTimeout), and returns the history. Check it with Check.
func (w Workload) Run(ctx context.Context, targets []Target) (*History, error) {
	if err := w.defaults(); err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, errors.New("chaos: no targets")
	}
	ids := make([]string, len(w.Devices))
	for i, d := range w.Devices {
		ek, err := d.Endorsement(w.EK)
		if err != nil {
			return nil, fmt.Errorf("device %d: %w", i, err)
		}
		if ids[i], err = attest.DeviceID(ek.Public); err != nil {
			return nil, fmt.Errorf("device %d: %w", i, err)
		}
	}
	r := &workloadRun{w: w, targets: targets, ids: ids, h: NewHistory(), acked: make([]atomic.Bool, len(ids)), revoked: make([]atomic.Bool, len(ids))}
	for _, t := range targets {
		r.enroll = append(r.enroll, fwclient.NewClient(t.URL, t.Root))
		pool := x509.NewCertPool()
		pool.AddCert(t.Root)
		r.https = append(r.https, &http.Client{Timeout: w.OpTimeout, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}})
	}
	ctx, cancel := context.WithTimeout(ctx, w.Duration)
	defer cancel()
	var wg sync.WaitGroup
	client := 0
	spawn := func(f func(ctx context.Context, client int, rnd *rand.Rand)) {
		c := client
		client++
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx, c, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(c))))
		}()
	}
	for i := range w.Devices {
		spawn(func(ctx context.Context, c int, rnd *rand.Rand) { r.enroller(ctx, c, rnd, i) })
	}
	for range w.Operators {
		spawn(r.operator)
	}
	for range w.TokenClients {
		spawn(r.tokenClient)
	}
	wg.Wait()
	for _, hc := range r.https {
		hc.CloseIdleConnections()
	}
	return r.h, nil
}

type workloadRun struct {
	w       Workload
	targets []Target
	ids     []string
	h       *History
	enroll  []*fwclient.Client
	https   []*http.Client

	// acked marks the slots with an acknowledged enrollment: only those
	// are revoked or deleted, so that every device the registry ends up
	// holding was acknowledged to some client (a durability check counts
	// a registered device no client was told about as a duplicate).
	acked []atomic.Bool
	// revoked marks the slots whose revocation was acknowledged: only
	// those are deleted. A delete is final (the tombstone refuses the
	// device's enrollments), and a slot deleted before it was ever revoked
	// would leave a short run without a revocation to check.
	revoked []atomic.Bool

	mu     sync.Mutex
	tokens []knownToken
}

type knownToken struct{ id, secret string }

// sleep pauses for about d (jittered), or until ctx ends.
func sleep(ctx context.Context, rnd *rand.Rand, d time.Duration) bool {
	t := time.NewTimer(d/2 + time.Duration(rnd.Int64N(int64(d)+1)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// opContext bounds one operation. It is not derived from the run's
// context: an operation that started runs to its answer or its timeout, so
// that the end of the run cuts none off as Unknown.
func (r *workloadRun) opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.w.OpTimeout)
}

// record completes call with out and returns how long its client pauses
// before its next operation: longer after a failure, so that clients do not
// pile up indeterminate operations (each one makes the check costlier)
// while the cluster has no leader or a node is down.
func (r *workloadRun) record(call Call, out Output, pause time.Duration) time.Duration {
	if out.Outcome == Unknown && r.w.Logf != nil {
		op := r.h.op(call)
		r.w.Logf("chaos: indeterminate after %v: client %d %s: %s", time.Since(r.h.start)-op.Call, op.Client, describeInput(op.Input), out.Err)
	}
	call.Return(out)
	if out.Outcome == Unknown || out.Outcome == NoEffect {
		return r.w.ErrorPause
	}
	return pause
}

func (r *workloadRun) enroller(ctx context.Context, client int, rnd *rand.Rand, slot int) {
	for ctx.Err() == nil {
		node := rnd.IntN(len(r.targets))
		release := r.hold()
		opCtx, cancel := r.opContext()
		call := r.h.Invoke(client, Input{Kind: KindEnroll, Device: slot, Node: node})
		id, err := r.enroll[node].Enroll(opCtx, r.w.Devices[slot], r.w.EnrollOptions...)
		cancel()
		release()
		var out Output
		var pending *api.Pending
		switch {
		case err == nil:
			r.acked[slot].Store(true)
			out = Output{Outcome: OK, DeviceID: id.DeviceID, Status: stateActive, AttestationID: id.AttestationID, Serial: id.Certificate.SerialNumber.Text(16)}
		case errors.As(err, &pending):
			out = Output{Outcome: OK, DeviceID: pending.DeviceID, Status: statePending}
		default:
			out = ClassifyError(KindEnroll, err)
		}
		sleep(ctx, rnd, r.record(call, out, r.w.EnrollPause))
	}
}

// operator transitions and reads devices: half reads, half operations.
// Slots below Mortal*len(Devices) may also be revoked and deleted, once
// an enrollment of theirs was acknowledged.
func (r *workloadRun) operator(ctx context.Context, client int, rnd *rand.Rand) {
	mortal := int(max(r.w.Mortal, 0) * float64(len(r.w.Devices)))
	for ctx.Err() == nil {
		slot, node := rnd.IntN(len(r.ids)), rnd.IntN(len(r.targets))
		admin := r.targets[node].Admin
		release := r.hold()
		opCtx, cancel := r.opContext()
		var pause time.Duration
		if rnd.IntN(2) == 0 {
			call := r.h.Invoke(client, Input{Kind: KindRead, Device: slot, Node: node})
			d, err := admin.Device(opCtx, r.ids[slot])
			out := ClassifyError(KindRead, err)
			if err == nil {
				out.DeviceID, out.Status = d.ID, d.Status
			}
			pause = r.record(call, out, r.w.Pause)
		} else {
			op := pickOp(rnd, slot < mortal && r.acked[slot].Load(), r.revoked[slot].Load())
			call := r.h.Invoke(client, Input{Kind: KindTransition, Device: slot, Op: op, Node: node})
			_, err := admin.TransitionDevice(opCtx, r.ids[slot], op, "chaos-operator", "linearizability check")
			if err == nil && op == "revoke" {
				r.revoked[slot].Store(true)
			}
			pause = r.record(call, ClassifyError(KindTransition, err), r.w.Pause)
		}
		cancel()
		release()
		sleep(ctx, rnd, pause)
	}
}

// pickOp chooses a lifecycle operation: mostly ones that keep the device
// alive, and approve (refused: no group here approves) now and then. A
// mortal device may be revoked; a revoked one deleted.
func pickOp(rnd *rand.Rand, mortal, deletable bool) string {
	n := rnd.IntN(100)
	switch {
	case mortal && n < 4:
		return "revoke"
	case deletable && n < 7:
		return "delete"
	case n < 40:
		return "disable"
	case n < 80:
		return "enable"
	case n < 95:
		return "quarantine"
	}
	return "approve"
}

// tokenClient makes join tokens, checks them and spends them, several
// clients on the same tokens.
func (r *workloadRun) tokenClient(ctx context.Context, client int, rnd *rand.Rand) {
	for ctx.Err() == nil {
		node := rnd.IntN(len(r.targets))
		r.mu.Lock()
		var tok knownToken
		n := len(r.tokens)
		if n > 0 && rnd.IntN(6) != 0 {
			// Mostly the newest few: each token gets several tries.
			tok = r.tokens[n-1-rnd.IntN(min(n, 3))]
		}
		r.mu.Unlock()
		release := r.hold()
		opCtx, cancel := r.opContext()
		var pause time.Duration
		if tok.id == "" {
			pause = r.createToken(opCtx, client, node)
		} else {
			kind, path := KindTokenCheck, pathJoinCheck
			if rnd.IntN(3) == 0 {
				kind, path = KindTokenConsume, pathJoin
			}
			call := r.h.Invoke(client, Input{Kind: kind, Token: tok.id, Node: node})
			err := r.join(opCtx, node, path, tok.secret, fmt.Sprintf("chaos-client-%d", client))
			pause = r.record(call, ClassifyError(kind, err), r.w.Pause)
		}
		cancel()
		release()
		sleep(ctx, rnd, pause)
	}
}

func (r *workloadRun) createToken(ctx context.Context, client, node int) time.Duration {
	// The token's ID is known only from the answer: the invocation is
	// recorded before the call and its input completed after.
	call := r.h.Invoke(client, Input{Kind: KindTokenCreate, Node: node})
	secret, _, err := r.targets[node].Admin.CreateJoinToken(ctx, time.Hour)
	out := ClassifyError(KindTokenCreate, err)
	var id string
	if err == nil {
		t, perr := server.ParseJoinToken(secret)
		if perr != nil {
			out = Output{Outcome: Unknown, Err: "unreadable token: " + perr.Error()}
		} else {
			id = t.ID
		}
	}
	if id == "" {
		// A token nobody learned can be used by nobody: its partition
		// would hold this one operation. Keep it out, counted.
		out.Outcome = NoEffect
	}
	r.h.setToken(call, id)
	pause := r.record(call, out, r.w.Pause)
	if id != "" {
		r.mu.Lock()
		r.tokens = append(r.tokens, knownToken{id: id, secret: secret})
		r.mu.Unlock()
	}
	return pause
}

// join posts a token to the join or join-check route.
func (r *workloadRun) join(ctx context.Context, node int, path, token, nodeID string) error {
	// As a joining node of this build: the refusal, if any, is about the
	// token, not the joiner's feature version.
	body, _ := json.Marshal(map[string]any{"token": token, "node_id": nodeID, "feature_version": cluster.FeatureVersion})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(r.targets[node].URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.https[node].Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var p api.Problem
	if json.Unmarshal(b, &p) == nil && p.Code != "" {
		return &p
	}
	return fmt.Errorf("%s%s: %s", r.targets[node].URL, path, resp.Status)
}
