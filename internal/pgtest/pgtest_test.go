package pgtest

import (
	"context"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A started server accepts the superuser on a new database, refuses a
// wrong password, and is gone (directory removed) after cleanup.
func TestStart(t *testing.T) {
	var dir string
	t.Run("server", func(t *testing.T) {
		s := Start(t)
		dir = s.Dir
		ctx := context.Background()
		dbURL := s.NewDatabase(t)
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var db string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
			t.Fatal(err)
		}
		if u, _ := url.Parse(dbURL); "/"+db != u.Path {
			t.Errorf("connected to database %q, URL %s", db, dbURL)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE t (x int)"); err != nil {
			t.Fatal(err)
		}
		if other := s.NewDatabase(t); other == dbURL {
			t.Errorf("NewDatabase returned %s twice", other)
		}
		u, _ := url.Parse(dbURL)
		u.User = url.UserPassword(s.User, "wrong")
		if c, err := pgx.Connect(ctx, u.String()); err == nil {
			c.Close(ctx)
			t.Error("a wrong password was accepted")
		}
	})
	if dir == "" {
		return // skipped
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after a passed test (stat: %v)", dir, err)
	}
}
