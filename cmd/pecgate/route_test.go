package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// adminSetup is a running admin API (startAdmin) on a bbolt store, and a
// config file that names its bound address, for the CLI.
type adminSetup struct {
	dir        string
	configPath string
	addr       string
	token      string
	router     *store.Router
	logs       *bytes.Buffer
}

const adminTestToken = "0123456789abcdef-route-test"

// adminTestConfig serves pec.ordine.example (aruba -> infocert) and
// solo.example (aruba only); only the admin listener is on.
func adminTestConfig(dir, adminAddr string) string {
	return fmt.Sprintf(`
[server]
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = %q

[store]
path = %q

[admin]
token_file = %q

[providers.aruba]
preset = "aruba"

[providers.infocert]
preset = "infocert"

[domains."pec.ordine.example"]
old = "aruba"
new = "infocert"

[domains."solo.example"]
old = "aruba"
`, adminAddr, filepath.Join(dir, "store"), filepath.Join(dir, "admin.token"))
}

func startAdminSetup(t *testing.T) *adminSetup {
	t.Helper()
	dir := t.TempDir()
	s := &adminSetup{dir: dir, configPath: filepath.Join(dir, "pecgate.toml"), token: adminTestToken, logs: &bytes.Buffer{}}
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte("  "+s.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(adminTestConfig(dir, "127.0.0.1:0")), "pecgate.toml")
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if s.router, err = store.NewRouter(context.Background(), cfg, db); err != nil {
		t.Fatal(err)
	}
	addr, stop, err := startAdmin(context.Background(), cfg, s.router, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	s.addr = addr
	// The CLI reads the address from the file: write the bound one.
	if err := os.WriteFile(s.configPath, []byte(adminTestConfig(dir, addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// exitCode maps a command's error to the exit status, as run does.
func exitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	return 1
}

func TestStartAdmin(t *testing.T) {
	s := startAdminSetup(t)
	resp, err := http.Get("http://" + s.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("healthz: %s", resp.Status)
	}
	req, _ := http.NewRequest("GET", "http://"+s.addr+"/api/v1/domains", nil)
	req.Header.Set("Authorization", "Bearer "+s.token) // the file's whitespace is trimmed
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("api with the token: %s", resp.Status)
	}
}

func TestStartAdminToken(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(adminTestConfig(dir, "127.0.0.1:0")), "pecgate.toml")
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(cfg.Store.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err := store.NewRouter(context.Background(), cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	tokenFile := filepath.Join(dir, "admin.token")

	// Missing and empty files are errors.
	if _, _, err := startAdmin(context.Background(), cfg, r, log); err == nil || !strings.Contains(err.Error(), "admin.token_file") {
		t.Errorf("missing token file: %v", err)
	}
	os.WriteFile(tokenFile, []byte(" \n\t"), 0o600)
	if _, _, err := startAdmin(context.Background(), cfg, r, log); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty token: %v", err)
	}
	// A file others can read works, with a warning.
	os.WriteFile(tokenFile, []byte("tok"), 0o644)
	os.Chmod(tokenFile, 0o644)
	_, stop, err := startAdmin(context.Background(), cfg, r, log)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if !strings.Contains(logs.String(), "admin token file is readable by group or others") {
		t.Errorf("no warning about the token file's mode:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "admin token is short") {
		t.Errorf("no warning about a 3-character token:\n%s", logs.String())
	}
	// A long token in a private file: no warning.
	logs.Reset()
	os.WriteFile(tokenFile, []byte(strings.Repeat("k", minTokenLen)), 0o600)
	os.Chmod(tokenFile, 0o600)
	_, stop, err = startAdmin(context.Background(), cfg, r, log)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings for a long token in a private file:\n%s", logs.String())
	}
	// Disabled: nothing to do.
	empty := ""
	cfg.Server.Admin = &empty
	addr, stop, err := startAdmin(context.Background(), cfg, r, log)
	if addr != "" || err != nil || stop == nil {
		t.Errorf("disabled: %q %v", addr, err)
	}
	stop()
	// Ending ctx stops it too.
	cfg.Server.Admin = new(string)
	*cfg.Server.Admin = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	addr, stop, err = startAdmin(ctx, cfg, r, log)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	stop()
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("admin still answers after stop")
	}
}

func TestRoute(t *testing.T) {
	const dom = "pec.ordine.example"
	tests := []struct {
		name   string
		setup  func(t *testing.T, s *adminSetup)
		args   []string
		stdin  string
		tty    bool
		code   int
		stdout []string // substrings, in order
		stderr string   // substring
		// state is the domain's (or user's, with '@') state afterwards.
		check, state string
	}{
		{name: "migrate with -y", args: []string{"-y", dom, "migrating"}, code: 0,
			stdout: []string{"pec.ordine.example: old -> migrating\n", "pec.ordine.example: now migrating\n"}, check: dom, state: "migrating"},
		{name: "flags after the arguments", args: []string{dom, "migrating", "-y"}, code: 0,
			stdout: []string{"now migrating"}, check: dom, state: "migrating"},
		{name: "not a terminal without -y", args: []string{dom, "migrating"}, code: 1,
			stdout: []string{"pec.ordine.example: old -> migrating\n"}, stderr: "stdin is not a terminal", check: dom, state: "old"},
		{name: "terminal, yes", args: []string{dom, "migrating"}, tty: true, stdin: "y\n", code: 0,
			stdout: []string{"old -> migrating", "Proceed? [y/N] ", "now migrating"}, check: dom, state: "migrating"},
		{name: "terminal, no", args: []string{dom, "migrating"}, tty: true, stdin: "n\n", code: 1,
			stdout: []string{"Proceed? [y/N] "}, stderr: "cancelled; nothing changed", check: dom, state: "old"},
		{name: "terminal, empty answer", args: []string{dom, "migrating"}, tty: true, stdin: "", code: 1,
			stderr: "cancelled", check: dom, state: "old"},
		{name: "old to new refused", args: []string{"-y", dom, "new"}, code: 1,
			stderr: "refused: pec.ordine.example: old -> new skips migrating", check: dom, state: "old"},
		{name: "migrating to new refused with the count",
			setup: func(t *testing.T, s *adminSetup) {
				s.router.SetDomain(context.Background(), dom, "migrating", false)
				s.router.Uncopied = func(context.Context, string, string) (int, error) { return 12, nil }
			},
			args: []string{"-y", dom, "new"}, code: 1,
			stderr: "refused: pec.ordine.example: 12 messages are not yet in new\n12 messages are not yet in new; the back-fill is still copying (see pecgate status pec.ordine.example)\nrun again with -force",
			check:  dom, state: "migrating"},
		{name: "refused before anyone is asked",
			setup: func(t *testing.T, s *adminSetup) {
				s.router.SetDomain(context.Background(), dom, "migrating", false)
				s.router.Uncopied = func(context.Context, string, string) (int, error) { return 12, nil }
			},
			args: []string{dom, "new"}, tty: true, stdin: "y\n", code: 1,
			stdout: []string{"migrating -> new\n"},
			stderr: "refused: pec.ordine.example: 12 messages are not yet in new", check: dom, state: "migrating"},
		{name: "forced: the preview says what is left behind, then asks",
			setup: func(t *testing.T, s *adminSetup) {
				s.router.SetDomain(context.Background(), dom, "migrating", false)
				s.router.Uncopied = func(context.Context, string, string) (int, error) { return 12, nil }
			},
			args: []string{"-force", dom, "new"}, tty: true, stdin: "n\n", code: 1,
			stdout: []string{"migrating -> new, forced\n", "refused without -force: pec.ordine.example: 12 messages are not yet in new\n",
				"12 messages are not yet in new and would be left behind", "Proceed? [y/N] "},
			stderr: "cancelled; nothing changed", check: dom, state: "migrating"},
		{name: "nothing left behind",
			setup: func(t *testing.T, s *adminSetup) {
				s.router.SetDomain(context.Background(), dom, "migrating", false)
				s.router.Uncopied = func(context.Context, string, string) (int, error) { return 0, nil }
			},
			args: []string{"-y", dom, "new"}, code: 0,
			stdout: []string{"migrating -> new\n", "every message is in new: nothing is left behind\n", "now new\n"}, check: dom, state: "new"},
		{name: "migrating to new forced",
			setup: func(t *testing.T, s *adminSetup) {
				s.router.SetDomain(context.Background(), dom, "migrating", false)
				s.router.Uncopied = func(context.Context, string, string) (int, error) { return 12, nil }
			},
			args: []string{dom, "-force", "new", "-y"}, code: 0,
			stdout: []string{"migrating -> new, forced\n", "now new\n", "forced: 12 messages were not yet in new\n"}, check: dom, state: "new"},
		{name: "no new provider", args: []string{"-y", "solo.example", "migrating"}, code: 1,
			stderr: "solo.example cannot be migrating", check: "solo.example", state: "old"},
		{name: "already there", args: []string{dom, "old"}, code: 0,
			stdout: []string{"pec.ordine.example: already old; nothing to do\n"}, check: dom, state: "old"},
		{name: "unknown domain", args: []string{"-y", "x.example", "migrating"}, code: 1, stderr: `domain not served: "x.example"`},
		{name: "user override", args: []string{"-y", "Mario@pec.ordine.example", "migrating"}, code: 0,
			stdout: []string{"mario@pec.ordine.example: old -> migrating (its own state; pec.ordine.example is old)\n", "mario@pec.ordine.example: now migrating\n"},
			check:  "mario@pec.ordine.example", state: "migrating"},
		{name: "user pinned at the domain's state", args: []string{"-y", "mario@pec.ordine.example", "old"}, code: 0,
			stdout: []string{"(its own state from now on: it stays old when pec.ordine.example moves)"},
			check:  "mario@pec.ordine.example", state: "old"},
		{name: "user back to its domain",
			setup: func(t *testing.T, s *adminSetup) {
				s.router.SetUser(context.Background(), "mario@pec.ordine.example", "migrating", false)
			},
			args: []string{"-y", "mario@pec.ordine.example", "domain"}, code: 0,
			stdout: []string{"mario@pec.ordine.example: migrating -> old (follows pec.ordine.example again)\n", "now old (follows its domain)\n"},
			check:  "mario@pec.ordine.example", state: "old"},
		{name: "user without own state", args: []string{"-y", "mario@pec.ordine.example", "domain"}, code: 0,
			stdout: []string{"already follows pec.ordine.example (old); nothing to do"}},
		{name: "user of an unknown domain", args: []string{"-y", "mario@x.example", "old"}, code: 1, stderr: "not served"},
		{name: "domain keyword for a domain", args: []string{dom, "domain"}, code: 2, stderr: `unknown state "domain": want old, migrating or new`},
		{name: "bad state", args: []string{dom, "finished"}, code: 2, stderr: "unknown state"},
		{name: "one argument", args: []string{dom}, code: 2, stderr: "want DOMAIN|USER and STATE, got 1 arguments"},
		{name: "three arguments", args: []string{dom, "new", "now"}, code: 2},
		{name: "bad flag", args: []string{"-fast", dom, "new"}, code: 2, stderr: "flag provided but not defined: -fast"},
		{name: "help", args: []string{"-h"}, code: 0, stderr: "pecgate route mario.rossi@pec.ordine.example domain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startAdminSetup(t)
			if tc.setup != nil {
				tc.setup(t, s)
			}
			var stdout, stderr bytes.Buffer
			args := append([]string{"-config", s.configPath}, tc.args...)
			err := route(args, strings.NewReader(tc.stdin), tc.tty, &stdout, &stderr)
			if err != nil && !errors.Is(err, errUsage) && !errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(&stderr, "pecgate route: %v\n", err) // as run prints it
			}
			if code := exitCode(err); code != tc.code {
				t.Errorf("exit %d, want %d (err %v)", code, tc.code, err)
			}
			out := stdout.String()
			rest := out
			for _, want := range tc.stdout {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Errorf("stdout lacks %q (in order):\n%s", want, out)
					break
				}
				rest = rest[i+len(want):]
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr.String())
			}
			if tc.check == "" {
				return
			}
			var got string
			if strings.Contains(tc.check, "@") {
				got = s.router.Route(tc.check).State
			} else {
				d, err := s.router.Domain(tc.check)
				if err != nil {
					t.Fatal(err)
				}
				got = d.State
			}
			if got != tc.state {
				t.Errorf("%s is %s, want %s", tc.check, got, tc.state)
			}
		})
	}
}

// TestRouteThroughRun checks the wiring in main: exit codes and the
// usage line.
func TestRouteThroughRun(t *testing.T) {
	s := startAdminSetup(t)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"route", "-config", s.configPath, "-y", "pec.ordine.example", "migrating"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s%s", code, stdout.String(), stderr.String())
	}
	if d, _ := s.router.Domain("pec.ordine.example"); d.State != "migrating" {
		t.Errorf("state %s after route", d.State)
	}
	stderr.Reset()
	if code := run([]string{"route", "-config", s.configPath, "-y", "pec.ordine.example", "old", "-force", "extra"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage: pecgate route [-config FILE] [-force] [-y] DOMAIN|USER") {
		t.Errorf("usage: exit %d: %s", code, stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"route", "-config", s.configPath, "-y", "pec.ordine.example", "new"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "pecgate route: refused: ") {
		t.Errorf("refused: exit %d: %s", code, stderr.String())
	}
}

func TestRouteConfigProblems(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noAdmin := write("noadmin.toml", strings.Replace(adminTestConfig(dir, ""), "[admin]\ntoken_file", "[admin]\n#", 1))
	noToken := write("notoken.toml", adminTestConfig(filepath.Join(dir, "elsewhere"), "127.0.0.1:1"))
	write("admin.token", "tok")
	down := write("down.toml", adminTestConfig(dir, "127.0.0.1:1"))
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing config", []string{"-config", filepath.Join(dir, "nope.toml")}, "no such file or directory"},
		{"admin disabled", []string{"-config", noAdmin}, "the admin API is disabled"},
		{"token file missing", []string{"-config", noToken}, "admin.token_file"},
		{"gateway down", []string{"-config", down}, "is pecgate serve running?"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range [][]string{{"route", "-y", "pec.ordine.example", "migrating"}, {"status"}} {
				var stdout, stderr bytes.Buffer
				args := append(append([]string{cmd[0]}, tc.args...), cmd[1:]...)
				if code := run(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), tc.want) {
					t.Errorf("%s: exit %d, stderr %s; want 1 and %q", cmd[0], code, stderr.String(), tc.want)
				}
			}
		})
	}
}

func TestStatus(t *testing.T) {
	s := startAdminSetup(t)
	ctx := context.Background()
	if _, err := s.router.SetDomain(ctx, "pec.ordine.example", "migrating", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.router.SetUser(ctx, "luigi@pec.ordine.example", "old", false); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string // the whole stdout, or (with code != 0) a substring of stderr
	}{
		{name: "all", args: nil, want: "" +
			"DOMAIN              STATE                        CONFIG  OLD    NEW       USER OVERRIDES\n" +
			"pec.ordine.example  migrating (set at run time)  old     aruba  infocert  1\n" +
			"solo.example        old                          old     aruba  -         0\n"},
		{name: "domain", args: []string{"PEC.ordine.example"}, want: "" +
			"DOMAIN              STATE                        CONFIG  OLD    NEW       USER OVERRIDES\n" +
			"pec.ordine.example  migrating (set at run time)  old     aruba  infocert  1\n" +
			"\n" +
			"USER                      STATE\n" +
			"luigi@pec.ordine.example  old\n"},
		{name: "user with its own state", args: []string{"luigi@pec.ordine.example"}, want: "" +
			"user:       luigi@pec.ordine.example\n" +
			"state:      old (its own state; pec.ordine.example is migrating)\n" +
			"served by:  aruba\n" +
			"old:        aruba\n" +
			"new:        infocert\n"},
		{name: "user following the domain", args: []string{"mario@pec.ordine.example"}, want: "" +
			"user:       mario@pec.ordine.example\n" +
			"state:      migrating (the run-time state of pec.ordine.example)\n" +
			"served by:  aruba and infocert\n" +
			"old:        aruba\n" +
			"new:        infocert\n"},
		{name: "user of a config-only domain", args: []string{"mario@solo.example"}, want: "" +
			"user:       mario@solo.example\n" +
			"state:      old (the config file's state of solo.example)\n" +
			"served by:  aruba\n" +
			"old:        aruba\n" +
			"new:        -\n"},
		{name: "unknown domain", args: []string{"x.example"}, code: 1, want: `domain not served: "x.example"`},
		{name: "two arguments", args: []string{"a", "b"}, code: 2, want: "usage: pecgate status"},
		{name: "help", args: []string{"-h"}, code: 0, want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"status"}, tc.args...)
			args = append(args, "-config", s.configPath) // flags after the argument
			code := run(args, &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s%s", code, tc.code, stdout.String(), stderr.String())
			}
			if tc.code == 0 {
				if stdout.String() != tc.want {
					t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), tc.want)
				}
			} else if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %s, want %q", stderr.String(), tc.want)
			}
		})
	}
}
