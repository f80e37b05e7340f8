package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dev/gatehouse/cluster"
)

// featureCheckEvery is how often the leader looks whether it can raise the
// cluster's feature version; once it is at this build's, the look costs
// nothing (no member is asked).
const featureCheckEvery = 2 * time.Second

// featureLoop raises the cluster's committed feature version to this
// build's (cluster.FeatureVersion) once every member advertises a build
// that applies it: the leader's duty, so at most one node proposes it.
// A halted node found leading hands leadership on.
func (a *Appliance) featureLoop() {
	var last string // the last reason logged, so a wait is logged once
	a.periodically(featureCheckEvery, func(ctx context.Context) {
		// A halted node that was elected leader again hands leadership
		// on: it cannot apply, so acknowledge, anything.
		if a.node.Halted() != nil && a.node.IsLeader() {
			if err := a.node.TransferLeadership(); err != nil {
				a.log.Error("halted registry: handing leadership on failed", "err", err)
			}
			return
		}
		why, err := a.raiseFeature(ctx)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last && msg != "" {
			a.log.Info("cluster feature version not raised yet", "at", a.node.FeatureVersion(), "to", a.buildFeature(), "why", msg)
		}
		if why != "" {
			a.log.Info("cluster feature version raised", "to", a.node.FeatureVersion(), "members", why)
		}
		last = msg
	})
}

// raiseFeature proposes cluster.feature when this node leads, the
// committed version is below this build's, and every member of the Raft
// configuration answers GET /cluster/v1/info now with a feature version at
// least this build's (asked fresh each time: a member rolled back since
// must not be vouched for by an old answer). It returns the members it
// counted when it raised the version, else the reason it did not (nil when
// there is nothing to do).
func (a *Appliance) raiseFeature(ctx context.Context) (string, error) {
	target := a.buildFeature()
	if !a.node.IsLeader() || a.node.Halted() != nil || a.node.FeatureVersion() >= target {
		return "", nil
	}
	ms, err := a.node.Members()
	if err != nil {
		return "", err
	}
	var mu sync.Mutex
	var behind, ready []string
	var wg sync.WaitGroup
	for _, m := range ms {
		if m.ID == a.cfg.NodeID {
			ready = append(ready, m.ID)
			continue
		}
		if m.APIAddr == "" {
			behind = append(behind, m.ID+": has not registered its API address yet")
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, nodeInfoTimeout)
			defer cancel()
			info, err := a.askNodeInfo(ctx, m)
			if err == nil && info.FeatureVersion < target {
				err = fmt.Errorf("its build (%s) applies feature version %d", info.Version.Version, info.FeatureVersion)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				behind = append(behind, m.ID+": "+err.Error())
			} else {
				ready = append(ready, m.ID)
			}
		})
	}
	wg.Wait()
	if len(behind) > 0 {
		slices.Sort(behind)
		return "", fmt.Errorf("%w (%s)", errMembersBehind, strings.Join(behind, "; "))
	}
	if _, err := a.node.RaiseFeatureVersion(ctx, target, "node:"+a.cfg.NodeID); err != nil {
		return "", err
	}
	slices.Sort(ready)
	return strings.Join(ready, ","), nil
}

// buildFeature is the feature version this node advertises and raises to:
// its build's, or what a test made it claim (an older build's).
func (a *Appliance) buildFeature() int {
	if h := a.featureHook.Load(); h != nil {
		return int(*h)
	}
	return joinFeature()
}

// featureForTest, when set, is the feature version every node of this
// process claims unless its own hook says otherwise (tests: a cluster
// created, or a node joined, by an older build).
var featureForTest atomic.Pointer[int64]

// joinFeature is the feature version this build applies, as a joining
// node reports it.
func joinFeature() int {
	if h := featureForTest.Load(); h != nil {
		return int(*h)
	}
	return cluster.FeatureVersion
}

// errBuildTooOld: a joining node's build does not apply the cluster's
// committed feature version (it would halt on the log).
var errBuildTooOld = errors.New("the joining node's build is older than the cluster's feature version")

// checkJoinFeature refuses a joiner whose build applies less than the
// cluster's committed feature version (a build before feature versions
// sends none: 0).
func (a *Appliance) checkJoinFeature(joiner int) error {
	if v := a.node.FeatureVersion(); joiner < v {
		return fmt.Errorf("%w: the cluster is at feature version %d, the joining build applies up to %d: install the build the cluster runs on the new node", errBuildTooOld, v, joiner)
	}
	return nil
}

// seedFeature raises a cluster this node creates (no Raft state when it
// started, not joining) to its build's feature version at once, with the
// EK roots and settings: it is the only member, so the first entries of a
// new cluster's log are the same in every run. Elsewhere featureLoop does
// it, once every member can.
func (a *Appliance) seedFeature(ctx context.Context) error {
	if a.featureSeeded() || !a.node.IsLeader() {
		return nil
	}
	_, err := a.raiseFeature(ctx)
	return err
}

// featureSeeded: nothing for seedFeature to do (this node does not create
// its cluster, or the version is raised).
func (a *Appliance) featureSeeded() bool {
	return a.cfg.JoinSeed != "" || !a.node.Fresh() || a.node.FeatureVersion() >= a.buildFeature()
}
