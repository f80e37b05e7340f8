package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.step.sm/crypto/pemutil"

	"github.com/gatehouse-dev/gatehouse/cluster"
	"github.com/gatehouse-dev/gatehouse/server"
)

// labelCmd is `devices label ID key=value... [--remove key]`.
func labelCmd() *cobra.Command {
	var remove []string
	c := &cobra.Command{
		Use:   "label ID [KEY=VALUE...] [--remove KEY]",
		Short: "Set or remove labels on a device (policies match on them)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set := map[string]string{}
			for _, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("%q is not KEY=VALUE", kv)
				}
				set[k] = v
			}
			if len(set) == 0 && len(remove) == 0 {
				return errors.New("nothing to change: give KEY=VALUE pairs or --remove KEY")
			}
			d, err := adminClient(cmd).LabelDevice(cmd.Context(), args[0], actor(), set, remove)
			if err != nil {
				return err
			}
			return render(cmd, d, func(w io.Writer) { fmt.Fprintf(w, "device %s labels: %s\n", d.ID, labelString(d.Labels)) })
		},
	}
	c.Flags().StringSliceVar(&remove, "remove", nil, "label keys to remove")
	addOutputFlag(c)
	return c
}

func labelString(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	var parts []string
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func configCmd() *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Device configuration: per group (in the policy) and per device (overrides, merged over the group's)"}
	var device, group string
	target := func() error {
		if (device == "") == (group == "") {
			return errors.New("give exactly one of --device or --group")
		}
		return nil
	}
	show := &cobra.Command{
		Use:   "show --device ID | --group NAME",
		Short: "Show a device's effective configuration (with its sources) or a group's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := target(); err != nil {
				return err
			}
			if group != "" {
				g, err := adminClient(cmd).GroupConfig(cmd.Context(), group)
				if err != nil {
					return err
				}
				return render(cmd, g, func(w io.Writer) {
					fmt.Fprintf(w, "group %s (policy v%d):\n%s\n", g.Group, g.PolicyVersion, indentJSON(g.Config))
				})
			}
			dc, err := adminClient(cmd).DeviceConfig(cmd.Context(), device)
			if err != nil {
				return err
			}
			return render(cmd, dc, func(w io.Writer) {
				e := dc.Effective
				fmt.Fprintf(w, "device %s, group %s (policy v%d), device override v%d\n", e.DeviceID, orDash(e.Group), e.PolicyVersion, e.DeviceVersion)
				fmt.Fprintf(w, "effective:\n%s\ngroup:\n%s\noverride:\n%s\n", indentJSON(e.Configuration), indentJSON(dc.Group), indentJSON(dc.Override))
			})
		},
	}
	set := &cobra.Command{
		Use:   "set --device ID | --group NAME FILE",
		Short: "Replace a device's override or a group's configuration (a JSON object; a group change is a new policy version)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := target(); err != nil {
				return err
			}
			doc, err := readFileOrStdin(cmd.InOrStdin(), args[0])
			if err != nil {
				return err
			}
			if group != "" {
				rec, err := adminClient(cmd).SetGroupConfig(cmd.Context(), group, actor(), doc)
				if err != nil {
					return err
				}
				return render(cmd, rec, func(w io.Writer) { fmt.Fprintf(w, "group %s configured: policy v%d\n", group, rec.Version) })
			}
			d, err := adminClient(cmd).SetDeviceConfig(cmd.Context(), device, actor(), doc)
			if err != nil {
				return err
			}
			return render(cmd, d, func(w io.Writer) { fmt.Fprintf(w, "device %s override v%d\n", d.ID, d.ConfigVersion) })
		},
	}
	for _, sub := range []*cobra.Command{show, set} {
		sub.Flags().StringVar(&device, "device", "", "device ID")
		sub.Flags().StringVar(&group, "group", "", "enrollment group")
		addOutputFlag(sub)
	}
	c.AddCommand(show, set)
	return c
}

func indentJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Indent(&buf, b, "  ", "  ") != nil {
		return "  " + string(b)
	}
	return "  " + buf.String()
}

// readFileOrStdin reads path, or stdin for "-".
func readFileOrStdin(stdin io.Reader, path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(path)
}

func auditCmd() *cobra.Command {
	c := &cobra.Command{Use: "audit", Short: "The hash-chained, signed audit log"}
	var since, format, out string
	export := &cobra.Command{
		Use:   "export [--since T] [--format jsonl|csv] [--out FILE]",
		Short: "Sign the head, then write the log (ending on that checkpoint)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var t time.Time
			if since != "" {
				var err error
				if t, err = time.Parse(time.RFC3339, since); err != nil {
					return fmt.Errorf("--since: want an RFC 3339 time such as 2026-11-01T00:00:00Z: %w", err)
				}
			}
			w := cmd.OutOrStdout()
			var bar *progress // only beside a file: on stdout the export is the output
			if out != "" {
				f, err := os.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				bar = newProgress(cmd, "export")
				w = bar.writer(f, -1)
			}
			err := adminClient(cmd).ExportAudit(cmd.Context(), t, format, w)
			bar.done()
			return err
		},
	}
	export.Flags().StringVar(&since, "since", "", "only entries at or after this time (RFC 3339)")
	export.Flags().StringVar(&format, "format", cluster.AuditJSONL, "jsonl or csv")
	export.Flags().StringVar(&out, "out", "", "write to this file instead of stdout")

	var rootFile, keyCert, expectHead string
	verify := &cobra.Command{
		Use:   "verify FILE --root ROOT.crt [--key-cert CHAIN.pem] [--expect-head HEAD.json|SINK.jsonl|-]",
		Short: "Verify an export offline: every hash, link, checkpoint and the signed range; report what was changed, removed, reordered or cut, and where",
		Long: `Verify an export offline against the root you trust: every hash and link,
every checkpoint signature, and the signed range that ends the export
(entries cut from its start are reported as truncated_head, from its end as
truncated_tail). With --expect-head, also compare it with signed heads you
kept: the output of "audit head -o json", or a checkpoint sink file (one
head per line); an export that ends before one of them is truncated_tail,
one whose entry differs from it head_mismatch.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var heads []cluster.AuditRange
			if expectHead != "" {
				b, err := readFileOrStdin(cmd.InOrStdin(), expectHead)
				if err != nil {
					return err
				}
				if heads, err = cluster.ReadAuditHeads(b); err != nil {
					return fmt.Errorf("--expect-head %s: %w", expectHead, err)
				}
			}
			rep, anchor, err := verifyAuditFile(args[0], rootFile, keyCert, cluster.ExpectHeads(heads...))
			if err != nil {
				return err
			}
			if err := render(cmd, rep, func(w io.Writer) {
				fmt.Fprintf(w, "entries:\t%d (seq %d..%d)\n", rep.Entries, rep.FirstSeq, rep.LastSeq)
				fmt.Fprintf(w, "checkpoints:\t%d valid, signed up to seq %d\n", rep.Checkpoints, rep.SignedUpTo)
				if r := rep.Range; r != nil {
					fmt.Fprintf(w, "range:\tseq %d..%d of %s, signed %s\n", r.FirstSeq, r.LastSeq, r.TrustDomain, r.Time.Format(time.RFC3339))
				}
				if len(heads) > 0 {
					fmt.Fprintf(w, "heads:\t%d of %d compared\n", rep.HeadsSeen, len(heads))
				}
				fmt.Fprintf(w, "key:\t%s\n", anchor)
				for _, p := range rep.Problems {
					fmt.Fprintf(w, "PROBLEM\t%s\n", p)
				}
				if rep.OK() {
					fmt.Fprintln(w, "result:\tOK")
				} else {
					fmt.Fprintf(w, "result:\tFAILED (%d problems)\n", len(rep.Problems))
				}
			}); err != nil {
				return err
			}
			if !rep.OK() {
				return fmt.Errorf("%s: %d problems", args[0], len(rep.Problems))
			}
			return nil
		},
	}
	verify.Flags().StringVar(&rootFile, "root", "", "the appliance root certificate you trust (PEM); required")
	verify.Flags().StringVar(&keyCert, "key-cert", "", "audit key certificate chain `FILE` (PEM), for CSV exports (from \"gatehouse audit key\")")
	verify.Flags().StringVar(&expectHead, "expect-head", "", "`FILE` of signed heads you kept (\"audit head -o json\", or a checkpoint sink file; - for stdin): the export must reach each")
	_ = verify.MarkFlagRequired("root")
	addOutputFlag(verify)

	checkpoint := &cobra.Command{
		Use:   "checkpoint",
		Short: "Sign the audit head now",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			seq, err := adminClient(cmd).Checkpoint(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "checkpoint at seq %d\n", seq)
			return nil
		},
	}
	key := &cobra.Command{
		Use:   "key",
		Short: "Print the audit key's certificate chain (PEM)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := adminClient(cmd).AuditKey(cmd.Context())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	head := &cobra.Command{
		Use:   "head",
		Short: "Print the live head of the audit log, signed by the audit key (keep it: audit verify --expect-head)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := adminClient(cmd).AuditHead(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, h, func(w io.Writer) {
				fmt.Fprintf(w, "trust domain:\t%s\n", h.TrustDomain)
				fmt.Fprintf(w, "seq:\t%d\n", h.LastSeq)
				fmt.Fprintf(w, "hash:\t%s\n", h.LastHash)
				fmt.Fprintf(w, "time:\t%s\n", h.Time.Format(time.RFC3339Nano))
				fmt.Fprintf(w, "key:\t%s\n", h.KeyID)
				fmt.Fprintf(w, "signature:\t%s\n", h.Signature)
			})
		},
	}
	addOutputFlag(head)
	c.AddCommand(export, verify, checkpoint, key, head, auditListCmd())
	return c
}

// auditListCmd is `audit list`: entries filtered and paged by the cluster
// (GET /admin/v1/audit/entries). What it prints is not verified: export
// and `audit verify` for that.
func auditListCmd() *cobra.Command {
	var f server.AuditFilter
	var since, until string
	var pg pageFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit entries, newest first, one page at a time (filters combine with AND; unverified: use export + verify for evidence)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if f.Since, f.Until, err = parseWindow(since, until); err != nil {
				return err
			}
			es, err := collect(&pg, cmd, "entries", func(cursor string) ([]cluster.AuditEntry, string, error) {
				return adminClient(cmd).AuditPage(cmd.Context(), f, cursor, pg.limit)
			})
			if err != nil {
				return err
			}
			return render(cmd, es, func(w io.Writer) {
				fmt.Fprintln(w, "SEQ\tTIME\tTYPE\tACTOR\tSUBJECT")
				for _, e := range es {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.Format(time.RFC3339), e.Type, e.Actor, orDash(e.Subject))
				}
			})
		},
	}
	list.Flags().StringVar(&f.Type, "type", "", "only entries of this type, e.g. device.state")
	list.Flags().StringVar(&f.Actor, "actor", "", "only entries by this actor: whole (admin:olga(operator)) or its name (olga; a device or node ID)")
	list.Flags().StringVar(&f.Device, "device", "", "only enrollment, renewal and device.* entries about this device")
	list.Flags().StringVar(&since, "since", "", "only entries at or after this time: RFC 3339, or a duration back from now (24h)")
	list.Flags().StringVar(&until, "until", "", "only entries at or before this time: RFC 3339, or a duration back from now")
	pg.add(list)
	addOutputFlag(list)
	return list
}

// verifyAuditFile checks an export against the audit key certified under
// the root the auditor trusts. It needs nothing from the appliance.
func verifyAuditFile(path, rootFile, keyCertFile string, opts ...cluster.VerifyOption) (cluster.AuditReport, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return cluster.AuditReport{}, "", err
	}
	defer f.Close()
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		return cluster.AuditReport{}, "", err
	}
	root, err := pemutil.ParseCertificate(rootPEM)
	if err != nil {
		return cluster.AuditReport{}, "", fmt.Errorf("%s: %w", rootFile, err)
	}
	rep, key, err := server.VerifyAuditExport(f, root, func(header []byte) ([]byte, error) {
		if keyCertFile != "" {
			return os.ReadFile(keyCertFile)
		}
		return header, nil
	}, opts...)
	switch {
	case errors.Is(err, server.ErrAuditExportUnreadable):
		return rep, "", fmt.Errorf("%s: %w", path, err)
	case errors.Is(err, server.ErrNoAuditKeyCert):
		return rep, "", fmt.Errorf("%w: a CSV export needs --key-cert (gatehouse audit key)", err)
	case err != nil:
		return rep, "", err
	}
	return rep, fmt.Sprintf("%s (%s)", key, filepath.Base(rootFile)), nil
}

func enrollmentsCmd() *cobra.Command {
	c := &cobra.Command{Use: "enrollments", Short: "Individual enrollments: EKs an operator vouches for one by one"}
	var batch int
	var dryRun bool
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import EK certificates or EK public hashes (CSV or JSON) as individual enrollments",
		Long: `Import individual enrollments. CSV needs a header with ek_certificate
(PEM or base64 DER) and/or ek_public_sha256, group, and optionally labels
("site=lyon;rack=4"). JSON is an array of {"ek_certificate"|"ek_public_sha256",
"group", "labels"}. Every row is checked; the summary lists refused rows
and why, and the command fails when any row was refused (the others are
imported). With --dry-run nothing is written: the summary says what would
be imported and refused. Batches are idempotent (keyed by EK), so a batch
interrupted by a leader change is sent again, with backoff.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if batch <= 0 || batch > server.MaxImportBatch {
				return fmt.Errorf("--batch must be 1..%d", server.MaxImportBatch)
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			rows, err := server.ParseImportFile(f)
			f.Close()
			if err != nil {
				return err
			}
			ac := adminClient(cmd)
			total := server.ImportResult{Accepted: []server.ImportedRow{}, Refused: []server.RefusedRow{}}
			bar := newProgress(cmd, "import")
			retry := server.DefaultRetry
			retry.Notify = func(err error, wait time.Duration) {
				bar.done()
				fmt.Fprintf(cmd.ErrOrStderr(), "%v; sending the batch again in %s\n", err, wait.Round(time.Millisecond))
			}
			ac.Retry = &retry
			for start := 0; start < len(rows); start += batch {
				end := min(start+batch, len(rows))
				res, err := ac.ImportEnrollments(cmd.Context(), actor(), filepath.Base(args[0]), rows[start:end], dryRun)
				if err != nil {
					bar.done()
					return fmt.Errorf("rows %d-%d: %w (rows before them were imported)", rows[start].Row, rows[end-1].Row, err)
				}
				total.Accepted = append(total.Accepted, res.Accepted...)
				total.Refused = append(total.Refused, res.Refused...)
				bar.update(int64(end), int64(len(rows)), "rows")
			}
			bar.done()
			verb := "accepted"
			if dryRun {
				verb = "would accept"
			}
			if err := render(cmd, total, func(w io.Writer) {
				if dryRun {
					fmt.Fprintln(w, "dry run:\tnothing written")
				}
				fmt.Fprintf(w, "rows:\t%d\n%s:\t%d\nrefused:\t%d\n", len(rows), verb, len(total.Accepted), len(total.Refused))
				for _, r := range total.Refused {
					fmt.Fprintf(w, "  row %d:\t%s\n", r.Row, r.Reason)
				}
			}); err != nil {
				return err
			}
			if n := len(total.Refused); n > 0 {
				return fmt.Errorf("%d of %d rows refused (listed above)", n, len(rows))
			}
			return nil
		},
	}
	imp.Flags().IntVar(&batch, "batch", 200, "rows per request (one Raft entry each)")
	imp.Flags().BoolVar(&dryRun, "dry-run", false, "check every row and report what would be imported or refused; write nothing")
	addOutputFlag(imp)
	list := &cobra.Command{
		Use:   "list",
		Short: "List individual enrollments",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := adminClient(cmd).IndividualEnrollments(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, list, func(w io.Writer) {
				fmt.Fprintln(w, "EK PUBLIC SHA256\tGROUP\tLABELS\tSOURCE\tIMPORTED BY")
				for _, e := range list {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.EKPublicSHA256, e.Group, labelString(e.Labels), e.Source, e.ImportedBy)
				}
			})
		},
	}
	addOutputFlag(list)
	var reason string
	del := &cobra.Command{
		Use:   "delete EK-PUBLIC-SHA256 --reason TEXT",
		Short: "Remove an individual enrollment (the EK loses the operator's vouching for future enrollments; audited)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return errors.New("--reason is required: every deletion is recorded with why")
			}
			if err := adminClient(cmd).DeleteEnrollment(cmd.Context(), strings.ToLower(args[0]), actor(), reason); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "individual enrollment %s deleted\n", strings.ToLower(args[0]))
			return nil
		},
	}
	del.Flags().StringVar(&reason, "reason", "", "why (required)")
	c.AddCommand(imp, list, del)
	return c
}
