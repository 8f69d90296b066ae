package sync

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

const (
	testUser   = "giulia.verdi@pec.ordine.example"
	testDomain = "pec.ordine.example"
)

// oldSpecialUse names old's special-use folders in Italian, as Aruba does,
// so that Sent is "Posta inviata" on old and "Sent" on new.
var oldSpecialUse = map[string]string{`\Sent`: "Posta inviata", `\Drafts`: "Bozze", `\Trash`: "Cestino", `\Junk`: "Spam"}

// rig is a back-fill in front of two real Dovecots: old (delimiter ".",
// logged into with the member's own password) and new (delimiter "/",
// logged into with new's master user), a bbolt store and a router.
type rig struct {
	old, new *dovetest.Server
	cfg      *config.Config
	st       store.Store
	maps     *store.MapCache
	router   *store.Router
	eng      *Engine
	dir      string
}

type rigOptions struct {
	newQuota int64                  // new Dovecot's quota; 0: none
	state    string                 // the domain's configured state; "" migrating
	newProv  func(*config.Provider) // changes to new's provider config
}

func startRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	dovetest.Require(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: testUser}}, SpecialUse: oldSpecialUse})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: testUser}}, Delimiter: "/", QuotaBytes: o.newQuota})
	dir := t.TempDir()
	masterFile := filepath.Join(dir, "new.master")
	if err := os.WriteFile(masterFile, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := o.state
	if state == "" {
		state = config.StateMigrating
	}
	cfg := &config.Config{
		Server: config.Server{Hostname: "localhost"},
		Providers: map[string]*config.Provider{
			"old": {IMAP: "imaps://" + old.IMAPSAddr, SMTP: "smtps://" + old.SubmissionAddr, Auth: config.AuthPassthrough, CA: old.CAFile},
			"new": {IMAP: "imaps://" + nw.IMAPSAddr, SMTP: "smtps://" + nw.SubmissionAddr, Auth: config.AuthMaster, CA: nw.CAFile,
				MasterUser: nw.MasterUser, MasterPasswordFile: masterFile, MasterStyle: config.MasterStyleSASL},
		},
		Domains: map[string]*config.Domain{testDomain: {Old: "old", New: "new", State: state}},
	}
	for name, p := range cfg.Providers {
		p.Name = name
	}
	for name, d := range cfg.Domains {
		d.Name = name
	}
	if o.newProv != nil {
		o.newProv(cfg.Providers["new"])
	}
	st, err := bolt.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	router, err := store.NewRouter(context.Background(), cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{old: old, new: nw, cfg: cfg, st: st, maps: store.NewMapCache(st, 100), router: router, dir: dir}
	r.eng = r.engine(t)
	return r
}

// engine builds an engine over r's store and maps, with r.cfg as it is now.
func (r *rig) engine(t *testing.T) *Engine {
	t.Helper()
	bs, err := backend.New(r.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(Options{Config: r.cfg, Store: r.st, Maps: r.maps, Router: r.router, Backends: bs, Log: testLogger(t)})
	r.router.Uncopied = e.Uncopied
	return e
}

// testLogger sends the engine's logs to the test log.
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	mu   gosync.Mutex
	done bool
}

func (w *tWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

// msg is one message as a client reads it.
type msg struct {
	uid   imap.UID
	sum   [32]byte
	flags string // sorted, lower case, without \Recent
	date  time.Time
	size  int64
}

func (m msg) key() string { return fmt.Sprintf("%x %s %d", m.sum, m.flags, m.date.Unix()) }

func flagString(fs []imap.Flag) string {
	var out []string
	for _, f := range settableFlags(fs) {
		out = append(out, strings.ToLower(string(f)))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// read returns every message of mailbox on srv, by UID.
func read(t *testing.T, c *imapclient.Client, mailbox string) []msg {
	t.Helper()
	if _, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("examine %q: %v", mailbox, err)
	}
	body := &imap.FetchItemBodySection{Peek: true}
	bufs, err := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatalf("fetch %q: %v", mailbox, err)
	}
	var out []msg
	for _, b := range bufs {
		out = append(out, msg{uid: b.UID, sum: sha256.Sum256(b.FindBodySection(body)), flags: flagString(b.Flags), date: b.InternalDate, size: b.RFC822Size})
	}
	slices.SortFunc(out, func(a, b msg) int { return int(a.uid) - int(b.uid) })
	return out
}

// multiset counts messages by content, flags and INTERNALDATE.
func multiset(ms []msg) map[string]int {
	out := map[string]int{}
	for _, m := range ms {
		out[m.key()]++
	}
	return out
}

// checkCopied asserts that every message of old's oldBox is in new's
// newBox exactly once with its flags and INTERNALDATE (SHA-256 multiset),
// that new holds nothing else but extra, and that the UID map places every
// old message on its copy.
func (r *rig) checkCopied(t *testing.T, oldC, newC *imapclient.Client, oldBox, newBox string, extra int) {
	t.Helper()
	olds, news := read(t, oldC, oldBox), read(t, newC, newBox)
	want, got := multiset(olds), multiset(news)
	for k, n := range want {
		if got[k] < n {
			t.Errorf("%s: message %s is %d times in new, %d in old", oldBox, k[:16], got[k], n)
		}
	}
	if len(news) != len(olds)+extra {
		t.Errorf("%s: new %q holds %d messages, want %d from old + %d", oldBox, newBox, len(news), len(olds), extra)
	}
	byUID := map[imap.UID]msg{}
	for _, m := range news {
		byUID[m.uid] = m
	}
	e, err := r.maps.Get(context.Background(), testUser, oldBox)
	if err != nil || e.M == nil {
		t.Fatalf("%s: no UID map: %v", oldBox, err)
	}
	e.Lock()
	defer e.Unlock()
	for _, o := range olds {
		v, ok := e.M.ByOld(store.UID(o.uid))
		if !ok {
			t.Errorf("%s: old UID %d has no virtual UID", oldBox, o.uid)
			continue
		}
		_, n, _ := e.M.Lookup(v)
		if n == 0 {
			t.Errorf("%s: old UID %d (virtual %d) not mapped to new", oldBox, o.uid, v)
			continue
		}
		if c, ok := byUID[imap.UID(n)]; !ok || c.sum != o.sum {
			t.Errorf("%s: old UID %d mapped to new UID %d, which holds other bytes", oldBox, o.uid, n)
		}
	}
}

var flagSets = [][]string{nil, {`\Seen`}, {`\Seen`, `\Answered`}, {`\Flagged`}, {`\Seen`, `$label1`}, {`NonJunk`}, {`\Seen`, `$Forwarded`, `\Flagged`}, {`\Draft`}}

// corpus returns n distinct PEC-shaped messages (fixture variants, without
// the 3 MB one) for mailbox, with mixed flags and distinct dates.
func corpus(fixtures []dovetest.Fixture, mailbox string, first, n int) []dovetest.SeedMessage {
	var small []dovetest.Fixture
	for _, f := range fixtures {
		if f.Size < 1<<20 {
			small = append(small, f)
		}
	}
	base := time.Date(2024, 3, 1, 8, 0, 0, 0, time.UTC)
	out := make([]dovetest.SeedMessage, n)
	for i := range n {
		k := first + i
		out[i] = dovetest.SeedMessage{Mailbox: mailbox, Body: small[k%len(small)].Variant(k), Flags: flagSets[k%len(flagSets)],
			InternalDate: base.Add(time.Duration(k) * 37 * time.Minute)}
	}
	return out
}

func progressOf(t *testing.T, st store.Store) *store.Progress {
	t.Helper()
	var p *store.Progress
	err := st.View(context.Background(), func(tx store.Tx) error {
		var err error
		p, err = store.GetProgress(tx, testUser)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func kinds(p *store.Progress) []string {
	var out []string
	for _, e := range p.Errors {
		out = append(out, e.Kind)
	}
	return out
}

// TestCopyUser: a full pass over ~300 messages in INBOX, Sent (named
// differently on each side) and a non-ASCII folder, with mixed flags and
// keywords and a message stored twice in old; then a second pass that
// copies nothing and changes nothing.
func TestCopyUser(t *testing.T) {
	r := startRig(t, rigOptions{})
	fixtures := dovetest.LoadFixtures(t)
	seeds := corpus(fixtures, "INBOX", 0, 150)
	seeds = append(seeds, seeds[7]) // the same bytes twice: both copies belong in new
	seeds = append(seeds, corpus(fixtures, "Posta inviata", 150, 75)...)
	seeds = append(seeds, corpus(fixtures, "Pratiche.Città", 225, 75)...)
	seeds = append(seeds, corpus(fixtures, "Archivio", 300, 3)...)
	r.old.SeedMaildir(t, testUser, seeds)
	r.old.Doveadm(t, "mailbox", "unsubscribe", "-u", testUser, "Archivio")
	r.eng.Remember(testUser, r.old.Password(testUser))
	ctx := context.Background()

	// Before any pass nobody can say what is left.
	if _, err := r.eng.Uncopied(ctx, "", testUser); !errors.Is(err, ErrNotCounted) {
		t.Fatalf("Uncopied before any pass: %v, want ErrNotCounted", err)
	}
	start := time.Now()
	p, err := r.eng.CopyUser(ctx, testUser)
	if err != nil {
		t.Fatalf("CopyUser: %v (progress %+v)", err, p)
	}
	t.Logf("first pass: %d messages, %d bytes in %v", p.MessagesDone, p.BytesDone, time.Since(start))
	if p.State != StateDone || p.MessagesTotal != int64(len(seeds)) || p.MessagesDone != p.MessagesTotal || p.BytesDone != p.BytesTotal || len(p.Errors) != 0 {
		t.Fatalf("progress %+v, want done %d/%d without errors", p, len(seeds), len(seeds))
	}
	if stored := progressOf(t, r.st); stored.MessagesDone != p.MessagesDone || stored.State != StateDone {
		t.Fatalf("stored progress %+v", stored)
	}
	oldC, newC := r.old.Dial(t, testUser), r.new.Dial(t, testUser)
	for _, box := range [][2]string{{"INBOX", "INBOX"}, {"Posta inviata", "Sent"}, {"Pratiche.Città", "Pratiche/Città"}, {"Archivio", "Archivio"}} {
		r.checkCopied(t, oldC, newC, box[0], box[1], 0)
	}
	// Copied in old UID order within each chunk: few runs.
	for _, box := range []string{"INBOX", "Posta inviata", "Pratiche.Città"} {
		e, _ := r.maps.Get(ctx, testUser, box)
		e.Lock()
		runs := e.M.Len()
		e.Unlock()
		if runs > 2 {
			t.Errorf("%s: %d runs in the UID map, want at most 2", box, runs)
		}
	}
	// Subscriptions and the special-use pair carried over.
	subs, err := newC.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	subscribed := map[string]bool{}
	for _, l := range subs {
		subscribed[l.Mailbox] = true
	}
	if !subscribed["Pratiche/Città"] || !subscribed["Sent"] || subscribed["Archivio"] || subscribed["Posta inviata"] {
		t.Errorf("subscribed in new: %v", subscribed)
	}
	var fm *store.FolderMap
	r.st.View(ctx, func(tx store.Tx) error {
		fm, err = store.GetFolderMap(tx, testUser)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(fm.Folders, func(f store.Folder) bool {
		return f.Old == "Posta inviata" && f.New == "Sent" && f.SpecialUse == `\Sent`
	}) {
		t.Errorf("folder map %+v lacks the \\Sent pair", fm.Folders)
	}
	if n, err := r.eng.Uncopied(ctx, "", testUser); err != nil || n != 0 {
		t.Errorf("Uncopied(user) = %d, %v; want 0", n, err)
	}
	if n, err := r.eng.Uncopied(ctx, testDomain, ""); err != nil || n != 0 {
		t.Errorf("Uncopied(domain) = %d, %v; want 0", n, err)
	}

	t.Run("second pass changes nothing", func(t *testing.T) {
		snap := func() (map[string][]msg, map[string][]byte) {
			boxes := map[string][]msg{}
			for _, b := range []string{"INBOX", "Sent", "Pratiche/Città", "Archivio"} {
				boxes[b] = read(t, newC, b)
			}
			maps := map[string][]byte{}
			r.st.View(ctx, func(tx store.Tx) error {
				return tx.ForEach(store.BucketMaps, "", func(k string, v []byte) error {
					maps[k] = bytes.Clone(v)
					return nil
				})
			})
			return boxes, maps
		}
		boxes0, maps0 := snap()
		st0, err := newC.Status("INBOX", &imap.StatusOptions{UIDNext: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		// The same engine skips the folders it copied; one that knows
		// nothing (a restart) reads them all again.
		fresh := r.engine(t)
		fresh.Remember(testUser, r.old.Password(testUser))
		for _, e := range []*Engine{r.eng, fresh} {
			p2, err := e.CopyUser(ctx, testUser)
			if err != nil || p2.State != StateDone || p2.MessagesDone != p.MessagesDone || p2.MessagesTotal != p.MessagesTotal || p2.BytesDone != p.BytesDone {
				t.Fatalf("second pass: %+v, %v", p2, err)
			}
		}
		boxes1, maps1 := snap()
		for b, ms := range boxes0 {
			if !slices.Equal(ms, boxes1[b]) {
				t.Errorf("%s changed on new", b)
			}
		}
		if len(maps0) != len(maps1) {
			t.Errorf("maps: %d before, %d after", len(maps0), len(maps1))
		}
		for k, v := range maps0 {
			if !bytes.Equal(v, maps1[k]) {
				t.Errorf("map %q changed", k)
			}
		}
		st1, err := newC.Status("INBOX", &imap.StatusOptions{UIDNext: true}).Wait()
		if err != nil || st1.UIDNext != st0.UIDNext {
			t.Errorf("UIDNEXT of INBOX on new: %d -> %d (%v): something was appended", st0.UIDNext, st1.UIDNext, err)
		}
	})

	t.Run("late delivery to old", func(t *testing.T) {
		// Mail still reaching old after the flip gets the next virtual UID
		// and is copied by the next pass, by this engine (which skips the
		// folders it knows are unchanged) and by a fresh one.
		r.old.Deliver(t, testUser, "INBOX", []byte("From: a@b.example\r\nSubject: tardiva\r\nMessage-ID: <late@b.example>\r\n\r\nciao\r\n"))
		p3, err := r.eng.CopyUser(ctx, testUser)
		if err != nil || p3.State != StateDone || p3.MessagesTotal != p.MessagesTotal+1 || p3.MessagesDone != p3.MessagesTotal {
			t.Fatalf("pass after a delivery: %+v, %v", p3, err)
		}
		r.checkCopied(t, oldC, newC, "INBOX", "INBOX", 0)
		r.old.Deliver(t, testUser, "Pratiche.Città", []byte("From: a@b.example\r\nSubject: tardiva 2\r\nMessage-ID: <late2@b.example>\r\n\r\nciao\r\n"))
		fresh := r.engine(t) // knows nothing: reads every folder
		fresh.Remember(testUser, r.old.Password(testUser))
		p4, err := fresh.CopyUser(ctx, testUser)
		if err != nil || p4.State != StateDone || p4.MessagesTotal != p.MessagesTotal+2 || p4.MessagesDone != p4.MessagesTotal {
			t.Fatalf("fresh engine: %+v, %v", p4, err)
		}
		for _, box := range [][2]string{{"INBOX", "INBOX"}, {"Posta inviata", "Sent"}, {"Pratiche.Città", "Pratiche/Città"}} {
			r.checkCopied(t, oldC, newC, box[0], box[1], 0)
		}
	})
}

// TestInterruptedPasses cuts passes short at random moments (the
// connections are closed under them, mid-FETCH, mid-APPEND or between an
// APPEND and its answer) until one completes: nothing is duplicated, and
// everything is mapped.
func TestInterruptedPasses(t *testing.T) {
	r := startRig(t, rigOptions{})
	fixtures := dovetest.LoadFixtures(t)
	seeds := append(corpus(fixtures, "INBOX", 0, 80), corpus(fixtures, "Pratiche.Città", 80, 40)...)
	r.old.SeedMaildir(t, testUser, seeds)
	r.eng.Remember(testUser, r.old.Password(testUser))
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 4))
	for i := range 15 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20+rng.IntN(300))*time.Millisecond)
		p, err := r.eng.CopyUser(ctx, testUser)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Logf("try %d: %v", i+1, err)
		}
		if p != nil {
			t.Logf("try %d: %s %d/%d", i+1, p.State, p.MessagesDone, p.MessagesTotal)
		}
	}
	p, err := r.eng.CopyUser(context.Background(), testUser)
	if err != nil || p.State != StateDone {
		t.Fatalf("last pass: %+v, %v", p, err)
	}
	if p.MessagesDone != int64(len(seeds)) {
		t.Errorf("progress %+v", p)
	}
	oldC, newC := r.old.Dial(t, testUser), r.new.Dial(t, testUser)
	r.checkCopied(t, oldC, newC, "INBOX", "INBOX", 0)
	r.checkCopied(t, oldC, newC, "Pratiche.Città", "Pratiche/Città", 0)
}

// appendTo stores m in mailbox on c with APPEND, as a crashed back-fill
// or another tool would have.
func appendTo(t *testing.T, c *imapclient.Client, mailbox string, body []byte, flags []string, date time.Time) imap.UID {
	t.Helper()
	var fs []imap.Flag
	for _, f := range flags {
		fs = append(fs, imap.Flag(f))
	}
	cmd := c.Append(mailbox, int64(len(body)), &imap.AppendOptions{Flags: fs, Time: date})
	if _, err := cmd.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	return data.UID
}

// TestAdoption: new already holds part of old's mail, copied by "another
// tool" (without flags, one with another INTERNALDATE), a half-copied
// folder, a copy whose APPEND completed but whose mapping was lost, and a
// copy a client session already saw as a message of its own. Nothing is
// duplicated; everything is mapped or reported.
func TestAdoption(t *testing.T) {
	r := startRig(t, rigOptions{})
	fixtures := dovetest.LoadFixtures(t)
	inbox := corpus(fixtures, "INBOX", 0, 40)
	pratiche := corpus(fixtures, "Pratiche.Città", 40, 20)
	r.old.SeedMaildir(t, testUser, append(slices.Clone(inbox), pratiche...))
	r.eng.Remember(testUser, r.old.Password(testUser))
	ctx := context.Background()

	// Another tool copied INBOX messages 0-9 without their flags, message
	// 10 with a later INTERNALDATE, and half of Pratiche.
	var pre []dovetest.SeedMessage
	for _, m := range inbox[:10] {
		pre = append(pre, dovetest.SeedMessage{Mailbox: "INBOX", Body: m.Body, InternalDate: m.InternalDate})
	}
	pre = append(pre, dovetest.SeedMessage{Mailbox: "INBOX", Body: inbox[10].Body, Flags: inbox[10].Flags, InternalDate: inbox[10].InternalDate.Add(time.Hour)})
	for _, m := range pratiche[:10] {
		m.Mailbox = "Pratiche/Città"
		pre = append(pre, m)
	}
	r.new.SeedMaildir(t, testUser, pre)
	newC := r.new.Dial(t, testUser)
	// A back-fill appended message 20 and died before recording it.
	appendTo(t, newC, "INBOX", inbox[20].Body, inbox[20].Flags, inbox[20].InternalDate)
	// Mail delivered to new after the MX switch: not a copy of anything.
	r.new.Deliver(t, testUser, "INBOX", []byte("From: a@b.example\r\nSubject: nuovo\r\nMessage-ID: <x@b.example>\r\n\r\nciao\r\n"))
	// A copy of message 30 that a session saw first (the proxy gave it a
	// virtual UID of its own before anything could adopt it).
	twinUID := appendTo(t, newC, "INBOX", inbox[30].Body, inbox[30].Flags, inbox[30].InternalDate)
	oldC := r.old.Dial(t, testUser)
	sel, err := oldC.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	e, _ := r.maps.Get(ctx, testUser, "INBOX")
	e.Lock()
	e.M = store.NewMap(sel.UIDValidity, store.UID(sel.UIDNext))
	twinV := e.M.AddNew(store.UID(twinUID))
	err = r.maps.Save(ctx, e, nil)
	e.Unlock()
	if err != nil {
		t.Fatal(err)
	}

	p, err := r.eng.CopyUser(ctx, testUser)
	if err != nil {
		t.Fatalf("CopyUser: %v", err)
	}
	if p.State != StateDone || p.MessagesDone != 60 || p.MessagesTotal != 60 {
		t.Fatalf("progress %+v, want done 60/60", p)
	}
	if got := kinds(p); !slices.Equal(got, []string{KindInternalDate, KindTwin}) {
		t.Errorf("errors %v (%+v), want one internaldate, one twin", got, p.Errors)
	}
	news := read(t, newC, "INBOX")
	olds := read(t, oldC, "INBOX")
	// INBOX: 40 from old once each (message 10 with its other date), the
	// delivery: 41.
	if len(news) != 41 {
		t.Errorf("new INBOX holds %d messages, want 41", len(news))
	}
	count := map[[32]byte]int{}
	for _, m := range news {
		count[m.sum]++
	}
	for i, o := range olds {
		if count[o.sum] != 1 {
			t.Errorf("old INBOX message %d is %d times in new", i, count[o.sum])
		}
	}
	// Adopted copies carry old's flags now; all but the twin are mapped.
	byUID := map[imap.UID]msg{}
	for _, m := range news {
		byUID[m.uid] = m
	}
	e.Lock()
	for i, o := range olds {
		_, n, _ := e.M.Lookup(store.UID(o.uid))
		if i == 30 {
			if n != 0 {
				t.Errorf("the twin got mapped to new UID %d", n)
			}
			continue
		}
		c, ok := byUID[imap.UID(n)]
		switch {
		case n == 0 || !ok:
			t.Errorf("old UID %d not mapped (new %d)", o.uid, n)
		case c.sum != o.sum || c.flags != o.flags:
			t.Errorf("old UID %d mapped to new UID %d: bytes equal %v, flags %q want %q", o.uid, n, c.sum == o.sum, c.flags, o.flags)
		case i != 10 && !c.date.Equal(o.date):
			t.Errorf("old UID %d: date %v want %v", o.uid, c.date, o.date)
		}
	}
	if _, _, ok := e.M.Lookup(twinV); !ok {
		t.Error("the session's message lost its virtual UID")
	}
	e.Unlock()
	r.checkCopied(t, oldC, newC, "Pratiche.Città", "Pratiche/Città", 0)
}

// TestPECReceiptsNotDeduplicatedByMessageID: receipts share
// X-Riferimento-Message-ID with their envelope (and with the sent
// message's Message-ID); a message in new with the same Message-ID, size
// and INTERNALDATE but other bytes is not taken for a copy.
func TestPECReceiptsNotDeduplicatedByMessageID(t *testing.T) {
	r := startRig(t, rigOptions{})
	fixtures := dovetest.LoadFixtures(t)
	var seeds []dovetest.SeedMessage
	var decoy []byte
	var decoyDate time.Time
	for _, f := range fixtures {
		switch f.File[:2] {
		case "02", "03", "04", "05", "10", "12":
			sm := f.SeedMessage(r.old, f.Body)
			seeds = append(seeds, sm)
			if f.File[:2] == "02" {
				// Same length, same headers, one byte of the body changed.
				decoy = bytes.Clone(f.Body)
				i := len(decoy) - 10
				decoy[i] ^= 1
				decoyDate = sm.InternalDate
			}
		}
	}
	r.old.SeedMaildir(t, testUser, seeds)
	r.new.SeedMaildir(t, testUser, []dovetest.SeedMessage{{Mailbox: "INBOX", Body: decoy, InternalDate: decoyDate, Flags: []string{`\Seen`}}})
	r.eng.Remember(testUser, r.old.Password(testUser))
	p, err := r.eng.CopyUser(context.Background(), testUser)
	if err != nil || p.State != StateDone || p.MessagesDone != int64(len(seeds)) || len(p.Errors) != 0 {
		t.Fatalf("CopyUser: %+v, %v", p, err)
	}
	oldC, newC := r.old.Dial(t, testUser), r.new.Dial(t, testUser)
	r.checkCopied(t, oldC, newC, "INBOX", "INBOX", 1)
	r.checkCopied(t, oldC, newC, "Posta inviata", "Sent", 0)
	r.checkCopied(t, oldC, newC, "Pratiche.Città", "Pratiche/Città", 0)
}

// TestQuota: a new side too small for the mailbox gets nothing; a new side
// that fills up during the copy stops it with whatever was copied mapped;
// a provider without QUOTA uses quota_bytes.
func TestQuota(t *testing.T) {
	fixtures := dovetest.LoadFixtures(t)
	seeds := corpus(fixtures, "INBOX", 0, 30) // about 300 KB
	var oldBytes int64
	for _, s := range seeds {
		oldBytes += int64(len(s.Body))
	}
	ctx := context.Background()

	t.Run("too small from the start", func(t *testing.T) {
		r := startRig(t, rigOptions{newQuota: oldBytes / 2})
		r.old.SeedMaildir(t, testUser, seeds)
		r.eng.Remember(testUser, r.old.Password(testUser))
		p, err := r.eng.CopyUser(ctx, testUser)
		if !errors.Is(err, ErrQuota) || p.State != StateQuota || !slices.Contains(kinds(p), KindQuota) {
			t.Fatalf("CopyUser: %+v, %v; want a quota stop", p, err)
		}
		if p.MessagesDone != 0 || p.MessagesTotal != 30 {
			t.Errorf("progress %d/%d, want 0/30", p.MessagesDone, p.MessagesTotal)
		}
		if n := len(read(t, r.new.Dial(t, testUser), "INBOX")); n != 0 {
			t.Errorf("new holds %d messages, want none", n)
		}
		if n, err := r.eng.Uncopied(ctx, "", testUser); err != nil || n != 30 {
			t.Errorf("Uncopied = %d, %v; want 30", n, err)
		}
	})

	t.Run("fills up during the copy", func(t *testing.T) {
		quota := oldBytes * 3 / 2
		r := startRig(t, rigOptions{newQuota: quota})
		r.old.SeedMaildir(t, testUser, seeds)
		r.eng.Remember(testUser, r.old.Password(testUser))
		// Once the check passed, mail arrives in new and takes 3/4 of the
		// room: the copy runs out of it half way.
		big := bytes.Repeat([]byte("x"), int(oldBytes*9/8))
		bigMsg := append([]byte("From: a@b.example\r\nSubject: grande\r\n\r\n"), big...)
		r.eng.afterCount = func(string) { r.new.Deliver(t, testUser, "INBOX", bigMsg) }
		p, err := r.eng.CopyUser(ctx, testUser)
		if !errors.Is(err, ErrQuota) || p.State != StateQuota || !slices.Contains(kinds(p), KindQuota) {
			t.Fatalf("CopyUser: %+v, %v; want a quota stop", p, err)
		}
		if p.MessagesDone == 0 || p.MessagesDone >= 30 {
			t.Errorf("copied %d of 30, want some", p.MessagesDone)
		}
		newC := r.new.Dial(t, testUser)
		roots, err := newC.GetQuotaRoot("INBOX").Wait()
		if err != nil || len(roots) == 0 {
			t.Fatalf("GETQUOTAROOT: %v", err)
		}
		st := roots[0].Resources[imap.QuotaResourceStorage]
		if st.Usage > st.Limit {
			t.Errorf("new is overfilled: %d KiB used of %d", st.Usage, st.Limit)
		}
		news := read(t, newC, "INBOX")
		if int64(len(news)) != p.MessagesDone+1 {
			t.Errorf("new holds %d messages, progress says %d copied + 1 delivered", len(news), p.MessagesDone)
		}
		e, _ := r.maps.Get(ctx, testUser, "INBOX")
		e.Lock()
		unmapped := 0
		for _, m := range news {
			if _, ok := e.M.ByNew(store.UID(m.uid)); !ok {
				unmapped++
			}
		}
		e.Unlock()
		if unmapped != 1 {
			t.Errorf("%d messages of new are unmapped, want only the delivery", unmapped)
		}
		if n, err := r.eng.Uncopied(ctx, "", testUser); err != nil || n != 30-int(p.MessagesDone) {
			t.Errorf("Uncopied = %d, %v; want %d", n, err, 30-p.MessagesDone)
		}
	})

	t.Run("quota_bytes without QUOTA", func(t *testing.T) {
		r := startRig(t, rigOptions{newProv: func(p *config.Provider) { p.QuotaBytes = oldBytes / 2 }})
		r.old.SeedMaildir(t, testUser, seeds)
		r.eng.Remember(testUser, r.old.Password(testUser))
		p, err := r.eng.CopyUser(ctx, testUser)
		if !errors.Is(err, ErrQuota) || p.MessagesDone != 0 || !strings.Contains(p.Errors[0].Message, "quota_bytes") {
			t.Fatalf("CopyUser: %+v, %v; want a quota stop from quota_bytes", p, err)
		}
		r.cfg.Providers["new"].QuotaBytes = oldBytes * 2
		r.eng = r.engine(t)
		r.eng.Remember(testUser, r.old.Password(testUser))
		if p, err := r.eng.CopyUser(ctx, testUser); err != nil || p.State != StateDone {
			t.Fatalf("with room: %+v, %v", p, err)
		}
	})
}

// TestUncopiedAndScheduling: Uncopied before and after counting, a member
// who must log in first, an oversize message, and Run following a flip to
// migrating.
func TestUncopiedAndScheduling(t *testing.T) {
	r := startRig(t, rigOptions{state: config.StateOld, newProv: func(p *config.Provider) { p.MaxMessageSize = 1 << 20 }})
	fixtures := dovetest.LoadFixtures(t)
	var seeds []dovetest.SeedMessage
	for _, f := range fixtures {
		seeds = append(seeds, f.SeedMessage(r.old, f.Body)) // 14 is 3 MB
	}
	r.old.SeedMaildir(t, testUser, seeds)
	ctx := context.Background()

	if _, err := r.eng.CopyUser(ctx, testUser); !errors.Is(err, ErrNotMigrating) {
		t.Fatalf("CopyUser in state old: %v", err)
	}
	if _, err := r.router.SetUser(ctx, testUser, config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	p, err := r.eng.CopyUser(ctx, testUser)
	if !errors.Is(err, ErrNeedsLogin) || p.State != StateNeedsLogin || !slices.Equal(kinds(p), []string{KindNeedsLogin}) {
		t.Fatalf("without a password: %+v, %v", p, err)
	}
	if _, err := r.eng.Uncopied(ctx, "", testUser); !errors.Is(err, ErrNotCounted) {
		t.Fatalf("Uncopied before counting: %v", err)
	}
	// The flip to new is refused while nobody knows what is left.
	if _, err := r.router.SetUser(ctx, testUser, config.StateNew, false); err == nil {
		t.Fatal("flip to new allowed before the mail was counted")
	}

	// Run copies once the member logs in (Remember) ...
	runCtx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- r.eng.Run(runCtx) }()
	r.eng.Remember(testUser, r.old.Password(testUser))
	deadline := time.Now().Add(60 * time.Second)
	for {
		p = progressOf(t, r.st)
		if p.State == StateIncomplete || p.State == StateDone || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.State != StateIncomplete || p.MessagesTotal != int64(len(seeds)) || p.MessagesDone != p.MessagesTotal-1 {
		t.Fatalf("after Run: %+v; want all but the 3 MB message", p)
	}
	if !slices.Equal(kinds(p), []string{KindOversize}) || p.Errors[0].Mailbox != "Pratiche.Città" {
		t.Errorf("errors %+v, want one oversize in Pratiche.Città", p.Errors)
	}
	// Per folder: the sums are the user's, and the oversize message is
	// the one left in its folder.
	var fDone, fTotal int64
	for _, f := range p.Folders {
		fDone, fTotal = fDone+f.MessagesDone, fTotal+f.MessagesTotal
		if want := f.MessagesTotal - btoi(f.Name == "Pratiche.Città"); f.MessagesDone != want {
			t.Errorf("folder %s: %d of %d copied, want %d", f.Name, f.MessagesDone, f.MessagesTotal, want)
		}
	}
	if fDone != p.MessagesDone || fTotal != p.MessagesTotal {
		t.Errorf("per-folder sums %d of %d, the user's %d of %d: %+v", fDone, fTotal, p.MessagesDone, p.MessagesTotal, p.Folders)
	}
	if n, err := r.eng.Uncopied(ctx, "", testUser); err != nil || n != 1 {
		t.Errorf("Uncopied(user) = %d, %v; want 1", n, err)
	}
	// The domain is in state old: its users with their own state are not
	// counted for a domain flip.
	if n, err := r.eng.Uncopied(ctx, testDomain, ""); err != nil || n != 0 {
		t.Errorf("Uncopied(domain) = %d, %v; want 0", n, err)
	}
	var refused *store.RefusedError
	if _, err := r.router.SetUser(ctx, testUser, config.StateNew, false); !errors.As(err, &refused) || refused.Uncopied != 1 {
		t.Errorf("flip to new: %v, want refused with 1 uncopied", err)
	}
	// Back to the domain's state: the user counts for the domain again.
	if _, err := r.router.ClearUser(ctx, testUser, true); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n, err := r.eng.Uncopied(ctx, testDomain, ""); err != nil || n != 1 {
		t.Errorf("Uncopied(domain) = %d, %v; want 1", n, err)
	}
}

// TestRunFollowsFlip: Run starts copying a domain when it is flipped to
// migrating, and stops when its context ends.
func TestRunFollowsFlip(t *testing.T) {
	r := startRig(t, rigOptions{state: config.StateOld})
	fixtures := dovetest.LoadFixtures(t)
	r.old.SeedMaildir(t, testUser, corpus(fixtures, "INBOX", 0, 10))
	r.eng.Remember(testUser, r.old.Password(testUser))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- r.eng.Run(ctx) }()
	time.Sleep(100 * time.Millisecond)
	var st store.Store = r.st
	st.View(ctx, func(tx store.Tx) error {
		if _, err := store.GetProgress(tx, testUser); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a user in state old was copied: %v", err)
		}
		return nil
	})
	if _, err := r.router.SetDomain(ctx, testDomain, config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	var p *store.Progress
	for time.Now().Before(deadline) {
		err := st.View(ctx, func(tx store.Tx) error {
			var err error
			p, err = store.GetProgress(tx, testUser)
			return err
		})
		if err == nil && p.State == StateDone {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p == nil || p.State != StateDone || p.MessagesDone != 10 {
		t.Fatalf("progress %+v, want done 10", p)
	}
	if i := slices.IndexFunc(p.Folders, func(f store.FolderProgress) bool { return f.Name == "INBOX" }); i < 0 || p.Folders[i].MessagesDone != 10 || p.Folders[i].MessagesTotal != 10 {
		t.Errorf("per-folder progress %+v, want INBOX 10 of 10", p.Folders)
	}
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, err := r.router.SetDomain(context.Background(), testDomain, config.StateNew, false); err != nil {
		t.Fatalf("flip to new after a complete copy: %v", err)
	}
}

// fakeClock advances only when slept on.
type fakeClock struct {
	mu    gosync.Mutex
	now   time.Time
	slept time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.slept += d
	return ctx.Err()
}

func TestThrottle(t *testing.T) {
	cfg := &config.Config{Providers: map[string]*config.Provider{
		"a": {IMAP: "imaps://a.invalid", CopyMessagesPerSecond: 5, CopyBytesPerSecond: 1000},
		"b": {IMAP: "imaps://b.invalid"},
	}}
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		providers []string
		n         int
		size      int64
		want      time.Duration
	}{
		// 5 messages of burst, then one every 0.2 s.
		{"messages", []string{"a"}, 10, 1, time.Second},
		// 1000 bytes of burst, then 1 s per 1000 bytes; a message larger
		// than the burst waits what it costs.
		{"bytes", []string{"a"}, 3, 1000, 2 * time.Second},
		{"large", []string{"a"}, 1, 5000, 4 * time.Second},
		{"unlimited", []string{"b"}, 1000, 1 << 30, 0},
		{"both sides", []string{"a", "b"}, 10, 1, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
			e := NewEngine(Options{Config: cfg, Backends: bs})
			e.clock = clk
			for range tc.n {
				if err := e.throttle(context.Background(), tc.providers, tc.size); err != nil {
					t.Fatal(err)
				}
			}
			if d := clk.slept - tc.want; d < -time.Millisecond || d > time.Millisecond {
				t.Errorf("slept %v, want %v", clk.slept, tc.want)
			}
		})
	}
}

func TestNewestFirst(t *testing.T) {
	msgs := make([]int, 1000)
	for i := range msgs {
		msgs[i] = i
	}
	chunks := newestFirst(msgs)
	var sizes []int
	var all []int
	for _, c := range chunks {
		sizes = append(sizes, len(c))
		if !slices.IsSorted(c) {
			t.Errorf("chunk %v not ascending", c[:3])
		}
		all = slices.Concat(c, all)
	}
	if !slices.Equal(sizes, []int{256, 512, 232}) || !slices.Equal(all, msgs) || chunks[0][255] != 999 {
		t.Errorf("chunk sizes %v", sizes)
	}
	if len(newestFirst([]int(nil))) != 0 {
		t.Error("chunks of nothing")
	}
}

func btoi(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
