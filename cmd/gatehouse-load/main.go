// Command gatehouse-load drives a live Gatehouse cluster on loopback with
// simulated devices (software TPM models, firmware-client/tpmmodel) through
// the real device protocol code, and reports throughput, latency, errors
// and what the nodes spent. For benchmarks only: see package loadgen, and
// `make loadtest`, which starts a cluster and runs it.
package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-attestation/attest"

	fwclient "github.com/gatehouse-dev/gatehouse/firmware-client"
	"github.com/gatehouse-dev/gatehouse/firmware-client/loadgen"
	"github.com/gatehouse-dev/gatehouse/firmware-client/swtpm"
	"github.com/gatehouse-dev/gatehouse/firmware-client/tpmmodel"
	"github.com/gatehouse-dev/gatehouse/testvectors"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gatehouse-load:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		clusterDir = flag.String("cluster", "", "a cluster.sh directory: its api-N, pids, root.crt and node-N (instead of -servers, -root, -node-pids, -data-dirs)")
		servers    = flag.String("servers", "", "device API addresses, host:port, comma-separated (loopback only)")
		rootFile   = flag.String("root", "", "the appliance root certificate (PEM)")
		pids       = flag.String("node-pids", "", "node process IDs in the order of -servers, comma-separated, or a file with one per line")
		dataDirs   = flag.String("data-dirs", "", "node data directories in the order of -servers (admin sockets: -verify, -kill-leader-after)")
		mfrDir     = flag.String("manufacturer", "", "the test TPM manufacturer directory the cluster trusts (mkdevices' DIR/manufacturer)")
		eventLog   = flag.String("event-log", testvectors.Path("eventlogs/go-tpm-tools/ubuntu-2104-no-secure-boot.bin"), "the event log every simulated device booted (\"\": none)")
		ek         = flag.String("ek", fwclient.EKECCP256, "EK: "+fwclient.EKECCP256+" or "+fwclient.EKRSA2048)
		ak         = flag.String("ak", "ecdsa", "AK: ecdsa or rsa")
		mode       = flag.String("mode", loadgen.ModeMixed, "enroll, renew or mixed; a comma-separated list runs one window each, in order")
		conc       = flag.Int("concurrency", 200, "devices at work at once")
		duration   = flag.Duration("duration", 30*time.Second, "each window's length; the run stops by itself")
		rate       = flag.Float64("rate", 0, "operations per second over all devices (0: as fast as possible)")
		frac       = flag.Float64("enroll-fraction", 0.5, "mixed: the share of operations that enroll a fresh device")
		pregen     = flag.Int("pregen", 0, "devices made before each window (made during it once used up)")
		timeout    = flag.Duration("timeout", 60*time.Second, "per operation")
		kill       = flag.Duration("kill-leader-after", 0, "SIGKILL the leader this long into the (first) window, report when writes are acknowledged again and verify nothing acknowledged was lost")
		herd       = flag.Int("herd", 0, "instead of windows: N devices start within one second, each running the agent's loop (fwclient.Daemon) with its backoff until enrolled")
		herdLimit  = flag.Duration("herd-limit", 10*time.Minute, "-herd: stop waiting after this")
		herdDir    = flag.String("herd-dir", "", "-herd: where the devices keep their identities (default: a temporary directory, removed after)")
		verify     = flag.Bool("verify", false, "after the run, check every acknowledged operation in the registry through a surviving node's admin socket")
	)
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	nodes, root, err := cluster(*clusterDir, *servers, *rootFile, *pids, *dataDirs)
	if err != nil {
		return err
	}
	if *mfrDir == "" {
		return errors.New("-manufacturer is required (the manufacturer the cluster was initialised to trust)")
	}
	m, err := swtpm.LoadManufacturer(*mfrDir)
	if err != nil {
		return fmt.Errorf("-manufacturer: %w", err)
	}
	key, err := m.SigningKey()
	if err != nil {
		return fmt.Errorf("-manufacturer: %w", err)
	}
	mfr, err := tpmmodel.NewManufacturer(m.Intermediate, key)
	if err != nil {
		return err
	}
	var logBytes []byte
	if *eventLog != "" {
		if logBytes, err = os.ReadFile(*eventLog); err != nil {
			return fmt.Errorf("-event-log: %w", err)
		}
	}
	plat, err := tpmmodel.NewPlatform(logBytes)
	if err != nil {
		return fmt.Errorf("-event-log: %w", err)
	}
	var akAlg attest.Algorithm
	switch *ak {
	case "ecdsa":
		akAlg = attest.ECDSA
	case "rsa":
		akAlg = attest.RSA
	default:
		return fmt.Errorf("-ak %q: ecdsa or rsa", *ak)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "gatehouse-load: "+format+"\n", args...) }
	fmt.Printf("gatehouse-load: %d nodes, EK %s, AK %s, event log %s\n", len(nodes), *ek, *ak, orNone(*eventLog))
	if *herd > 0 {
		dir := *herdDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "gatehouse-herd-"); err != nil {
				return err
			}
		}
		r, err := loadgen.Herd(ctx, loadgen.HerdConfig{Nodes: nodes, Root: root, Manufacturer: mfr, Platform: plat, EK: *ek, AK: akAlg,
			N: *herd, Limit: *herdLimit, Dir: dir, Timeout: *timeout, Log: logf})
		if err != nil {
			return err
		}
		loadgen.WriteHerd(os.Stdout, r)
		return nil
	}
	var results []*loadgen.Result
	for i, md := range strings.Split(*mode, ",") {
		cfg := loadgen.Config{
			Nodes: nodes, Root: root, Manufacturer: mfr, Platform: plat, EK: *ek, AK: akAlg,
			Mode: md, Concurrency: *conc, Duration: *duration, Rate: *rate, EnrollFraction: *frac,
			Pregen: *pregen, Timeout: *timeout, Verify: *verify, Log: logf,
		}
		if i == 0 {
			cfg.KillLeaderAfter = *kill
		} else if *kill > 0 {
			cfg.Verify = false // the killed node's PID and socket are gone
			cfg.Nodes = survivors(nodes, results[0])
		}
		r, err := loadgen.Run(ctx, cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", md, err)
		}
		loadgen.WriteTable(os.Stdout, r)
		results = append(results, r)
	}
	fmt.Println(loadgen.SummaryLine(results))
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return filepath.Base(s)
}

func survivors(nodes []loadgen.Node, r *loadgen.Result) []loadgen.Node {
	var out []loadgen.Node
	for i, n := range nodes {
		if !r.Nodes[i].Killed {
			out = append(out, n)
		}
	}
	return out
}

// cluster reads the nodes from a cluster.sh directory or the flags.
func cluster(dir, servers, rootFile, pids, dataDirs string) ([]loadgen.Node, *x509.Certificate, error) {
	var apis, pidList, dirs []string
	if dir != "" {
		for i := 1; ; i++ {
			b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("api-%d", i)))
			if errors.Is(err, os.ErrNotExist) {
				break
			} else if err != nil {
				return nil, nil, err
			}
			apis = append(apis, strings.TrimSpace(string(b)))
			dirs = append(dirs, filepath.Join(dir, fmt.Sprintf("node-%d", i)))
		}
		b, err := os.ReadFile(filepath.Join(dir, "pids"))
		if err != nil {
			return nil, nil, fmt.Errorf("-cluster: %w (is it running?)", err)
		}
		pidList = strings.Fields(string(b))
		rootFile = filepath.Join(dir, "root.crt")
	} else {
		apis = splitList(servers)
		if b, err := os.ReadFile(pids); err == nil {
			pidList = strings.Fields(string(b))
		} else {
			pidList = splitList(pids)
		}
		dirs = splitList(dataDirs)
	}
	if len(apis) == 0 || rootFile == "" {
		return nil, nil, errors.New("-servers and -root (or -cluster) are required")
	}
	if (len(pidList) != 0 && len(pidList) != len(apis)) || (len(dirs) != 0 && len(dirs) != len(apis)) {
		return nil, nil, fmt.Errorf("%d servers, %d PIDs, %d data directories: give one each, in the same order", len(apis), len(pidList), len(dirs))
	}
	nodes := make([]loadgen.Node, len(apis))
	for i, a := range apis {
		nodes[i].API = a
		if len(pidList) > 0 {
			p, err := strconv.Atoi(pidList[i])
			if err != nil || p <= 0 {
				return nil, nil, fmt.Errorf("node PID %q", pidList[i])
			}
			nodes[i].PID = p
		}
		if len(dirs) > 0 {
			nodes[i].DataDir = dirs[i]
		}
	}
	b, err := os.ReadFile(rootFile)
	if err != nil {
		return nil, nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", rootFile)
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", rootFile, err)
	}
	return nodes, root, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
