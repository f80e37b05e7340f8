package chaos

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

// The model's rules are the server's answers: one operation at a time on a
// real node, each answer is the outcome the model expects in that state
// (so the rules were not guessed), and the history, sequential, is
// linearizable under the model.
func TestModelMatchesServer(t *testing.T) {
	e := servertest.New(t)
	key, err := e.Mfr.SigningKey()
	if err != nil {
		t.Fatal(err)
	}
	mfr, err := tpmmodel.NewManufacturer(e.Mfr.Intermediate, key)
	if err != nil {
		t.Fatal(err)
	}
	plat, err := tpmmodel.NewPlatform(nil)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := mfr.NewDevice(plat, fwclient.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := dev.Endorsement("")
	if err != nil {
		t.Fatal(err)
	}
	id, err := attest.DeviceID(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(e.App.Root())
	r := &workloadRun{
		targets: []Target{{URL: e.URL(), Root: e.App.Root(), Admin: server.NewAdminClient(e.Dir)}},
		https:   []*http.Client{{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}},
	}
	admin := r.targets[0].Admin
	ctx := context.Background()
	h := NewHistory()

	doEnroll := func() Output {
		got, err := e.Client.Enroll(ctx, dev)
		out := ClassifyError(KindEnroll, err)
		if err == nil {
			out.DeviceID, out.Status = got.DeviceID, stateActive
		}
		return out
	}
	doRead := func() Output {
		d, err := admin.Device(ctx, id)
		out := ClassifyError(KindRead, err)
		if err == nil {
			out.DeviceID, out.Status = d.ID, d.Status
		}
		return out
	}
	doTransition := func(op string) func() Output {
		return func() Output {
			_, err := admin.TransitionDevice(ctx, id, op, "test", "model conformance")
			return ClassifyError(KindTransition, err)
		}
	}
	var secret, tokID string
	doJoin := func(kind Kind, path string) func() Output {
		return func() Output { return ClassifyError(kind, r.join(ctx, 0, path, secret, "conformance")) }
	}
	step := func(in Input, do func() Output, want Output) {
		t.Helper()
		call := h.Invoke(0, in)
		got := do()
		call.Return(got)
		if got.Outcome != want.Outcome || got.Code != want.Code || want.Status != "" && got.Status != want.Status || want.DeviceID != "" && got.DeviceID != want.DeviceID {
			t.Fatalf("%s: got %s, want %s", describeInput(in), describeOutput(got), describeOutput(want))
		}
	}

	dv := func(k Kind, op string) Input { return Input{Kind: k, Op: op} }
	step(dv(KindRead, ""), doRead, refused(api.CodeNotFound))
	step(dv(KindTransition, "disable"), doTransition("disable"), refused(api.CodeNotFound))
	step(dv(KindEnroll, ""), doEnroll, enrolled(id)) // the ID is the EK's
	step(dv(KindEnroll, ""), doEnroll, enrolled(id)) // and stays
	step(dv(KindRead, ""), doRead, state(id, stateActive))
	step(dv(KindTransition, "enable"), doTransition("enable"), refused(api.CodeIllegalTransition))
	step(dv(KindTransition, "approve"), doTransition("approve"), refused(api.CodeIllegalTransition))
	step(dv(KindTransition, "quarantine"), doTransition("quarantine"), ok())
	step(dv(KindEnroll, ""), doEnroll, refused(api.CodeDeviceInactive))
	step(dv(KindTransition, "disable"), doTransition("disable"), ok())
	step(dv(KindRead, ""), doRead, state(id, stateDisabled))
	step(dv(KindEnroll, ""), doEnroll, refused(api.CodeDeviceInactive))
	step(dv(KindTransition, "enable"), doTransition("enable"), ok())
	step(dv(KindEnroll, ""), doEnroll, enrolled(id))
	step(dv(KindTransition, "revoke"), doTransition("revoke"), ok())
	step(dv(KindTransition, "revoke"), doTransition("revoke"), ok()) // again: completes, changes nothing
	step(dv(KindTransition, "enable"), doTransition("enable"), refused(api.CodeIllegalTransition))
	step(dv(KindEnroll, ""), doEnroll, refused(api.CodeDeviceInactive))
	step(dv(KindTransition, "delete"), doTransition("delete"), ok())
	step(dv(KindTransition, "revoke"), doTransition("revoke"), refused(api.CodeIllegalTransition))
	step(dv(KindRead, ""), doRead, state(id, stateDeleted))

	call := h.Invoke(0, Input{Kind: KindTokenCreate})
	secret, _, err = admin.CreateJoinToken(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := server.ParseJoinToken(secret)
	if err != nil {
		t.Fatal(err)
	}
	tokID = tok.ID
	h.setToken(call, tokID)
	call.Return(ok())
	tk := func(k Kind) Input { return Input{Kind: k, Token: tokID} }
	step(tk(KindTokenCheck), doJoin(KindTokenCheck, pathJoinCheck), ok())
	step(tk(KindTokenConsume), doJoin(KindTokenConsume, pathJoin), ok())
	step(tk(KindTokenCheck), doJoin(KindTokenCheck, pathJoinCheck), refused(api.CodeJoinTokenUsed))
	step(tk(KindTokenConsume), doJoin(KindTokenConsume, pathJoin), refused(api.CodeJoinTokenUsed))
	// A well-formed token nobody made: invalid (a spend reads linearizably
	// first; a check's "invalid" may be stale, so it proves nothing).
	made := secret
	secret = "gh1.0123456789abcdef." + made[len("gh1.0123456789abcdef."):]
	step(Input{Kind: KindTokenConsume, Token: "0123456789abcdef"}, doJoin(KindTokenConsume, pathJoin), refused(api.CodeJoinTokenInvalid))
	step(Input{Kind: KindTokenCheck, Token: "0123456789abcdef"}, doJoin(KindTokenCheck, pathJoinCheck), Output{Outcome: NoEffect, Code: api.CodeJoinTokenInvalid})

	res, err := Check(h.Ops(), 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Linearizable || res.Ops != len(h.Ops())-1 || res.NoEffect != 1 {
		t.Fatalf("%s: %s", res, res.Detail())
	}
}
