package admin_test

import (
	"context"
	"encoding/json"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// progressFixture is the admin API reading progress from a bbolt store.
type progressFixture struct {
	db     *bolt.DB
	router *store.Router
	c      *admin.Client
	srv    *httptest.Server
}

func newProgressFixture(t *testing.T) *progressFixture {
	t.Helper()
	cfg, err := config.Parse([]byte(testConfig), "admin.toml")
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r, err := store.NewRouter(context.Background(), cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(admin.New(admin.Options{Router: r, Token: token, Store: db}))
	t.Cleanup(srv.Close)
	return &progressFixture{db: db, router: r, srv: srv, c: &admin.Client{BaseURL: srv.URL, Token: token}}
}

func (f *progressFixture) put(t *testing.T, ps ...*store.Progress) {
	t.Helper()
	err := f.db.Update(context.Background(), func(tx store.Tx) error {
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

func (f *progressFixture) user(t *testing.T, user string) *admin.UserProgress {
	t.Helper()
	u, err := f.c.User(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	p, err := u.ProgressDoc()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProgressHints(t *testing.T) {
	for kind, want := range map[string]string{
		"needs-login":   "the member must log in once through pecgate (passthrough provider)",
		"auth":          "check the master/vault credentials; for Aruba with two-factor login an app password is needed",
		"quota":         "raise the quota at the new provider",
		"oversize":      "the message is larger than the new provider accepts; it stays on old",
		"upstream":      "the provider failed; the copy retries by itself",
		"no-credential": "no credentials for this member in the vault: import them (pecgate vault import) or let the member set them on the member page (/me)",
		"internaldate":  "",
	} {
		if got := admin.Hint(kind); got != want {
			t.Errorf("Hint(%q) = %q, want %q", kind, got, want)
		}
	}
}

func TestProgressUser(t *testing.T) {
	f := newProgressFixture(t)
	const mario = "mario@pec.ordine.example"
	now := time.Now().UTC().Truncate(time.Second)
	at := now.Add(-time.Minute)
	errs := []store.ProgressError{
		{Kind: "needs-login", Message: "copy waits for the member to log in once", At: at},
		{Kind: "auth", Message: "infocert login: refused", At: at},
		{Kind: "quota", Message: "3 MB to copy, 1 MB free", At: at},
		{Kind: "oversize", Message: "message of 60000000 bytes is over the limit", Mailbox: "INBOX", V: 42, At: at},
		{Kind: "upstream", Message: "connection reset", Mailbox: "Sent", At: at},
		{Kind: "twin", Message: "in new already", Mailbox: "INBOX", V: 7, At: at},
	}
	f.put(t, &store.Progress{
		User: "Mario@pec.ordine.example", State: "copying",
		MessagesDone: 100, MessagesTotal: 1000, BytesDone: 1_000_000, BytesTotal: 20_000_000,
		Errors: errs, Updated: now.Add(-10 * time.Second),
	})

	// One record read: counts and hints, no rate yet.
	p := f.user(t, "MARIO@pec.ordine.example")
	if p.User != mario || p.State != "copying" || p.MessagesDone != 100 || p.MessagesTotal != 1000 || p.BytesDone != 1_000_000 || p.BytesTotal != 20_000_000 {
		t.Errorf("counts: %+v", p)
	}
	if p.MessagesPerSecond != nil || p.BytesPerSecond != nil || p.ETASeconds != nil {
		t.Errorf("a rate from one record: %+v", p)
	}
	if len(p.Errors) != len(errs) {
		t.Fatalf("errors: %+v", p.Errors)
	}
	for i, e := range p.Errors {
		want := admin.ProgressError{Kind: errs[i].Kind, Message: errs[i].Message, Mailbox: errs[i].Mailbox, V: uint32(errs[i].V), At: at, Hint: admin.Hint(errs[i].Kind)}
		if !e.At.Equal(at) {
			t.Errorf("error %d at %v, want %v", i, e.At, at)
		}
		e.At = at
		if e != want {
			t.Errorf("error %d: %+v, want %+v", i, e, want)
		}
	}
	if p.Errors[4].Hint != "the provider failed; the copy retries by itself" || p.Errors[5].Hint != "" {
		t.Errorf("hints: %+v", p.Errors)
	}

	// Reading the same record again changes nothing.
	if p := f.user(t, mario); p.MessagesPerSecond != nil {
		t.Errorf("a rate from the same record twice: %+v", p)
	}

	// A second record 5 s later: 50 messages and 500 kB more.
	f.put(t, &store.Progress{
		User: mario, State: "copying",
		MessagesDone: 150, MessagesTotal: 1000, BytesDone: 1_500_000, BytesTotal: 20_000_000,
		Errors: errs[2:3], Updated: now.Add(-5 * time.Second),
	})
	p = f.user(t, mario)
	if p.MessagesPerSecond == nil || *p.MessagesPerSecond != 10 || p.BytesPerSecond == nil || *p.BytesPerSecond != 100_000 {
		t.Fatalf("rate: %+v", p)
	}
	// 850 messages at 10/s is 85 s, 18.5 MB at 100 kB/s 185 s: the later.
	if p.ETASeconds == nil || *p.ETASeconds != 185 {
		t.Errorf("ETA: %v", p.ETASeconds)
	}
	// The progress endpoint answers the same document, and the rate stays
	// while the record does.
	status, _, body := (&fixture{srv: f.srv}).call(t, "GET", "/api/v1/users/mario@pec.ordine.example/progress", bearer, "")
	var direct admin.UserProgress
	if status != 200 || json.Unmarshal([]byte(body), &direct) != nil || direct.ETASeconds == nil || *direct.ETASeconds != 185 {
		t.Errorf("progress endpoint: %d %s", status, body)
	}
	if !strings.Contains(body, `"messages_per_second": 10,`) || !strings.Contains(body, `"eta_seconds": 185,`) || !strings.Contains(body, `"hint": "raise the quota at the new provider"`) {
		t.Errorf("progress JSON:\n%s", body)
	}

	// A new pass counted again (done went down): no rate.
	f.put(t, &store.Progress{User: mario, State: "copying", MessagesDone: 140, MessagesTotal: 1000, Updated: now.Add(-4 * time.Second)})
	if p := f.user(t, mario); p.MessagesPerSecond != nil || p.ETASeconds != nil {
		t.Errorf("a rate across a recount: %+v", p)
	}
	// Then it moves again: a rate from the two latest records only.
	f.put(t, &store.Progress{User: mario, State: "copying", MessagesDone: 160, MessagesTotal: 1000, Updated: now.Add(-2 * time.Second)})
	if p := f.user(t, mario); p.MessagesPerSecond == nil || *p.MessagesPerSecond != 10 || p.ETASeconds == nil || *p.ETASeconds != 84 {
		t.Errorf("rate after the recount: %+v", p)
	}
	// Done: no rate, no ETA.
	f.put(t, &store.Progress{User: mario, State: "done", MessagesDone: 1000, MessagesTotal: 1000, Updated: now.Add(-time.Second)})
	if p := f.user(t, mario); p.State != "done" || p.MessagesPerSecond != nil || p.ETASeconds != nil {
		t.Errorf("done: %+v", p)
	}

	// Records the engine wrote long ago: the rate is not known any more.
	const anna = "anna@pec.ordine.example"
	f.put(t, &store.Progress{User: anna, State: "copying", MessagesDone: 10, MessagesTotal: 100, Updated: now.Add(-10 * time.Minute)})
	f.user(t, anna)
	f.put(t, &store.Progress{User: anna, State: "copying", MessagesDone: 20, MessagesTotal: 100, Updated: now.Add(-9 * time.Minute)})
	if p := f.user(t, anna); p.MessagesPerSecond != nil {
		t.Errorf("a rate from stale records: %+v", p)
	}

	// No record: no progress, and a 404 on the progress endpoint.
	if p := f.user(t, "luigi@pec.ordine.example"); p != nil {
		t.Errorf("luigi: %+v", p)
	}
	status, _, body = (&fixture{srv: f.srv}).call(t, "GET", "/api/v1/users/luigi@pec.ordine.example/progress", bearer, "")
	if status != 404 || !strings.Contains(body, "no copy progress recorded") {
		t.Errorf("no record: %d %s", status, body)
	}
}

func TestProgressDomains(t *testing.T) {
	f := newProgressFixture(t)
	ctx := context.Background()
	const dom = "pec.ordine.example"
	if _, err := f.router.SetDomain(ctx, dom, "migrating", false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.router.SetUser(ctx, "luigi@"+dom, "old", false); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	at := now.Add(-time.Minute)
	f.put(t,
		&store.Progress{User: "anna@" + dom, State: "copying", MessagesDone: 10, MessagesTotal: 100, BytesDone: 1000, BytesTotal: 10000, Updated: now.Add(-4 * time.Second)},
		&store.Progress{User: "bruno@" + dom, State: "done", MessagesDone: 50, MessagesTotal: 50, BytesDone: 5000, BytesTotal: 5000, Updated: at,
			Errors: []store.ProgressError{{Kind: "internaldate", Message: "adopted a copy whose INTERNALDATE differs", At: at}}},
		&store.Progress{User: "carla@" + dom, State: "incomplete", MessagesDone: 8, MessagesTotal: 10, BytesDone: 800, BytesTotal: 1000, Updated: at,
			Errors: []store.ProgressError{
				{Kind: "oversize", Message: "message 1 too big", Mailbox: "INBOX", V: 1, At: at},
				{Kind: "oversize", Message: "message 2 too big", Mailbox: "INBOX", V: 2, At: at},
			}},
		&store.Progress{User: "dario@" + dom, State: "quota", MessagesDone: 0, MessagesTotal: 20, BytesDone: 0, BytesTotal: 2000, Updated: at},
		&store.Progress{User: "elena@" + dom, State: "needs-login", Updated: at,
			Errors: []store.ProgressError{{Kind: "needs-login", Message: "copy waits for the member to log in once", At: at}}},
		&store.Progress{User: "fabio@" + dom, State: "failed", MessagesDone: 1, MessagesTotal: 2, BytesDone: 100, BytesTotal: 200, Updated: at,
			Errors: []store.ProgressError{{Kind: "auth", Message: "infocert login: refused", At: at}}},
		&store.Progress{User: "mario@solo.example", State: "done", MessagesDone: 7, MessagesTotal: 7, Updated: at},
		&store.Progress{User: "someone@elsewhere.example", State: "done", MessagesDone: 9, MessagesTotal: 9, Updated: at},
	)
	phc, err := store.HashPassword("secret")
	if err != nil {
		t.Fatal(err)
	}
	vault, err := store.NewVault(make([]byte, store.VaultKeySize))
	if err != nil {
		t.Fatal(err)
	}
	err = f.db.Update(ctx, func(tx store.Tx) error {
		if err := store.PutVerifier(tx, "Gino@"+dom, phc); err != nil {
			return err
		}
		if err := store.PutVerifier(tx, "anna@"+dom, phc); err != nil { // has a record too: counted once
			return err
		}
		if err := vault.Put(tx, "infocert", "hana@"+dom, "U123", "pw"); err != nil {
			return err
		}
		return vault.Put(tx, "aruba", "zeno@solo.example", "zeno", "pw")
	})
	if err != nil {
		t.Fatal(err)
	}

	list, err := f.c.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Progress == nil || list[1].Progress == nil {
		t.Fatalf("domains: %+v", list)
	}
	pec, solo := list[0].Progress, list[1].Progress
	want := map[string]int{
		// gino (verifier), hana (vault), luigi (own state) have no record.
		"copying": 1, "done": 1, "incomplete": 1, "quota": 1, "needs-login": 1, "failed": 1, "not-started": 3,
	}
	if !maps.Equal(pec.Members, want) || pec.MembersTotal != 9 {
		t.Errorf("members %v (%d), want %v (9)", pec.Members, pec.MembersTotal, want)
	}
	if pec.MessagesDone != 69 || pec.MessagesTotal != 182 || pec.BytesDone != 6900 || pec.BytesTotal != 18200 {
		t.Errorf("sums: %+v", pec)
	}
	if pec.Problems != nil || pec.MessagesPerSecond != nil || pec.ETASeconds != nil {
		t.Errorf("problems or a rate in the list: %+v", pec)
	}
	wantSolo := map[string]int{"copying": 0, "done": 1, "incomplete": 0, "quota": 0, "needs-login": 0, "failed": 0, "not-started": 1}
	if !maps.Equal(solo.Members, wantSolo) || solo.MessagesTotal != 7 || !slices.Equal(admin.Phases(), []string{"copying", "done", "incomplete", "quota", "needs-login", "failed", "not-started"}) {
		t.Errorf("solo: %+v", solo)
	}

	// anna moves: the domain has her rate, but no ETA while members in
	// migrating are not counted or stopped.
	f.put(t, &store.Progress{User: "anna@" + dom, State: "copying", MessagesDone: 30, MessagesTotal: 100, BytesDone: 3000, BytesTotal: 10000, Updated: now.Add(-2 * time.Second)})
	d, err := f.c.Domain(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	p := d.Progress
	if p == nil || p.MessagesPerSecond == nil || *p.MessagesPerSecond != 10 || *p.BytesPerSecond != 1000 || p.ETASeconds != nil || p.MessagesDone != 89 {
		t.Errorf("domain rate: %+v", p)
	}
	if len(d.Users) != 1 || d.Users[0].User != "luigi@"+dom {
		t.Errorf("user overrides: %+v", d.Users)
	}
	wantProblems := []admin.MemberProblem{
		{User: "bruno@" + dom, Phase: "done", Kinds: []admin.KindCount{{Kind: "internaldate", Count: 1, Message: "adopted a copy whose INTERNALDATE differs"}}},
		{User: "carla@" + dom, Phase: "incomplete", Kinds: []admin.KindCount{{Kind: "oversize", Count: 2, Message: "message 2 too big", Hint: admin.Hint("oversize")}}},
		{User: "dario@" + dom, Phase: "quota", Kinds: []admin.KindCount{{Kind: "quota", Hint: admin.Hint("quota")}}},
		{User: "elena@" + dom, Phase: "needs-login", Kinds: []admin.KindCount{{Kind: "needs-login", Count: 1, Message: "copy waits for the member to log in once", Hint: admin.Hint("needs-login")}}},
		{User: "fabio@" + dom, Phase: "failed", Kinds: []admin.KindCount{{Kind: "auth", Count: 1, Message: "infocert login: refused", Hint: admin.Hint("auth")}}},
	}
	if got, _ := json.Marshal(p.Problems); string(got) != string(must(json.Marshal(wantProblems))) {
		t.Errorf("problems:\n%s\nwant\n%s", got, must(json.Marshal(wantProblems)))
	}

	// With every member in migrating counted and none stopped, an ETA: 72
	// messages left (anna 70, carla 2) at 10/s, 7200 bytes at 1000/s.
	for _, u := range []string{"dario", "elena", "fabio", "gino", "hana"} {
		f.put(t, &store.Progress{User: u + "@" + dom, State: "done", Updated: at})
	}
	list, err = f.c.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p := list[0].Progress; p.ETASeconds == nil || *p.ETASeconds != 8 || p.Members["not-started"] != 1 {
		t.Errorf("domain ETA: %+v", p)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
