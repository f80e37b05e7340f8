package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// readyz asks a node's unauthenticated readiness probe who it is and who
// it thinks leads (its body comes with 503 as well as 200).
func (g *gen) readyz(ctx context.Context, t *target) (server.Readiness, error) {
	var rd server.Readiness
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url+"/readyz", nil)
	if err != nil {
		return rd, err
	}
	hc := g.deviceHTTP()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return rd, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return rd, err
	}
	if err := json.Unmarshal(b, &rd); err != nil || rd.NodeID == "" {
		return rd, fmt.Errorf("%s/readyz: %s: %.200s", t.url, resp.Status, b)
	}
	return rd, nil
}

// nodeIDs maps each node to its ID.
func (g *gen) nodeIDs(ctx context.Context) ([]string, error) {
	ids := make([]string, len(g.all))
	for i, t := range g.all {
		rd, err := g.readyz(ctx, t)
		if err != nil {
			return nil, err
		}
		ids[i] = rd.NodeID
	}
	return ids, nil
}

// isNode says whether pid is a running `gatehouse serve` (not a recycled
// PID): the generator kills nothing else.
func isNode(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 1 && strings.HasSuffix(args[0], "gatehouse") && args[1] == "serve"
}

// killLeader waits until at, asks the nodes which one leads, records its
// CPU and memory, SIGKILLs it and takes it out of the devices' rotation.
func (g *gen) killLeader(ctx context.Context, at time.Time, res *Result, cpu0 []time.Duration, ids []string) error {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(time.Until(at)):
	}
	leader := -1
	for try := 0; leader < 0 && try < 50; try++ {
		for _, t := range *g.targets.Load() {
			rd, err := g.readyz(ctx, t)
			if err != nil || rd.LeaderID == "" {
				continue
			}
			for i, id := range ids {
				if id == rd.LeaderID {
					leader = i
				}
			}
			break
		}
		if leader < 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if leader < 0 {
		return errors.New("kill the leader: no node names a leader")
	}
	n := &res.Nodes[leader]
	if !isNode(n.PID) {
		return fmt.Errorf("kill the leader: PID %d is not a running gatehouse serve", n.PID)
	}
	c, err := procCPU(n.PID)
	if err != nil {
		return err
	}
	n.RSS, n.HWM, _ = procMem(n.PID)
	if err := syscall.Kill(n.PID, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the leader (PID %d): %w", n.PID, err)
	}
	now := time.Now()
	g.killed.Store(now.UnixNano())
	n.CPU, n.Killed, n.MeasureOK = c-cpu0[leader], true, true
	res.LeaderKilled, res.KilledAt = n.ID, now.Sub(at.Add(-g.cfg.KillLeaderAfter))
	var alive []*target
	for i, t := range g.all {
		if i != leader && g.alive(t) {
			alive = append(alive, t)
		}
	}
	g.targets.Store(&alive)
	// When do the survivors name a new leader?
	for time.Since(now) < time.Minute && ctx.Err() == nil {
		if rd, err := g.readyz(ctx, alive[0]); err == nil && rd.LeaderID != "" && rd.LeaderID != n.ID {
			res.NewLeaderAfter = time.Since(now)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.cfg.Log("SIGKILLed the leader %s (PID %d) %s into the window", n.ID, n.PID, res.KilledAt.Round(time.Millisecond))
	return nil
}

// verify checks, through a surviving node's admin socket, that every
// operation the generator saw acknowledged has its accepted attestation
// record, for the device and with the certificate serial it was given.
// One linearizable read first makes the node's state current; the rest
// read it locally (the load has ended, so nothing acknowledged is newer).
func (g *gen) verify(ctx context.Context) (checked, lost int, err error) {
	var ac *server.AdminClient
	for i, n := range g.cfg.Nodes {
		if g.alive(g.all[i]) {
			ac = server.NewAdminClient(n.DataDir)
			break
		}
	}
	if ac == nil {
		return 0, 0, errors.New("verify: no node left")
	}
	var lerr error
	for try := 0; try < 100; try++ { // a new leader may still be settling
		if _, lerr = ac.StatusBrief(ctx); lerr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr != nil {
		return 0, 0, fmt.Errorf("verify: %w", lerr)
	}
	ac.StaleReads = true
	type item struct {
		id uint64
		a  ack
	}
	work := make(chan item)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				rec, err := ac.Attestation(ctx, it.id)
				var p *api.Problem
				missing := errors.As(err, &p) && p.Code == api.CodeNotFound
				mu.Lock()
				switch {
				case err != nil && !missing:
					if firstErr == nil {
						firstErr = fmt.Errorf("verify attestation %d: %w", it.id, err)
					}
				case missing || rec.Outcome != cluster.OutcomeAccepted || rec.DeviceID != it.a.deviceID ||
					!strings.EqualFold(strings.TrimLeft(rec.CertificateSerial, "0"), strings.TrimLeft(it.a.serial, "0")):
					lost++
					if lost <= 5 {
						g.cfg.Log("LOST: attestation %d of device %s (serial %s): %+v %v", it.id, it.a.deviceID, it.a.serial, rec.Outcome, err)
					}
				}
				checked++
				mu.Unlock()
			}
		}()
	}
	g.acks.Range(func(k, v any) bool {
		work <- item{k.(uint64), v.(ack)}
		return true
	})
	close(work)
	wg.Wait()
	return checked, lost, firstErr
}
