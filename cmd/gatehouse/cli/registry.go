package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/internal/cmdutil"
	"github.com/gatehouse-dev/gatehouse/server"
)

func addOutputFlag(c *cobra.Command) {
	c.Flags().StringP("output", "o", "table", "output format: table or json")
}

// render prints v as JSON, or calls table for the human form.
func render(cmd *cobra.Command, v any, table func(w io.Writer)) error {
	format, _ := cmd.Flags().GetString("output")
	w := cmd.OutOrStdout()
	switch format {
	case "json":
		return cmdutil.WriteJSON(w, v)
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return fmt.Errorf("unknown output format %q (want table or json)", format)
}

func statusCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "status",
		Short: "Show this node's status, and every node's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := adminClient(cmd).Status(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, s, func(w io.Writer) {
				fmt.Fprintf(w, "node:\t%s\nleader:\t%v\ntrust domain:\t%s\ndevice API:\t%s\nstate hash:\t%s\n", s.NodeID, s.Leader, s.TrustDomain, s.DeviceAPI, s.StateHash)
				if s.Healthy {
					fmt.Fprintln(w, "health:\tok")
				}
				for _, p := range s.Problems {
					fmt.Fprintf(w, "health:\tUNHEALTHY: %s\n", p)
				}
				fmt.Fprintf(w, "version:\t%s\n", s.Version)
				fmt.Fprintf(w, "feature version:\t%d (this build applies up to %d)\n", s.FeatureVersion, s.BuildFeatureVersion)
				if s.Halted != nil {
					fmt.Fprintf(w, "registry:\tHALTED: %s\n", s.Halted)
				}
				fmt.Fprintln(w)
				fmt.Fprintln(w, "NODE\tROLE\tAPI\tVERSION\tFEATURES")
				for _, n := range s.Nodes {
					role := "follower"
					if n.Leader {
						role = "leader"
					} else if !n.Voter {
						role = "nonvoter"
					}
					version := "unknown: " + n.Error
					if n.Version != nil {
						version = n.Version.String()
					}
					features := "-"
					if n.Version != nil {
						features = strconv.Itoa(n.FeatureVersion)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", n.ID, role, orDash(n.APIAddr), version, features)
				}
			})
		},
	}
	addOutputFlag(c)
	return c
}

func devicesCmd() *cobra.Command {
	c := &cobra.Command{Use: "devices", Short: "Query the device registry and change device states"}
	var f server.DeviceFilter
	var pg pageFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List devices by ID, one page at a time (filters combine with AND)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.State != "" {
				if err := cluster.CheckDeviceState(f.State); err != nil {
					return fmt.Errorf("--state: %w", err)
				}
			}
			devs, err := collect(&pg, cmd, "devices", func(cursor string) ([]cluster.Device, string, error) {
				return adminClient(cmd).DevicePage(cmd.Context(), f, cursor, pg.limit)
			})
			if err != nil {
				return err
			}
			return render(cmd, devs, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tSTATUS\tGROUP\tMODEL (CLAIMED)\tENROLLMENTS\tLAST ATTESTED\tLABELS\tFLAGS")
				for _, d := range devs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.ID, d.Status, orDash(d.Group), orDash(d.Claims.Model), d.Enrollments, timeOrDash(d.LastAttestedAt), labelString(d.Labels), flagString(d))
				}
			})
		},
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one device",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := adminClient(cmd).Device(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return render(cmd, d, func(w io.Writer) { printDevice(w, d) })
		},
	}
	list.Flags().StringVar(&f.State, "state", "", "only devices in this state ("+strings.Join(cluster.DeviceStates(), ", ")+")")
	list.Flags().StringVar(&f.Group, "group", "", "only devices in this enrollment group")
	list.Flags().StringArrayVar(&f.Labels, "label", nil, "only devices with this label, KEY=VALUE (repeat: all must match)")
	list.Flags().StringArrayVar(&f.Flags, "flag", nil, "only devices with this flag raised ("+strings.Join(cluster.DeviceFlags(), ", ")+"; repeat: all must match)")
	list.Flags().StringVar(&f.Model, "model", "", "only devices that claim this model")
	pg.add(list)
	addOutputFlag(list)
	addOutputFlag(show)
	c.AddCommand(list, show, labelCmd())
	for _, op := range cluster.Ops() {
		c.AddCommand(deviceOpCmd(op))
	}
	return c
}

// deviceOpCmd is `devices approve|disable|enable|quarantine|delete ID --reason R`.
func deviceOpCmd(op string) *cobra.Command {
	var reason string
	c := &cobra.Command{
		Use:   op + " ID --reason TEXT",
		Short: strings.ToUpper(op[:1]) + op[1:] + " a device (recorded with you as the actor and the reason)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return fmt.Errorf("--reason is required: every state change is recorded with why")
			}
			d, err := adminClient(cmd).TransitionDevice(cmd.Context(), args[0], op, actor(), reason)
			if err != nil {
				return err
			}
			return render(cmd, d, func(w io.Writer) { fmt.Fprintf(w, "device %s is now %s\n", d.ID, d.Status) })
		},
	}
	c.Flags().StringVar(&reason, "reason", "", "why (required)")
	addOutputFlag(c)
	return c
}

func printDevice(w io.Writer, d server.DeviceDetail) {
	fmt.Fprintf(w, "device:\t%s\n", d.ID)
	fmt.Fprintf(w, "status:\t%s\n", d.Status)
	path := make([]string, len(d.Path))
	for i, p := range d.Path {
		path[i] = server.PathDescription(p)
	}
	fmt.Fprintf(w, "path:\t%s\n", orDash(strings.Join(path, " → ")))
	fmt.Fprintf(w, "enrolled:\t%s (%d enrollments, last %s)\n", d.EnrolledAt.Format(time.RFC3339), d.Enrollments, d.LastEnrolledAt.Format(time.RFC3339))
	fmt.Fprintf(w, "certificate serial:\t%s\n", d.CertificateSerial)
	fmt.Fprintf(w, "last attestation:\t%d\n", d.LastAttestationID)
	fmt.Fprintf(w, "group:\t%s (mode %s, policy v%d)\n", orDash(d.Group), orDash(d.Mode), d.PolicyVersion)
	printEK(w, &d.EK)
	fmt.Fprintf(w, "AK sha256:\t%s\n", d.AKPublicSHA256)
	fmt.Fprintf(w, "claims (untrusted):\tserial=%s model=%s firmware=%s\n", orDash(d.Claims.Serial), orDash(d.Claims.Model), orDash(d.Claims.FirmwareVersion))
	fmt.Fprintf(w, "last attested:\t%s\n", timeOrDash(d.LastAttestedAt))
	if d.Stale {
		fmt.Fprintln(w, "stale:\tyes (missed its group's re-attestation interval)")
	}
	fmt.Fprintf(w, "certificates:\t%s (newest expires %s)\n", strings.Join(d.Serials, ", "), timeOrDash(d.CertificateNotAfter))
	fmt.Fprintf(w, "labels:\t%s\n", labelString(d.Labels))
	if d.ConfigVersion > 0 {
		fmt.Fprintf(w, "config override:\tv%d %s\n", d.ConfigVersion, d.Config)
	}
	for _, f := range d.Flags {
		fmt.Fprintf(w, "flag:\t%s %s (attestation %d): %s\n", f.Time.Format(time.RFC3339), f.Name, f.AttestationID, f.Detail)
	}
	for _, h := range d.History {
		fmt.Fprintf(w, "history:\t%s %s: %s → %s by %s: %s\n", h.Time.Format(time.RFC3339), h.Op, h.From, h.To, h.Actor, h.Reason)
	}
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func flagString(d cluster.Device) string {
	var names []string
	for _, f := range d.Flags {
		if !slices.Contains(names, f.Name) {
			names = append(names, f.Name)
		}
	}
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ",")
}

func printEK(w io.Writer, ek *cluster.EKInfo) {
	if ek == nil {
		return
	}
	fmt.Fprintf(w, "EK public sha256:\t%s\n", ek.PublicSHA256)
	if ek.CertificateSHA256 != "" {
		fmt.Fprintf(w, "EK certificate:\tissuer %s, serial %s\n", ek.Issuer, ek.Serial)
		fmt.Fprintf(w, "TPM:\tmanufacturer %s, model %s, version %s\n", orDash(ek.Manufacturer), orDash(ek.Model), orDash(ek.Version))
	}
}

func attestationsCmd() *cobra.Command {
	c := &cobra.Command{Use: "attestations", Short: "Query attestation records"}
	var f server.AttestationFilter
	var since, until string
	var pg pageFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List attestation records, newest first, one page at a time (filters combine with AND)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if f.Since, f.Until, err = parseWindow(since, until); err != nil {
				return err
			}
			recs, err := collect(&pg, cmd, "records", func(cursor string) ([]cluster.AttestationRecord, string, error) {
				return adminClient(cmd).AttestationPage(cmd.Context(), f, cursor, pg.limit)
			})
			if err != nil {
				return err
			}
			return render(cmd, recs, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tTIME\tSTAGE\tOUTCOME\tCODE\tDEVICE")
				for _, r := range recs {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Time.Format(time.RFC3339), r.Stage, r.Outcome, orDash(r.Code), orDash(r.DeviceID))
				}
			})
		},
	}
	list.Flags().StringVar(&f.Device, "device", "", "only this device's records")
	list.Flags().StringVar(&f.Outcome, "outcome", "", "only records with this outcome ("+strings.Join(cluster.Outcomes(), ", ")+")")
	list.Flags().StringVar(&f.Code, "code", "", "only records refused with this problem code, e.g. pcr_mismatch")
	list.Flags().StringVar(&f.Group, "group", "", "only records whose policy decision names this group")
	list.Flags().StringVar(&since, "since", "", "only records at or after this time: RFC 3339, or a duration back from now (24h)")
	list.Flags().StringVar(&until, "until", "", "only records at or before this time: RFC 3339, or a duration back from now")
	pg.add(list)
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show what one attestation proved, and why it passed or failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("attestation IDs are positive integers: %q", args[0])
			}
			r, err := adminClient(cmd).Attestation(cmd.Context(), id)
			if err != nil {
				return err
			}
			return render(cmd, r, func(w io.Writer) { printAttestation(w, r) })
		},
	}
	addOutputFlag(list)
	addOutputFlag(show)
	c.AddCommand(list, show, evidenceCmd(), verifyAttestationCmd())
	return c
}

func evidenceCmd() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "evidence ID --out FILE",
		Short: "Save an attestation's evidence bundle (record, raw TPM evidence, event log, policy) for offline re-checking",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("attestation IDs are positive integers: %q", args[0])
			}
			b, err := adminClient(cmd).Evidence(cmd.Context(), id)
			if err != nil {
				return err
			}
			data, err := json.MarshalIndent(b, "", "  ")
			if err != nil {
				return err
			}
			return os.WriteFile(out, append(data, '\n'), 0o600)
		},
	}
	c.Flags().StringVar(&out, "out", "", "file to write")
	_ = c.MarkFlagRequired("out")
	return c
}

func verifyAttestationCmd() *cobra.Command {
	var bundle string
	var ekRoots, allowNoEvidence []string
	c := &cobra.Command{
		Use:   "verify [ID | --bundle FILE] [--ek-roots FILE]",
		Short: "Re-check a past decision from its evidence alone (EK chain, AK, quote, event log, certify, CSR, policy)",
		Long: "Re-check a past decision from its evidence alone. With an ID, the evidence and the manufacturer CA set " +
			"come from the cluster (the set it serves, as 'ekroots list' shows; --ek-roots files are added to it). " +
			"With --bundle (offline), the shipped bundle plus --ek-roots files are the manufacturer CAs.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var b server.EvidenceBundle
			online := false
			switch {
			case bundle != "" && len(args) == 0:
				data, err := os.ReadFile(bundle)
				if err != nil {
					return err
				}
				if err := json.Unmarshal(data, &b); err != nil || b.Format != server.EvidenceFormat {
					return fmt.Errorf("%s: not a %s bundle", bundle, server.EvidenceFormat)
				}
			case bundle == "" && len(args) == 1:
				id, err := strconv.ParseUint(args[0], 10, 64)
				if err != nil {
					return fmt.Errorf("attestation IDs are positive integers: %q", args[0])
				}
				if b, err = adminClient(cmd).Evidence(cmd.Context(), id); err != nil {
					return err
				}
				online = true
			default:
				return fmt.Errorf("give an attestation ID or --bundle FILE")
			}
			var rootsPEM []byte
			var err error
			if online {
				rootsPEM, err = servedEKRoots(cmd, ekRoots, allowNoEvidence)
			} else {
				rootsPEM, err = manufacturerRoots(ekRoots, false, allowNoEvidence)
			}
			if err != nil {
				return err
			}
			roots, err := attest.ParseCertificates(rootsPEM)
			if err != nil {
				return err
			}
			rep := server.Recheck(b, roots, attest.EKRootsOptions(rootsPEM)...)
			if err := render(cmd, rep, func(w io.Writer) {
				fmt.Fprintf(w, "attestation %d, recorded %s\n", rep.AttestationID, strings.ToUpper(rep.Outcome))
				fmt.Fprintln(w, "CHECK\tRECORDED\tRECHECK\tAGREES\tDETAIL")
				for _, r := range rep.Results {
					agree := "yes"
					if !r.Agrees {
						agree = "NO"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Check, r.Recorded, r.Recheck, agree, r.Detail)
				}
				if rep.Reproduced {
					fmt.Fprintln(w, "result:\tthe recorded decision is reproduced from the evidence")
				} else {
					fmt.Fprintln(w, "result:\tNOT REPRODUCED")
				}
			}); err != nil {
				return err
			}
			if !rep.Reproduced {
				return fmt.Errorf("attestation %d: the evidence does not reproduce the recorded decision", rep.AttestationID)
			}
			return nil
		},
	}
	c.Flags().StringVar(&bundle, "bundle", "", "bundle `FILE` saved by \"attestations evidence\" (offline)")
	c.Flags().StringSliceVar(&ekRoots, "ek-roots", nil, "manufacturer CA files to trust besides the shipped bundle (offline) or the served set (online)")
	c.Flags().StringArrayVar(&allowNoEvidence, "ek-allow-no-tpm-evidence", nil, "subject of a manufacturer CA whose EK certificates may carry no TPM evidence (as at init); repeatable")
	addOutputFlag(c)
	return c
}

func printAttestation(w io.Writer, r cluster.AttestationRecord) {
	fmt.Fprintf(w, "attestation:\t%d\n", r.ID)
	fmt.Fprintf(w, "outcome:\t%s (stage %s)\n", strings.ToUpper(r.Outcome), r.Stage)
	if r.Code != "" {
		fmt.Fprintf(w, "code:\t%s\n", r.Code)
		fmt.Fprintf(w, "reason:\t%s\n", r.Reason)
	}
	fmt.Fprintf(w, "time:\t%s (node %s)\n", r.Time.Format(time.RFC3339Nano), r.Node)
	fmt.Fprintf(w, "device:\t%s\n", orDash(r.DeviceID))
	fmt.Fprintf(w, "session:\t%s\n", orDash(r.SessionID))
	if r.CertificateSerial != "" {
		fmt.Fprintf(w, "certificate serial:\t%s\n", r.CertificateSerial)
	}
	if len(r.Checks) > 0 {
		fmt.Fprintln(w, "checks:")
		for _, c := range r.Checks {
			mark := "FAIL"
			if c.Passed {
				mark = "ok"
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\n", mark, c.Name, c.Detail)
		}
	}
	if r.Policy != nil {
		printDecision(w, r.Policy)
	}
	e := r.Evidence
	fmt.Fprintln(w, "evidence:")
	printEK(w, e.EK)
	if e.AKPublicSHA256 != "" {
		fmt.Fprintf(w, "AK:\t%s sha256 %s\n", e.AKAlgorithm, e.AKPublicSHA256)
	}
	if e.Nonce != "" {
		fmt.Fprintf(w, "nonce:\t%s\n", e.Nonce)
	}
	for _, g := range groupPCRs(e.PCRs) {
		fmt.Fprintf(w, "PCR %s[%s]:\t%s\n", e.PCRBank, g.indexes, g.digest)
	}
	if e.EventLogSHA256 != "" {
		fmt.Fprintf(w, "event log:\t%d events, sha256 %s\n", e.EventLogEvents, e.EventLogSHA256)
	}
	if e.DeviceKeySHA256 != "" {
		fmt.Fprintf(w, "device key:\t%s sha256 %s\n", e.DeviceKeyAlgorithm, e.DeviceKeySHA256)
	}
	fmt.Fprintf(w, "claims (untrusted):\tserial=%s model=%s firmware=%s\n", orDash(e.Claims.Serial), orDash(e.Claims.Model), orDash(e.Claims.FirmwareVersion))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type pcrGroup struct{ indexes, digest string }

// groupPCRs folds PCRs with the same value into one line ("0-7,23"), so
// the unextended ones do not drown the interesting ones.
func groupPCRs(pcrs []cluster.PCRValue) []pcrGroup {
	var groups []pcrGroup
	byDigest := map[string][]int{}
	var order []string
	for _, p := range pcrs {
		if _, ok := byDigest[p.Digest]; !ok {
			order = append(order, p.Digest)
		}
		byDigest[p.Digest] = append(byDigest[p.Digest], p.Index)
	}
	for _, d := range order {
		groups = append(groups, pcrGroup{indexes: ranges(byDigest[d]), digest: d})
	}
	return groups
}

func ranges(idx []int) string {
	var parts []string
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && idx[j+1] == idx[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", idx[i], idx[j]))
		} else {
			parts = append(parts, strconv.Itoa(idx[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// pageFlags are a list command's --limit, --cursor and --all.
type pageFlags struct {
	limit  int
	cursor string
	all    bool
}

func (p *pageFlags) add(c *cobra.Command) {
	c.Flags().IntVar(&p.limit, "limit", cluster.DefaultPageLimit, fmt.Sprintf("at most this many per page (at most %d)", cluster.MaxPageLimit))
	c.Flags().StringVar(&p.cursor, "cursor", "", "continue where a previous page ended (as it said)")
	c.Flags().BoolVar(&p.all, "all", false, "follow every page")
}

// collect fetches one page, or with --all every page; after one page of
// several it says on stderr how to get the next, so that -o json stays a
// plain array.
func collect[T any](p *pageFlags, cmd *cobra.Command, what string, page func(cursor string) ([]T, string, error)) ([]T, error) {
	out := []T{}
	for cursor := p.cursor; ; {
		items, next, err := page(cursor)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if next == "" {
			return out, nil
		}
		if !p.all {
			fmt.Fprintf(cmd.ErrOrStderr(), "more %s follow: run again with --cursor %s (or --all for every page)\n", what, next)
			return out, nil
		}
		cursor = next
	}
}

// parseWhen reads an RFC 3339 time or a duration back from now; "" is zero.
// parseWindow reads --since and --until (parseWhen each).
func parseWindow(since, until string) (from, to time.Time, err error) {
	if from, err = parseWhen(since); err != nil {
		return from, to, fmt.Errorf("--since: %w", err)
	}
	if to, err = parseWhen(until); err != nil {
		return from, to, fmt.Errorf("--until: %w", err)
	}
	return from, to, nil
}

func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time (2026-11-29T12:00:00Z) or a duration (24h): %q", s)
	}
	return t, nil
}
