package pg

import (
	"context"
	"encoding/binary"
	"errors"
	"net/url"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/internal/pgtest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/storetest"
)

// urls remembers the database of every DB the conformance run opened, for
// reopen.
var urls gosync.Map // *DB -> string

func openDB(t testing.TB, u string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	urls.Store(db, u)
	return db
}

func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	storetest.Run(t,
		func(t *testing.T) store.Store { return openDB(t, srv.NewDatabase(t)) },
		func(t *testing.T, closed store.Store) store.Store {
			u, ok := urls.Load(closed.(*DB))
			if !ok {
				t.Fatal("reopen: unknown DB")
			}
			return openDB(t, u.(string))
		})
}

// Two DBs on one database (two processes, as the gateway and pecgate
// verify are) see each other's commits, and an open View keeps its
// snapshot.
func TestTwoDBsShareData(t *testing.T) {
	srv := pgtest.Start(t)
	u := srv.NewDatabase(t)
	a, b := openDB(t, u), openDB(t, u)
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	if err := a.Update(ctx, func(tx store.Tx) error { return tx.Put("b", "k", []byte("from a")) }); err != nil {
		t.Fatal(err)
	}
	get := func(db *DB) string {
		var v []byte
		if err := db.View(ctx, func(tx store.Tx) error {
			var err error
			v, err = tx.Get("b", "k")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	if got := get(b); got != "from a" {
		t.Fatalf("b reads %q, want a's commit %q", got, "from a")
	}
	// A View started before b's commit does not see it; one started after does.
	err := a.View(ctx, func(tx store.Tx) error {
		if _, err := tx.Get("b", "k"); err != nil { // takes the snapshot
			return err
		}
		if err := b.Update(ctx, func(tx store.Tx) error { return tx.Put("b", "k", []byte("from b")) }); err != nil {
			return err
		}
		v, err := tx.Get("b", "k")
		if err != nil {
			return err
		}
		if string(v) != "from a" {
			t.Errorf("a View saw %q committed after its snapshot, want %q", v, "from a")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := get(a); got != "from b" {
		t.Fatalf("a reads %q after b's commit, want %q", got, "from b")
	}
	// Reopening a database that has the tables keeps the data.
	c := openDB(t, u)
	defer c.Close()
	if got := get(c); got != "from b" {
		t.Fatalf("a third DB reads %q, want %q", got, "from b")
	}
}

// Read-modify-write Updates from two DBs (two processes) on one database
// are serialised: no increment is lost.
func TestUpdatesSerialisedAcrossDBs(t *testing.T) {
	srv := pgtest.Start(t)
	u := srv.NewDatabase(t)
	dbs := []*DB{openDB(t, u), openDB(t, u)}
	defer dbs[0].Close()
	defer dbs[1].Close()
	const workers, each = 4, 25 // per DB
	incr := func(tx store.Tx) error {
		v, err := tx.Get("counter", "n")
		if err != nil {
			return err
		}
		var n uint64
		if len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return tx.Put("counter", "n", binary.BigEndian.AppendUint64(nil, n+1))
	}
	var wg gosync.WaitGroup
	errc := make(chan error, 2*workers)
	for _, db := range dbs {
		for range workers {
			wg.Go(func() {
				for range each {
					if err := db.Update(context.Background(), incr); err != nil {
						errc <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	var n uint64
	dbs[1].View(context.Background(), func(tx store.Tx) error {
		v, err := tx.Get("counter", "n")
		if len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return err
	})
	if want := uint64(2 * workers * each); n != want {
		t.Fatalf("counter = %d after %d increments: updates were lost", n, want)
	}
}

// An Update waiting for the lock another process holds gives up when its
// ctx ends, and writes nothing.
func TestUpdateWaitCancelled(t *testing.T) {
	srv := pgtest.Start(t)
	u := srv.NewDatabase(t)
	a, b := openDB(t, u), openDB(t, u)
	defer a.Close()
	defer b.Close()
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Update(context.Background(), func(tx store.Tx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	ctx, cancel := context.WithCancel(context.Background())
	bDone := make(chan error, 1)
	go func() {
		bDone <- b.Update(ctx, func(tx store.Tx) error { return tx.Put("b", "k", []byte("late")) })
	}()
	// Wait until b waits for the advisory lock a holds.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting int
		if err := a.pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second Update never waited for the lock")
		}
		time.Sleep(10 * time.Millisecond) // polling pg_locks
	}
	cancel()
	if err := <-bDone; !errors.Is(err, context.Canceled) {
		t.Errorf("Update cancelled while waiting for the lock = %v, want context.Canceled", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	a.View(context.Background(), func(tx store.Tx) error {
		if v, _ := tx.Get("b", "k"); v != nil {
			t.Errorf("the cancelled Update wrote %q", v)
		}
		return nil
	})
}

// Errors of Open say what is wrong and never contain the password.
func TestOpenErrors(t *testing.T) {
	srv := pgtest.Start(t)
	good := srv.NewDatabase(t)
	wrongPW, _ := url.Parse(good)
	wrongPW.User = url.UserPassword(srv.User, "s3cret-wrong-pw")
	noDB, _ := url.Parse(good)
	noDB.Path = "/nosuchdb"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range []struct {
		name, url, secret, want string
	}{
		{"Unparsable", "postgres://pecgate:s3cret-pw@[::1:5432/x", "s3cret-pw", "cannot be parsed"},
		{"UnparsableKV", "host=127.0.0.1 password='s3cret-pw", "s3cret-pw", "cannot be parsed"},
		{"Unreachable", "postgres://pecgate:s3cret-pw@127.0.0.1:1/pecgate?connect_timeout=5", "s3cret-pw", "connect"},
		{"WrongPassword", wrongPW.String(), "s3cret-wrong-pw", "password authentication failed"},
		{"NoDatabase", noDB.String(), srv.Password, "nosuchdb"},
	} {
		t.Run(c.name, func(t *testing.T) {
			db, err := Open(ctx, c.url)
			if err == nil {
				db.Close()
				t.Fatal("Open succeeded")
			}
			if strings.Contains(err.Error(), c.secret) {
				t.Errorf("error shows the password: %v", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}

// Open refuses a database written by a newer pecgate.
func TestNewerSchemaRefused(t *testing.T) {
	srv := pgtest.Start(t)
	u := srv.NewDatabase(t)
	db := openDB(t, u)
	ctx := context.Background()
	if _, err := db.pool.Exec(ctx, `UPDATE pecgate_schema SET version = $1`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err := Open(ctx, u)
	if err == nil {
		db.Close()
		t.Fatal("Open accepted a newer schema")
	}
	if !strings.Contains(err.Error(), "upgrade pecgate") {
		t.Errorf("error %q does not say to upgrade pecgate", err)
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"", "", false},
		{"a", "b", true},
		{"a\xff", "b", true},
		{"\xff\xff", "", false},
		{"ab\x00", "ab\x01", true},
	} {
		got, ok := prefixEnd([]byte(c.in))
		if ok != c.ok || string(got) != c.want {
			t.Errorf("prefixEnd(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// A user without the CREATE privilege opens a database whose tables the
// owner created and granted it, and reads and writes; on a fresh database
// it gets an error that says what privilege is missing.
func TestOpenWithoutCreatePrivilege(t *testing.T) {
	srv := pgtest.Start(t)
	owner := srv.NewDatabase(t)
	fresh := srv.NewDatabase(t)
	db := openDB(t, owner) // creates the tables
	ctx := context.Background()
	for _, q := range []string{
		`CREATE ROLE gateway LOGIN PASSWORD 'gw-pw'`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON pecgate_kv TO gateway`,
		`GRANT SELECT ON pecgate_schema TO gateway`,
	} {
		if _, err := db.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	asGateway := func(u string) string {
		p, _ := url.Parse(u)
		p.User = url.UserPassword("gateway", "gw-pw")
		return p.String()
	}
	gw := openDB(t, asGateway(owner))
	defer gw.Close()
	if err := gw.Update(ctx, func(tx store.Tx) error { return tx.Put("b", "k", []byte("v")) }); err != nil {
		t.Fatalf("Update as a user with the grants: %v", err)
	}
	// PostgreSQL 15 gives PUBLIC no CREATE on the public schema.
	if _, err := Open(ctx, asGateway(fresh)); err == nil || !strings.Contains(err.Error(), "needs CREATE") {
		t.Fatalf("Open of a fresh database without CREATE = %v, want an error saying CREATE is needed", err)
	}
}

// A ctx cancelled while fn runs fails the transaction's next statement
// with ctx's error, and the Update leaves nothing behind.
func TestCancelledMidUpdate(t *testing.T) {
	srv := pgtest.Start(t)
	db := openDB(t, srv.NewDatabase(t))
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var second error
	err := db.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put("b", "k1", []byte("v")); err != nil {
			return err
		}
		cancel()
		second = tx.Put("b", "k2", []byte("v"))
		return second
	})
	if !errors.Is(second, context.Canceled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Put after cancel = %v, Update = %v; want context.Canceled", second, err)
	}
	db.View(context.Background(), func(tx store.Tx) error {
		for _, k := range []string{"k1", "k2"} {
			if v, err := tx.Get("b", k); v != nil || err != nil {
				t.Errorf("%s = %q, %v after a cancelled Update", k, v, err)
			}
		}
		return nil
	})
	// The DB stays usable.
	if err := db.Update(context.Background(), func(tx store.Tx) error { return tx.Put("b", "k", []byte("v")) }); err != nil {
		t.Fatalf("Update after a cancelled one: %v", err)
	}
}
