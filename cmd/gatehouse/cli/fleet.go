package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

func fleetCmd() *cobra.Command {
	var hours int
	c := &cobra.Command{
		Use:   "fleet",
		Short: "Show devices by state and group, the approval queue's length and attestations per hour by outcome",
		Long: `Show the fleet aggregate (GET /admin/v1/fleet): devices by state and by
group, the approval queue's length, and for each of the last --hours hours
(UTC, oldest first) the attestation records by outcome with refusals by
code. The cluster keeps these counts as it applies; nothing is scanned.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if hours < 1 || hours > cluster.MaxFleetHours {
				return fmt.Errorf("--hours must be 1 to %d", cluster.MaxFleetHours)
			}
			fc, err := adminClient(cmd).Fleet(cmd.Context(), hours)
			if err != nil {
				return err
			}
			return render(cmd, fc, func(w io.Writer) { printFleet(w, fc) })
		},
	}
	c.Flags().IntVar(&hours, "hours", server.DefaultFleetHours, fmt.Sprintf("hours of hourly attestation counts (at most %d)", cluster.MaxFleetHours))
	addOutputFlag(c)
	return c
}

func printFleet(w io.Writer, fc cluster.FleetCounts) {
	fmt.Fprintf(w, "devices:\t%d\napproval queue:\t%d pending\n\n", fc.Devices, fc.Pending)
	fmt.Fprintln(w, "STATE\tDEVICES")
	for _, k := range sortedKeys(fc.ByState) {
		fmt.Fprintf(w, "%s\t%d\n", k, fc.ByState[k])
	}
	fmt.Fprintln(w, "\nGROUP\tDEVICES")
	for _, k := range sortedKeys(fc.ByGroup) {
		fmt.Fprintf(w, "%s\t%d\n", orDash(k), fc.ByGroup[k])
	}
	fmt.Fprintln(w, "\nHOUR (UTC)\tACCEPTED\tPENDING\tREJECTED\tREFUSALS BY CODE")
	for _, h := range fc.Hours {
		var codes []string
		for _, k := range sortedKeys(h.Refusals) {
			codes = append(codes, fmt.Sprintf("%s=%d", orDash(k), h.Refusals[k]))
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\n", h.Start.UTC().Format("2006-01-02 15:04"), h.Accepted, h.Pending, h.Rejected, orDash(strings.Join(codes, " ")))
	}
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
