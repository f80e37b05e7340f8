package server

import (
	"context"
	"crypto/tls"
	"net/http"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// SetRevokeHook makes RevokeDevice call fn between its two steps (tests:
// a commit racing the revocation).
func SetRevokeHook(a *Appliance, fn func(deviceID string)) { a.revokeHook = fn }

// Test-only access for the external test package (fuzz_test.go): the
// device API's handler, to feed it requests in-process, and a way to
// re-seal a session under a fresh ID, so one honest enrollment's
// evidence can be completed again and again past replay protection.

// DeviceHandlerForTest is the device API's handler.
func (a *Appliance) DeviceHandlerForTest() http.Handler { return a.deviceHandler() }

// ResealForTest opens a session token this appliance sealed and seals it
// again under a new session ID; serialHex, when set, replaces the
// certificate serial a renewal session is bound to.
func (a *Appliance) ResealForTest(token, serialHex string) (string, error) {
	sess, err := a.enroller.tokens.open(token, a.enroller.now())
	if err != nil {
		return "", err
	}
	sess.ID = randomHex(16)
	sess.Expires = a.enroller.sessionExpires(a.enroller.now())
	if serialHex != "" {
		sess.Serial = serialHex
	}
	return a.enroller.tokens.seal(sess)
}

// SetProgressHook makes /readyz see Raft's progress through fn: a registry
// trailing its commit index cannot be produced on demand for real.
func SetProgressHook(a *Appliance, fn func(*cluster.Progress)) {
	a.health.mu.Lock()
	defer a.health.mu.Unlock()
	a.health.progress = fn
}

// MaxEKRootsBody bounds a POST /admin/v1/ekroots body.
const MaxEKRootsBody = maxEKRootsBody

// ServerCertForTest is the node's HTTPS server certificate: a test stands
// up an impostor seed that the cluster root vouches for.
func (a *Appliance) ServerCertForTest() (*tls.Certificate, error) { return a.serverCert.get(nil) }

// SetCommandsForTest makes a answer GET /cluster/v1/info listing cmds as
// the commands it applies, as an older build would (nil: its own).
func SetCommandsForTest(a *Appliance, cmds []string) {
	if cmds == nil {
		a.commandsHook.Store(nil)
		return
	}
	a.commandsHook.Store(&cmds)
}

// SetFeatureVersionForTest makes a advertise (GET /cluster/v1/info), and
// raise the cluster to, feature version v, as an older build would
// (negative: its own).
func SetFeatureVersionForTest(a *Appliance, v int) {
	if v < 0 {
		a.featureHook.Store(nil)
		return
	}
	x := int64(v)
	a.featureHook.Store(&x)
}

// SetDefaultFeatureVersionForTest makes every node of this process that
// has no SetFeatureVersionForTest of its own claim feature version v, from
// its start (negative: its build's), as an older build would.
func SetDefaultFeatureVersionForTest(v int) {
	if v < 0 {
		featureForTest.Store(nil)
		return
	}
	x := int64(v)
	featureForTest.Store(&x)
}

// ACMESizesForTest reports the ACME database's node-local state: used
// nonces and cached pre-proof updates.
func (a *Appliance) ACMESizesForTest() (usedNonces, pending int) { return a.acmeDB.Sizes() }

// FeatureCheckEvery is how often the leader looks whether it can raise
// the cluster's feature version.
const FeatureCheckEvery = featureCheckEvery

// RaiseFeatureForTest runs the leader's feature version check once: the
// members it counted when it raised the version, or why it did not.
func RaiseFeatureForTest(a *Appliance) (string, error) { return a.raiseFeature(context.Background()) }

// WorkInFlightForTest is how many requests the work gate counts in
// progress (tests: a held request is past the gate only once counted).
func (a *Appliance) WorkInFlightForTest() int64 { return a.work.inFlight.Load() }
