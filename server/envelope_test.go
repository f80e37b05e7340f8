package server_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

// Enrollments and renewals commit in the binary envelope (v4) only once
// every member applies it: while node-2 says its build does not, they
// commit JSON v3; once it does (asked again after behindRecheck), v4, also
// when node-2 takes the enrollment and forwards it to the leader. The
// evidence of a v4 enrollment re-checks from its bundle, and both replicas
// hold the same registry.
func TestEnrollmentsUseEnvelopeOnceEveryMemberApplies(t *testing.T) {
	e := newEnv(t)
	n2, _ := e.Join(t, "node-2")
	var old []string
	for _, c := range cluster.Commands() {
		if !slices.Contains(cluster.EnvelopeCommands, c) {
			old = append(old, c)
		}
	}
	server.SetCommandsForTest(n2, old)
	ctx := context.Background()
	bootLog, err := os.ReadFile(testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"))
	if err != nil {
		t.Fatal(err)
	}
	committedAs := func(attestationID uint64, want string) {
		t.Helper()
		if got, err := e.App.Node().LogCommand(attestationID); err != nil || got != want {
			t.Fatalf("attestation %d committed as %q (%v), want %s", attestationID, got, err, want)
		}
	}
	d := servertest.NewBootedDevice(t, e.Mfr, bootLog)
	id, err := e.Client.Enroll(ctx, d.TPM, fwclient.WithEventLog(bootLog))
	if err != nil {
		t.Fatal(err)
	}
	committedAs(id.AttestationID, "enrollment.accept/3")

	server.SetCommandsForTest(n2, nil) // node-2 is upgraded
	e.Clock.Advance(31 * time.Second)  // past behindRecheck
	renewed, err := e.Client.Renew(ctx, d.TPM, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	committedAs(renewed.AttestationID, "renewal.accept/4")
	d2 := servertest.NewBootedDevice(t, e.Mfr, bootLog)
	id2, err := fwclient.NewClient("https://"+n2.Addr(), n2.Root()).Enroll(ctx, d2.TPM, fwclient.WithEventLog(bootLog))
	if err != nil {
		t.Fatal(err)
	}
	committedAs(id2.AttestationID, "enrollment.accept/4")
	b, roots := e.bundle(id2.AttestationID)
	if len(b.EventLog) == 0 || string(b.EventLog) != string(bootLog) {
		t.Fatalf("the bundle of a v4 enrollment has an event log of %d bytes, sent %d", len(b.EventLog), len(bootLog))
	}
	if rep := server.Recheck(b, roots); !rep.Reproduced {
		t.Fatalf("a v4 enrollment does not re-check from its bundle: %+v", rep)
	}
	servertest.WaitFor(t, "node-2 to hold the same registry", 10*time.Second, func() bool {
		h1, err1 := e.App.Node().StateHash()
		h2, err2 := n2.Node().StateHash()
		return err1 == nil && err2 == nil && h1 == h2
	})
}
