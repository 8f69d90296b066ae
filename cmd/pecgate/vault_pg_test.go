package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pecgate/pecgate/internal/pgtest"
	"github.com/pecgate/pecgate/store"
)

// TestVaultImportPostgres: with [store] url set, pecgate vault import
// writes the credentials to PostgreSQL while another process (the running
// gateway) has the same database open, which then reads them; no password
// is in the database in clear, nor in the output.
func TestVaultImportPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dbURL := srv.NewDatabase(t)
	s := newVaultSetup(t)
	usePG(t, s.config, dbURL)
	gw := openTestPG(t, dbURL) // the running gateway
	v, err := store.OpenVault(s.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	file := s.csv(t, "members.csv", "address,provider,username,password\n"+
		"anna@pec.ordine.example,infocert,U0001,pw-anna-secret\n"+
		"bruno@pec.ordine.example,infocert,U0002,pw-bruno-secret\n")
	code, stdout, stderr := s.run("vault", "-config", s.config, "import", file)
	if code != 0 || stdout != "imported 2 credentials for 2 members\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if strings.Contains(stdout+stderr, "secret") || strings.Contains(stdout+stderr, srv.Password) {
		t.Fatalf("output holds a password: %q %q", stdout, stderr)
	}
	got := map[string][2]string{}
	err = gw.View(context.Background(), func(tx store.Tx) error {
		for _, a := range []string{"anna@pec.ordine.example", "bruno@pec.ordine.example"} {
			u, p, err := v.Get(tx, "infocert", a)
			if err != nil {
				return err
			}
			got[a] = [2]string{u, p}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the gateway's DB reads the imported credentials: %v", err)
	}
	if got["anna@pec.ordine.example"] != [2]string{"U0001", "pw-anna-secret"} || got["bruno@pec.ordine.example"] != [2]string{"U0002", "pw-bruno-secret"} {
		t.Fatalf("vault holds %q", got)
	}
	// Nothing in clear in the database.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT value FROM pecgate_kv")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		n++
		if bytes.Contains(b, []byte("pw-anna-secret")) || bytes.Contains(b, []byte("pw-bruno-secret")) {
			t.Fatal("a password is in the database in clear")
		}
	}
	if rows.Err() != nil || n != 2 {
		t.Fatalf("%d rows in pecgate_kv (%v), want 2", n, rows.Err())
	}
}
