package cluster

import (
	"bytes"
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The embedded step-ca keeps its database (issued certificates, revocations,
// the CRL) in the registry, so revocations replicate. This is a plain
// table/key/value store with step-ca's operations; the ca package adapts it
// to step-ca's nosql interface.

var bStepCA = []byte("stepca") // table 0x00 key → value

// KV operations.
const (
	KVSet         = "set"
	KVDelete      = "delete"
	KVCmpAndSwap  = "cas"
	KVDeleteTable = "delete-table"
)

// KVOp is one operation of an atomic KV update.
type KVOp struct {
	Op    string `json:"op"`
	Table string `json:"table"`
	Key   []byte `json:"key,omitempty"`
	Value []byte `json:"value,omitempty"`
	Old   []byte `json:"old,omitempty"` // KVCmpAndSwap: expected value; nil means absent
}

type stepCAUpdate struct {
	Ops []KVOp `json:"ops"`
}

func kvKey(table string, key []byte) []byte {
	return append(append([]byte(table), 0), key...)
}

// apply runs all operations or none. Result is 1 when every
// compare-and-swap matched; a mismatch writes nothing and returns 0.
func (c *stepCAUpdate) apply(tx *bolt.Tx, _ uint64, _ time.Time) applyResult {
	b := tx.Bucket(bStepCA)
	for _, op := range c.Ops {
		if op.Op == KVCmpAndSwap && !bytes.Equal(b.Get(kvKey(op.Table, op.Key)), op.Old) {
			return applyResult{Result: 0}
		}
	}
	for _, op := range c.Ops {
		var err error
		switch op.Op {
		case KVSet, KVCmpAndSwap:
			err = b.Put(kvKey(op.Table, op.Key), op.Value)
		case KVDelete:
			err = b.Delete(kvKey(op.Table, op.Key))
		case KVDeleteTable:
			prefix := kvKey(op.Table, nil)
			c := b.Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
				if err = b.Delete(k); err != nil {
					break
				}
			}
		default:
			err = fmt.Errorf("unknown KV operation %q", op.Op)
		}
		if err != nil {
			return applyResult{Err: err}
		}
	}
	return applyResult{Result: 1}
}

// KVUpdate commits ops atomically; swapped is false when a compare-and-swap
// did not match (then nothing was written).
func (n *Node) KVUpdate(ctx context.Context, ops ...KVOp) (swapped bool, err error) {
	r, err := n.apply(ctx, "stepca.update", 1, &stepCAUpdate{Ops: ops})
	return r == 1, err
}

// KVGeneration changes whenever this node applies a change to the KV
// tables (or restores a snapshot): a cache of anything derived from them is
// current while it stays the same.
func (n *Node) KVGeneration() uint64 { return n.fsm.kvGen.Load() }

// KVGet reads one value from this node's state; ErrNotFound if absent.
func (n *Node) KVGet(table string, key []byte) ([]byte, error) {
	var out []byte
	err := n.fsm.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bStepCA).Get(kvKey(table, key))
		if v == nil {
			return fmt.Errorf("%s/%x: %w", table, key, ErrNotFound)
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// KVList returns a table's keys and values in key order.
func (n *Node) KVList(table string) (keys, values [][]byte, err error) {
	err = n.fsm.view(func(tx *bolt.Tx) error {
		prefix := kvKey(table, nil)
		c := tx.Bucket(bStepCA).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			keys = append(keys, append([]byte(nil), k[len(prefix):]...))
			values = append(values, append([]byte(nil), v...))
		}
		return nil
	})
	return keys, values, err
}
