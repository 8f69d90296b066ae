package admin_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// plainStore is a store without Backup (as a PostgreSQL store would be).
type plainStore struct{ store.Store }

// failingBackup writes n bytes, then fails.
type failingBackup struct {
	store.Store
	n int
}

func (f failingBackup) Backup(w io.Writer) error {
	if f.n > 0 {
		if _, err := w.Write(bytes.Repeat([]byte{0x42}, f.n)); err != nil {
			return err
		}
	}
	return errors.New("disk on fire")
}

var _ admin.Backuper = (*bolt.DB)(nil)

// TestBackupRoute checks GET /api/v1/backup over a real socket: the token
// is required, a store that cannot copy itself answers 501 with the JSON
// error, and a bbolt store's copy, written to a file, opens as a store
// holding what was committed before the call and nothing committed after.
func TestBackupRoute(t *testing.T) {
	ctx := context.Background()
	db, err := bolt.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	put := func(k, v string) {
		t.Helper()
		if err := db.Update(ctx, func(tx store.Tx) error { return tx.Put(store.BucketOverrides, k, []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	put("domain:pec.ordine.example", "migrating")
	f := newFixture(t, func(o *admin.Options) { o.Store = db })

	if code, _, body := f.call(t, "GET", "/api/v1/backup", "", ""); code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
		t.Errorf("no token: %d %s, want 401 with a JSON error", code, body)
	}
	if code, h, _ := f.call(t, "POST", "/api/v1/backup", bearer, ""); code != http.StatusMethodNotAllowed || h.Get("Allow") != "GET" {
		t.Errorf("POST: %d Allow %q, want 405 Allow GET", code, h.Get("Allow"))
	}

	file := filepath.Join(t.TempDir(), bolt.FileName)
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.client().Backup(ctx, out)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	put("domain:pec.ordine.example", "new") // after the copy: not in it
	size, err := bolt.CheckFile(file)
	if err != nil || size != n {
		t.Fatalf("CheckFile = %d, %v; the client wrote %d bytes", size, err, n)
	}
	restored, err := bolt.Open(filepath.Dir(file))
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	err = restored.View(ctx, func(tx store.Tx) error {
		v, err := tx.Get(store.BucketOverrides, "domain:pec.ordine.example")
		if err == nil && string(v) != "migrating" {
			err = errors.New("restored state " + string(v) + ", want migrating (the state when the backup was taken)")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.log.String(), "admin backup") {
		t.Errorf("no log line for the backup:\n%s", f.log.String())
	}
}

// TestBackupRouteErrors checks what an operator sees when no copy can be
// made: a store without Backup (501), no store at all (501), a failure
// before the first byte (500, JSON) and one after it (the client reports
// the copy cut short instead of a short file that looks whole).
func TestBackupRouteErrors(t *testing.T) {
	db, err := bolt.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, tc := range []struct {
		name   string
		st     store.Store
		status int
		want   string
	}{
		{"no store", nil, http.StatusNotImplemented, "pg_dump"},
		{"store without Backup", plainStore{db}, http.StatusNotImplemented, "pg_dump"},
		{"fails at once", failingBackup{db, 0}, http.StatusInternalServerError, "internal error"},
		{"fails mid-stream", failingBackup{db, 100000}, 0, "cut short after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *admin.Options) { o.Store = tc.st })
			var buf bytes.Buffer
			_, err := f.client().Backup(context.Background(), &buf)
			var ae *admin.Error
			switch {
			case err == nil:
				t.Fatalf("Backup succeeded with %d bytes", buf.Len())
			case tc.status != 0 && (!errors.As(err, &ae) || ae.Status != tc.status):
				t.Errorf("err %v, want an *admin.Error with status %d", err, tc.status)
			case !strings.Contains(err.Error(), tc.want):
				t.Errorf("err %q, want it to say %q", err, tc.want)
			}
		})
	}
}
