package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync"
	"github.com/pecgate/pecgate/sync/verify"
)

const verifyTestUser = "giulia.verdi@pec.ordine.example"

// verifySetup is a configuration for pec.ordine.example migrating from
// old (passthrough) to new (master user), with its store directory.
type verifySetup struct {
	dir, config, storeDir string
	old, new              *dovetest.Server
}

func writeVerifyConfig(t *testing.T, old, nw *dovetest.Server) *verifySetup {
	t.Helper()
	dir := t.TempDir()
	s := &verifySetup{dir: dir, config: filepath.Join(dir, "pecgate.toml"), storeDir: filepath.Join(dir, "store"), old: old, new: nw}
	oldIMAP, newIMAP, oldCA, newCA, master := "127.0.0.1:1", "127.0.0.1:2", "", "", ""
	if old != nil {
		oldIMAP, oldCA = old.IMAPSAddr, old.CAFile
	}
	if nw != nil {
		newIMAP, newCA = nw.IMAPSAddr, nw.CAFile
		master = filepath.Join(dir, "new.master")
		if err := os.WriteFile(master, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	} else {
		master = filepath.Join(dir, "new.master")
		os.WriteFile(master, []byte("x\n"), 0o600)
	}
	masterUser := "master"
	if nw != nil {
		masterUser = nw.MasterUser
	}
	cfg := fmt.Sprintf(`[server]
hostname = "localhost"
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = ""

[tls]
self_signed = true

[store]
path = %q

[providers.old]
imap = "imaps://%s"
smtp = "smtps://127.0.0.1:1"
auth = "passthrough"
ca = %q

[providers.new]
imap = "imaps://%s"
smtp = "smtps://127.0.0.1:2"
auth = "master"
master_user = %q
master_password_file = %q
master_style = "sasl"
ca = %q

[domains."pec.ordine.example"]
old = "old"
new = "new"
state = "migrating"

[domains."pec.altro.example"]
old = "old"
`, s.storeDir, oldIMAP, oldCA, newIMAP, masterUser, master, newCA)
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *verifySetup) run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"verify", "-config", s.config}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestVerifyUsage(t *testing.T) {
	s := writeVerifyConfig(t, nil, nil)
	var out, errb bytes.Buffer
	if code := run([]string{"verify", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "examples:") || !strings.Contains(errb.String(), "-passwords") {
		t.Fatalf("verify -h: exit %d, %q", code, errb.String())
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no target", nil, 2, "want one DOMAIN or USER"},
		{"two targets", []string{"a.example", "b.example"}, 2, "want one DOMAIN or USER"},
		{"bad flag", []string{"-nope", "pec.ordine.example"}, 2, "usage: pecgate verify"},
		{"domain not served", []string{"pec.ignoto.example"}, 1, "not a domain served"},
		{"user of a domain not served", []string{"a@pec.ignoto.example"}, 1, "is not served"},
		{"domain without new provider", []string{"pec.altro.example"}, 1, "no new provider"},
		{"no member known", []string{"pec.ordine.example"}, 1, "knows no member"},
		{"passwords file missing", []string{"-passwords", "/nonexistent.csv", verifyTestUser}, 1, "nonexistent.csv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := s.run(tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

// TestVerifyStoreLocked: with the store held by another process (the
// gateway), verify says to stop it.
func TestVerifyStoreLocked(t *testing.T) {
	s := writeVerifyConfig(t, nil, nil)
	st, err := bolt.Open(s.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	code, _, stderr := s.run(verifyTestUser)
	if code != 1 || !strings.Contains(stderr, "stop the gateway") {
		t.Fatalf("store locked: exit %d, %q", code, stderr)
	}
}

func TestReadPasswords(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		want          map[string]string
		err           string
	}{
		{"header", "address,password\r\nA@x.example,p,w\r\n", nil, ":2: want address,password"},
		{"plain", "a@x.example,pw 1\nB@x.example,\"p,2\"\n", map[string]string{"a@x.example": "pw 1", "b@x.example": "p,2"}, ""},
		{"semicolons", "\uFEFFaddress;password\na@x.example;secret\n", map[string]string{"a@x.example": "secret"}, ""},
		{"empty password", "a@x.example,\n", nil, ":1: want address,password"},
		{"empty", "address,password\n", nil, "no passwords"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, tc.name+".csv")
			os.WriteFile(f, []byte(tc.content), 0o600)
			got, err := readPasswords(f)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "secret") {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("%v %v", got, err)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Fatalf("%s: %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

// verifyCopyAll freezes every folder of user's old mailbox and copies each
// message to new with the synchronous copier, as the back-fill will; the
// store is closed again before returning (bbolt allows one process, and
// verify opens it itself).
func verifyCopyAll(t *testing.T, s *verifySetup, user string) {
	t.Helper()
	ctx := context.Background()
	cfg, err := config.Load(s.config)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(s.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	maps := store.NewMapCache(st, 10)
	oldC, err := bs.Provider("old").LoginUser(ctx, user, s.old.Password(user), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer oldC.Close()
	newC, err := bs.Provider("new").LoginUser(ctx, user, "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer newC.Close()
	list, err := oldC.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list {
		if slices.Contains(l.Attrs, imap.MailboxAttrNoSelect) || slices.Contains(l.Attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		sd, err := oldC.Select(l.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		entry, err := maps.Get(ctx, user, l.Mailbox)
		if err != nil {
			t.Fatal(err)
		}
		entry.Lock()
		entry.M = store.NewMap(sd.UIDValidity, store.UID(sd.UIDNext))
		err = maps.Save(ctx, entry, nil)
		entry.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newC.Status(l.Mailbox, &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
			if err := newC.Create(l.Mailbox, nil).Wait(); err != nil {
				t.Fatal(err)
			}
		}
		res, err := oldC.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range res.AllUIDs() {
			if _, err := (sync.Copier{}).CopyToNew(ctx, oldC, newC, entry, maps, l.Mailbox, store.UID(o), store.UID(o)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestVerifyCommand: pecgate verify against real old and new Dovecots:
// exit 0 and three report files when complete, exit 1 with advice when a
// copy is missing or a passthrough password is not given.
func TestVerifyCommand(t *testing.T) {
	dovetest.Require(t)
	fixtures := dovetest.LoadFixtures(t)
	old, nw := dovetest.StartPair(t, verifyTestUser)
	var seeds []dovetest.SeedMessage
	for _, f := range fixtures {
		if f.Size < 1<<20 {
			seeds = append(seeds, f.SeedMessage(old, f.Body))
		}
	}
	old.SeedMaildir(t, verifyTestUser, seeds)
	s := writeVerifyConfig(t, old, nw)
	verifyCopyAll(t, s, verifyTestUser)
	pwFile := filepath.Join(s.dir, "passwords.csv")
	if err := os.WriteFile(pwFile, []byte("address,password\n"+verifyTestUser+","+old.Password(verifyTestUser)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(s.dir, "audit")

	for _, target := range []string{verifyTestUser, "pec.ordine.example"} {
		code, stdout, stderr := s.run("-out", out, "-passwords", pwFile, target)
		if code != 0 || !strings.Contains(stdout, "OK: every old message is in new exactly once") ||
			!strings.Contains(stdout, fmt.Sprintf("ok %d, missing 0, duplicates 0, mismatches 0, errors 0", len(seeds))) {
			t.Fatalf("verify %s: exit %d\nstdout:\n%s\nstderr:\n%s", target, code, stdout, stderr)
		}
	}
	files, _ := filepath.Glob(filepath.Join(out, "verify-*"))
	var exts []string
	for _, f := range files {
		exts = append(exts, filepath.Ext(f))
		if strings.HasSuffix(f, ".sha256") {
			data, _ := os.ReadFile(f)
			if n := strings.Count(string(data), "\n"); n != len(seeds) {
				t.Errorf("%s: %d lines, want %d", f, n, len(seeds))
			}
		}
	}
	slices.Sort(exts)
	if want := []string{".csv", ".csv", ".json", ".json", ".sha256", ".sha256"}; !slices.Equal(exts, want) {
		t.Fatalf("report files %q", files)
	}

	// Without the member's password, old (passthrough) cannot be read.
	code, _, stderr := s.run("-out", out, verifyTestUser)
	if code != 1 || !strings.Contains(stderr, "-passwords FILE") {
		t.Fatalf("verify without passwords: exit %d, %q", code, stderr)
	}

	// A copy deleted from new behind the gateway's back.
	c := nw.Dial(t, verifyTestUser)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := s.run("-out", out, "-passwords", pwFile, verifyTestUser)
	if code != 1 || !strings.Contains(stdout, "missing 1,") || !strings.Contains(stderr, "let the back-fill finish") {
		t.Fatalf("verify after deleting a copy: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// TestWriteVerifyReportKeepsEarlier: a second report within the same
// second does not overwrite the first.
func TestWriteVerifyReportKeepsEarlier(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	r := &verify.Report{Started: time.Date(2025, 6, 3, 17, 22, 24, 0, time.UTC)}
	first, err := writeVerifyReport(r, dir, "Mario Rossi@pec.example")
	if err != nil {
		t.Fatal(err)
	}
	second, err := writeVerifyReport(r, dir, "Mario Rossi@pec.example")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "verify-Mario_Rossi@pec.example-20250603T172224Z.csv"); first[0] != want {
		t.Fatalf("first report %q", first)
	}
	if !strings.HasSuffix(second[0], "-20250603T172224Z-2.csv") || !strings.HasSuffix(second[2], "-2.sha256") {
		t.Fatalf("second report %q", second)
	}
	files, _ := os.ReadDir(dir)
	if len(files) != 6 {
		t.Fatalf("%d files in %s, want 6", len(files), dir)
	}
}
