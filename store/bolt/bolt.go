// Package bolt is pecgate's embedded store: store.Store on one bbolt file,
// PATH/pecgate.db, where PATH is the [store] path directory.
//
// Implementation notes:
//
//   - One bbolt bucket per store bucket, created on demand by the first Put
//     of an Update. In a View, Get on a missing bucket returns nil and
//     ForEach calls nothing; Put and Delete return an error wrapping
//     bbolt's ErrTxNotWritable, whether or not the bucket exists.
//   - Values are copied both ways. bbolt's values point into its read-only
//     memory map and are valid only inside the transaction (writing to them
//     faults), and a value given to bbolt's Put must stay unchanged until
//     commit. Get and ForEach therefore hand out copies the caller owns, and
//     Put keeps a copy, so callers never have to think about either rule.
//   - ForEach reads the bucket in batches and calls fn outside the bbolt
//     cursor, so fn may Put and Delete in the same transaction, in the same
//     bucket too; whether this ForEach then visits a key that fn added after
//     the current one is unspecified.
//   - Keys and bucket names must be non-empty; keys are at most 32768 bytes
//     (bbolt's MaxKeySize).
//   - Updates are serialised by bbolt's single writer lock; Views run
//     concurrently with each other and with the one Update. A fn must not
//     call View or Update on the same DB: bbolt would deadlock.
//   - NoSync stays false: every Update is fsynced before it returns, which
//     is what invariant 6 (crash safety) rests on. bbolt's copy-on-write
//     pages and double meta page make a commit atomic under kill -9.
//   - The file is locked (flock) while open. A second gateway on the same
//     directory waits OpenTimeout for the lock, then fails with "store
//     locked by another pecgate process?".
//
// A note for store/pg: nothing here needs more than a table
// kv(bucket text, key bytea, value bytea, primary key(bucket, key)).
// Buckets exist implicitly (a missing bucket is no rows); ForEach is
// "WHERE bucket = $1 AND key >= $prefix ORDER BY key" with a prefix check
// (or a key < upper-bound range); View is a READ ONLY transaction; Update
// runs at SERIALIZABLE with retry on serialization failure, or takes one
// advisory lock (pg_advisory_xact_lock) first so Updates are serialised as
// here. Comparing keys as bytea gives the same byte order as bbolt.
package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/pecgate/pecgate/store"
)

// FileName is the name of the database file inside the store directory.
const FileName = "pecgate.db"

// OpenTimeout is how long Open waits for the file lock held by another
// process before giving up.
const OpenTimeout = time.Second

// forEachBatch is how many entries ForEach reads per cursor pass.
const forEachBatch = 256

// ErrLocked is returned (wrapped) by Open when another process holds the
// store file.
var ErrLocked = errors.New("store/bolt: store locked by another pecgate process?")

// ErrTxClosed is returned by a Tx used after its View or Update returned.
var ErrTxClosed = errors.New("store/bolt: transaction used after it ended")

// DB is a store.Store on a bbolt file. It is safe for concurrent use.
type DB struct {
	db   *bbolt.DB
	path string
}

var _ store.Store = (*DB)(nil)

// Open opens (creating when missing) the store in directory dir: dir is
// created with mode 0700, the file dir/pecgate.db with mode 0600. It fails
// after OpenTimeout with an error wrapping ErrLocked when another process
// has the file open.
func Open(dir string) (*DB, error) {
	if dir == "" {
		return nil, errors.New("store/bolt: empty store path")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store/bolt: create store directory: %w", err)
	}
	file := filepath.Join(dir, FileName)
	db, err := bbolt.Open(file, 0o600, &bbolt.Options{
		Timeout: OpenTimeout,
		NoSync:  false, // invariant 6: every commit is fsynced
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w (%s: no lock within %v)", ErrLocked, file, OpenTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("store/bolt: open %s: %w", file, err)
	}
	return &DB{db: db, path: file}, nil
}

// Path returns the database file's path.
func (d *DB) Path() string { return d.path }

// View runs fn in a read-only transaction. It returns ctx's error without
// running fn when ctx is done before the transaction starts.
func (d *DB) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.db.View(func(btx *bbolt.Tx) error {
		t := &tx{btx: btx}
		defer t.end()
		return fn(t)
	})
}

// Update runs fn in a read-write transaction, committed (and fsynced)
// when fn returns nil, rolled back when fn returns an error or panics.
// ctx is checked before the transaction starts and again once bbolt's
// writer lock is held, so an Update that waited behind others for a
// cancelled ctx does nothing.
func (d *DB) Update(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.db.Update(func(btx *bbolt.Tx) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		t := &tx{btx: btx}
		defer t.end()
		return fn(t)
	})
}

// Close closes the file and releases its lock. It waits for running
// transactions.
func (d *DB) Close() error {
	if err := d.db.Close(); err != nil {
		return fmt.Errorf("store/bolt: close: %w", err)
	}
	return nil
}

// tx implements store.Tx. btx is nil once the transaction has ended.
type tx struct {
	btx *bbolt.Tx
}

func (t *tx) end() { t.btx = nil }

func (t *tx) check(bucket, key string) error {
	if t.btx == nil {
		return ErrTxClosed
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return fmt.Errorf("store/bolt: %w", err)
	}
	return nil
}

func (t *tx) Get(bucket, key string) ([]byte, error) {
	if err := t.check(bucket, key); err != nil {
		return nil, err
	}
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil, nil
	}
	return clone(b.Get([]byte(key))), nil
}

func (t *tx) Put(bucket, key string, value []byte) error {
	if err := t.check(bucket, key); err != nil {
		return err
	}
	if !t.btx.Writable() {
		return fmt.Errorf("store/bolt: put %s/%q: %w", bucket, key, berrors.ErrTxNotWritable)
	}
	b, err := t.btx.CreateBucketIfNotExists([]byte(bucket))
	if err != nil {
		return fmt.Errorf("store/bolt: create bucket %q: %w", bucket, err)
	}
	if value == nil {
		value = []byte{} // bbolt stores nil as empty too; be explicit
	}
	if err := b.Put([]byte(key), bytes.Clone(value)); err != nil {
		return fmt.Errorf("store/bolt: put %s/%q: %w", bucket, key, err)
	}
	return nil
}

func (t *tx) Delete(bucket, key string) error {
	if err := t.check(bucket, key); err != nil {
		return err
	}
	if !t.btx.Writable() {
		return fmt.Errorf("store/bolt: delete %s/%q: %w", bucket, key, berrors.ErrTxNotWritable)
	}
	b := t.btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("store/bolt: delete %s/%q: %w", bucket, key, err)
	}
	return nil
}

type entry struct {
	key   string
	value []byte
}

func (t *tx) ForEach(bucket, prefix string, fn func(key string, value []byte) error) error {
	if t.btx == nil {
		return ErrTxClosed
	}
	if err := store.CheckBucket(bucket); err != nil {
		return fmt.Errorf("store/bolt: %w", err)
	}
	seek := []byte(prefix)
	pfx := []byte(prefix)
	batch := make([]entry, 0, forEachBatch)
	for {
		if t.btx == nil {
			return ErrTxClosed // fn kept going after the tx ended
		}
		// A fresh bucket handle and cursor on every pass: neither may be
		// used across fn's writes.
		b := t.btx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		batch = batch[:0]
		c := b.Cursor()
		for k, v := c.Seek(seek); k != nil && bytes.HasPrefix(k, pfx) && len(batch) < forEachBatch; k, v = c.Next() {
			batch = append(batch, entry{string(k), clone(v)})
		}
		for _, e := range batch {
			if err := fn(e.key, e.value); err != nil {
				return err
			}
		}
		if len(batch) < forEachBatch {
			return nil
		}
		// Resume at the smallest key after the last one seen.
		seek = append([]byte(batch[len(batch)-1].key), 0)
	}
}

// clone copies a bbolt value out of the memory map; nil stays nil, an
// empty value becomes a non-nil empty slice (present, but empty).
func clone(v []byte) []byte {
	if v == nil {
		return nil
	}
	out := make([]byte, len(v))
	copy(out, v)
	return out
}
