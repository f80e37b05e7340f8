package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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
	Error   string         `json:"error,omitempty"`
}

// nodeInfoTimeout bounds how long status waits for each peer's answer.
const nodeInfoTimeout = 2 * time.Second

func (a *Appliance) handleNodeInfo(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, NodeInfo{NodeID: a.cfg.NodeID, Version: buildInfo})
}

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
			out[i].Version, out[i].APIAddr = &v, a.apiAddr()
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
				out[i].Version = &info.Version
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
