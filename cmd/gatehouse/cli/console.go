package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/ca"
	"github.com/gatehouse-dev/gatehouse/console"
)

func consoleCmd() *cobra.Command {
	var listen string
	c := &cobra.Command{
		Use:   "console --admin-config FILE [--listen 127.0.0.1:0]",
		Short: "Serve the web console on loopback, acting with an admin certificate; prints a one-time login URL",
		Long: `Serve the web console on loopback (only: reach it from elsewhere through an
SSH tunnel). It acts with the admin certificate of --admin-config, so the
cluster authorises every action by that certificate's role: an auditor's
console reads, an operator's also approves, quarantines, disables, enables
and revokes. It prints a login URL that works once, within 5 minutes; it is
exchanged for a session cookie.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			creds, ok := cmd.Context().Value(remoteCredsKey{}).(remoteCreds)
			if !ok || creds.leaf == nil {
				return errors.New("the console needs --admin-config (an operator or auditor certificate from \"gatehouse admin issue-cert\")")
			}
			ac := adminClient(cmd)
			st, err := ac.Status(cmd.Context())
			if err != nil {
				return err
			}
			id, err := ca.ParseIdentity(creds.leaf, st.TrustDomain)
			if err != nil || id.Path != ca.PathAdmin {
				return fmt.Errorf("--admin-config: not an admin certificate of %s: %v", st.TrustDomain, err)
			}
			ln, err := console.Listen(listen)
			if err != nil {
				return err
			}
			s := console.New(ac, console.Identity{Role: id.Role, Name: id.ID}, creds.root)
			s.Bind(ln.Addr())
			fmt.Fprintf(cmd.OutOrStdout(), "console for %s (%s) of %s on http://%s\nopen this URL within %s to log in (it works once):\n  %s\n",
				id.ID, id.Role, st.TrustDomain, ln.Addr(), console.DefaultLoginTTL, s.LoginURL())
			errc := make(chan error, 1)
			go func() { errc <- s.Serve(ln) }()
			select {
			case <-cmd.Context().Done():
				ln.Close()
				return nil
			case err := <-errc:
				return err
			}
		},
	}
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "loopback `ADDRESS` to serve on (port 0: any free port)")
	return c
}
