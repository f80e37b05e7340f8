// Package cli is the gatehouse command tree. Each command parses flags and
// calls into server; no logic lives here.
package cli

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/attest"
	"github.com/gatehouse-dev/gatehouse/internal/cmdutil"
	"github.com/gatehouse-dev/gatehouse/server"
)

// Run executes the command line and returns the exit code.
func Run(args []string) int {
	root := newRoot(os.Stdout, os.Stderr)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gatehouse:", err)
		return 1
	}
	return 0
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "gatehouse",
		Short:         "TPM-backed zero-touch provisioning appliance",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().String("data-dir", "gatehouse-data", "node data directory")
	root.PersistentFlags().Bool("stale", false, "read this node's local state without confirming with the leader")
	addRemoteFlags(root)
	root.PersistentPreRunE = loadRemote
	root.AddCommand(initCmd(), serveCmd(), consoleCmd(), statusCmd(), devicesCmd(), attestationsCmd(), clusterCmd(), policyCmd(), eventlogCmd(), ekcertCmd(),
		adminCmd(), configCmd(), auditCmd(), enrollmentsCmd(), ekrootsCmd(), settingsCmd(), fleetCmd(), cmdutil.VersionCmd())
	return root
}

func dataDir(cmd *cobra.Command) string {
	d, _ := cmd.Flags().GetString("data-dir")
	return d
}

// manufacturerRoots is the shipped bundle plus the operator's CAs, or only
// the operator's when replace is set.
// CAs named in allowNoEvidence are marked as allowed to issue EK
// certificates without TPM evidence (attest.NoTPMEvidenceHeader).
func manufacturerRoots(files []string, replace bool, allowNoEvidence []string) ([]byte, error) {
	if replace && len(files) == 0 {
		return nil, errors.New("--replace-ek-roots needs at least one --ek-roots file")
	}
	var out []byte
	if !replace {
		out = attest.ManufacturerRootsPEM()
	}
	return withEKRootFiles(out, files, allowNoEvidence)
}

// withEKRootFiles is bundle with the CAs of files (--ek-roots) appended,
// each under a comment naming its file, and the CAs named in
// allowNoEvidence marked (attest.NoTPMEvidenceHeader).
func withEKRootFiles(bundle []byte, files, allowNoEvidence []string) ([]byte, error) {
	for _, f := range files {
		certs, err := attest.LoadCertificates(f)
		if err != nil {
			return nil, fmt.Errorf("--ek-roots: %w", err)
		}
		for _, c := range certs {
			bundle = append(bundle, fmt.Sprintf("\n# added from %s: %s\n", f, attest.Name(c.Subject))...)
			bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	if len(allowNoEvidence) > 0 {
		return attest.AllowNoTPMEvidence(bundle, allowNoEvidence)
	}
	return bundle, nil
}

func initCmd() *cobra.Command {
	def := server.DefaultConfig()
	cfg := def
	var passwordFile, fromBackup string
	var ekRoots, allowNoEvidence []string
	var replaceRoots bool
	var validity time.Duration
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a new appliance: configuration, encrypted PKI, manufacturer roots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.CertValidity = server.Duration{Duration: validity}
			if fromBackup != "" {
				return initFromBackup(cmd, fromBackup, passwordFile, cfg)
			}
			roots, err := manufacturerRoots(ekRoots, replaceRoots, allowNoEvidence)
			if err != nil {
				return err
			}
			pw, created, err := passwordForInit(passwordFile)
			if err != nil {
				return err
			}
			if err := server.Init(dataDir(cmd), pw, cfg, roots); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if created {
				fmt.Fprintf(out, "wrote a new CA key password to %s; keep it apart from the data directory\n", passwordFile)
			}
			fmt.Fprintf(out, "initialized %s: node %s, trust domain %s, root %s/ca/root.crt\n", dataDir(cmd), cfg.NodeID, cfg.TrustDomain, dataDir(cmd))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&passwordFile, "password-file", "", "file holding the CA key password (created with a random password if missing)")
	f.StringSliceVar(&ekRoots, "ek-roots", nil, "PEM or DER files of TPM manufacturer CAs to trust besides the shipped bundle")
	f.BoolVar(&replaceRoots, "replace-ek-roots", false, "trust only the --ek-roots files, not the shipped bundle")
	f.StringArrayVar(&allowNoEvidence, "ek-allow-no-tpm-evidence", nil, "subject of a manufacturer CA (as ekcert inspect prints issuers) whose EK certificates may carry neither the EK EKU nor a TPM SAN, e.g. GCE's \"CN=EK/AK CA Intermediate,...\"; repeatable")
	f.StringVar(&cfg.NodeID, "node-id", def.NodeID, "this node's Raft ID")
	f.StringVar(&cfg.TrustDomain, "trust-domain", def.TrustDomain, "SPIFFE trust domain of device identities")
	f.StringVar(&cfg.Listen, "listen", def.Listen, "device API address (HTTPS)")
	f.StringVar(&cfg.RaftAddr, "raft-addr", def.RaftAddr, "Raft transport address")
	f.StringSliceVar(&cfg.Hostnames, "hostname", def.Hostnames, "DNS names and IPs for the HTTPS certificate")
	f.DurationVar(&validity, "cert-validity", def.CertValidity.Duration, "device certificate validity")
	f.DurationVar(&cfg.ApprovalRetry.Duration, "approval-retry", def.ApprovalRetry.Duration, "how long a device pending approval is told to wait before it retries")
	f.StringVar(&cfg.AuditSink, "audit-sink", "", "where this node also writes each signed audit checkpoint: file:PATH, syslog or syslog:NETWORK:ADDRESS")
	f.StringVar(&fromBackup, "from-backup", "", "take the CA, trust domain and manufacturer roots from this backup (then: serve, cluster restore)")
	f.Float64Var(&cfg.RateLimit, "rate-limit", def.RateLimit, "requests per second per client address without a client certificate")
	f.IntVar(&cfg.RateBurst, "rate-burst", def.RateBurst, "burst of requests per client address without a client certificate")
	f.DurationVar(&cfg.RetainRefused.Duration, "retain-refused", def.RetainRefused.Duration, "keep refused attestation records this long (0: forever)")
	f.DurationVar(&cfg.RetainRawEvidence.Duration, "retain-raw-evidence", def.RetainRawEvidence.Duration, "keep raw evidence and event logs this long (0: forever)")
	_ = c.MarkFlagRequired("password-file")
	return c
}

func initFromBackup(cmd *cobra.Command, path, passwordFile string, cfg server.Config) error {
	pw, err := readPassword(passwordFile)
	if err != nil {
		return fmt.Errorf("the backup's CA key needs its password: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := server.ReadBackup(f)
	if err != nil {
		return err
	}
	if err := server.InitFromBackup(dataDir(cmd), pw, cfg, b); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "initialized %s from %s (trust domain %s); start it, then run: gatehouse cluster restore %s\n", dataDir(cmd), path, b.Meta.TrustDomain, path)
	return nil
}

// passwordForInit reads the password file, or creates it with a random
// password when it does not exist.
func passwordForInit(path string) ([]byte, bool, error) {
	pw, err := readPassword(path)
	if err == nil {
		return pw, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, false, err
	}
	pw = []byte(base64.RawURLEncoding.EncodeToString(b))
	if err := os.WriteFile(path, append(pw, '\n'), 0o600); err != nil {
		return nil, false, err
	}
	return pw, true, nil
}

func readPassword(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("--password-file is required")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pw := []byte(strings.TrimRight(string(b), "\r\n"))
	if len(pw) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return pw, nil
}

func serveCmd() *cobra.Command {
	var passwordFile, listen, join, tokenFile, cpuProfile, heapProfile string
	var logFlags cmdutil.LogFlags
	joinCfg := server.DefaultConfig()
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run this node until SIGINT or SIGTERM (with --join, first join a cluster)",
		Long:  "Run this node until SIGINT or SIGTERM (with --join, first join a cluster).\n\n" + cmdutil.EnvHelp,
		Args:  cobra.NoArgs,
		// Instead of the root's loadRemote: serve uses no admin client, and
		// $GATEHOUSE_ADMIN_CONFIG, set for remote admin commands in the
		// same environment, must not stop it.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return cmdutil.FlagsFromEnv(cmd.Flags(), os.Environ(), remoteFlags...)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := readPassword(passwordFile)
			if err != nil {
				return err
			}
			log := logFlags.New(cmd.ErrOrStderr())
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cpuProfile != "" {
				stopProfile, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stopProfile()
			}
			if heapProfile != "" {
				stopHeap, err := startHeapProfile(heapProfile, time.Second)
				if err != nil {
					return err
				}
				defer stopHeap()
			}
			if join != "" {
				if _, err := server.LoadConfig(dataDir(cmd)); err == nil {
					// A token at hand must be for this directory's cluster.
					if tok, terr := os.ReadFile(tokenFile); terr == nil {
						if err := server.CheckJoinTarget(dataDir(cmd), strings.TrimSpace(string(tok))); err != nil {
							return err
						}
					}
					log.Info("already a member; ignoring --join", "data_dir", dataDir(cmd))
				} else if errors.Is(err, server.ErrNotInitialized) {
					if joinCfg.NodeID == "" {
						return errors.New("--join needs --node-id")
					}
					if listen != "" {
						joinCfg.Listen = listen
					}
					tok, err := os.ReadFile(tokenFile)
					if err != nil {
						return fmt.Errorf("--token-file: %w", err)
					}
					if err := server.Join(ctx, dataDir(cmd), pw, join, strings.TrimSpace(string(tok)), joinCfg); err != nil {
						return err
					}
					log.Info("joined", "seed", join, "node_id", joinCfg.NodeID)
				} else {
					return err
				}
			}
			opts := []server.Option{server.WithLogger(log)}
			if listen != "" {
				opts = append(opts, server.WithListen(listen))
			}
			a, err := server.Open(dataDir(cmd), pw, opts...)
			if err != nil {
				return err
			}
			defer a.Close()
			readyCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			if err := a.WaitReady(readyCtx); err != nil {
				return fmt.Errorf("waiting for a Raft leader: %w", err)
			}
			log.Info("ready", "device_api", "https://"+a.Addr())
			<-ctx.Done()
			stop() // a second SIGINT or SIGTERM ends the process at once
			log.Info("shutting down (a second signal stops at once)")
			start := time.Now()
			err = a.Close()
			log.Info("stopped", "took", time.Since(start).Round(time.Millisecond), "err", err)
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&passwordFile, "password-file", "", "file holding the CA key password (the same on every node)")
	f.StringVar(&listen, "listen", "", "device API address (with --join: recorded in the new node's configuration)")
	logFlags.Register(f)
	f.Lookup("log-level").Usage = "debug, info, warn or error (Raft's messages too)"
	f.StringVar(&join, "join", "", "API address (host:port) of a member to join through, for a new node")
	f.StringVar(&tokenFile, "token-file", "", "file holding a join token (gatehouse cluster token create)")
	f.StringVar(&joinCfg.NodeID, "node-id", "", "with --join: this node's ID")
	f.StringVar(&joinCfg.RaftAddr, "raft-addr", joinCfg.RaftAddr, "with --join: this node's Raft address")
	f.StringSliceVar(&joinCfg.Hostnames, "hostname", joinCfg.Hostnames, "with --join: DNS names and IPs for this node's certificates")
	f.StringVar(&joinCfg.AuditSink, "audit-sink", "", "with --join: where this node also writes each signed audit checkpoint (file:PATH, syslog, syslog:NETWORK:ADDRESS)")
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a Go CPU profile (pprof) of this node to `FILE` from start until it stops on SIGINT or SIGTERM; off by default, for benchmarks (make loadtest)")
	f.StringVar(&heapProfile, "heap-profile", "", "write a Go heap profile (pprof) of this node to `FILE` each time its in-use heap reaches a new peak (checked every second), so the file shows what held the memory at its highest; off by default, for benchmarks (make loadtest)")
	return c
}

// startHeapProfile checks the in-use heap every interval and, whenever it
// is the highest seen, overwrites path with a heap profile (written to a
// temporary file and renamed, so a reader never sees half of one), until
// the returned function is called. A peak between two checks is missed;
// the profile is the runtime's sample (one per 512 KiB allocated).
func startHeapProfile(path string, every time.Duration) (func(), error) {
	write := func() error {
		tmp := path + ".tmp"
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("--heap-profile: %w", err)
		}
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, path)
		}
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("--heap-profile: %w", err)
		}
		return nil
	}
	if err := write(); err != nil {
		return nil, err
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		var peak uint64
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak {
				peak = ms.HeapInuse
				_ = write() // the path was writable at start; a later failure keeps the last profile
			}
		}
	}()
	return func() { close(done); <-stopped }, nil
}

// startCPUProfile profiles the process into path until the returned
// function is called. Only an operator's flag turns it on: the profile
// holds no secrets, but costs a few percent of CPU.
func startCPUProfile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
