// Package catest holds fakes for tests of code built on package ca.
package catest

import (
	"bytes"
	"sort"
	"strings"
	"sync"

	"github.com/gatehouse-dev/gatehouse/ca"
)

// MemKV is an in-memory ca.KV: step-ca's database without the registry.
// Updates are atomic and linearizable (one lock), as ca.KV requires.
type MemKV struct {
	mu     sync.Mutex
	m      map[string][]byte
	writes int
}

// NewMemKV returns an empty store.
func NewMemKV() *MemKV { return &MemKV{m: map[string][]byte{}} }

func key(table string, k []byte) string { return table + "\x00" + string(k) }

// Get returns a copy of the value, or an error wrapping ca.ErrKVNotFound.
func (k *MemKV) Get(table string, k2 []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.m[key(table, k2)]
	if !ok {
		return nil, ca.ErrKVNotFound
	}
	return bytes.Clone(v), nil
}

// List returns the table's keys and values in key order.
func (k *MemKV) List(table string) (keys, values [][]byte, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	prefix := key(table, nil)
	var names []string
	for n := range k.m {
		if strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		keys = append(keys, []byte(n[len(prefix):]))
		values = append(values, bytes.Clone(k.m[n]))
	}
	return keys, values, nil
}

// Update applies ops all or none; swapped is false (nothing written) when a
// compare-and-swap does not match.
func (k *MemKV) Update(ops []ca.KVOp) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes++
	for _, op := range ops {
		if op.Op != ca.KVCmpAndSwap {
			continue
		}
		cur, ok := k.m[key(op.Table, op.Key)]
		if ok != (op.Old != nil) || !bytes.Equal(cur, op.Old) {
			return false, nil
		}
	}
	for _, op := range ops {
		switch op.Op {
		case ca.KVSet, ca.KVCmpAndSwap:
			k.m[key(op.Table, op.Key)] = bytes.Clone(op.Value)
		case ca.KVDelete:
			delete(k.m, key(op.Table, op.Key))
		case ca.KVDeleteTable:
			prefix := key(op.Table, nil)
			for n := range k.m {
				if strings.HasPrefix(n, prefix) {
					delete(k.m, n)
				}
			}
		}
	}
	return true, nil
}

// Writes counts Update calls, matched or not: each would be one Raft
// entry on the registry.
func (k *MemKV) Writes() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.writes
}
