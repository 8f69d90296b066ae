package main

import (
	"context"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/internal/pgtest"
	"github.com/pecgate/pecgate/store"
)

// TestPreflightPostgres: with [store] url set, pecgate preflight reads the
// store here while the gateway has it open, with no admin API: the
// members come from PostgreSQL (a member the store knows, none given with
// -users) and are checked against real Dovecot.
func TestPreflightPostgres(t *testing.T) {
	const (
		known   = "giulia.verdi@pec.ordine.example"
		unknown = "mario.rossi@pec.ordine.example"
	)
	dovetest.Require(t)
	old, nw := dovetest.StartPair(t, known, unknown)
	srv := pgtest.Start(t)
	dbURL := srv.NewDatabase(t)
	s := writeVerifyConfig(t, old, nw)
	usePG(t, s.config, dbURL)
	gw := openTestPG(t, dbURL) // the running gateway
	err := gw.Update(context.Background(), func(tx store.Tx) error {
		return store.PutProgress(tx, &store.Progress{User: known, State: "copying"})
	})
	if err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := s.preflight("pec.ordine.example")
	t.Logf("pecgate preflight:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	if code != 0 || !strings.Contains(stdout, known) || strings.Contains(stdout, unknown) ||
		!strings.Contains(stdout, "not checked on old") || !strings.Contains(stdout, "OK: no member blocks the flip") {
		t.Fatalf("exit %d, want 0 with %s (from the store) not checked on old, and not %s", code, known, unknown)
	}
	if strings.Contains(stderr, "in use") || strings.Contains(stderr, "gateway") {
		t.Errorf("preflight did not read the shared store itself: %s", stderr)
	}

	// With the password from -users the member is checked on old too; a
	// wrong one blocks the flip.
	users := writeFile(t, s.dir, "m.csv", known+","+old.Password(known)+"\n"+unknown+",wrong-pw\n")
	code, stdout, stderr = s.preflight("-users", users, "pec.ordine.example")
	if code != 1 || !strings.Contains(stderr, unknown+": login credentials on old") || strings.Contains(stdout, "not checked on old") {
		t.Fatalf("with -users: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}
