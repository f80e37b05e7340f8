package server

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// registryKV is step-ca's database on the Raft registry. The CA opens
// before the Raft node (its certificates secure Raft), so the node is set
// once it exists; nothing stores into step-ca's database before that.
type registryKV struct{ node atomic.Pointer[cluster.Node] }

func (k *registryKV) get() (*cluster.Node, error) {
	n := k.node.Load()
	if n == nil {
		return nil, errors.New("the registry is not open yet")
	}
	return n, nil
}

func (k *registryKV) Get(table string, key []byte) ([]byte, error) {
	n, err := k.get()
	if err != nil {
		return nil, err
	}
	v, err := n.KVGet(table, key)
	if errors.Is(err, cluster.ErrNotFound) {
		return nil, fmt.Errorf("%w: %v", ca.ErrKVNotFound, err)
	}
	return v, err
}

func (k *registryKV) List(table string) ([][]byte, [][]byte, error) {
	n, err := k.get()
	if err != nil {
		return nil, nil, err
	}
	return n.KVList(table)
}

func (k *registryKV) Update(ops []ca.KVOp) (bool, error) {
	n, err := k.get()
	if err != nil {
		return false, err
	}
	cops := make([]cluster.KVOp, len(ops))
	for i, op := range ops {
		cops[i] = cluster.KVOp{Op: op.Op, Table: op.Table, Key: op.Key, Value: op.Value, Old: op.Old}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return n.KVUpdate(ctx, cops...)
}

// leaderLoop runs the leader's periodic duties: signing the audit head,
// marking devices that missed their re-attestation interval stale, and
// completing interrupted device revocations, and compacting refused records
// and raw evidence past their retention.
func (a *Appliance) leaderLoop() {
	// The interval is the cluster's setting, read again at least every second.
	a.periodicallyEvery(func() time.Duration { return a.conf.view().settings.AuditCheckpointEvery.Duration }, func(ctx context.Context) {
		if !a.node.IsLeader() {
			return
		}
		if _, err := a.checkpoint(ctx, "node:"+a.cfg.NodeID); err != nil && !errors.Is(err, cluster.ErrNotFound) {
			a.log.Warn("audit checkpoint failed", "err", err)
		}
		if err := a.MarkStale(ctx); err != nil {
			a.log.Warn("stale marking failed", "err", err)
		}
		if err := a.SweepRevocations(ctx); err != nil {
			a.log.Error("completing device revocations failed", "err", err)
		}
		if _, err := a.CompactRetention(ctx); err != nil {
			a.log.Warn("retention compaction failed", "err", err)
		}
	})
}

// periodically runs fn every interval, each run bounded by the interval,
// until the appliance closes.
func (a *Appliance) periodically(every time.Duration, fn func(ctx context.Context)) {
	a.periodicallyEvery(func() time.Duration { return every }, fn)
}

// periodicallyEvery is periodically with an interval that may change (a
// replicated setting): it is read again at least every second, so a
// shorter one takes effect without waiting out the longer.
func (a *Appliance) periodicallyEvery(every func() time.Duration, fn func(ctx context.Context)) {
	last := time.Now()
	for {
		d := every()
		wait := min(time.Until(last.Add(d)), time.Second)
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-a.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		if a.ctx.Err() != nil {
			return
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(a.ctx, d)
		fn(ctx)
		cancel()
	}
}

// MarkStale proposes every active device whose group's reattest_interval
// has passed since its last accepted attestation (the leader does this
// every audit_checkpoint_every).
func (a *Appliance) MarkStale(ctx context.Context) error {
	p, err := a.enroller.policies.current()
	if err != nil {
		return err
	}
	now := a.enroller.now()
	cutoffs := map[string]time.Time{}
	err = a.eachDevice(cluster.DeviceActive, func(d cluster.Device) error {
		g := p.GroupNamed(d.Group)
		if g == nil || d.Stale {
			return nil
		}
		if every := g.ReattestEvery(); every > 0 && now.Sub(d.LastAttestedAt) > every {
			cutoffs[d.ID] = now.Add(-every)
		}
		if len(cutoffs) < staleBatch {
			return nil
		}
		err := a.node.MarkStale(ctx, cutoffs)
		clear(cutoffs)
		return err
	})
	if err != nil || len(cutoffs) == 0 {
		return err
	}
	return a.node.MarkStale(ctx, cutoffs)
}

// staleBatch bounds the devices one stale-marking command carries.
const staleBatch = 5000

// eachDevice hands fn every device in state, one page of the state index
// at a time: a duty over the whole fleet holds one page, not the registry
// (gigabytes at a million devices).
func (a *Appliance) eachDevice(state string, fn func(cluster.Device) error) error {
	for cursor := ""; ; {
		page, next, err := a.node.QueryDevices(cluster.DeviceQuery{State: state, Cursor: cursor, Limit: cluster.MaxPageLimit})
		if err != nil {
			return err
		}
		for _, d := range page {
			if err := fn(d); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		cursor = next
	}
}
