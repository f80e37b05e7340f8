package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/server"
)

func clusterCmd() *cobra.Command {
	c := &cobra.Command{Use: "cluster", Short: "Operate the Raft cluster"}

	var ttl time.Duration
	token := &cobra.Command{Use: "token", Short: "Join tokens"}
	create := &cobra.Command{
		Use:   "create",
		Short: "Print a one-time join token that pins this cluster's root",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, exp, err := adminClient(cmd).CreateJoinToken(cmd.Context(), ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			fmt.Fprintf(cmd.ErrOrStderr(), "valid once, until %s\n", exp.Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 15*time.Minute, "how long the token stays valid")
	token.AddCommand(create)

	members := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's members",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ms, err := adminClient(cmd).Members(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, ms, func(w io.Writer) {
				fmt.Fprintln(w, "NODE\tROLE\tVOTER\tRAFT\tAPI")
				for _, m := range ms {
					role := "follower"
					if m.Leader {
						role = "leader"
					}
					fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\n", m.ID, role, m.Voter, m.RaftAddr, orDash(m.APIAddr))
				}
			})
		},
	}
	addOutputFlag(members)

	remove := &cobra.Command{
		Use:   "remove NODE-ID",
		Short: "Remove a node from the cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := adminClient(cmd).RemoveMember(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		},
	}
	transfer := &cobra.Command{
		Use:   "transfer-leadership",
		Short: "Hand leadership to another voter",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := adminClient(cmd).TransferLeadership(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "leadership transferred")
			return nil
		},
	}
	c.AddCommand(token, members, remove, transfer, statusCmd())
	return c
}

func adminClient(cmd *cobra.Command) *server.AdminClient {
	c := server.NewAdminClient(dataDir(cmd))
	c.StaleReads, _ = cmd.Flags().GetBool("stale")
	return c
}
