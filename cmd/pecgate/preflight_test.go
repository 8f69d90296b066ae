package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync/preflight"
)

func (s *verifySetup) preflight(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"preflight", "-config", s.config}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPreflightUsage(t *testing.T) {
	s := writeVerifyConfig(t, nil, nil)
	var out, errb bytes.Buffer
	if code := run([]string{"preflight", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "examples:") || !strings.Contains(errb.String(), "user[,password]") {
		t.Fatalf("preflight -h: exit %d, %q", code, errb.String())
	}
	other := writeFile(t, s.dir, "other.csv", "user,password\nmario@pec.altro.example,x\n")
	empty := writeFile(t, s.dir, "empty.csv", "user\n")
	bad := writeFile(t, s.dir, "bad.csv", "mario@pec.ordine.example,a,b\n")
	dup := writeFile(t, s.dir, "dup.csv", "mario@pec.ordine.example\nMARIO@pec.ordine.example,x\n")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no domain", nil, 2, "want one DOMAIN"},
		{"a user", []string{verifyTestUser}, 2, "want one DOMAIN"},
		{"bad flag", []string{"-nope", "pec.ordine.example"}, 2, "usage: pecgate preflight"},
		{"negative concurrency", []string{"-concurrency", "-1", "pec.ordine.example"}, 2, "want a positive number"},
		{"domain not served", []string{"pec.ignoto.example"}, 1, "not a domain served"},
		{"domain without new provider", []string{"pec.altro.example"}, 1, "no new provider"},
		{"no member known", []string{"pec.ordine.example"}, 1, "give it with -users"},
		{"users file missing", []string{"-users", "/nonexistent.csv", "pec.ordine.example"}, 1, "nonexistent.csv"},
		{"users of another domain", []string{"-users", other, "pec.ordine.example"}, 1, "not an address of pec.ordine.example"},
		{"users file empty", []string{"-users", empty, "pec.ordine.example"}, 1, "no members"},
		{"users file with three columns", []string{"-users", bad, "pec.ordine.example"}, 1, "bad.csv:1: want user[,password]"},
		{"user twice", []string{"-users", dup, "pec.ordine.example"}, 1, "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := s.preflight(tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

// TestReadMembers: addresses are trimmed and lower-cased, passwords kept
// byte for byte (a leading space is part of a password), the password
// column optional, the header line optional.
func TestReadMembers(t *testing.T) {
	dir := t.TempDir()
	f := writeFile(t, dir, "m.csv", "\uFEFFutente,password\n Mario.Rossi@PEC.ordine.example , sp ace \nanna@pec.ordine.example\n\"luigi@pec.ordine.example\",\"a,\"\"b\"\n")
	users, pw, err := readMembers(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"mario.rossi@pec.ordine.example", "anna@pec.ordine.example", "luigi@pec.ordine.example"}
	if !slices.Equal(users, want) || pw[want[0]] != " sp ace " || pw[want[1]] != "" || pw[want[2]] != `a,"b` {
		t.Errorf("users %q, passwords %q", users, pw)
	}
}

// TestPreflightStoreLocked: with the store held by the gateway and no
// -users, preflight says what to do.
func TestPreflightStoreLocked(t *testing.T) {
	s := writeVerifyConfig(t, nil, nil)
	st, err := bolt.Open(s.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	code, _, stderr := s.preflight("pec.ordine.example")
	if code != 1 || !strings.Contains(stderr, "in use") || !strings.Contains(stderr, "-users") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestPreflightDovecot runs the command against real Dovecot: old logs in
// with the members' passwords from -users, new with its master user. A
// wrong password blocks the flip (exit 1, the member named with the
// reason), a member without a password is a warning, and the CSV written
// with -out says the same; without the blocking member the exit status is
// 0. The second run also proves preflight works while the gateway holds
// the store, when the members are given.
func TestPreflightDovecot(t *testing.T) {
	const (
		healthy = "giulia.verdi@pec.ordine.example"
		wrong   = "mario.rossi@pec.ordine.example"
		noPw    = "anna.bianchi@pec.ordine.example"
	)
	old, nw := dovetest.StartPair(t, healthy, wrong, noPw)
	s := writeVerifyConfig(t, old, nw)
	users := writeFile(t, s.dir, "members.csv", "user;password\n"+
		" "+healthy+";"+old.Password(healthy)+"\n"+
		wrong+";not-"+old.Password(wrong)+"\n"+
		noPw+"\n")
	out := filepath.Join(s.dir, "preflight.csv")
	code, stdout, stderr := s.preflight("-users", users, "-out", out, "pec.ordine.example")
	t.Logf("pecgate preflight:\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"MEMBER", healthy, "BLOCKED", "WARNING", "the member's password was refused by old", "not checked on old", "report: " + out} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "1 of 3 members block it") || !strings.Contains(stderr, wrong+": login credentials on old") || strings.Contains(stderr, old.Password(healthy)) {
		t.Errorf("stderr:\n%s", stderr)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]string{}
	col := slices.Index(preflight.CSVHeader, "verdict")
	for _, rec := range recs[1:] {
		verdicts[rec[0]] = rec[col]
	}
	if want := map[string]string{healthy: "ok", wrong: "blocked", noPw: "warning"}; len(verdicts) != 3 ||
		verdicts[healthy] != want[healthy] || verdicts[wrong] != want[wrong] || verdicts[noPw] != want[noPw] {
		t.Errorf("CSV verdicts %v, want %v", verdicts, want)
	}

	// The gateway holds the store: with -users, preflight goes on without.
	st, err := bolt.Open(s.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	users = writeFile(t, s.dir, "ok.csv", healthy+","+old.Password(healthy)+"\n"+noPw+"\n")
	code, stdout, stderr = s.preflight("-users", users, "pec.ordine.example")
	if code != 0 || !strings.Contains(stdout, "OK: no member blocks the flip") || !strings.Contains(stderr, "going on without the store") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// TestPreflightThroughGateway: while the gateway holds the store, pecgate
// preflight has the gateway run the check through the admin API, with the
// members and passwords given here, and prints its report like its own.
func TestPreflightThroughGateway(t *testing.T) {
	const (
		healthy = "giulia.verdi@pec.ordine.example"
		wrong   = "mario.rossi@pec.ordine.example"
	)
	old, nw := dovetest.StartPair(t, healthy, wrong)
	s := writeVerifyConfig(t, old, nw)
	data, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := writeFile(t, s.dir, "admin.token", "sekrit-token\n")
	adminAddr := freeAddrs(t, 1)[0]
	text := strings.Replace(string(data), `admin = ""`, `admin = "`+adminAddr+`"`, 1) + "\n[admin]\ntoken_file = \"" + tokenFile + "\"\n"
	writeFile(t, s.dir, "pecgate.toml", text)

	// The gateway: its store, providers and admin API with preflight.
	cfg, err := config.Load(s.config)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	router, err := store.NewRouter(context.Background(), cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	backends, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The back-fill learnt healthy's password at a login through the
	// gateway: preflight inside the gateway uses it when the request
	// gives none.
	known := func(user string) (string, bool) {
		if user == healthy {
			return old.Password(healthy), true
		}
		return "", false
	}
	var gwLog bytes.Buffer
	log := slog.New(slog.NewTextHandler(&syncWriter{w: &gwLog}, nil))
	_, stop, err := startAdminFor(context.Background(), cfg, adminDeps{Router: router, Store: db, Backends: backends,
		Preflight: gatewayPreflight(cfg, backends, db, nil, known, log)}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	users := writeFile(t, s.dir, "members.csv", healthy+"\n"+wrong+",nope\n")
	out := filepath.Join(s.dir, "gw.csv")
	code, stdout, stderr := s.preflight("-users", users, "-out", out, "pec.ordine.example")
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout, stderr)
	if code != 1 || !strings.Contains(stderr, "the running gateway ran the check") || !strings.Contains(stderr, wrong+": login credentials on old") ||
		!strings.Contains(stdout, healthy) || !strings.Contains(stdout, "BLOCKED") {
		t.Fatalf("exit %d", code)
	}
	if b, err := os.ReadFile(out); err != nil || !strings.Contains(string(b), wrong+",migrating,blocked,refused,ok") || !strings.Contains(string(b), healthy+",migrating,ok,ok,ok") {
		t.Errorf("CSV from the gateway's report: %v\n%s", err, b)
	}
	if strings.Contains(gwLog.String(), old.Password(healthy)) || !strings.Contains(gwLog.String(), "preflight done") {
		t.Errorf("gateway log:\n%s", gwLog.String())
	}

	// Without -users the gateway's store decides, and knows nobody yet.
	code, _, stderr = s.preflight("pec.ordine.example")
	if code != 1 || !strings.Contains(stderr, "knows no member") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// syncWriter serialises writes (the gateway logs from several goroutines).
type syncWriter struct {
	mu gosync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}
