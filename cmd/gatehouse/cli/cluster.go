package cli

import (
	"fmt"
	"io"
	"os"
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
	backup := &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a checksummed backup archive of the registry and the CA",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tmp := args[0] + ".partial"
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			bar := newProgress(cmd, "backup")
			err = adminClient(cmd).Backup(cmd.Context(), bar.writer(f, -1))
			bar.done()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(tmp)
				return err
			}
			if err := os.Rename(tmp, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", args[0])
			return nil
		},
	}
	restore := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace the registry with a backup's (disaster recovery into a cluster made with init --from-backup)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			size := int64(-1)
			if fi, err := f.Stat(); err == nil {
				size = fi.Size()
			}
			bar := newProgress(cmd, "restore")
			meta, err := adminClient(cmd).Restore(cmd.Context(), bar.reader(f, size))
			bar.done()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored the registry from %s (taken %s on %s at index %d)\n", args[0], meta.Created.Format(time.RFC3339), meta.NodeID, meta.RaftIndex)
			return nil
		},
	}
	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show what a backup holds (cluster, node, time, index, files) and whether its signature and checksums verify; offline, restores nothing",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			in, err := server.InspectBackup(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if err := render(cmd, in, func(w io.Writer) {
				m := in.Meta
				fmt.Fprintf(w, "format:\t%s\ntrust domain:\t%s\nroot sha256:\t%s\nnode:\t%s\ncreated:\t%s\nraft index:\t%d\nstate sha256:\t%s\n",
					m.Format, m.TrustDomain, m.RootSHA256, m.NodeID, m.Created.Format(time.RFC3339), m.RaftIndex, m.StateSHA256)
				for _, file := range in.Files {
					fmt.Fprintf(w, "file:\t%s\t%s\n", file.Name, amount(file.Size, "bytes"))
				}
				if in.Valid {
					fmt.Fprintln(w, "signature:\tvalid (signed under the backup's own root; restore also checks it is this cluster's)")
				} else {
					fmt.Fprintf(w, "signature:\tINVALID: %s\n", in.Error)
				}
			}); err != nil {
				return err
			}
			if !in.Valid {
				return fmt.Errorf("%s: %s", args[0], in.Error)
			}
			return nil
		},
	}
	addOutputFlag(inspect)
	backup.AddCommand(inspect)
	remove.Long = "Remove a node from the cluster. A node ID that is not a member is an error (see cluster members)."
	c.AddCommand(token, members, remove, transfer, backup, restore, rebuildCmd(), statusCmd())
	return c
}

// rebuildCmd is the offline half of rebuilding a node from its peers; the
// next serve does the rest (server.RebuildNode).
func rebuildCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rebuild",
		Short: "Move this stopped node's Raft log, registry and snapshots aside so that it catches up from its peers on the next serve",
		Long: `Rebuild a node whose raft.db or fsm.db is damaged (serve refuses to start,
naming the file) from its peers. The node must be stopped. raft.db, fsm.db and
snapshots/ move to DATADIR/raft/rebuild-TIME/; the node's identity and
credentials (config.json, CA, cluster-root) stay. The next serve waits for the
leader, which still lists the node, to send it the registry.

Until it has caught up with the leader the node grants no vote and starts
no election (it forgot what it had acknowledged); its log says when it
has. Rebuild one node at a time with the other nodes up: if the leader
fails meanwhile, the cluster waits for it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := server.RebuildNode(dataDir(cmd), time.Now())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "moved aside to %s: %v\n", r.MovedTo, r.Moved)
			fmt.Fprintf(w, "next: gatehouse serve --data-dir %s (it catches up from the leader; check with 'gatehouse cluster status')\n", dataDir(cmd))
			return nil
		},
	}
}
