//go:build chaos

package server_test

// make chaos-disk: three `gatehouse serve` processes, node-2's data
// directory on a small tmpfs, swtpm devices enrolling through every node.
// node-2's disk is filled for a while, then freed. Enrollments through
// node-2 are refused 503 storage_full meanwhile (the other two go on),
// no process panics or exits, node-2 catches up without a restart, and
// every acknowledged enrollment is on every node.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/internal/testdisk"
	"github.com/gatehouse-dev/gatehouse/server"
	"github.com/gatehouse-dev/gatehouse/server/servertest"
)

func TestChaosDiskFull(t *testing.T) {
	bin, err := filepath.Abs("../bin/gatehouse")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: run make build first (make chaos-disk does)", bin)
	}
	work := t.TempDir()
	small := testdisk.Small(t, 64<<20)
	m := swtpm.NewTestManufacturer(t)
	roots, pw := filepath.Join(work, "ek-roots.pem"), filepath.Join(work, "password")
	os.WriteFile(roots, servertest.EKRoots(m), 0o644)
	os.WriteFile(pw, servertest.Password, 0o600)

	nodes := startProcCluster(t, bin, work, roots, pw, func(i int) string {
		if i == 2 {
			return filepath.Join(small, "node-2") // node-2 lives on the small disk
		}
		return filepath.Join(work, fmt.Sprintf("node-%d", i))
	})
	root, err := readRoot(filepath.Join(nodes[0].dir, "ca", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}

	type enrolled struct {
		deviceID      string
		attestationID uint64
	}
	var (
		mu          sync.Mutex
		acks        []enrolled
		storageFull int  // 503 storage_full answers from node-2
		diskFull    bool // node-2's disk has been filled
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		d := servertest.NewDevice(t, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := i; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				n := nodes[k%3]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				id, err := fwclient.NewClient("https://"+n.api, root).Enroll(ctx, d.TPM)
				cancel()
				mu.Lock()
				var p *api.Problem
				switch {
				case err == nil:
					acks = append(acks, enrolled{id.DeviceID, id.AttestationID})
				case errors.As(err, &p) && p.Code == api.CodeStorageFull:
					// node-2 may go on refusing for a while after space
					// returns (until its next log write passes, at most
					// 30 s): not before its disk filled, and never another node.
					if n != nodes[1] || !diskFull || p.Status != http.StatusServiceUnavailable {
						t.Errorf("%s answered %v (node-2's disk filled: %v)", n.id, err, diskFull)
					}
					storageFull++
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}

	time.Sleep(10 * time.Second)
	mu.Lock()
	diskFull = true
	before := len(acks)
	mu.Unlock()
	filler := testdisk.Fill(t, small)
	t.Logf("node-2's disk full after %d enrollments", before)
	servertest.WaitFor(t, "node-2 to refuse an enrollment with storage_full", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return storageFull > 0
	})
	time.Sleep(15 * time.Second)
	mu.Lock()
	during := len(acks) - before
	mu.Unlock()
	if during == 0 {
		t.Fatal("no enrollment acknowledged by the two other nodes while node-2's disk was full")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	time.Sleep(10 * time.Second)
	close(stop)
	wg.Wait()

	// node-2 catches up without a restart.
	var hashes []string
	servertest.WaitFor(t, "convergence after space returned", 60*time.Second, func() bool {
		hashes = hashes[:0]
		for _, n := range nodes {
			s, err := server.NewAdminClient(n.dir).Status(context.Background())
			if err != nil {
				return false
			}
			hashes = append(hashes, s.StateHash)
		}
		return hashes[0] == hashes[1] && hashes[1] == hashes[2]
	})
	t.Logf("converged %s after space returned", time.Since(freed).Round(time.Second))
	lost := 0
	for _, n := range nodes {
		select {
		case <-n.exited:
			t.Fatalf("%s exited; see %s", n.id, n.log)
		default:
		}
		if strings.Contains(n.logText(), "panic:") {
			t.Fatalf("%s panicked; see %s", n.id, n.log)
		}
		c := server.NewAdminClient(n.dir)
		c.StaleReads = true
		recs, err := c.Attestations(context.Background(), "", 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[uint64]string{}
		for _, r := range recs {
			byID[r.ID] = r.DeviceID
		}
		for _, a := range acks {
			if byID[a.attestationID] != a.deviceID {
				lost++
			}
		}
	}
	if !strings.Contains(nodes[1].logText(), "cannot write the") {
		t.Fatalf("node-2's log does not say its disk is full; see %s", nodes[1].log)
	}
	line := fmt.Sprintf("disk-full: acked=%d acked_while_full=%d storage_full_answers=%d lost=%d", len(acks), during, storageFull, lost)
	fmt.Println(line)
	if lost != 0 {
		t.Fatal(line)
	}
}
