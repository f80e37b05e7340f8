package chaos

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// Ack is an enrollment the cluster acknowledged to a device: the device got
// a certificate.
type Ack struct {
	// Device names the TPM that enrolled (the caller's key: one per TPM).
	Device        string
	DeviceID      string
	AttestationID uint64
	Serial        string // the certificate's serial, lower-case hex
}

// Invariants is the result of CheckInvariants.
type Invariants struct {
	Acked   int // acknowledged enrollments
	Present int // of those, held with the same device and serial by every node
	Lost    int // Acked - Present
	// DuplicateIDs counts device IDs beyond one per TPM: a TPM
	// acknowledged under two device IDs, or an EK the registry holds under
	// two devices. A device no client was told about is not one: an
	// enrollment whose answer was lost (a timeout, a 503 after
	// forwarding) may still commit, even after a partition heals, when
	// the forwarded request reaches the leader late; it is Unacknowledged.
	DuplicateIDs int
	// Unacknowledged counts devices the registry holds that no
	// acknowledgement named (reported, not a violation).
	Unacknowledged int
	// CertsWithoutRecord counts certificates some node's log says it
	// issued that no accepted attestation record on some node names.
	CertsWithoutRecord int
}

// String is the invariants line make chaos prints last.
func (v Invariants) String() string {
	return fmt.Sprintf("invariants: acked=%d present=%d lost=%d duplicate_ids=%d certs_without_record=%d",
		v.Acked, v.Present, v.Lost, v.DuplicateIDs, v.CertsWithoutRecord)
}

// OK reports whether nothing was lost, duplicated or issued unrecorded.
func (v Invariants) OK() bool { return v.Lost == 0 && v.DuplicateIDs == 0 && v.CertsWithoutRecord == 0 }

// CheckInvariants compares what clients were told (acks) with what every
// node holds, each read from its own state: every acknowledged enrollment
// is present with its device and serial on every node, the registry holds
// one device per acknowledged TPM and no more, and every certificate a
// node's log says it issued has an accepted attestation record. Call it on
// a converged, quiet cluster (WaitConverged), with every node running.
func (c *Cluster) CheckInvariants(ctx context.Context, acks []Ack) (Invariants, error) {
	v := Invariants{Acked: len(acks)}
	issued, err := c.issuedSerials()
	if err != nil {
		return v, err
	}
	ids, dupAcked := map[string]string{}, 0
	for _, a := range acks {
		if prev, ok := ids[a.Device]; ok && prev != a.DeviceID {
			dupAcked++
		}
		ids[a.Device] = a.DeviceID
	}
	missing, withoutRecord := map[uint64]bool{}, map[string]bool{}
	for i := range c.Nodes {
		cl := c.AdminClient(i)
		cl.StaleReads = true // each node answers from its own state
		recs, err := cl.Attestations(ctx, "", 1<<30)
		if err != nil {
			return v, fmt.Errorf("%s: %w", c.Nodes[i].ID, err)
		}
		byID := map[uint64]cluster.AttestationRecord{}
		committed := map[string]bool{}
		for _, r := range recs {
			byID[r.ID] = r
			if r.Outcome == cluster.OutcomeAccepted {
				committed[r.CertificateSerial] = true
			}
		}
		for _, a := range acks {
			if r, ok := byID[a.AttestationID]; !ok || r.DeviceID != a.DeviceID || r.CertificateSerial != a.Serial {
				missing[a.AttestationID] = true
			}
		}
		for s := range issued {
			if !committed[s] {
				withoutRecord[s] = true
			}
		}
		devs, err := cl.Devices(ctx, "")
		if err != nil {
			return v, fmt.Errorf("%s: %w", c.Nodes[i].ID, err)
		}
		told := map[string]bool{}
		for _, id := range ids {
			told[id] = true
		}
		byEK, unacked := map[string]int{}, 0
		for _, d := range devs {
			byEK[d.EK.PublicSHA256]++
			if !told[d.ID] {
				unacked++
			}
		}
		dup := 0
		for _, n := range byEK {
			dup += n - 1
		}
		v.DuplicateIDs = max(v.DuplicateIDs, dupAcked+dup)
		v.Unacknowledged = max(v.Unacknowledged, unacked)
	}
	v.Lost, v.Present, v.CertsWithoutRecord = len(missing), len(acks)-len(missing), len(withoutRecord)
	return v, nil
}

var enrolledRE = regexp.MustCompile(`msg="device enrolled".* serial=([0-9a-f]+)`)

// issuedSerials reads, from every node's log, the serial of every
// certificate it issued.
func (c *Cluster) issuedSerials() (map[string]bool, error) {
	out := map[string]bool{}
	for _, n := range c.Nodes {
		f, err := os.Open(n.Log)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if m := enrolledRE.FindStringSubmatch(sc.Text()); m != nil {
				out[m[1]] = true
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", n.Log, err)
		}
	}
	return out, nil
}
