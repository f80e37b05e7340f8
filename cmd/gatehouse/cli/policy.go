package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/api"
	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/server"
)

func policyCmd() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Write, inspect and dry-run the enrollment policy"}
	apply := &cobra.Command{
		Use:   "apply FILE",
		Short: "Validate a policy document (FILE, or - for stdin) and commit it as the next version",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := readPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			rec, err := adminClient(cmd).ApplyPolicy(cmd.Context(), actor(), doc)
			if err != nil {
				return err
			}
			return render(cmd, rec, func(w io.Writer) {
				fmt.Fprintf(w, "applied policy v%d (sha256 %s)\n", rec.Version, rec.SHA256)
			})
		},
	}
	var version int
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the policy in force, or one version (-o json: exactly the document policy apply takes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rec, err := adminClient(cmd).Policy(cmd.Context(), version)
			var prob *api.Problem
			if errors.As(err, &prob) && prob.Code == api.CodeNotFound && version == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "no policy applied: the built-in default admits every device whose evidence verifies")
				b, _ := json.MarshalIndent(attest.DefaultPolicy(), "", "  ")
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			if err != nil {
				return err
			}
			if f, _ := cmd.Flags().GetString("output"); f == "json" {
				// The document as applied, which `policy apply` takes back
				// unchanged (same content, same sha256); the record's
				// version, time and actor are in `policy history -o json`.
				var pretty bytes.Buffer
				if err := json.Indent(&pretty, rec.Document, "", "  "); err != nil {
					return err
				}
				_, err := fmt.Fprintln(cmd.OutOrStdout(), pretty.String())
				return err
			}
			return render(cmd, rec, func(w io.Writer) {
				fmt.Fprintf(w, "# policy v%d, applied %s by %s, sha256 %s\n", rec.Version, rec.Time.Format(time.RFC3339), rec.Actor, rec.SHA256)
				var v any
				json.Unmarshal(rec.Document, &v)
				b, _ := json.MarshalIndent(v, "", "  ")
				fmt.Fprintln(w, string(b))
			})
		},
	}
	show.Flags().IntVar(&version, "version", 0, "this version instead of the one in force")
	history := &cobra.Command{
		Use:   "history",
		Short: "List every applied policy version, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			recs, err := adminClient(cmd).PolicyHistory(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, recs, func(w io.Writer) {
				fmt.Fprintln(w, "VERSION\tAPPLIED\tBY\tGROUPS\tSHA256")
				for _, r := range recs {
					var p attest.Policy
					json.Unmarshal(r.Document, &p)
					var names []string
					for _, g := range p.Groups {
						names = append(names, g.Name)
					}
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", r.Version, r.Time.Format(time.RFC3339), r.Actor, strings.Join(names, ","), r.SHA256[:16])
				}
			})
		},
	}
	test := &cobra.Command{
		Use:   "test FILE",
		Short: "Dry-run a candidate policy (FILE, or - for stdin) against every device's stored evidence",
		Long: "Judges the newest verified evidence of every device (the PCRs it quoted and the event log it sent)\n" +
			"under the candidate policy and reports who would pass or fail, and why. Nothing is enforced or written.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := readPolicyFile(cmd, args[0])
			if err != nil {
				return err
			}
			res, err := adminClient(cmd).TestPolicy(cmd.Context(), doc)
			if err != nil {
				return err
			}
			return render(cmd, res, func(w io.Writer) { printDryRun(w, res) })
		},
	}
	var device, group string
	capture := &cobra.Command{
		Use:   "capture --device ID",
		Short: "Draft a policy from a device's accepted evidence (prints JSON to edit, test and apply)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if device == "" {
				return errors.New("--device is required")
			}
			doc, err := adminClient(cmd).CapturePolicy(cmd.Context(), device, group)
			if err != nil {
				return err
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, doc, "", "  "); err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), pretty.String())
			return err
		},
	}
	capture.Flags().StringVar(&device, "device", "", "device ID")
	capture.Flags().StringVar(&group, "group", "", "name of the drafted group (default captured-<id prefix>)")
	for _, s := range []*cobra.Command{apply, show, history, test} {
		addOutputFlag(s)
	}
	c.AddCommand(apply, show, history, test, capture)
	return c
}

// readPolicyFile reads (- for stdin) and validates a policy locally, so a
// typo is reported before anything reaches the cluster.
func readPolicyFile(cmd *cobra.Command, path string) ([]byte, error) {
	doc, err := readFileOrStdin(cmd.InOrStdin(), path)
	if err != nil {
		return nil, err
	}
	if _, err := attest.ParsePolicy(doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return doc, nil
}

// actor names who applied a policy: the local OS user, since the admin
// socket is reachable only by the appliance's own users.
func actor() string {
	if u, err := user.Current(); err == nil {
		return "local:" + u.Username
	}
	return fmt.Sprintf("local:uid=%d", os.Getuid())
}

func printDryRun(w io.Writer, res []server.DryRunResult) {
	pass := 0
	fmt.Fprintln(w, "DEVICE\tNOW\tWOULD\tGROUP\tWHY")
	for _, r := range res {
		would := "fail"
		if r.Decision.Passed {
			would, pass = "pass", pass+1
		}
		why := "-"
		for _, o := range r.Decision.Outcomes {
			if !o.Passed {
				why = o.Rule + ": " + o.Detail
				break
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.DeviceID, r.Current, would, orDash(r.Decision.Group), why)
	}
	fmt.Fprintf(w, "\n%d devices: %d would pass, %d would fail\n", len(res), pass, len(res)-pass)
}

func printDecision(w io.Writer, d *attest.Decision) {
	verdict := "REFUSED"
	if d.Passed {
		verdict = "passed"
	}
	fmt.Fprintf(w, "policy:\tv%d, group %s, mode %s: %s\n", d.PolicyVersion, orDash(d.Group), orDash(d.Mode), verdict)
	for _, o := range d.Outcomes {
		mark := "FAIL"
		if o.Passed {
			mark = "ok"
		}
		if len(o.PCRs) == 0 {
			fmt.Fprintf(w, "  %s\t%s\t%s\n", mark, o.Rule, o.Detail)
			continue
		}
		fmt.Fprintf(w, "  %s\t%s\t%d PCRs differ from the golden values\n", mark, o.Rule, len(o.PCRs))
		for _, e := range o.PCRs {
			fmt.Fprintf(w, "    PCR %d (%s)\texpected %s\n", e.Index, e.Bank, e.Expected)
			fmt.Fprintf(w, "    \tactual   %s\n", orDash(e.Actual))
			if ev := e.Event; ev != nil {
				what := ev.Type
				if ev.Description != "" {
					what += ": " + ev.Description
				}
				if ev.Number >= 0 {
					fmt.Fprintf(w, "    event %d\t%s\n", ev.Number, what)
				} else {
					fmt.Fprintf(w, "    missing event\t%s\n", what)
				}
				fmt.Fprintf(w, "    \treference digest %s\n", orDash(ev.Expected))
				fmt.Fprintf(w, "    \tdevice digest    %s\n", orDash(ev.Actual))
			}
		}
	}
}

func eventlogCmd() *cobra.Command {
	c := &cobra.Command{Use: "eventlog", Short: "Work with TCG event logs offline"}
	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Parse an event log: events, facts, replayed PCRs per bank, problems",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			rep := inspectEventLog(b)
			if err := render(cmd, rep, func(w io.Writer) { printEventLog(w, rep) }); err != nil {
				return err
			}
			if rep.Events == nil && len(rep.Errors) > 0 {
				return errors.New(rep.Errors[0])
			}
			return nil
		},
	}
	addOutputFlag(inspect)
	c.AddCommand(inspect)
	return c
}

// eventLogReport is `eventlog inspect -o json`.
type eventLogReport struct {
	// Banks are every bank the log declares, in its order: those the
	// parser replays with their PCRs, the others with a note saying why not.
	Banks        []bankReport                 `json:"banks"`
	Events       []attest.LogEvent            `json:"events"`
	Facts        *attest.Facts                `json:"facts,omitempty"`
	ReplayedPCRs map[string]map[string]string `json:"replayed_pcrs"` // the replayed banks' PCRs, as in Banks
	Errors       []string                     `json:"errors"`
}

type bankReport struct {
	attest.BankInfo
	ReplayedPCRs map[string]string `json:"replayed_pcrs,omitempty"`
}

func inspectEventLog(b []byte) eventLogReport {
	rep := eventLogReport{ReplayedPCRs: map[string]map[string]string{}, Errors: []string{}}
	l, err := attest.ParseEventLog(b)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return rep
	}
	rep.Events, rep.Facts = l.Events, &l.Facts
	rep.Errors = append(rep.Errors, l.Problems...)
	for _, bi := range l.BankInfo {
		br := bankReport{BankInfo: bi}
		if pcrs := l.Replay(bi.Name); bi.Replayable && pcrs != nil {
			br.ReplayedPCRs = map[string]string{}
			for i, d := range pcrs {
				br.ReplayedPCRs[fmt.Sprint(i)] = fmt.Sprintf("%x", d)
			}
			rep.ReplayedPCRs[bi.Name] = br.ReplayedPCRs
		}
		rep.Banks = append(rep.Banks, br)
	}
	return rep
}

func printEventLog(w io.Writer, rep eventLogReport) {
	if rep.Events == nil {
		fmt.Fprintf(w, "error:\t%s\n", strings.Join(rep.Errors, "; "))
		return
	}
	fmt.Fprintln(w, "#\tPCR\tTYPE\tDESCRIPTION")
	for _, e := range rep.Events {
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\n", e.Number, e.PCR, e.Type, e.Description)
	}
	f := rep.Facts
	fmt.Fprintln(w, "\nfacts:")
	sb := "not stated"
	if f.SecureBoot != nil {
		sb = map[bool]string{true: "on", false: "off"}[*f.SecureBoot]
	}
	fmt.Fprintf(w, "  Secure Boot:\t%s\n", sb)
	fmt.Fprintf(w, "  S-CRTM version:\t%s\n", orDash(f.SCRTMVersion))
	fmt.Fprintf(w, "  startup locality:\t%d\n", f.StartupLocality)
	fmt.Fprintf(w, "  PK:\t%s\n", orDash(strings.Join(f.PK, "; ")))
	fmt.Fprintf(w, "  KEK:\t%s\n", orDash(strings.Join(f.KEK, "; ")))
	fmt.Fprintf(w, "  db:\t%s\n", orDash(strings.Join(f.DB, "; ")))
	fmt.Fprintf(w, "  dbx entries:\t%d\n", f.DBXEntries)
	fmt.Fprintf(w, "  authorities used:\t%s\n", orDash(strings.Join(f.Authorities, "; ")))
	for _, a := range f.BootApps {
		fmt.Fprintf(w, "  boot application:\tevent %d %s sha256 %s\n", a.Event, orDash(a.Path), orDash(a.Digests["sha256"]))
	}
	for _, a := range f.Drivers {
		fmt.Fprintf(w, "  driver / option ROM:\tevent %d %s sha256 %s\n", a.Event, orDash(a.Path), orDash(a.Digests["sha256"]))
	}
	for _, br := range rep.Banks {
		bank := br.Name
		if !br.Replayable {
			fmt.Fprintf(w, "\nnot replayed %s:\t%s\n", bank, br.Note)
			continue
		}
		fmt.Fprintf(w, "\nreplayed %s:\n", bank)
		idx := make([]int, 0, len(rep.ReplayedPCRs[bank]))
		for k := range rep.ReplayedPCRs[bank] {
			var i int
			fmt.Sscan(k, &i)
			idx = append(idx, i)
		}
		sort.Ints(idx)
		for _, i := range idx {
			fmt.Fprintf(w, "  PCR %d:\t%s\n", i, rep.ReplayedPCRs[bank][fmt.Sprint(i)])
		}
	}
	for _, e := range rep.Errors {
		fmt.Fprintf(w, "\nproblem:\t%s\n", e)
	}
}

func ekcertCmd() *cobra.Command {
	c := &cobra.Command{Use: "ekcert", Short: "Work with EK certificates offline"}
	var rootsDir, at string
	var allowNoEvidence []string
	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show an EK certificate's TPM manufacturer, model and version, and whether it chains to a manufacturer CA",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			roots, err := inspectRoots(rootsDir)
			if err != nil {
				return err
			}
			var opts []attest.EKOption
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return fmt.Errorf("--at: %w", err)
				}
				opts = append(opts, attest.WithVerifyTime(t))
			}
			if len(allowNoEvidence) > 0 {
				o, err := attest.NoTPMEvidenceIssuers(roots, allowNoEvidence)
				if err != nil {
					return fmt.Errorf("--ek-allow-no-tpm-evidence: %w", err)
				}
				opts = append(opts, o)
			}
			rep, err := inspectEKCert(b, roots, opts...)
			if err != nil {
				return err
			}
			return render(cmd, rep, func(w io.Writer) {
				fmt.Fprintf(w, "subject:\t%s\nissuer:\t%s\nserial:\t%s\nvalid:\t%s to %s\n", rep.Subject, rep.Issuer, rep.Serial, rep.NotBefore.Format(time.RFC3339), rep.NotAfter.Format(time.RFC3339))
				fmt.Fprintf(w, "TPM:\tmanufacturer %s, model %s, version %s\n", orDash(rep.Manufacturer), orDash(rep.Model), orDash(rep.Version))
				fmt.Fprintf(w, "key:\t%s, sha256 %s\nEK usage (2.23.133.8.1):\t%v\n", rep.KeyAlgorithm, rep.PublicSHA256, rep.EKUsage)
				if rep.Chain.Verified {
					fmt.Fprintf(w, "chain:\tverified to %s\n", rep.Chain.Root)
				} else {
					fmt.Fprintf(w, "chain:\tNOT verified: %s\n", rep.Chain.Error)
				}
			})
		},
	}
	inspect.Flags().StringVar(&at, "at", "", "check validity periods at this RFC 3339 time instead of now (e.g. when the device enrolled)")
	inspect.Flags().StringVar(&rootsDir, "roots", "", "directory (searched recursively) of PEM/DER CA certificates to chain to (default: the shipped manufacturer bundle)")
	inspect.Flags().StringArrayVar(&allowNoEvidence, "ek-allow-no-tpm-evidence", nil, "subject of a CA whose EK certificates may carry no TPM evidence (as at init); repeatable")
	addOutputFlag(inspect)
	c.AddCommand(inspect)
	return c
}

type chainVerdict struct {
	Verified bool   `json:"verified"`
	Root     string `json:"root,omitempty"`
	Error    string `json:"error,omitempty"`
}

// ekCertReport is `ekcert inspect -o json`.
type ekCertReport struct {
	Subject      string       `json:"subject"`
	Issuer       string       `json:"issuer"`
	Serial       string       `json:"serial"`
	NotBefore    time.Time    `json:"not_before"`
	NotAfter     time.Time    `json:"not_after"`
	Manufacturer string       `json:"manufacturer,omitempty"`
	Model        string       `json:"model,omitempty"`
	Version      string       `json:"version,omitempty"`
	KeyAlgorithm string       `json:"key_algorithm"`
	PublicSHA256 string       `json:"public_sha256"`
	EKUsage      bool         `json:"ek_usage"`
	Chain        chainVerdict `json:"chain"`
}

func inspectRoots(dir string) ([]*x509.Certificate, error) {
	if dir == "" {
		return attest.ParseCertificates(attest.ManufacturerRootsPEM())
	}
	var certs []*x509.Certificate
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if cs, err := attest.LoadCertificates(path); err == nil {
			certs = append(certs, cs...)
		} // else not a certificate file (a README, an index)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no certificates in %s", dir)
	}
	return certs, nil
}

func inspectEKCert(b []byte, roots []*x509.Certificate, opts ...attest.EKOption) (*ekCertReport, error) {
	if certs, err := attest.ParseCertificates(b); err == nil && len(certs) > 0 && isPEM(b) {
		b = certs[0].Raw
	}
	ek, err := attest.ParseEKCertificate(b)
	if err != nil {
		return nil, err
	}
	c := ek.Cert
	sum, _ := attest.PublicKeySHA256(c.PublicKey)
	rep := &ekCertReport{
		Subject: attest.Name(c.Subject), Issuer: attest.Name(c.Issuer), Serial: c.SerialNumber.Text(16),
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, Manufacturer: ek.Manufacturer, Model: ek.Model, Version: ek.Version,
		KeyAlgorithm: c.PublicKeyAlgorithm.String(), PublicSHA256: sum, EKUsage: ek.HasEKUsage(),
	}
	chain, err := attest.NewEKVerifier(roots, opts...).Verify(ek)
	if err != nil {
		rep.Chain.Error = err.Error()
	} else {
		rep.Chain.Verified, rep.Chain.Root = true, attest.Name(chain[len(chain)-1].Subject)
	}
	return rep, nil
}

func isPEM(b []byte) bool { return strings.Contains(string(b[:min(len(b), 4096)]), "-----BEGIN") }
