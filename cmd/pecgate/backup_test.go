package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// readOverride opens the store file at path (a backup) as a store of its
// own and returns the domain's stored state.
func readOverride(t *testing.T, path, domain string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, bolt.FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v []byte
	err = db.View(context.Background(), func(tx store.Tx) error {
		v, err = tx.Get(store.BucketOverrides, "domain:"+domain)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

// TestBackupCLI runs `pecgate backup` against a running admin API (the
// copy comes through GET /api/v1/backup while the store stays open and
// locked), then with the gateway stopped (it reads the file), and checks
// each copy restores the routing state of the moment it was taken.
func TestBackupCLI(t *testing.T) {
	s, db := startProgressSetup(t)
	ctx := context.Background()
	if _, err := s.router.SetDomain(ctx, "pec.ordine.example", config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "copy.db")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"backup", "-config", s.configPath, out}, &stdout, &stderr); code != 0 {
		t.Fatalf("backup: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "from the running gateway") || !strings.Contains(stdout.String(), "to restore") {
		t.Errorf("backup output:\n%s", stdout.String())
	}
	if got := readOverride(t, out, "pec.ordine.example"); got != config.StateMigrating {
		t.Errorf("online copy: domain state %q, want migrating", got)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("copy mode %v (%v), want 0600: it holds the vault and the verifiers", fi.Mode(), err)
	}

	// The file exists: refused without -force, replaced with it.
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"backup", "-config", s.configPath, out}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "-force") {
		t.Errorf("backup over an existing file: exit %d, want 1 and a hint about -force\n%s", code, stderr.String())
	}
	if _, err := s.router.SetDomain(ctx, "pec.ordine.example", config.StateOld, false); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"backup", "-config", s.configPath, "-force", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("backup -force: exit %d\n%s", code, stderr.String())
	}
	if got := readOverride(t, out, "pec.ordine.example"); got != config.StateOld {
		t.Errorf("replaced copy: domain state %q, want old", got)
	}

	// Gateway stopped: nothing listens on the admin address and the store
	// is free, so the file is read directly.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	if err := os.WriteFile(s.configPath, []byte(adminTestConfig(s.dir, dead)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Still locked by the open store: refused, saying what to do.
	stderr.Reset()
	locked := filepath.Join(t.TempDir(), "locked.db")
	if code := run([]string{"backup", "-config", s.configPath, locked}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "in use by a running gateway") {
		t.Errorf("backup with the store locked and no admin API: exit %d\n%s", code, stderr.String())
	}
	if _, err := os.Stat(locked); !os.IsNotExist(err) {
		t.Errorf("a refused backup left %s: %v", locked, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(locked)); len(entries) != 0 {
		t.Errorf("a refused backup left files: %v", entries)
	}
	db.Close()
	offline := filepath.Join(t.TempDir(), "offline.db")
	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"backup", "-config", s.configPath, offline}, &stdout, &stderr); code != 0 {
		t.Fatalf("offline backup: exit %d\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "nothing answers") || !strings.Contains(stdout.String(), "from the store file") {
		t.Errorf("offline backup output:\n%s%s", stdout.String(), stderr.String())
	}
	if got := readOverride(t, offline, "pec.ordine.example"); got != config.StateOld {
		t.Errorf("offline copy: domain state %q, want old", got)
	}
}

// TestBackupCLIErrors checks the refusals that need no gateway.
func TestBackupCLIErrors(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pecgate.toml")
	pg := "[server]\nimaps = \"\"\nimap = \"\"\nsmtps = \"\"\nsubmission = \"\"\nadmin = \"\"\n[store]\nurl = \"postgres://db/pecgate\"\n"
	if err := os.WriteFile(cfgPath, []byte(pg), 0o644); err != nil {
		t.Fatal(err)
	}
	noStore := filepath.Join(dir, "nostore.toml")
	if err := os.WriteFile(noStore, []byte(strings.Replace(pg, "url = \"postgres://db/pecgate\"", "path = "+`"`+filepath.Join(dir, "empty")+`"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"backup"}, 2, "usage: pecgate backup"},
		{[]string{"backup", "a.db", "b.db"}, 2, "usage: pecgate backup"},
		{[]string{"backup", "-config", cfgPath, filepath.Join(dir, "x.db")}, 1, "pg_dump"},
		{[]string{"backup", "-config", noStore, filepath.Join(dir, "x.db")}, 1, "no store to copy"},
		{[]string{"backup", "-config", filepath.Join(dir, "missing.toml"), "x.db"}, 1, "fix the configuration file"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(tc.args, &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("pecgate %s: exit %d, want %d with %q\n%s", strings.Join(tc.args, " "), code, tc.code, tc.want, stderr.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "empty")); !os.IsNotExist(err) {
		t.Errorf("backup of a missing store created %s", filepath.Join(dir, "empty"))
	}
}
