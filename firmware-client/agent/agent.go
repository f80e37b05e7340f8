// Package agent is the gatehouse-agent command tree: flag parsing around the
// fwclient library.
package agent

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/api"
	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/internal/cmdutil"
)

// Run executes the command line and returns the exit code.
func Run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gatehouse-agent:", err)
		return 1
	}
	return 0
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "gatehouse-agent",
		Short:         "Enroll this device with a Gatehouse appliance using its TPM",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(enrollCmd(), whoamiCmd(), renewCmd(), configCmd(), runCmd(), cmdutil.VersionCmd())
	return root
}

type common struct {
	server, serverRoot, tpm, dir string
}

func (c *common) flags(cmd *cobra.Command, dirFlag string) {
	f := cmd.Flags()
	f.StringVar(&c.server, "server", "", "appliance URL, e.g. https://gatehouse.example:8443")
	f.StringVar(&c.serverRoot, "server-root", "", "PEM file with the appliance root certificate to trust")
	f.StringVar(&c.tpm, "tpm", "/dev/tpmrm0", "TPM: a device path or swtpm://HOST:PORT")
	f.StringVar(&c.dir, dirFlag, "", "identity directory")
	for _, n := range []string{"server", "server-root", dirFlag} {
		_ = cmd.MarkFlagRequired(n)
	}
}

// openIdentity loads the saved identity and opens the client and the TPM.
func (c *common) openIdentity() (*fwclient.Identity, *fwclient.Client, *fwclient.TPM, error) {
	id, err := fwclient.LoadIdentity(c.dir)
	if err != nil {
		return nil, nil, nil, err
	}
	client, tpm, err := c.open()
	return id, client, tpm, err
}

func (c *common) open() (*fwclient.Client, *fwclient.TPM, error) {
	b, err := os.ReadFile(c.serverRoot)
	if err != nil {
		return nil, nil, err
	}
	root, err := parseRoot(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", c.serverRoot, err)
	}
	tpm, err := fwclient.OpenTPM(c.tpm)
	if err != nil {
		return nil, nil, err
	}
	return fwclient.NewClient(c.server, root), tpm, nil
}

func enrollCmd() *cobra.Command {
	var c common
	var force bool
	var wait time.Duration
	var akAlg, eventLog, ek string
	var claims api.Claims
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll: prove the TPM and boot state, obtain a certificate for a TPM-resident key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if !force {
				if id, err := fwclient.LoadIdentity(c.dir); err == nil && id.Valid(time.Now()) {
					fmt.Fprintf(out, "device %s already has a valid certificate (until %s); use --force to enroll again\n", id.DeviceID, id.Certificate.NotAfter.Format(time.RFC3339))
					return nil
				} else if err != nil && !errors.Is(err, fwclient.ErrNoIdentity) {
					return err
				}
			}
			var opts []fwclient.Option
			switch strings.ToLower(akAlg) {
			case "ecdsa":
				opts = append(opts, fwclient.WithAKAlgorithm(attest.ECDSA))
			case "rsa":
				opts = append(opts, fwclient.WithAKAlgorithm(attest.RSA))
			default:
				return fmt.Errorf("--ak must be rsa or ecdsa, not %q", akAlg)
			}
			if eventLog != "" {
				b, err := os.ReadFile(eventLog)
				if err != nil {
					return err
				}
				opts = append(opts, fwclient.WithEventLog(b))
			}
			opts = append(opts, fwclient.WithClaims(claims), fwclient.WithEK(ek))
			client, tpm, err := c.open()
			if err != nil {
				return err
			}
			defer tpm.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var id *fwclient.Identity
			if wait > 0 {
				wctx, cancel := context.WithTimeout(ctx, wait)
				defer cancel()
				id, err = client.EnrollWaiting(wctx, tpm, func(p *api.Pending) {
					fmt.Fprintf(out, "pending approval (device %s, attestation %d): %s; retrying in %ds\n", p.DeviceID, p.AttestationID, p.Detail, p.RetryAfterSeconds)
				}, opts...)
			} else {
				id, err = client.Enroll(ctx, tpm, opts...)
			}
			if err != nil {
				return err
			}
			if err := id.Save(c.dir, c.server); err != nil {
				return fmt.Errorf("save identity: %w", err)
			}
			cert := id.Certificate
			fmt.Fprintf(out, "enrolled device %s (attestation %d)\n", id.DeviceID, id.AttestationID)
			fmt.Fprintf(out, "  subject: %s\n", cert.Subject)
			for _, u := range cert.URIs {
				fmt.Fprintf(out, "  SAN URI: %s\n", u)
			}
			fmt.Fprintf(out, "  serial:  %s\n", hex.EncodeToString(cert.SerialNumber.Bytes()))
			fmt.Fprintf(out, "  valid:   %s to %s\n", cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339))
			fmt.Fprintf(out, "  wrote:   %s/{%s,%s,%s,%s,%s}\n", c.dir, fwclient.CertFile, fwclient.ChainFile, fwclient.ConfigFile, fwclient.KeyBlobFile, fwclient.AKBlobFile)
			return nil
		},
	}
	c.flags(cmd, "out")
	f := cmd.Flags()
	f.BoolVar(&force, "force", false, "enroll even if a valid certificate exists")
	f.DurationVar(&wait, "wait", 24*time.Hour, "while the device is pending an operator's approval, keep retrying this long (0: return at once)")
	f.StringVar(&akAlg, "ak", "ecdsa", "attestation key type: ecdsa or rsa")
	f.StringVar(&ek, "ek", fwclient.EKRSA2048, "endorsement key: rsa-2048, or ecc-p384 (the high-range EK at 0x81010016, certificate in NV 0x01c00016)")
	f.StringVar(&eventLog, "event-log", "", "send this event log file instead of the firmware's")
	f.StringVar(&claims.Serial, "serial", "", "claimed serial number (recorded, untrusted)")
	f.StringVar(&claims.Model, "model", "", "claimed model (recorded, untrusted)")
	f.StringVar(&claims.FirmwareVersion, "firmware-version", "", "claimed firmware version (recorded, untrusted)")
	return cmd
}

func whoamiCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Call the appliance over mTLS with the TPM-resident device key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, client, tpm, err := c.openIdentity()
			if err != nil {
				return err
			}
			defer tpm.Close()
			r, err := client.WhoAmI(cmd.Context(), tpm, id)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %s status %s certificate serial %s\n", r.DeviceID, r.Status, r.CertificateSerial)
			return nil
		},
	}
	c.flags(cmd, "dir")
	return cmd
}

func parseRoot(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// readEventLog reads --event-log; empty means the firmware's own log.
func readEventLog(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	return os.ReadFile(path)
}

func renewCmd() *cobra.Command {
	var c common
	var eventLog string
	cmd := &cobra.Command{
		Use:   "renew",
		Short: "Re-attest with the enrolled AK and obtain a new certificate for the same TPM key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, client, tpm, err := c.openIdentity()
			if err != nil {
				return err
			}
			defer tpm.Close()
			log, err := readEventLog(eventLog)
			if err != nil {
				return err
			}
			next, err := client.Renew(cmd.Context(), tpm, id, log)
			if err != nil {
				return err
			}
			if err := next.Save(c.dir, c.server); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "renewed device %s: serial %s valid until %s\n", next.DeviceID, next.Certificate.SerialNumber.Text(16), next.Certificate.NotAfter.Format(time.RFC3339))
			return nil
		},
	}
	c.flags(cmd, "dir")
	cmd.Flags().StringVar(&eventLog, "event-log", "", "send this event log file instead of the firmware's")
	return cmd
}

func configCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Fetch this device's configuration over mTLS and save it to config.json",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, client, tpm, err := c.openIdentity()
			if err != nil {
				return err
			}
			defer tpm.Close()
			cfg, err := client.Config(cmd.Context(), tpm, id)
			if err != nil {
				return err
			}
			id.Configuration = cfg.Configuration
			if err := id.Save(c.dir, c.server); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", cfg.Configuration)
			return nil
		},
	}
	c.flags(cmd, "dir")
	return cmd
}

func runCmd() *cobra.Command {
	var c common
	var eventLog string
	var logFlags cmdutil.LogFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Keep the identity alive: enroll at first boot (waiting out approval), then renew before expiry with jitter",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, tpm, err := c.open()
			if err != nil {
				return err
			}
			defer tpm.Close()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log, err := readEventLog(eventLog)
			if err != nil {
				return err
			}
			d := &fwclient.Daemon{Client: client, TPM: tpm, Dir: c.dir, Server: c.server, EventLog: log,
				Log: logFlags.New(cmd.ErrOrStderr())}
			return d.Run(ctx)
		},
	}
	c.flags(cmd, "dir")
	logFlags.Register(cmd.Flags())
	cmd.Flags().StringVar(&eventLog, "event-log", "", "send this event log file instead of the firmware's")
	return cmd
}
