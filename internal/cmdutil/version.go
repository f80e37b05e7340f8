// Package cmdutil holds what the gatehouse and gatehouse-agent command lines
// share: the version command, the logging flags, and flags read from the
// environment.
package cmdutil

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/api"
)

// VersionCmd prints the binary's build information (api.ReadBuildInfo):
// version, VCS revision and dirty flag, commit time and Go version; with
// -o json, the api.BuildInfo document.
func VersionCmd() *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the version, VCS revision and Go version of this binary",
		Args:  cobra.NoArgs,
		// Nothing to set up: the version prints whatever the parent's
		// hooks would need (credentials, a reachable node).
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printBuildInfo(cmd, output, api.ReadBuildInfo())
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return c
}

func printBuildInfo(cmd *cobra.Command, output string, bi api.BuildInfo) error {
	w := cmd.OutOrStdout()
	switch output {
	case "text", "table":
		_, err := fmt.Fprint(w, bi.Text())
		return err
	case "json":
		return WriteJSON(w, bi)
	}
	return fmt.Errorf("unknown output format %q (want text or json)", output)
}
