// Package chaos runs a Gatehouse cluster as real `gatehouse serve`
// processes and breaks it: it kills, stops and pauses (SIGSTOP) nodes and
// cuts the network between them, so that tests can check what the cluster
// promises under those faults.
//
// A Cluster (NewCluster) puts each node in its own Linux network namespace,
// joined to the test's namespace by a veth pair on a bridge the test makes.
// The test process (the clients) reaches every node's device API at
// Cluster.URL(i) and its admin API through Cluster.AdminClient(i) (the
// node's admin socket, which no network fault touches); nodes reach each
// other only over the bridge, where Partition, Isolate, Bridge, Cut, Link,
// Flap and HealAll drop packets silently in both directions between chosen
// pairs. Node.Kill, Stop, Start, Pause and Resume act on one process.
// CheckInvariants compares what clients were acknowledged with what every
// node holds.
//
// Guarantees: every namespace, link and bridge the package makes carries a
// name with the prefix "ghx" and the owning test process's PID, is removed
// in t.Cleanup, and is removed at the next run's start if that process is
// gone; traffic never leaves the machine (the bridge has no uplink and the
// namespaces no default route). It needs root, ip (iproute2) and nft
// (nftables), and fails the test, naming what is missing, without them.
//
// Not guaranteed: faults are between nodes only (a client is never cut
// from a node: cut the client by not calling that node); latency and loss
// short of a full drop are not modelled; the node binary must be built
// (make build) before the tests run.
//
// The long run (TestChaos, build tag chaos) is make chaos; the short
// scenarios run in make test. See DESIGN.md.
package chaos
