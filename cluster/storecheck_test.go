package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// boltLayout is what the damage below needs of a bbolt file: its page
// size, the newest meta page's root, freelist and high-water mark, and the
// root page of one bucket.
type boltLayout struct {
	pageSize                   int64
	root, freelist, hwm, inner int64
	older                      int64 // the older meta page: 0 or 1
}

func readLayout(t *testing.T, path string, bucket string) boltLayout {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const hdr = 16 // page header: id, flags, count, overflow
	ps := int64(binary.LittleEndian.Uint32(b[hdr+8:]))
	var l boltLayout
	var best uint64
	for i, off := range []int64{0, ps} { // meta pages 0 and 1: the newer wins
		m := b[off+hdr:]
		if txid := binary.LittleEndian.Uint64(m[48:]); txid >= best {
			best = txid
			l = boltLayout{pageSize: ps, root: int64(binary.LittleEndian.Uint64(m[16:])),
				freelist: int64(binary.LittleEndian.Uint64(m[32:])), hwm: int64(binary.LittleEndian.Uint64(m[40:])), older: int64(1 - i)}
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket([]byte(bucket))
		if bk == nil {
			return fmt.Errorf("no bucket %s", bucket)
		}
		l.inner = int64(bk.Root())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if l.inner == 0 {
		t.Fatalf("bucket %s of %s is inline: the test needs it on its own page", bucket, path)
	}
	return l
}

func garbagePage(t *testing.T, path string, l boltLayout, page int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	junk := make([]byte, l.pageSize)
	r := rand.New(rand.NewPCG(uint64(page), 7))
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	if _, err := f.WriteAt(junk, page*l.pageSize); err != nil {
		t.Fatal(err)
	}
}

// A damaged raft.db or fsm.db is refused at Open with ErrCorruptState, the
// path and what is wrong, never a panic or a fault: a truncated file, both
// meta pages overwritten, the root page, the freelist, and a bucket's root
// page overwritten with garbage. The older meta page damaged is not an
// error: bbolt uses the newer, and the state is intact.
func TestOpenDetectsDamagedStores(t *testing.T) {
	// One node, written to, closed; each case damages a copy of its files.
	src := t.TempDir()
	n := openNode(t, src)
	for i := range 40 {
		enroll(t, n, fmt.Sprintf("s%d", i), fmt.Sprintf("dev-%02d-%s", i, strings.Repeat("x", 40)))
	}
	hash, _ := n.StateHash()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"fsm.db": "devices", "raft.db": "logs"}
	type damage struct {
		name   string
		do     func(t *testing.T, path string, l boltLayout)
		detail string // in the error
	}
	cases := []damage{
		{"truncated below two pages", func(t *testing.T, path string, l boltLayout) { os.Truncate(path, l.pageSize) }, "truncated"},
		{"truncated before its last page", func(t *testing.T, path string, l boltLayout) { os.Truncate(path, (l.hwm-1)*l.pageSize) }, "truncated"},
		{"both meta pages garbage", func(t *testing.T, path string, l boltLayout) {
			garbagePage(t, path, l, 0)
			garbagePage(t, path, l, 1)
		}, "invalid"},
		{"root page garbage", func(t *testing.T, path string, l boltLayout) { garbagePage(t, path, l, l.root) }, "unreadable page"},
		{"freelist page garbage", func(t *testing.T, path string, l boltLayout) { garbagePage(t, path, l, l.freelist) }, "unreadable page"},
		{"bucket root page garbage", func(t *testing.T, path string, l boltLayout) { garbagePage(t, path, l, l.inner) }, "unreadable page"},
	}
	copyDir := func(t *testing.T) string {
		dst := t.TempDir()
		ents, _ := os.ReadDir(src)
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(src, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dst
	}
	for file, bucket := range files {
		for _, c := range cases {
			t.Run(file+"/"+c.name, func(t *testing.T) {
				dir := copyDir(t)
				path := filepath.Join(dir, file)
				l := readLayout(t, path, bucket)
				if c.name == "freelist page garbage" && l.freelist >= l.hwm {
					t.Fatalf("%s has no freelist page (%d of %d)", file, l.freelist, l.hwm)
				}
				c.do(t, path, l)
				n, err := Open(Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true})
				if err == nil {
					n.Close()
					t.Fatal("opened a damaged store")
				}
				if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.detail) {
					t.Fatalf("want ErrCorruptState naming %s and %q, got: %v", path, c.detail, err)
				}
			})
		}
		t.Run(file+"/older meta page garbage", func(t *testing.T) {
			dir := copyDir(t)
			path := filepath.Join(dir, file)
			l := readLayout(t, path, bucket)
			garbagePage(t, path, l, l.older)
			n, err := Open(Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true}, WithRaftConfig(fastRaft))
			if err != nil {
				t.Fatalf("bbolt should fall back on meta page 1: %v", err)
			}
			defer n.Close()
			if got, _ := n.StateHash(); got != hash {
				t.Fatalf("state hash %s, want %s", got, hash)
			}
		})
	}
}

// An older raft.db put back under a newer fsm.db (or a rolled-back meta
// page) is refused: the log would hand out indexes the FSM has applied, and
// the FSM would skip the new entries at them.
func TestOpenRefusesLogBehindRegistry(t *testing.T) {
	dir := t.TempDir()
	n := openNode(t, dir)
	enroll(t, n, "s1", "dev-1")
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(filepath.Join(dir, "raft.db"))
	if err != nil {
		t.Fatal(err)
	}
	n = openNode(t, dir)
	for i := 2; i < 5; i++ {
		enroll(t, n, fmt.Sprintf("s%d", i), fmt.Sprintf("dev-%d", i))
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "raft.db"), old, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Config{NodeID: "n1", DataDir: dir, RaftAddr: "127.0.0.1:0", Bootstrap: true})
	if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), "lost entries") {
		t.Fatalf("want ErrCorruptState (lost entries), got %v", err)
	}
}
