package ca

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"
)

// KV is the replicated store step-ca's database lives in (the registry).
// Update applies all operations or none and must be linearizable: it guards
// double revocation. Get and List must see every Update this process made.
type KV interface {
	Get(table string, key []byte) ([]byte, error) // an error wrapping ErrKVNotFound when absent
	List(table string) (keys, values [][]byte, err error)
	Update(ops []KVOp) (swapped bool, err error)
}

// ErrKVNotFound marks a missing key in a KV.
var ErrKVNotFound = errors.New("key not found")

// KV operation names.
const (
	KVSet         = "set"
	KVDelete      = "delete"
	KVCmpAndSwap  = "cas"
	KVDeleteTable = "delete-table"
)

// KVOp is one operation of an atomic update. For KVCmpAndSwap, Old nil means
// the key must be absent.
type KVOp struct {
	Op         string
	Table      string
	Key, Value []byte
	Old        []byte
}

// NoSQL is step-ca's nosql database over kv, for step-ca's ACME store.
func NoSQL(kv KV) database.DB { return nosqlKV{kv} }

// nosqlKV is step-ca's nosql.DB over a KV.
type nosqlKV struct{ kv KV }

var _ database.DB = nosqlKV{}

func (nosqlKV) Open(string, ...database.Option) error { return nil }
func (nosqlKV) Close() error                          { return nil }
func (nosqlKV) CreateTable([]byte) error              { return nil } // tables are key prefixes

func (s nosqlKV) DeleteTable(bucket []byte) error {
	_, err := s.kv.Update([]KVOp{{Op: KVDeleteTable, Table: string(bucket)}})
	return err
}

func (s nosqlKV) Get(bucket, key []byte) ([]byte, error) {
	v, err := s.kv.Get(string(bucket), key)
	if errors.Is(err, ErrKVNotFound) {
		return nil, fmt.Errorf("%s/%s: %w", bucket, key, database.ErrNotFound)
	}
	return v, err
}

func (s nosqlKV) Set(bucket, key, value []byte) error {
	_, err := s.kv.Update([]KVOp{{Op: KVSet, Table: string(bucket), Key: key, Value: value}})
	return err
}

func (s nosqlKV) Del(bucket, key []byte) error {
	_, err := s.kv.Update([]KVOp{{Op: KVDelete, Table: string(bucket), Key: key}})
	return err
}

func (s nosqlKV) CmpAndSwap(bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	swapped, err := s.kv.Update([]KVOp{{Op: KVCmpAndSwap, Table: string(bucket), Key: key, Value: newValue, Old: oldValue}})
	if err != nil {
		return nil, false, err
	}
	if swapped {
		return newValue, true, nil
	}
	cur, err := s.Get(bucket, key)
	if database.IsErrNotFound(err) {
		err = nil
	}
	return cur, false, err
}

func (s nosqlKV) List(bucket []byte) ([]*database.Entry, error) {
	keys, values, err := s.kv.List(string(bucket))
	if err != nil {
		return nil, err
	}
	out := make([]*database.Entry, len(keys))
	for i := range keys {
		out[i] = &database.Entry{Bucket: bucket, Key: keys[i], Value: values[i]}
	}
	return out, nil
}

// Update runs a nosql transaction as one atomic KV update. Reads inside a
// transaction are not supported (step-ca does not use them).
func (s nosqlKV) Update(tx *database.Tx) error {
	ops := make([]KVOp, 0, len(tx.Operations))
	for _, e := range tx.Operations {
		switch e.Cmd {
		case database.Set:
			ops = append(ops, KVOp{Op: KVSet, Table: string(e.Bucket), Key: e.Key, Value: e.Value})
		case database.Delete:
			ops = append(ops, KVOp{Op: KVDelete, Table: string(e.Bucket), Key: e.Key})
		case database.CmpAndSwap:
			ops = append(ops, KVOp{Op: KVCmpAndSwap, Table: string(e.Bucket), Key: e.Key, Value: e.Value, Old: e.CmpValue})
		case database.CreateTable:
		case database.DeleteTable:
			ops = append(ops, KVOp{Op: KVDeleteTable, Table: string(e.Bucket)})
		default:
			return fmt.Errorf("step-ca database: transaction operation %s is not supported", e.Cmd)
		}
	}
	swapped, err := s.kv.Update(ops)
	if err != nil {
		return err
	}
	for _, e := range tx.Operations {
		e.Swapped = swapped
		if e.Cmd == database.CmpAndSwap && swapped {
			e.Result = e.Value
		}
	}
	return nil
}

// authDB is step-ca's database with one change: of the certificates it
// issues, only admin certificates are stored. Device certificates are
// recorded by serial in the registry before they exist, and revocation and
// the CRL need only the serial: storing each one again would cost every
// enrollment a second Raft commit (it doubled the enrollment's CPU).
// Server and node certificates are issued in memory at start, before the
// registry is reachable, and are short-lived.
type authDB struct{ *db.DB }

func (d authDB) StoreCertificateChain(p provisioner.Interface, chain ...*x509.Certificate) error {
	if len(chain) == 0 || !isAdmin(chain[0]) {
		return nil
	}
	return d.DB.StoreCertificateChain(p, chain...)
}

func isAdmin(c *x509.Certificate) bool {
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" && strings.HasPrefix(u.Path, "/admin/") {
			return true
		}
	}
	return false
}
