# Gatehouse. Quick start: `make demo`, `make test`.
GO      ?= go
BIN     := bin
# Raft reports to hashicorp/go-metrics (not armon) with this tag, so its
# metrics reach the Prometheus sink behind /metrics. The others leave out
# nosql's badger, MySQL, PostgreSQL and bolt drivers, which step-ca links
# and Gatehouse never uses (the CA's store is the Raft registry). What they
# save, and the tags tried that change nothing: README, "Build tags".
TAGS    := hashicorpmetrics,nobadger,nomysql,nopgx,nobbolt
export GOFLAGS := -tags=$(TAGS)
PKGS    := ./...
# Debian packages the TPM tests and the demo need, the browser the
# console's browser test drives (console/browser_test.go), and socat, which
# bridges swtpm to the UNIX socket the step CLI's tpmkms opens
# (server/stepcli_e2e_test.go), and ip and nft, which make the network
# namespaces and partitions of server/chaos.
APT_PKGS := swtpm swtpm-tools openssl chromium systemd dpkg socat iproute2 nftables

.PHONY: all build test bench loadtest bench-queries bench-console scale demo deps vet clean chaos chaos-disk upgrade cluster cluster-stop cluster-clean package fuzz roots adversary step-cli

# The stock step CLI the ACME device-attest-01 end-to-end test runs
# (server/stepcli_e2e_test.go), pinned: `@latest` resolves to an old
# v0.21.0. The test finds it through STEP_CLI_PATH.
STEP_CLI_VERSION := v0.30.2
STEP_CLI := $(CURDIR)/$(BIN)/step
export STEP_CLI_PATH := $(STEP_CLI)

all: build

build:
	$(GO) build -o $(BIN)/gatehouse ./cmd/gatehouse
	$(GO) build -o $(BIN)/gatehouse-agent ./cmd/gatehouse-agent
	$(GO) build -o $(BIN)/mkdevices ./testvectors/mkdevices
	$(GO) build -o $(BIN)/gatehouse-load ./cmd/gatehouse-load

# deps installs swtpm, chromium, systemd-analyze, dpkg-deb, socat, ip and nft when missing. It never
# pretends: without root or apt-get it stops and says what to install.
deps:
	@missing=""; for c in swtpm swtpm_setup swtpm_localca openssl chromium systemd-analyze dpkg-deb socat ip nft; do \
	  command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "deps: missing:$$missing; installing $(APT_PKGS) with apt-get"; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "deps: FAILED: apt-get not found; install swtpm and swtpm-tools (swtpm >= 0.7), chromium and socat with your package manager" >&2; exit 1; fi; \
	if [ "$$(id -u)" != 0 ]; then SUDO=sudo; command -v sudo >/dev/null 2>&1 || { \
	  echo "deps: FAILED: not root and no sudo; run as root: apt-get install -y $(APT_PKGS)" >&2; exit 1; }; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq || { echo "deps: FAILED: apt-get update failed (no access to the Debian archive?)" >&2; exit 1; }; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null || { echo "deps: FAILED: apt-get install $(APT_PKGS) failed" >&2; exit 1; }; \
	for c in swtpm swtpm_setup swtpm_localca chromium systemd-analyze dpkg-deb socat ip nft; do command -v $$c >/dev/null 2>&1 || { \
	  echo "deps: FAILED: $$c still missing after install" >&2; exit 1; }; done; \
	echo "deps: installed $$(swtpm --version 2>&1 | head -n1), $$(chromium --version 2>/dev/null | head -n1), $$(socat -V 2>/dev/null | grep -m1 "socat version")"

# step-cli installs the pinned step CLI into bin/ unless the one there was
# built from that module version (go version -m reads it from the binary:
# `step version` prints only what -ldflags set, so set it for operators too).
# GOFLAGS is cleared: the appliance's build tags are not the CLI's.
step-cli:
	@if [ "$$($(GO) version -m $(STEP_CLI) 2>/dev/null | awk '$$1=="mod" && $$2=="github.com/smallstep/cli" {print $$3}')" = "$(STEP_CLI_VERSION)" ]; then exit 0; fi; \
	echo "step-cli: installing github.com/smallstep/cli/cmd/step@$(STEP_CLI_VERSION) into $(BIN)/"; \
	GOBIN=$(CURDIR)/$(BIN) GOFLAGS= $(GO) install -ldflags='-X main.Version=$(STEP_CLI_VERSION:v%=%)' github.com/smallstep/cli/cmd/step@$(STEP_CLI_VERSION) && \
	$(STEP_CLI) version | head -n1

vet:
	$(GO) vet $(PKGS)
	cd packaging && $(GO) vet ./...

# test runs every package but the adversarial suite, then the suite (its
# summary line, and the output of anything that failed), then the rolling
# upgrade from the previous release (make upgrade: about 60 s with a warm
# build cache, ~30 s more the first time, to build the previous release).
test: deps step-cli vet
	@rc=0; $(GO) test -count=1 -timeout 9m $$($(GO) list $(PKGS) | grep -v '/server/adversary$$') || rc=$$?; \
	  (cd packaging && $(GO) test -count=1 ./...) || rc=$$?; \
	  $(MAKE) --no-print-directory adversary ADVERSARY_SHOW=failures || rc=$$?; \
	  $(MAKE) --no-print-directory upgrade || rc=$$?; exit $$rc

# adversary plays the over-the-wire adversarial suite (server/adversary)
# against a live node with swtpm devices; it ends with the line
#   adversary: tried=N refused=N issued=0 crashes=0 controls_ok=N/N
# ADVERSARY_SHOW=all prints every attack's result, =failures only what
# was not refused. The full log is build/adversary.log.
ADVERSARY_SHOW ?= all
adversary: deps
	@mkdir -p build
	@$(GO) test -count=1 -timeout 5m -v -run '^TestAdversary$$' ./server/adversary/ > build/adversary.log 2>&1; rc=$$?; \
	  if [ "$(ADVERSARY_SHOW)" = all ]; then grep -E '^  attack ' build/adversary.log; \
	  else grep -E '^  attack (GOT-THROUGH|CRASH|HARNESS)' build/adversary.log; fi; \
	  grep -E '^\s+[a-z0-9_]+_test\.go:[0-9]+: ' build/adversary.log | grep -v -e 'flood: data directory' -e ': attack "'; \
	  grep -E '^(panic:|--- FAIL|FAIL|ok )' build/adversary.log; \
	  if grep -q '^adversary: tried=' build/adversary.log; then grep '^adversary: tried=' build/adversary.log | tail -n 1; \
	  else tail -n 40 build/adversary.log; echo "adversary: the suite failed before its summary (see build/adversary.log)"; fi; \
	  exit $$rc

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./attest/
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 200x ./cluster/ ./ca/
	$(GO) test -run '^$$' -bench 'Enrollment' -benchmem -benchtime 200x ./server/
	$(GO) test -run '^$$' -bench 'ClusterCommits' -benchtime 20000x ./server/
	$(GO) test -run '^$$' -bench 'Failover' -benchtime 3x ./server/
	$(MAKE) bench-queries
	$(MAKE) bench-console

# loadtest: a three-node cluster (fsync on) in build/loadtest under load
# from gatehouse-load's simulated devices: one window per mode in
# LOADTEST_MODE, a table each, and the last line
#   loadtest: enroll_per_s=N renew_per_s=N p99_ms=N server_cpu_ms_per_enroll=N errors=N
# LOADTEST_FLAGS adds gatehouse-load flags (e.g. --kill-leader-after 10s,
# --rate 500, --ek rsa-2048 --ak rsa, --herd 10000). LOADTEST_PROFILE=1: each
# node writes a CPU profile, build/loadtest/node-N.cpu.pprof (serve
# --cpu-profile) and a heap profile at its peak in-use heap,
# build/loadtest/node-N.heap.pprof (serve --heap-profile). Not part of `make test`.
LOADTEST_MODE ?= enroll,renew,mixed
LOADTEST_DURATION ?= 20s
LOADTEST_CONCURRENCY ?= 200
LOADTEST_PREGEN ?= 5000
LOADTEST_FLAGS ?=
LOADTEST_PROFILE ?=
loadtest: deps build
	@CPU_PROFILE=$(LOADTEST_PROFILE) HEAP_PROFILE=$(LOADTEST_PROFILE) ./loadtest.sh build/loadtest --mode $(LOADTEST_MODE) --duration $(LOADTEST_DURATION) \
	  --concurrency $(LOADTEST_CONCURRENCY) --pregen $(LOADTEST_PREGEN) $(LOADTEST_FLAGS)

# The admin API's list and filter queries at 100,000 devices, 300,000
# attestation records and about 420,000 audit entries: p50 and p99 per query
# (see BenchmarkAdminQueries).
bench-queries: deps
	@mkdir -p build
	@$(GO) test -run '^$$' -bench 'AdminQueries' -benchtime 300x -timeout 30m -v ./server/ > build/bench-queries.log 2>&1; rc=$$?; \
	  grep -E '^(devices|attestations|audit|fleet)/|seeded|walked|^(ok|FAIL|panic)' build/bench-queries.log; exit $$rc

# The console's pages (HTML, through a logged-in session) at the same
# scale: p50 and p99 per page (see BenchmarkConsolePages).
bench-console: deps
	@mkdir -p build
	@$(GO) test -run '^$$' -bench 'ConsolePages' -benchtime 200x -timeout 30m -v ./console/ > build/bench-console.log 2>&1; rc=$$?; \
	  grep -E '^(devices|attestations|device|attestation|fleet)[/ ]|seeded|^(ok|FAIL|panic)' build/bench-console.log; exit $$rc

# scale: one node seeded with SCALE_DEVICES devices (default 1,000,000) and
# three attestation records each through the commands' apply, then run as
# a real process: device get and filtered page latency over HTTPS, RSS,
# snapshot size and time, a second node joining from the snapshot, and
# restart time (see TestScale; make test runs it at 5,000). The data
# directories live in build/scale and are removed at the end; the log is
# build/scale.log (the nodes' build/scale-node-N.log), the last line the
# summary.
SCALE_DEVICES ?= 1000000
SCALE_SEED ?=
scale: deps
	@mkdir -p build/scale
	@GATEHOUSE_SCALE_DEVICES=$(SCALE_DEVICES) GATEHOUSE_SCALE_SEED=$(if $(SCALE_SEED),$(abspath $(SCALE_SEED))) GATEHOUSE_SCALE_DIR=$(CURDIR)/build/scale GATEHOUSE_SCALE_LOGS=$(CURDIR)/build $(GO) test -run '^TestScale$$' -count=1 -timeout 3h -v ./server/ > build/scale.log 2>&1; rc=$$?; \
	  grep -E '^\s+scale_test.go:[0-9]+: ' build/scale.log | sed -E 's/^\s+scale_test.go:[0-9]+: /  /'; \
	  grep -E '^(scale:|--- FAIL|FAIL|panic)' build/scale.log || tail -n 30 build/scale.log; \
	  rm -rf build/scale; exit $$rc

# fuzz runs every fuzz target for FUZZTIME each (the seed corpora also run
# in `make test`). Crashers land in PKG/testdata/fuzz/: commit them.
FUZZTIME ?= 30s
# Minimizing each new input for long starves targets whose executions
# are slow (server:FuzzComplete runs a live node): bound it.
FUZZMINIMIZETIME ?= 5s
FUZZ_TARGETS := attest:FuzzParseEventLog attest:FuzzEventLogDifferential attest:FuzzParseEKCertificate attest:FuzzParsePolicy cluster:FuzzVerifyAudit cluster:FuzzDecodeEnvelope server:FuzzComplete server:FuzzRenew
fuzz:
	@for t in $(FUZZ_TARGETS); do p=$${t%%:*}; f=$${t#*:}; echo "fuzz: $$p $$f for $(FUZZTIME)"; \
	  $(GO) test ./$$p/ -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) || exit 1; done

# roots regenerates the shipped TPM manufacturer CA bundle from testvectors/ca.
roots:
	$(GO) run ./testvectors/mkroots > attest/roots/manufacturers.pem

demo: deps build
	bash ./demo.sh

# cluster: three local nodes in the background (build/cluster/), and a test
# TPM manufacturer whose devices they accept; "already running" when they
# are, restarted from their data when stopped. cluster-stop stops them and
# keeps the data; cluster-clean stops them and deletes build/cluster,
# keeping its CA password in build/backups so that its backups restore.
cluster: deps build
	@./cluster.sh up build/cluster

cluster-stop:
	@./cluster.sh stop build/cluster && echo "stopped (data kept in build/cluster: make cluster restarts it, make cluster-clean deletes it)"

cluster-clean:
	@./cluster.sh clean build/cluster

# package: .deb packages of the appliance (gatehouse, with its hardened
# unit and service user) and the agent (gatehouse-agent, with its units) in
# build/packages/, from static stripped builds, by the packager in packaging/ (its
# own module: nfpm never enters the appliance's dependencies or binary).
# The version comes from the binary's build info, else git describe.
PKG_BIN := build/package-bin
package:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(PKG_BIN)/gatehouse ./cmd/gatehouse
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(PKG_BIN)/gatehouse-agent ./cmd/gatehouse-agent
	rm -rf build/packages
	cd packaging && $(GO) run . -src .. -bin ../$(PKG_BIN) -out ../build/packages

# chaos: first a node's disk filled under load (make chaos-disk) and the
# rolling upgrade (make upgrade); then three node processes, each in its
# own network namespace, and every 5-10 s for CHAOS_DURATION (default 3m)
# a fault: a random node SIGKILLed, or a partition or pause scenario with
# its checks, while the checker's workload records a history
# (server/chaos); the last line is the invariants line, with the
# linearizability verdict.
CHAOS_DURATION ?= 3m
chaos: deps build
	@mkdir -p build
	@$(MAKE) --no-print-directory chaos-disk; d=$$?; $(MAKE) --no-print-directory upgrade; u=$$?; \
	  [ $$d = 0 ] && [ $$u = 0 ] || { echo "invariants: not run: make chaos-disk or make upgrade failed (above)"; exit 1; }
	@CHAOS_DURATION=$(CHAOS_DURATION) $(GO) test -tags=$(TAGS),chaos -run '^TestChaos$$' -count=1 -timeout 11m -v ./server/chaos/ > build/chaos.log 2>&1; \
	  rc=$$?; grep -E '^\s+(chaos|scenarios)_test.go' build/chaos.log | tail -n 12; \
	  grep '^invariants:' build/chaos.log | tail -n 1 || { tail -n 30 build/chaos.log; echo "invariants: chaos run failed before the check (see build/chaos.log)"; }; \
	  exit $$rc

# upgrade: three node processes of the previous release (the commit in
# testvectors/golden/PREVIOUS_RELEASE, built once from a temporary git
# worktree into build/upgrade/) under enrollments from swtpm devices,
# replaced one at a time by bin/gatehouse; the last line is
#   upgrade: from=COMMIT acked=N lost=0 state=HASH feature_version=N
# (server/upgrade_test.go TestRollingUpgrade). Part of make test and make
# chaos.
upgrade: deps build
	@mkdir -p build
	@$(GO) test -tags=$(TAGS),chaos -run '^TestRollingUpgrade$$' -count=1 -timeout 10m -v ./server/ > build/upgrade.log 2>&1; \
	  rc=$$?; grep -E '^\s+upgrade_test.go' build/upgrade.log | tail -n 8; \
	  grep '^upgrade:' build/upgrade.log | tail -n 1 || { tail -n 40 build/upgrade.log; echo "upgrade: the rolling upgrade failed before its check (see build/upgrade.log)"; }; \
	  exit $$rc

# chaos-disk: three node processes, node-2's data directory on a small
# tmpfs filled for 15 s under enrollments, then freed (needs root for the
# mount); the last line is
#   disk-full: acked=N acked_while_full=N storage_full_answers=N lost=0
chaos-disk: deps build
	@mkdir -p build
	@$(GO) test -tags=$(TAGS),chaos -run '^TestChaosDiskFull$$' -count=1 -timeout 5m -v ./server/ > build/chaos-disk.log 2>&1; \
	  rc=$$?; grep -E '^\s+chaos_disk_test.go' build/chaos-disk.log | tail -n 5; \
	  grep '^disk-full:' build/chaos-disk.log | tail -n 1 || { tail -n 30 build/chaos-disk.log; echo "disk-full: run failed before the check (see build/chaos-disk.log)"; }; \
	  exit $$rc

clean:
	rm -rf $(BIN) build
