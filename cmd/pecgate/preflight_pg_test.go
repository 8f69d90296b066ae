package main

import (
	"context"
	"log/slog"
	"os"
	"strings"
	gosync "sync"
	"testing"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
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

// TestPreflightPostgresThroughGateway: with [store] url and the admin API
// configured, pecgate preflight asks the running gateway first, which
// checks a member the store knows with the password it learnt at the
// member's login; when the gateway does not answer, preflight runs the
// check itself on PostgreSQL, where that member is "not checked" on old.
func TestPreflightPostgresThroughGateway(t *testing.T) {
	const member = "giulia.verdi@pec.ordine.example"
	dovetest.Require(t)
	old, nw := dovetest.StartPair(t, member)
	srv := pgtest.Start(t)
	dbURL := srv.NewDatabase(t)
	s := writeVerifyConfig(t, old, nw)
	usePG(t, s.config, dbURL)
	data, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := writeFile(t, s.dir, "admin.token", "sekrit-token\n")
	adminAddr := freeAddrs(t, 1)[0]
	writeFile(t, s.dir, "pecgate.toml", strings.Replace(string(data), `admin = ""`, `admin = "`+adminAddr+`"`, 1)+
		"\n[admin]\ntoken_file = \""+tokenFile+"\"\n")

	// The gateway: the same PostgreSQL store, its providers and admin API.
	cfg, err := config.Load(s.config)
	if err != nil {
		t.Fatal(err)
	}
	db := openTestPG(t, dbURL)
	if err := db.Update(context.Background(), func(tx store.Tx) error {
		return store.PutProgress(tx, &store.Progress{User: member, State: "copying"})
	}); err != nil {
		t.Fatal(err)
	}
	router, err := store.NewRouter(context.Background(), cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	backends, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	known := func(user string) (string, bool) {
		if user == member {
			return old.Password(member), true
		}
		return "", false
	}
	log := slog.New(slog.DiscardHandler)
	_, stop, err := startAdminFor(context.Background(), cfg, adminDeps{Router: router, Store: db, Backends: backends,
		Preflight: gatewayPreflight(cfg, backends, db, nil, known, log)}, log)
	if err != nil {
		t.Fatal(err)
	}
	stopAdmin := gosync.OnceFunc(stop)
	t.Cleanup(stopAdmin)

	code, stdout, stderr := s.preflight("pec.ordine.example")
	if code != 0 || !strings.Contains(stderr, "the running gateway ran the check") || !strings.Contains(stdout, member) ||
		strings.Contains(stdout, "not checked") || !strings.Contains(stdout, "OK: no member blocks the flip") {
		t.Fatalf("with the gateway: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	stopAdmin()
	code, stdout, stderr = s.preflight("pec.ordine.example")
	if code != 0 || !strings.Contains(stderr, "running it here on the PostgreSQL store") ||
		!strings.Contains(stdout, member) || !strings.Contains(stdout, "not checked on old") {
		t.Fatalf("without the gateway: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}
