package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// pathClusterInfo answers a node's ID and build (GET, node certificate).
const pathClusterInfo = "/cluster/v1/info"

// buildInfo is this binary's build, read once.
var buildInfo = api.ReadBuildInfo()

// NodeInfo is what GET /cluster/v1/info answers: who the node is and the
// build it runs.
type NodeInfo struct {
	NodeID  string        `json:"node_id"`
	Version api.BuildInfo `json:"version"`
	// Commands are the Raft commands the node's build applies
	// (cluster.Commands): see membersApply.
	Commands []string `json:"commands,omitempty"`
	// FeatureVersion is the highest cluster feature version the node's
	// build applies (cluster.FeatureVersion; 0 or absent: a build before
	// feature versions). The leader raises the cluster's once every
	// member's is at least its own (featureLoop).
	FeatureVersion int `json:"feature_version,omitempty"`
}

// NodeStatus is one member of the cluster in Status: its addresses and
// role (from the Raft configuration) and the build it reports, asked live.
// Version is nil and Error says why when the node could not be asked.
type NodeStatus struct {
	ID      string         `json:"id"`
	APIAddr string         `json:"api_addr,omitempty"`
	Voter   bool           `json:"voter"`
	Leader  bool           `json:"leader"`
	Version *api.BuildInfo `json:"version,omitempty"`
	// FeatureVersion is the highest cluster feature version the member's
	// build applies, as it reports it (0: a build before feature versions).
	FeatureVersion int    `json:"feature_version"`
	Error          string `json:"error,omitempty"`
}

// nodeInfoTimeout bounds how long status waits for each peer's answer.
const nodeInfoTimeout = 2 * time.Second

func (a *Appliance) handleNodeInfo(w http.ResponseWriter, _ *http.Request) {
	cmds := append(cluster.Commands(), featurePolicyACME)
	if h := a.commandsHook.Load(); h != nil {
		cmds = *h
	}
	writeJSON(w, http.StatusOK, NodeInfo{NodeID: a.cfg.NodeID, Version: buildInfo, Commands: cmds, FeatureVersion: a.buildFeature()})
}

// featurePolicyACME is advertised among a node's commands (NodeInfo) so
// membersApply can gate it like one: the policy field Group.ACME. An older
// build's ParsePolicy refuses unknown fields, so a replicated policy that
// uses it would make every enrollment on that node fail; `policy apply`
// of such a document waits until every member parses it.
const featurePolicyACME = "policy.acme/1"

// nodeStatuses lists every member of the Raft configuration with its
// version: this node's from its own build, the others' asked in parallel
// over the node-authenticated cluster API (see DESIGN.md "Versions in
// status"). A peer that does not answer in time is listed with the error.
func (a *Appliance) nodeStatuses(ctx context.Context) ([]NodeStatus, error) {
	ms, err := a.node.Members()
	if err != nil {
		return nil, err
	}
	out := make([]NodeStatus, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		out[i] = NodeStatus{ID: m.ID, APIAddr: m.APIAddr, Voter: m.Voter, Leader: m.Leader}
		switch {
		case m.ID == a.cfg.NodeID:
			v := buildInfo
			out[i].Version, out[i].APIAddr, out[i].FeatureVersion = &v, a.apiAddr(), a.buildFeature()
		case m.APIAddr == "":
			out[i].Error = "has not registered its API address yet"
		default:
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(ctx, nodeInfoTimeout)
				defer cancel()
				info, err := a.askNodeInfo(ctx, m)
				if err != nil {
					out[i].Error = err.Error()
					return
				}
				out[i].Version, out[i].FeatureVersion = &info.Version, info.FeatureVersion
			})
		}
	}
	wg.Wait()
	return out, nil
}

// askNodeInfo asks a peer for its build, as this node. The answer must
// come from the member asked: the one whose ID it names.
func (a *Appliance) askNodeInfo(ctx context.Context, m cluster.Member) (NodeInfo, error) {
	var info NodeInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+m.APIAddr+pathClusterInfo, nil)
	if err != nil {
		return info, err
	}
	resp, err := a.nodeHTTP.Do(req)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return info, fmt.Errorf("%s does not report its version (a build before version reporting)", m.APIAddr)
	case resp.StatusCode != http.StatusOK:
		return info, fmt.Errorf("%s%s: %s", m.APIAddr, pathClusterInfo, resp.Status)
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("%s%s: %w", m.APIAddr, pathClusterInfo, err)
	}
	if info.NodeID != m.ID {
		return info, fmt.Errorf("%s answered as node %q", m.APIAddr, info.NodeID)
	}
	return info, nil
}

// errMembersBehind: a command was not proposed because some member of the
// cluster is not known to apply it (a rolling upgrade in progress, or a
// member that has not answered since this node started).
var errMembersBehind = errors.New("not every member is known to apply the change")

// peerCommands remembers which members answered GET /cluster/v1/info
// listing which commands: a member that did once still does, short of a
// downgrade, so a member down for maintenance does not block changes.
type peerCommands struct {
	mu sync.Mutex
	m  map[string][]string // node ID → commands
}

func (p *peerCommands) knows(id string, cmds []string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cmds {
		if !slices.Contains(p.m[id], c) {
			return false
		}
	}
	return true
}

func (p *peerCommands) set(id string, cmds []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string][]string{}
	}
	p.m[id] = cmds
}

// membersApply returns nil when every member of the Raft configuration is
// known to apply each of cmds (cluster.Commands' form): this node, and
// each other member that answered GET /cluster/v1/info listing them, now
// or before (peerCommands). Otherwise errMembersBehind naming the members.
// A replica stops on a command its build does not know, so a new kind of
// command must wait until every member runs a build that has it: in a
// rolling upgrade, until the last old member (which answers 404) is
// upgraded. Members are asked in parallel, within nodeInfoTimeout each.
func (a *Appliance) membersApply(ctx context.Context, cmds ...string) error {
	ms, err := a.node.Members()
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var behind []string
	var wg sync.WaitGroup
	for _, m := range ms {
		if m.ID == a.cfg.NodeID || a.peerCmds.knows(m.ID, cmds) {
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
			if err == nil {
				a.peerCmds.set(m.ID, info.Commands)
				if !a.peerCmds.knows(m.ID, cmds) {
					err = fmt.Errorf("its build (%s) does not apply %s", info.Version.Version, strings.Join(cmds, ", "))
				}
			}
			if err != nil {
				mu.Lock()
				behind = append(behind, m.ID+": "+err.Error())
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(behind) > 0 {
		slices.Sort(behind)
		return fmt.Errorf("%w (%s); upgrade every member to this build, or remove the ones that are gone", errMembersBehind, strings.Join(behind, "; "))
	}
	return nil
}

// behindRecheck is how long a "some member does not apply it" stands
// before the members are asked again, so enrollments do not each wait on
// a member that is behind or down.
const behindRecheck = 30 * time.Second

// commandGate remembers until when membersApply last said no.
type commandGate struct {
	mu     sync.Mutex
	behind time.Time
}

// recordsValidity reports whether enrollments and renewals may commit the
// certificate's validity (cluster.ValidityCommands): every member is known
// to apply those commands (membersApply). Otherwise they commit the v2
// accepts, which every member applies, and the record lacks the validity
// (the device's certificates list shows it as unknown): in a rolling
// upgrade an older replica would stop on v3, and a v2 with the validity in
// its payload would be stored without it by old replicas only.
// Non-guarantee: a member that joins with an older build between this
// check and the commit stops on the v3 entry, as for any gated command.
func (a *Appliance) recordsValidity(ctx context.Context) bool {
	return a.validityGate.open(ctx, a, "recording certificates without their validity", cluster.ValidityCommands...)
}

// binaryEnvelope reports whether enrollments and renewals may commit in the
// binary envelope (cluster.EnvelopeCommands, cluster.WithEnvelope): every
// member is known to apply those commands. Otherwise they commit the JSON
// v3 accepts, which cost every replica a JSON and base64 decode of the
// evidence. Non-guarantee: as for recordsValidity.
func (a *Appliance) binaryEnvelope(ctx context.Context) bool {
	return a.envelopeGate.open(ctx, a, "committing enrollments and renewals as JSON", cluster.EnvelopeCommands...)
}

// open reports whether every member applies cmds (membersApply). After a
// no it says no, logging warn once, for behindRecheck before asking again.
func (g *commandGate) open(ctx context.Context, a *Appliance, warn string, cmds ...string) bool {
	now := a.enroller.now()
	g.mu.Lock()
	behind := now.Before(g.behind)
	g.mu.Unlock()
	if behind {
		return false
	}
	// Not the request's cancellation: one client leaving must not make the
	// answer "behind" for everyone (membersApply bounds each ask anyway).
	if err := a.membersApply(context.WithoutCancel(ctx), cmds...); err != nil {
		a.log.Warn(warn, "err", err)
		g.mu.Lock()
		g.behind = now.Add(behindRecheck)
		g.mu.Unlock()
		return false
	}
	return true
}
