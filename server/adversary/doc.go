// Package adversary is Gatehouse's over-the-wire adversarial suite: its
// tests start a live appliance node with swtpm devices and play attacks
// against the device API, each next to a positive control (the same flow,
// untampered, succeeds). See adversary_test.go for the table and the rules
// that decide whether an attack was refused. `make adversary` runs it.
//
// The package has no non-test code beyond this comment.
package adversary
