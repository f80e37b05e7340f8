package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// Re-sending a committed import batch neither fails nor duplicates;
// deleting an EK not listed is ErrNotFound and writes nothing.
func TestImportIdempotentAndDelete(t *testing.T) {
	n := openNode(t, t.TempDir())
	ctx := context.Background()
	var batch []IndividualEnrollment
	for i := 0; i < 50; i++ {
		batch = append(batch, IndividualEnrollment{EKPublicSHA256: fmt.Sprintf("%064x", i), Group: "g"})
	}
	for i := 0; i < 3; i++ {
		if err := n.ImportEnrollments(ctx, "t", batch); err != nil {
			t.Fatalf("import %d: %v", i, err)
		}
	}
	if list, err := n.IndividualEnrollments(); err != nil || len(list) != 50 {
		t.Fatalf("after three sends: %d enrollments, %v", len(list), err)
	}
	if err := n.DeleteEnrollment(ctx, "t", batch[7].EKPublicSHA256, "why"); err != nil {
		t.Fatal(err)
	}
	head, _ := n.AuditHead()
	if head.Type != AuditEnrollmentDelete || head.Actor != "t" {
		t.Fatalf("audit head %+v", head)
	}
	if err := n.DeleteEnrollment(ctx, "t", batch[7].EKPublicSHA256, "again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
	if again, _ := n.AuditHead(); again.Seq != head.Seq {
		t.Fatalf("a refused delete was audited: %+v", again)
	}
	if _, err := n.IndividualEnrollment(batch[7].EKPublicSHA256); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted enrollment still there: %v", err)
	}
	if list, _ := n.IndividualEnrollments(); len(list) != 49 {
		t.Fatalf("%d enrollments after one delete", len(list))
	}
}

func TestRemoveUnknownMember(t *testing.T) {
	n := openNode(t, t.TempDir())
	if err := n.RemoveServer("node-9"); !errors.Is(err, ErrUnknownMember) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing a node that is no member: %v", err)
	}
	if ms, err := n.Members(); err != nil || len(ms) != 1 {
		t.Fatalf("members %+v %v", ms, err)
	}
}

func TestCheckDeviceState(t *testing.T) {
	for _, s := range DeviceStates() {
		if err := CheckDeviceState(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if err := CheckDeviceState("activ"); !errors.Is(err, ErrUnknownState) {
		t.Fatalf("activ: %v", err)
	}
}
