package cli

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/server"
)

func ekrootsCmd() *cobra.Command {
	c := &cobra.Command{Use: "ekroots", Short: "Manage the cluster's manufacturer CA set (EK roots), replicated and audited"}
	var allow bool
	add := &cobra.Command{
		Use:   "add FILE",
		Short: "Trust the manufacturer CA certificates in FILE (PEM or DER) on every node",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			if !bytes.Contains(b, []byte("-----BEGIN")) { // DER: the API takes PEM
				b = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b})
			}
			res, err := adminClient(cmd).AddEKRoots(cmd.Context(), actor(), b, allow, args[0])
			if err != nil {
				return err
			}
			return render(cmd, res, func(w io.Writer) {
				if res.Written == len(res.Roots) {
					fmt.Fprintf(w, "%d written\n", res.Written)
				} else {
					fmt.Fprintf(w, "%d of %d written (the others were already trusted with the same allowance)\n", res.Written, len(res.Roots))
				}
				printEKRoots(w, res.Roots)
			})
		},
	}
	add.Flags().BoolVar(&allow, "allow-no-tpm-evidence", false, "these CAs' EK certificates may carry neither the EK EKU nor a TPM SAN (e.g. GCE's EK/AK CA Intermediate)")
	addOutputFlag(add)
	remove := &cobra.Command{
		Use:   "remove SHA256",
		Short: "Stop trusting the manufacturer CA with this fingerprint (see ekroots list); new enrollments chaining to it are refused",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fp := strings.ToLower(strings.ReplaceAll(args[0], ":", ""))
			if err := adminClient(cmd).RemoveEKRoot(cmd.Context(), actor(), fp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed manufacturer CA %s\n", fp)
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the manufacturer CAs the cluster trusts (auditors too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			roots, err := adminClient(cmd).EKRoots(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, roots, func(w io.Writer) { printEKRoots(w, roots) })
		},
	}
	addOutputFlag(list)
	c.AddCommand(add, remove, list)
	return c
}

func printEKRoots(w io.Writer, roots []server.EKRootInfo) {
	fmt.Fprintln(w, "SHA256\tSUBJECT\tEXPIRES\tNO-TPM-EVIDENCE\tADDED BY")
	for _, r := range roots {
		allow := "-"
		if r.AllowNoTPMEvidence {
			allow = "allowed"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.SHA256, r.Subject, r.NotAfter.Format("2006-01-02"), allow, orDash(r.AddedBy))
	}
}

// servedEKRoots is the manufacturer CA set the cluster serves, plus the
// CAs of files, as a bundle for server.Recheck.
func servedEKRoots(cmd *cobra.Command, files, allowNoEvidence []string) ([]byte, error) {
	roots, err := adminClient(cmd).EKRoots(cmd.Context())
	if err != nil {
		return nil, fmt.Errorf("fetching the cluster's manufacturer CAs: %w", err)
	}
	return withEKRootFiles(server.EKRootsBundle(roots), files, allowNoEvidence)
}

func settingsCmd() *cobra.Command {
	c := &cobra.Command{Use: "settings", Short: "Show or change the cluster-wide settings every node uses (replicated, audited)"}
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the cluster-wide settings",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := adminClient(cmd).Settings(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, v, func(w io.Writer) { printSettings(w, v) })
		},
	}
	addOutputFlag(show)
	var base int
	set := &cobra.Command{
		Use:   "set KEY=VALUE...",
		Short: "Change cluster-wide settings on every node, e.g. approval_retry=10s cert_validity=720h",
		Long: "Change cluster-wide settings on every node. Keys: cert_validity, session_ttl, approval_retry, " +
			"audit_checkpoint_every, retain_refused, retain_raw_evidence (durations such as 90s, 24h; 0 keeps " +
			"refused records or raw evidence forever). trust_domain is fixed at init.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			change := map[string]string{}
			for _, kv := range args {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("%q: want KEY=VALUE", kv)
				}
				if _, dup := change[k]; dup {
					return fmt.Errorf("%s given twice", k)
				}
				change[k] = v
			}
			doc, _ := json.Marshal(change)
			v, err := adminClient(cmd).ChangeSettings(cmd.Context(), actor(), base, doc)
			if err != nil {
				return err
			}
			return render(cmd, v, func(w io.Writer) { printSettings(w, v) })
		},
	}
	set.Flags().IntVar(&base, "base-version", 0, "refuse unless the settings are still this version (settings show prints it)")
	addOutputFlag(set)
	c.AddCommand(show, set)
	return c
}

func printSettings(w io.Writer, v server.SettingsView) {
	if v.Version == 0 {
		fmt.Fprintln(w, "# not replicated yet: this node's config.json")
	} else {
		fmt.Fprintf(w, "# version %d, set %s by %s\n", v.Version, v.Time.Format(time.RFC3339), v.Actor)
	}
	var m map[string]any
	b, _ := json.Marshal(v.Settings)
	json.Unmarshal(b, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s:\t%v\n", k, m[k])
	}
}
