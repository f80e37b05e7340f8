package server

import (
	"context"
	"net/http"
	"strconv"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/cluster"
)

// adminFleet is the fleet aggregate: devices by state and group, the
// approval queue's length, and attestation records per hour by outcome with
// refusals by code. It reads the FSM's counters (cluster/fleet.go), so its
// cost does not grow with the registry.
const adminFleet = "/admin/v1/fleet"

// DefaultFleetHours is the hourly window GET /admin/v1/fleet returns without ?hours.
const DefaultFleetHours = 24

func (a *Appliance) registerFleetAdmin(add func(role, pattern string, h http.HandlerFunc)) {
	add(ca.RoleAuditor, "GET "+adminFleet, a.read(func(w http.ResponseWriter, r *http.Request) {
		hours := DefaultFleetHours
		if s := r.URL.Query().Get("hours"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > cluster.MaxFleetHours {
				writeProblem(w, malformed("hours must be an integer from 1 to "+strconv.Itoa(cluster.MaxFleetHours)))
				return
			}
			hours = n
		}
		// The window ends at this node's clock; records are counted by the
		// time the leader stamped on them.
		fc, err := a.node.FleetCounts(hours, a.enroller.now())
		writeResult(w, http.StatusOK, fc, a.queryErr(err))
	}))
}

// Fleet returns the fleet aggregate with hours (1..168; 0: the default 24)
// of hourly attestation counts, oldest hour first.
func (c *AdminClient) Fleet(ctx context.Context, hours int) (cluster.FleetCounts, error) {
	var fc cluster.FleetCounts
	path := adminFleet
	if hours != 0 {
		path += "?hours=" + strconv.Itoa(hours)
	}
	return fc, c.get(ctx, path, &fc)
}
