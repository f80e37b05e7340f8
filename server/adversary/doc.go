// Package adversary is Gatehouse's over-the-wire adversarial suite: its
// tests start a live appliance node with swtpm devices and play attacks
// against the device API, the admin and cluster routes over mTLS, and the
// audit exports and backups the admin API hands out (judged by the offline
// verification and the restore route), each next to a positive control
// (the same flow, untampered, succeeds). Routes that serve anyone (the
// probes, /metrics, /openapi.json) are attacked on what serving them
// costs, shows and writes instead (ExpectHeld). See adversary_test.go for
// the table and the rules that decide whether an attack was refused;
// attacks_test.go holds issue 9's rows, trust_test.go issue 10's,
// ops_test.go issue 11's (probes, metrics labels, /cluster/v1/info, and
// the EK root, settings and enrollment admin routes).
// `make adversary` runs it.
//
// The package has no non-test code beyond this comment.
package adversary
