package cluster

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// checkStore is what Open can afford to check of a bbolt file before it
// trusts it, whatever the registry's size: bbolt's own meta page checks
// (magic, version, checksum; it falls back on the other meta page when
// one is damaged), that the file is as long as its meta page says
// (a truncated file would otherwise fault on its first read past the
// end), and a walk from the root to the first and last key of every
// top-level bucket (a few pages each). A damaged page elsewhere is found
// only when it is read; bbolt's panics there, and the fault on a page past
// the end of the file, are turned into ErrCorruptState by guard.
//
// A missing or empty file passes: bbolt creates it.
func checkStore(path string) error {
	info, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && info.Size() == 0) {
		return nil
	}
	if err != nil {
		return err
	}
	return guard(func() error {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			if want := tx.Size(); want > info.Size() {
				return fmt.Errorf("%w (truncated: the file is %d bytes, its meta page says %d)", ErrCorruptState, info.Size(), want)
			}
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				c := b.Cursor()
				c.First()
				c.Last()
				return nil
			})
		})
	})
}

// guard runs fn, turning a panic (bbolt panics on pages it cannot parse)
// and a memory fault (a page of the mmapped file that is not there) into
// an error wrapping ErrCorruptState.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w (unreadable page: %v)", ErrCorruptState, r)
		}
	}()
	return fn()
}

// corruptCauses are bbolt's errors for a file it cannot read as a database.
var corruptCauses = []error{bolterrors.ErrInvalid, bolterrors.ErrChecksum, bolterrors.ErrVersionMismatch, bolterrors.ErrInvalidMapping}

// isTooSmall matches bbolt's unexported error for a file shorter than its
// two meta pages.
func isTooSmall(err error) bool {
	return err != nil && strings.Contains(err.Error(), "file size too small")
}
