package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/internal/pgtest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/store/pg"
)

// usePG puts `url = dbURL` into the [store] table of the configuration
// file at path ([store] path stays, unused).
func usePG(t *testing.T, path, dbURL string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	if !strings.Contains(text, "\n[store]\n") {
		t.Fatalf("%s has no [store] table", path)
	}
	text = strings.Replace(text, "\n[store]\n", fmt.Sprintf("\n[store]\nurl = %q\n", dbURL), 1)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// openTestPG opens the PostgreSQL store at dbURL, closed at cleanup.
func openTestPG(t *testing.T, dbURL string) *pg.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pg.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestServePostgresStore: pecgate serve with [store] url keeps its state
// in PostgreSQL. A member logs in through the gateway in state migrating;
// the UID map of INBOX that the test then reads from PostgreSQL gives
// every old message the virtual UID the client saw (old's own UID,
// invariant 1), nothing is written to [store] path, and, while the
// gateway still runs, pecgate verify reads the same database and finds
// every old message copied to new exactly once.
func TestServePostgresStore(t *testing.T) {
	dovetest.Require(t)
	pgtest.Require(t)
	bin := buildPecgate(t)
	old, nw := dovetest.StartPair(t, e2eUser)
	const nOld = 3
	for i := range nOld {
		old.Deliver(t, e2eUser, "INBOX", []byte(fmt.Sprintf("From: a@example.org\r\nTo: %s\r\nSubject: vecchio %d\r\n\r\nsu old %d\r\n", e2eUser, i, i)))
	}
	srv := pgtest.Start(t)
	dbURL := srv.NewDatabase(t)
	s := migratingSetup(t, old, nw)
	usePG(t, s.configPath, dbURL)
	p := startServe(t, bin, s)

	c, err := imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(e2eUser, old.Password(e2eUser)).Wait(); err != nil {
		t.Fatalf("login through the gateway: %v", err)
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("examine INBOX through the gateway: %v", err)
	}
	res, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	seen := res.AllUIDs()
	if want := []imap.UID{1, 2, 3}; !slices.Equal(seen, want) {
		t.Fatalf("the gateway shows UIDs %v, want old's %v", seen, want)
	}

	// The map is in PostgreSQL, and the back-fill records its copies there.
	db := openTestPG(t, dbURL)
	var m *store.Map
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := db.View(context.Background(), func(tx store.Tx) error {
			var err error
			m, err = store.GetMap(tx, e2eUser, "INBOX")
			return err
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		copied := 0
		if m != nil {
			for _, v := range seen {
				if oldUID, newUID, ok := m.Lookup(store.UID(v)); ok && oldUID == store.UID(v) && newUID != 0 {
					copied++
				}
			}
		}
		if copied == nOld {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60s the UID map in PostgreSQL records %d of %d copies (map %+v)\nserve stderr:\n%s", copied, nOld, m, p.stderr)
		}
		time.Sleep(50 * time.Millisecond) // polling the database
	}
	if _, err := os.Stat(filepath.Join(s.dir, "store", bolt.FileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("[store] path got an embedded store although [store] url is set (stat: %v)", err)
	}

	// pecgate verify while the gateway runs: the store is shared.
	pwFile := writeFile(t, s.dir, "passwords.csv", e2eUser+","+old.Password(e2eUser)+"\n")
	var out, errb bytes.Buffer
	code := run([]string{"verify", "-config", s.configPath, "-out", filepath.Join(s.dir, "audit"), "-passwords", pwFile, "example.org"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "OK: every old message is in new exactly once") ||
		!strings.Contains(out.String(), fmt.Sprintf("ok %d, missing 0", nOld)) {
		t.Fatalf("pecgate verify while the gateway runs: exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	select {
	case <-p.exited:
		t.Fatalf("the gateway exited (%v)", p.err)
	default:
	}
	if strings.Contains(p.stderr.String(), srv.Password) {
		t.Error("the gateway logged the database password")
	}
}

// TestServePostgresUnreachable: with [store] url naming a server that does
// not answer, pecgate serve fails at start with an error naming store.url
// and without the password.
func TestServePostgresUnreachable(t *testing.T) {
	dovetest.Require(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})
	s := writeE2EConfig(t, old, "", "")
	usePG(t, s.configPath, "postgres://pecgate:s3cret-db-pw@"+freeAddrs(t, 1)[0]+"/pecgate?sslmode=disable&connect_timeout=5")
	var out, errb bytes.Buffer
	code := run([]string{"serve", "-config", s.configPath}, &out, &errb)
	if code == 0 {
		t.Fatal("pecgate serve exited 0")
	}
	t.Logf("pecgate serve: exit %d, stderr:\n%s", code, errb.String())
	if msg := errb.String(); !strings.Contains(msg, "store.url") || !strings.Contains(msg, "PostgreSQL") || strings.Contains(msg, "s3cret-db-pw") {
		t.Fatalf("exit %d, stderr:\n%s", code, msg)
	}
}
