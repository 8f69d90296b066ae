// Package pg is pecgate's PostgreSQL store: store.Store on one table of a
// PostgreSQL database named by [store] url, shared by every pecgate process
// pointed at it (the gateway, pecgate vault import, pecgate verify,
// pecgate preflight).
//
// Implementation notes:
//
//   - One table, pecgate_kv(bucket text, key bytea, value bytea, primary
//     key (bucket, key)), and pecgate_schema(version), one row, are created
//     by Open when missing (in the first schema of the search_path); with
//     both present the user needs no CREATE privilege, only SELECT,
//     INSERT, UPDATE and DELETE on them. Open refuses a database whose schema version is
//     newer than SchemaVersion (a newer pecgate wrote it). Buckets exist
//     implicitly: a missing bucket is no rows.
//   - Keys are bytea, so ORDER BY key is ascending byte order (PostgreSQL
//     compares bytea with memcmp, a shorter prefix first), as in bbolt.
//     ForEach reads a prefix as the key range [prefix, next(prefix)) in
//     batches and calls fn between batches, so fn may Put and Delete in the
//     same transaction; whether a key fn adds after the current one is
//     visited is unspecified.
//   - Update is a READ COMMITTED transaction that first takes the
//     transaction-scoped advisory lock updateLockKey
//     (pg_advisory_xact_lock): Updates are serialised across every process
//     using the database, as bbolt's writer lock serialises them in one
//     process, and each Update reads the latest commits. Inside one process
//     a semaphore lets only one Update hold a connection while waiting, so
//     queued Updates do not exhaust the pool that Views need.
//   - View is a READ ONLY, REPEATABLE READ transaction: one snapshot, no
//     lock, concurrent with Updates and other Views. Put and Delete in a
//     View fail before reaching the server.
//   - Durability is PostgreSQL's: an Update returns after COMMIT, which
//     (with the server's default synchronous_commit = on) is on disk;
//     invariant 6 rests on that.
//   - ctx of View and Update is used for every statement of the
//     transaction: cancelling it aborts the running statement and rolls the
//     transaction back.
//   - Values are copied both ways: Get and ForEach return slices the caller
//     owns; Put sends the bytes before returning.
//   - Errors never contain the connection string or its password: a
//     connection string that does not parse gives a fixed message, and
//     every other error's text has the password masked.
//   - Connections come from a pgxpool pool: at most max(4, CPUs) unless
//     the URL sets pool_max_conns (e.g. ?pool_max_conns=16), which a
//     gateway with many concurrent sessions may want. A fn must not call
//     View or Update on the same DB from inside an Update: with the pool
//     exhausted it could wait for itself.
package pg

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pecgate/pecgate/store"
)

// SchemaVersion is the version of the tables this package reads and
// writes, stored in pecgate_schema.
const SchemaVersion = 1

// updateLockKey is the advisory lock every Update holds: the first eight
// bytes of "pecgate!" as a big-endian int64. Advisory locks are per
// database, so two pecgate installations in different databases of one
// server do not block each other.
const updateLockKey int64 = 0x7065636761746521

// forEachBatch is how many rows ForEach reads per query.
const forEachBatch = 256

// ErrTxClosed is returned by a Tx used after its View or Update returned.
var ErrTxClosed = errors.New("store/pg: transaction used after it ended")

// ErrReadOnly is returned (wrapped) by Put and Delete in a View.
var ErrReadOnly = errors.New("store/pg: write in a read-only transaction")

// DB is a store.Store on a PostgreSQL database. It is safe for concurrent
// use, also by several processes on the same database.
type DB struct {
	pool     *pgxpool.Pool
	password string        // masked out of every error text
	writer   chan struct{} // one Update per process waits for the lock
}

var _ store.Store = (*DB)(nil)

// Open connects to the PostgreSQL database named by url (a postgres:// or
// postgresql:// URL, or a key=value connection string, as libpq takes),
// creates pecgate's tables when missing and checks their schema version.
// ctx bounds the connection and the schema check; the DB outlives it.
func Open(ctx context.Context, url string) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgconn's ParseConfigError masks passwords only on a best-effort
		// basis and may wrap a *url.Error holding the whole URL: give a
		// fixed message instead.
		return nil, errors.New("store/pg: the connection string cannot be parsed: write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE or as key=value pairs (host=... dbname=...)")
	}
	d := &DB{password: cfg.ConnConfig.Password, writer: make(chan struct{}, 1)}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, d.wrap("connect", err)
	}
	d.pool = pool
	if err := d.migrate(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return d, nil
}

// migrate creates the tables when missing, under the update lock so that
// two processes opening a fresh database do not race on CREATE TABLE.
func (d *DB) migrate(ctx context.Context) error {
	tx, err := d.pool.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		return d.wrap("connect", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, updateLockKey); err != nil {
		return d.wrap("take the update lock", err)
	}
	// Only missing tables are created: CREATE TABLE IF NOT EXISTS would
	// need the CREATE privilege even when the table exists, and a DBA may
	// have created the tables and granted the gateway's user only
	// SELECT, INSERT, UPDATE and DELETE on them.
	tables := []struct{ name, create string }{
		{"pecgate_schema", `CREATE TABLE pecgate_schema (
			one boolean PRIMARY KEY DEFAULT true CHECK (one),
			version integer NOT NULL)`},
		{"pecgate_kv", `CREATE TABLE pecgate_kv (
			bucket text NOT NULL,
			key bytea NOT NULL,
			value bytea NOT NULL,
			PRIMARY KEY (bucket, key))`},
	}
	for _, tb := range tables {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, tb.name).Scan(&exists); err != nil {
			return d.wrap("look for table "+tb.name, err)
		}
		if exists {
			continue
		}
		if _, err := tx.Exec(ctx, tb.create); err != nil {
			return d.wrap("create table "+tb.name+" (the user needs CREATE on the database's schema once: make it the database's owner, or create the tables as the owner and grant it SELECT, INSERT, UPDATE, DELETE)", err)
		}
	}
	var version int
	err = tx.QueryRow(ctx, `SELECT version FROM pecgate_schema`).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := tx.Exec(ctx, `INSERT INTO pecgate_schema (version) VALUES ($1)`, SchemaVersion); err != nil {
			return d.wrap("write schema version", err)
		}
	case err != nil:
		return d.wrap("read schema version", err)
	case version > SchemaVersion:
		return fmt.Errorf("store/pg: the database has schema version %d, newer than this pecgate's %d: a newer pecgate wrote it; upgrade pecgate", version, SchemaVersion)
	}
	if err := tx.Commit(ctx); err != nil {
		return d.wrap("create tables", err)
	}
	return nil
}

// View runs fn in a read-only, repeatable-read transaction. It returns
// ctx's error without running fn when ctx is done before the transaction
// starts.
func (d *DB) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ptx, err := d.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return d.ctxOr(ctx, "begin read transaction", err)
	}
	t := &tx{d: d, ctx: ctx, ptx: ptx}
	defer func() {
		t.ptx = nil
		ptx.Rollback(context.Background()) // read-only: nothing to commit
	}()
	return fn(t)
}

// Update runs fn in a read-write transaction holding the update lock,
// committed when fn returns nil, rolled back when fn returns an error or
// panics. ctx is checked before the transaction starts and again once the
// lock is held, so an Update that waited behind others for a cancelled ctx
// does nothing.
func (d *DB) Update(ctx context.Context, fn func(store.Tx) error) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case d.writer <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-d.writer }()
	ptx, err := d.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted, AccessMode: pgx.ReadWrite})
	if err != nil {
		return d.ctxOr(ctx, "begin transaction", err)
	}
	t := &tx{d: d, ctx: ctx, ptx: ptx, writable: true}
	committed := false
	defer func() {
		t.ptx = nil
		if !committed {
			ptx.Rollback(context.Background())
		}
	}()
	if _, err := ptx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, updateLockKey); err != nil {
		return d.ctxOr(ctx, "take the update lock", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := fn(t); err != nil {
		return err
	}
	t.ptx = nil
	if err := ptx.Commit(ctx); err != nil {
		return d.ctxOr(ctx, "commit", err)
	}
	committed = true
	return nil
}

// Close closes every connection. It waits for connections in use to be
// returned, so it waits for running transactions.
func (d *DB) Close() error {
	d.pool.Close()
	return nil
}

// ctxOr returns ctx's error when ctx is done (the statement failed because
// of it), else err wrapped.
func (d *DB) ctxOr(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return d.wrap(op, err)
}

// wrap wraps err for op, masking the password in its text.
func (d *DB) wrap(op string, err error) error {
	return &pgError{op: op, err: err, password: d.password}
}

// pgError is an error of the PostgreSQL driver with the password masked
// in its text; Unwrap still gives the driver's error (a *pgconn.PgError
// for errors reported by the server).
type pgError struct {
	op       string
	err      error
	password string
}

func (e *pgError) Error() string {
	msg := "store/pg: " + e.op + ": " + e.err.Error()
	if e.password != "" {
		msg = strings.ReplaceAll(msg, e.password, "xxxxx")
	}
	return msg
}

func (e *pgError) Unwrap() error { return e.err }

// tx implements store.Tx. ptx is nil once the transaction has ended (or
// while it commits).
type tx struct {
	d        *DB
	ctx      context.Context
	ptx      pgx.Tx
	writable bool
}

func (t *tx) check(bucket, key string) error {
	if t.ptx == nil {
		return ErrTxClosed
	}
	if err := store.CheckKey(bucket, key); err != nil {
		return fmt.Errorf("store/pg: %w", err)
	}
	return nil
}

func (t *tx) Get(bucket, key string) ([]byte, error) {
	if err := t.check(bucket, key); err != nil {
		return nil, err
	}
	var v []byte
	err := t.ptx.QueryRow(t.ctx, `SELECT value FROM pecgate_kv WHERE bucket = $1 AND key = $2`, bucket, []byte(key)).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, t.d.ctxOr(t.ctx, fmt.Sprintf("get %s/%q", bucket, key), err)
	}
	if v == nil {
		v = []byte{} // present but empty
	}
	return v, nil
}

func (t *tx) Put(bucket, key string, value []byte) error {
	if err := t.check(bucket, key); err != nil {
		return err
	}
	if !t.writable {
		return fmt.Errorf("store/pg: put %s/%q: %w", bucket, key, ErrReadOnly)
	}
	if value == nil {
		value = []byte{}
	}
	_, err := t.ptx.Exec(t.ctx, `INSERT INTO pecgate_kv (bucket, key, value) VALUES ($1, $2, $3)
		ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value`, bucket, []byte(key), value)
	if err != nil {
		return t.d.ctxOr(t.ctx, fmt.Sprintf("put %s/%q", bucket, key), err)
	}
	return nil
}

func (t *tx) Delete(bucket, key string) error {
	if err := t.check(bucket, key); err != nil {
		return err
	}
	if !t.writable {
		return fmt.Errorf("store/pg: delete %s/%q: %w", bucket, key, ErrReadOnly)
	}
	if _, err := t.ptx.Exec(t.ctx, `DELETE FROM pecgate_kv WHERE bucket = $1 AND key = $2`, bucket, []byte(key)); err != nil {
		return t.d.ctxOr(t.ctx, fmt.Sprintf("delete %s/%q", bucket, key), err)
	}
	return nil
}

type entry struct {
	key   string
	value []byte
}

func (t *tx) ForEach(bucket, prefix string, fn func(key string, value []byte) error) error {
	if t.ptx == nil {
		return ErrTxClosed
	}
	if err := store.CheckBucket(bucket); err != nil {
		return fmt.Errorf("store/pg: %w", err)
	}
	upper, bounded := prefixEnd([]byte(prefix))
	seek := []byte(prefix)
	batch := make([]entry, 0, forEachBatch)
	for {
		if t.ptx == nil {
			return ErrTxClosed // fn kept going after the tx ended
		}
		var rows pgx.Rows
		var err error
		if bounded {
			rows, err = t.ptx.Query(t.ctx, `SELECT key, value FROM pecgate_kv
				WHERE bucket = $1 AND key >= $2 AND key < $3 ORDER BY key LIMIT $4`,
				bucket, seek, upper, forEachBatch)
		} else {
			rows, err = t.ptx.Query(t.ctx, `SELECT key, value FROM pecgate_kv
				WHERE bucket = $1 AND key >= $2 ORDER BY key LIMIT $3`,
				bucket, seek, forEachBatch)
		}
		if err != nil {
			return t.d.ctxOr(t.ctx, fmt.Sprintf("list %s/%q", bucket, prefix), err)
		}
		batch = batch[:0]
		for rows.Next() {
			var k, v []byte
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				return t.d.ctxOr(t.ctx, fmt.Sprintf("list %s/%q", bucket, prefix), err)
			}
			if v == nil {
				v = []byte{}
			}
			batch = append(batch, entry{string(k), v})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return t.d.ctxOr(t.ctx, fmt.Sprintf("list %s/%q", bucket, prefix), err)
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

// prefixEnd returns the smallest byte string greater than every string
// with prefix p, and false when there is none (p empty or all 0xff).
func prefixEnd(p []byte) ([]byte, bool) {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1], true
		}
	}
	return nil, false
}
