package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// startProgressSetup is startAdminSetup with the admin API reading the
// copy progress from the store, which it returns too.
func startProgressSetup(t *testing.T) (*adminSetup, *bolt.DB) {
	t.Helper()
	dir := t.TempDir()
	s := &adminSetup{dir: dir, configPath: filepath.Join(dir, "pecgate.toml"), token: adminTestToken, logs: &bytes.Buffer{}}
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte(s.token+"\n"), 0o600); err != nil {
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
	addr, stop, err := startAdminFor(context.Background(), cfg, adminDeps{Router: s.router, Store: db}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	s.addr = addr
	if err := os.WriteFile(s.configPath, []byte(adminTestConfig(dir, addr)), 0o644); err != nil {
		t.Fatal(err)
	}
	return s, db
}

func putProgress(t *testing.T, db store.Store, ps ...*store.Progress) {
	t.Helper()
	err := db.Update(context.Background(), func(tx store.Tx) error {
		for _, p := range ps {
			if err := store.PutProgress(tx, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// seedProgress puts pec.ordine.example in migrating with luigi pinned at
// old, and records: anna copying (two records 2 s apart: 38 msg/s, 4 MB/s),
// bruno done, dario out of quota, elena waiting for a login, gino known by
// a verifier only.
func seedProgress(t *testing.T, s *adminSetup, db *bolt.DB) {
	t.Helper()
	ctx := context.Background()
	const dom = "pec.ordine.example"
	if _, err := s.router.SetDomain(ctx, dom, "migrating", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.router.SetUser(ctx, "luigi@"+dom, "old", false); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	at := now.Add(-time.Minute)
	putProgress(t, db,
		&store.Progress{User: "anna@" + dom, State: "copying", MessagesDone: 1000, MessagesTotal: 4000, BytesDone: 100_000_000, BytesTotal: 1_200_000_000, Updated: now.Add(-4 * time.Second)},
		&store.Progress{User: "bruno@" + dom, State: "done", MessagesDone: 1000, MessagesTotal: 1000, BytesDone: 50_000_000, BytesTotal: 50_000_000, Updated: at,
			Folders: []store.FolderProgress{{Name: "INBOX", MessagesDone: 990, MessagesTotal: 990}, {Name: "Pratiche/Citt&AOA-", MessagesDone: 10, MessagesTotal: 10}}},
		&store.Progress{User: "dario@" + dom, State: "quota", MessagesTotal: 200, BytesTotal: 250_000_000, Updated: at,
			Errors: []store.ProgressError{{Kind: "quota", Message: "250.0 MB to copy,\n100.0 MB free", At: at}}},
		&store.Progress{User: "elena@" + dom, State: "needs-login", Updated: at,
			Errors: []store.ProgressError{{Kind: "needs-login", Message: "copy waits for the member to log in once", At: at}}},
	)
	phc, err := store.HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(ctx, func(tx store.Tx) error { return store.PutVerifier(tx, "gino@"+dom, phc) }); err != nil {
		t.Fatal(err)
	}
	// The gateway reads anna's first record, then the engine writes the next.
	c, err := adminClient(s.configPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.User(ctx, "anna@"+dom); err != nil {
		t.Fatal(err)
	}
	putProgress(t, db, &store.Progress{User: "anna@" + dom, State: "copying", MessagesDone: 1076, MessagesTotal: 4000, BytesDone: 108_000_000, BytesTotal: 1_200_000_000, Updated: now.Add(-2 * time.Second)})
}

func TestStatusProgress(t *testing.T) {
	s, db := startProgressSetup(t)
	seedProgress(t, s, db)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "all", want: "" +
			"DOMAIN              STATE                        CONFIG  OLD    NEW       USER OVERRIDES\n" +
			"pec.ordine.example  migrating (set at run time)  old     aruba  infocert  1\n" +
			"solo.example        old                          old     aruba  -         0\n" +
			"\n" +
			"pec.ordine.example  39%  2,076/5,200 msgs  0.2/1.5 GB  38 msg/s  4.0 MB/s\n" +
			"pec.ordine.example  members: 6 (1 copying, 1 done, 1 quota, 1 needs-login, 2 not started)\n"},
		{name: "domain", args: []string{"pec.ordine.example"}, want: "" +
			"DOMAIN              STATE                        CONFIG  OLD    NEW       USER OVERRIDES\n" +
			"pec.ordine.example  migrating (set at run time)  old     aruba  infocert  1\n" +
			"\n" +
			"USER                      STATE\n" +
			"luigi@pec.ordine.example  old\n" +
			"\n" +
			"copy:     39%  2,076/5,200 msgs  0.2/1.5 GB  38 msg/s  4.0 MB/s\n" +
			"members:  6 (1 copying, 1 done, 1 quota, 1 needs-login, 2 not started)\n" +
			"\n" +
			"MEMBER                    PHASE        PROBLEM      WHAT TO DO\n" +
			"dario@pec.ordine.example  quota        quota        raise the quota at the new provider\n" +
			"elena@pec.ordine.example  needs-login  needs-login  the member must log in once through pecgate (passthrough provider)\n"},
		{name: "user copying", args: []string{"anna@pec.ordine.example"}, want: "" +
			"user:       anna@pec.ordine.example\n" +
			"state:      migrating (the run-time state of pec.ordine.example)\n" +
			"served by:  aruba and infocert\n" +
			"old:        aruba\n" +
			"new:        infocert\n" +
			"copy:       copying  26%  1,076/4,000 msgs  0.1/1.2 GB  38 msg/s  4.0 MB/s  ETA 4m33s\n"},
		{name: "user out of quota", args: []string{"dario@pec.ordine.example"}, want: "" +
			"user:        dario@pec.ordine.example\n" +
			"state:       migrating (the run-time state of pec.ordine.example)\n" +
			"served by:   aruba and infocert\n" +
			"old:         aruba\n" +
			"new:         infocert\n" +
			"copy:        quota  0%  0/200 msgs  0.0/250.0 MB\n" +
			"problem:     quota: 250.0 MB to copy, 100.0 MB free\n" +
			"what to do:  quota: raise the quota at the new provider\n"},
		{name: "user with folders", args: []string{"bruno@pec.ordine.example"}, want: "" +
			"user:       bruno@pec.ordine.example\n" +
			"state:      migrating (the run-time state of pec.ordine.example)\n" +
			"served by:  aruba and infocert\n" +
			"old:        aruba\n" +
			"new:        infocert\n" +
			"copy:       done  100%  1,000/1,000 msgs  50.0/50.0 MB\n" +
			"\n" +
			"FOLDER          COPIED\n" +
			"INBOX           990/990 msgs\n" +
			"Pratiche/Città  10/10 msgs\n"},
		{name: "user not counted", args: []string{"elena@pec.ordine.example"}, want: "" +
			"user:        elena@pec.ordine.example\n" +
			"state:       migrating (the run-time state of pec.ordine.example)\n" +
			"served by:   aruba and infocert\n" +
			"old:         aruba\n" +
			"new:         infocert\n" +
			"copy:        needs-login  ?%  0/? msgs  0 B/?\n" +
			"problem:     needs-login: copy waits for the member to log in once\n" +
			"what to do:  needs-login: the member must log in once through pecgate (passthrough provider)\n"},
		{name: "user without a record", args: []string{"gino@pec.ordine.example"}, want: "" +
			"user:       gino@pec.ordine.example\n" +
			"state:      migrating (the run-time state of pec.ordine.example)\n" +
			"served by:  aruba and infocert\n" +
			"old:        aruba\n" +
			"new:        infocert\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append(append([]string{"status"}, tc.args...), "-config", s.configPath)
			if code := run(args, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			if stdout.String() != tc.want {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), tc.want)
			}
			if strings.Contains(stdout.String(), "\x1b") {
				t.Error("escape codes in plain output")
			}
		})
	}

	// On a terminal: the same with bars.
	var stdout bytes.Buffer
	if err := status(context.Background(), []string{"-config", s.configPath, "anna@pec.ordine.example"}, &stdout, io.Discard, true); err != nil {
		t.Fatal(err)
	}
	if want := "copy:       copying  [#####...............]  26%  1,076/4,000 msgs  0.1/1.2 GB  38 msg/s  4.0 MB/s  ETA 4m33s\n"; !strings.HasSuffix(stdout.String(), want) {
		t.Errorf("terminal:\n%s\nwant the last line\n%s", stdout.String(), want)
	}
	stdout.Reset()
	if err := status(context.Background(), []string{"-config", s.configPath}, &stdout, io.Discard, true); err != nil {
		t.Fatal(err)
	}
	if want := "pec.ordine.example  [#######.............]  39%  2,076/5,200 msgs  0.2/1.5 GB  38 msg/s  4.0 MB/s\n"; !strings.Contains(stdout.String(), want) {
		t.Errorf("terminal:\n%s\nwant the line\n%s", stdout.String(), want)
	}
}

func TestStatusWatch(t *testing.T) {
	s, db := startProgressSetup(t)
	seedProgress(t, s, db)

	// Refused without a terminal, before calling anybody.
	var stdout, stderr bytes.Buffer
	if code := run([]string{"status", "-watch", "-config", s.configPath}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "-watch redraws in place and needs a terminal") || stdout.Len() != 0 {
		t.Errorf("watch without a terminal: exit %d, %q %q", code, stdout.String(), stderr.String())
	}

	// A user whose copy is done: drawn once, then it ends.
	stdout.Reset()
	if err := status(context.Background(), []string{"-watch", "-config", s.configPath, "bruno@pec.ordine.example"}, &stdout, io.Discard, true); err != nil {
		t.Fatal(err)
	}
	if strings.Count(stdout.String(), "user:") != 1 || strings.Contains(stdout.String(), "\x1b[") || !strings.Contains(stdout.String(), "copy:       done  [####################]  100%") {
		t.Errorf("watch of a finished copy:\n%q", stdout.String())
	}

	// A copy in progress is redrawn in place until Ctrl-C (ctx ends), and
	// ends when the copy is done.
	defer func(d time.Duration) { watchEvery = d }(watchEvery)
	watchEvery = 20 * time.Millisecond
	stdout.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := status(ctx, []string{"-watch", "-config", s.configPath, "anna@pec.ordine.example"}, &stdout, io.Discard, true); err != nil {
		t.Fatal(err)
	}
	out := stdout.String()
	if n := strings.Count(out, "\x1b[6A\x1b[J"); n < 2 || n != strings.Count(out, "user:")-1 {
		t.Errorf("%d redraws of 6 lines, %d drawings:\n%q", n, strings.Count(out, "user:"), out)
	}
	putProgress(t, db, &store.Progress{User: "anna@pec.ordine.example", State: "done", MessagesDone: 4000, MessagesTotal: 4000, Updated: time.Now()})
	done := make(chan error, 1)
	go func() {
		done <- status(context.Background(), []string{"-watch", "-config", s.configPath, "anna@pec.ordine.example"}, io.Discard, io.Discard, true)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end once the copy was done")
	}
}

func TestStatusBar(t *testing.T) {
	tests := []struct {
		width       int
		done, total int64
		bar, pct    string
	}{
		{20, 0, 100, "[....................]", "0%"},
		{20, 45, 100, "[#########...........]", "45%"},
		{20, 2250, 5000, "[#########...........]", "45%"},
		{20, 99, 100, "[###################.]", "99%"},
		{20, 999, 1000, "[###################.]", "99%"},
		{20, 100, 100, "[####################]", "100%"},
		{20, 120, 100, "[####################]", "100%"},
		{20, 0, 0, "[####################]", "100%"}, // nothing to copy
		{20, 5, -1, "[....................]", "?%"},  // not counted yet
		{10, 1, 3, "[###.......]", "33%"},
		{1, 1, 2, "[.]", "50%"},
		{0, 1, 1, "[#]", "100%"},
		{5, 1, 1_000_000, "[.....]", "0%"},
	}
	for _, tc := range tests {
		if got := bar(tc.width, tc.done, tc.total); got != tc.bar || len(got) != max(tc.width, 1)+2 {
			t.Errorf("bar(%d, %d, %d) = %q, want %q", tc.width, tc.done, tc.total, got, tc.bar)
		}
		if got := percent(tc.done, tc.total); got != tc.pct {
			t.Errorf("percent(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.pct)
		}
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 2250: "2,250", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 0, "0/0 B"}, {512, 900, "512/900 B"}, {1_200_000_000, 3_400_000_000, "1.2/3.4 GB"},
		{5_000, 3_400_000, "0.0/3.4 MB"}, {2_000, 1_000, "2.0/1.0 KB"},
	} {
		if got := byteRange(tc.done, tc.total); got != tc.want {
			t.Errorf("byteRange(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
	for sec, want := range map[int64]string{0: "0s", 45: "45s", 72: "1m12s", 3600: "1h00m", 3*3600 + 5*60 + 9: "3h05m", 2*86400 + 3*3600: "2d03h"} {
		if got := etaText(sec); got != want {
			t.Errorf("etaText(%d) = %q, want %q", sec, got, want)
		}
	}
	mps, bps, eta := 38.0, 4_100_000.0, int64(72)
	m := meter{known: true, msgsDone: 2250, msgsTotal: 5000, bytesDone: 1_200_000_000, bytesTotal: 3_400_000_000, msgsPerSec: &mps, bytesPerSec: &bps, eta: &eta}
	if got, want := m.text(true), "[#########...........]  45%  2,250/5,000 msgs  1.2/3.4 GB  38 msg/s  4.1 MB/s  ETA 1m12s"; got != want {
		t.Errorf("terminal meter %q, want %q", got, want)
	}
	if got, want := m.text(false), "45%  2,250/5,000 msgs  1.2/3.4 GB  38 msg/s  4.1 MB/s  ETA 1m12s"; got != want {
		t.Errorf("plain meter %q, want %q", got, want)
	}
	slow := 2.5
	m = meter{msgsDone: 3, bytesDone: 2048, msgsPerSec: &slow}
	if got, want := m.text(true), "[....................]  ?%  3/? msgs  2.0 KB/?  2.5 msg/s"; got != want {
		t.Errorf("unknown total %q, want %q", got, want)
	}
}

// startTLSIMAP serves go-imap's in-memory server with implicit TLS on
// loopback and returns its address and the CA file that trusts it.
func startTLSIMAP(t *testing.T) (addr, caFile string) {
	t.Helper()
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteFiles(dir, "srv", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	mem := imapmemserver.New()
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{pair}}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:      imap.CapSet{imap.CapIMAP4rev1: {}},
		TLSConfig: tlsCfg,
	})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), caFile
}

func TestAdminReady(t *testing.T) {
	upAddr, caFile := startTLSIMAP(t)
	// A port that accepts TCP but never speaks TLS.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "admin.token"), []byte("tok"), 0o600)
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
[server]
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = "127.0.0.1:0"

[store]
path = %q

[admin]
token_file = %q

[providers.aruba]
imap = "imaps://%s"
smtp = "smtps://127.0.0.1:1"
ca = %q

[providers.infocert]
imap = "imaps://%s"
smtp = "smtps://127.0.0.1:1"

[domains."pec.ordine.example"]
old = "aruba"
new = "infocert"
`, filepath.Join(dir, "store"), filepath.Join(dir, "admin.token"), upAddr, caFile, mute.Addr())), "pecgate.toml")
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
	addr, stop, err := startAdminFor(context.Background(), cfg, adminDeps{Router: router, Store: db, Backends: backends}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	readyz := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// old: only aruba is in use, and it answers.
	if code, body := readyz(); code != 200 || body != "ok\n" {
		t.Errorf("old: %d %s", code, body)
	}
	// migrating: infocert is in use too, and never finishes the handshake.
	ctx := context.Background()
	if _, err := router.SetDomain(ctx, "pec.ordine.example", "migrating", false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, body := readyz()
	var e struct{ Error string }
	json.Unmarshal([]byte(body), &e)
	if code != 503 || !strings.HasPrefix(e.Error, "not ready: infocert tls: ") || strings.Contains(e.Error, "aruba") {
		t.Errorf("migrating: %d %s", code, body)
	}
	if d := time.Since(start); d > readyTimeout+2*time.Second {
		t.Errorf("readyz took %v", d)
	}
	if got := providersInUse(router); strings.Join(got, ",") != "aruba,infocert" {
		t.Errorf("providers in use: %v", got)
	}
	// A user pinned at old keeps aruba in use after the domain went new.
	if _, err := router.SetUser(ctx, "luigi@pec.ordine.example", "old", false); err != nil {
		t.Fatal(err)
	}
	if _, err := router.SetDomain(ctx, "pec.ordine.example", "new", true); err != nil {
		t.Fatal(err)
	}
	if got := providersInUse(router); strings.Join(got, ",") != "aruba,infocert" {
		t.Errorf("providers in use with a pinned user: %v", got)
	}
	if _, err := router.ClearUser(ctx, "luigi@pec.ordine.example", true); err != nil {
		t.Fatal(err)
	}
	if got := providersInUse(router); strings.Join(got, ",") != "infocert" {
		t.Errorf("providers in use in new: %v", got)
	}

	// A store that does not answer.
	if _, err := router.SetDomain(ctx, "pec.ordine.example", "migrating", true); err != nil {
		t.Fatal(err)
	}
	check := ready(router, db, nil)
	if err := check(ctx); err != nil {
		t.Errorf("store only: %v", err)
	}
	db.Close()
	if err := check(ctx); err == nil || !strings.HasPrefix(err.Error(), "store: ") {
		t.Errorf("closed store: %v", err)
	}
}
