package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.step.sm/crypto/pemutil"

	"github.com/gatehouse-dev/gatehouse/server"
)

// AdminConfig is the file `admin issue-cert` writes and --admin-config
// reads: how to reach a cluster's admin API from anywhere. Relative paths
// are relative to the file.
type AdminConfig struct {
	Server string `json:"server"` // https://host:port of any node
	Cert   string `json:"cert"`
	Key    string `json:"key"`
	Root   string `json:"root"` // the appliance root certificate
}

const envAdminConfig = "GATEHOUSE_ADMIN_CONFIG"

// remoteFlags are the flags addRemoteFlags adds (serve ignores their
// variables).
var remoteFlags = []string{"admin-config", "server", "admin-cert", "admin-key", "server-root"}

func addRemoteFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.String("admin-config", "", "admin credentials `FILE` written by \"gatehouse admin issue-cert\" (or $"+envAdminConfig+"); without it, the local node's admin socket is used")
	f.String("server", "", "admin API URL, https://host:port (with --admin-cert, --admin-key, --server-root)")
	f.String("admin-cert", "", "admin client certificate (PEM)")
	f.String("admin-key", "", "admin client key (PEM)")
	f.String("server-root", "", "appliance root certificate to trust (PEM)")
}

type remoteKey struct{}

// loadRemote builds the HTTPS admin client when credentials are given.
func loadRemote(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	path, _ := f.GetString("admin-config")
	if path == "" {
		path = os.Getenv(envAdminConfig)
	}
	var cfg AdminConfig
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("--admin-config: %w", err)
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		dir := filepath.Dir(path)
		for _, p := range []*string{&cfg.Cert, &cfg.Key, &cfg.Root} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
	}
	for flag, dst := range map[string]*string{"server": &cfg.Server, "admin-cert": &cfg.Cert, "admin-key": &cfg.Key, "server-root": &cfg.Root} {
		if v, _ := f.GetString(flag); v != "" {
			*dst = v
		}
	}
	if cfg.Server == "" {
		if cfg.Cert != "" || cfg.Key != "" {
			return errors.New("--admin-cert needs --server (or an --admin-config naming it)")
		}
		return nil
	}
	if cfg.Cert == "" || cfg.Key == "" || cfg.Root == "" {
		return errors.New("a remote admin API needs --admin-cert, --admin-key and --server-root")
	}
	cert, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		return fmt.Errorf("admin certificate: %w", err)
	}
	rootPEM, err := os.ReadFile(cfg.Root)
	if err != nil {
		return err
	}
	root, err := pemutil.ParseCertificate(rootPEM)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.Root, err)
	}
	c := server.NewRemoteAdminClient(cfg.Server, cert, root)
	ctx := context.WithValue(cmd.Context(), remoteKey{}, c)
	cmd.SetContext(context.WithValue(ctx, remoteCredsKey{}, remoteCreds{leaf: cert.Leaf, root: root}))
	return nil
}

type remoteCredsKey struct{}

// remoteCreds are the admin certificate and the root loadRemote loaded
// (the console names its role and verifies the audit log under the root).
type remoteCreds struct {
	leaf, root *x509.Certificate
}

// adminClient is the remote client when credentials were given, else the
// local node's admin socket.
func adminClient(cmd *cobra.Command) *server.AdminClient {
	c, ok := cmd.Context().Value(remoteKey{}).(*server.AdminClient)
	if !ok {
		c = server.NewAdminClient(dataDir(cmd))
	}
	c.StaleReads, _ = cmd.Flags().GetBool("stale")
	return c
}

func adminCmd() *cobra.Command {
	c := &cobra.Command{Use: "admin", Short: "Admin identities for the HTTPS admin API"}
	var role, name, out string
	var validity time.Duration
	issue := &cobra.Command{
		Use:   "issue-cert --role operator|auditor --name NAME --out DIR",
		Short: "Issue an admin client certificate; writes NAME.key, NAME.crt, root.crt and admin.json to DIR",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				return err
			}
			ac := adminClient(cmd)
			resp, err := ac.IssueAdminCert(cmd.Context(), role, name, csr, validity)
			if err != nil {
				return err
			}
			st, err := ac.Status(cmd.Context())
			if err != nil {
				return err
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			cfg := AdminConfig{Server: st.DeviceAPI, Cert: name + ".crt", Key: name + ".key", Root: "root.crt"}
			cfgJSON, _ := json.MarshalIndent(cfg, "", "  ")
			for _, f := range []struct {
				name string
				data []byte
				mode os.FileMode
			}{
				{cfg.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
				{cfg.Cert, resp.Chain, 0o644},
				{cfg.Root, resp.Root, 0o644},
				{"admin.json", append(cfgJSON, '\n'), 0o600},
			} {
				if err := os.WriteFile(filepath.Join(out, f.name), f.data, f.mode); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s certificate for %s (valid %s); use it from anywhere with:\n  gatehouse --admin-config %s ...\n",
				role, name, validity, filepath.Join(out, "admin.json"))
			return nil
		},
	}
	f := issue.Flags()
	f.StringVar(&role, "role", "", "operator (everything) or auditor (read-only)")
	f.StringVar(&name, "name", "", "who holds it (lower-case letters, digits, -)")
	f.StringVar(&out, "out", "", "directory to write the key, certificate and admin.json to")
	f.DurationVar(&validity, "validity", 90*24*time.Hour, "certificate validity")
	for _, n := range []string{"role", "name", "out"} {
		_ = issue.MarkFlagRequired(n)
	}
	var reason string
	revoke := &cobra.Command{
		Use:   "revoke-cert SERIAL --reason TEXT",
		Short: "Revoke an admin certificate (hex serial, as `openssl x509 -serial` prints it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return errors.New("--reason is required")
			}
			if err := adminClient(cmd).RevokeAdminCert(cmd.Context(), strings.ToLower(args[0]), actor(), reason); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "admin certificate %s revoked\n", args[0])
			return nil
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why (required)")
	list := &cobra.Command{
		Use:   "list-certs",
		Short: "List the admin certificates issued: serial, name, role, expiry, and whether revoked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certs, err := adminClient(cmd).AdminCertificates(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd, certs, func(w io.Writer) {
				fmt.Fprintln(w, "SERIAL\tNAME\tROLE\tNOT AFTER\tREVOKED")
				for _, c := range certs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\n", c.Serial, orDash(c.Name), orDash(c.Role), c.NotAfter.Format(time.RFC3339), c.Revoked)
				}
			})
		},
	}
	addOutputFlag(list)
	c.AddCommand(issue, revoke, list)
	return c
}
