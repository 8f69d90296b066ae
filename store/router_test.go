package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// routerConfig serves a.test (old -> new, state from the argument) and
// solo.test (old only).
func routerConfig(t *testing.T, state string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
[server]
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = ""

[providers.oldp]
imap = "imaps://old.test"
smtp = "smtps://old.test"

[providers.newp]
imap = "imaps://new.test"
smtp = "smtps://new.test"

[domains."a.test"]
old = "oldp"
new = "newp"
state = %q

[domains."solo.test"]
old = "oldp"
`, state)), "router.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func openBolt(t *testing.T, dir string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func newRouter(t *testing.T, cfg *config.Config, st store.Store) *store.Router {
	t.Helper()
	r, err := store.NewRouter(context.Background(), cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRouterRoute(t *testing.T) {
	ctx := context.Background()
	db := openBolt(t, t.TempDir())
	defer db.Close()
	r := newRouter(t, routerConfig(t, "old"), db)

	if rt := r.Route("mario@unknown.test"); rt != nil {
		t.Errorf("Route of an unknown domain = %+v, want nil", rt)
	}
	if rt := r.Route("not-an-address"); rt != nil {
		t.Errorf("Route of a non-address = %+v, want nil", rt)
	}
	check := func(user, state, overridden string) {
		t.Helper()
		rt := r.Route(user)
		if rt == nil {
			t.Fatalf("Route(%q) = nil", user)
		}
		if rt.State != state || rt.Overridden != overridden || rt.User != user || rt.Old != "oldp" || rt.New != "newp" || rt.Domain.Name != "a.test" {
			t.Errorf("Route(%q) = %+v, want state %s overridden %q", user, rt, state, overridden)
		}
	}
	check("mario@a.test", "old", "")
	if _, err := r.SetDomain(ctx, "A.TEST", "migrating", false); err != nil {
		t.Fatal(err)
	}
	check("mario@a.test", "migrating", "domain")
	if _, err := r.SetUser(ctx, "Luigi@A.test", "old", false); err != nil {
		t.Fatal(err)
	}
	check("luigi@a.test", "old", "user")
	check("LUIGI@a.TEST", "old", "user")
	check("mario@a.test", "migrating", "domain")
	if c, err := r.ClearUser(ctx, "luigi@a.test", false); err != nil || !c.Cleared || c.From != "old" || c.To != "migrating" {
		t.Fatalf("ClearUser = %+v, %v", c, err)
	}
	check("luigi@a.test", "migrating", "domain")
	if c, err := r.ClearUser(ctx, "luigi@a.test", false); err != nil || c.Cleared || c.From != c.To {
		t.Errorf("second ClearUser = %+v, %v; want a no-op", c, err)
	}
}

// step is one change in a transition test.
type step struct {
	kind  string // "domain", "user" or "clear"
	state string
	force bool
}

func TestRouterTransitions(t *testing.T) {
	const user = "mario@a.test"
	count := func(n int) func(context.Context, string, string) (int, error) {
		return func(context.Context, string, string) (int, error) { return n, nil }
	}
	failing := func(context.Context, string, string) (int, error) { return 0, errors.New("store unreachable") }
	refused := func(n int) error { return &store.RefusedError{Uncopied: n} }
	tests := []struct {
		name     string
		config   string // a.test's config state
		uncopied func(context.Context, string, string) (int, error)
		before   []step // applied first, must succeed
		do       step
		wantErr  error // nil, a sentinel, or a *RefusedError (Uncopied compared)
		want     store.Change
		// wantState is the effective state of user afterwards.
		wantState string
	}{
		{name: "domain old->migrating", config: "old", do: step{"domain", "migrating", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "migrating"}, wantState: "migrating"},
		{name: "domain migrating->old rollback", config: "migrating", uncopied: count(5), do: step{"domain", "old", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "old"}, wantState: "old"},
		{name: "domain new->migrating", config: "new", do: step{"domain", "migrating", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "new", To: "migrating"}, wantState: "migrating"},
		{name: "domain old->new refused", config: "old", uncopied: count(0), do: step{"domain", "new", false},
			wantErr: refused(0), wantState: "old"},
		{name: "domain old->new forced", config: "old", uncopied: count(7), do: step{"domain", "new", true},
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "new", Forced: true, Uncopied: 7}, wantState: "new"},
		{name: "domain old->new forced, progress unknown", config: "old", do: step{"domain", "new", true},
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "new", Forced: true, Uncopied: -1}, wantState: "new"},
		{name: "domain new->old refused", config: "new", do: step{"domain", "old", false},
			wantErr: refused(0), wantState: "new"},
		{name: "domain new->old forced", config: "new", do: step{"domain", "old", true},
			want: store.Change{Kind: "domain", Name: "a.test", From: "new", To: "old", Forced: true}, wantState: "old"},
		{name: "domain migrating->new copied", config: "migrating", uncopied: count(0), do: step{"domain", "new", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new"}, wantState: "new"},
		{name: "domain migrating->new uncopied refused", config: "migrating", uncopied: count(412), do: step{"domain", "new", false},
			wantErr: refused(412), wantState: "migrating"},
		{name: "domain migrating->new uncopied forced", config: "migrating", uncopied: count(412), do: step{"domain", "new", true},
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new", Forced: true, Uncopied: 412}, wantState: "new"},
		{name: "domain migrating->new unknown refused", config: "migrating", do: step{"domain", "new", false},
			wantErr: refused(0), wantState: "migrating"},
		{name: "domain migrating->new unknown forced", config: "migrating", do: step{"domain", "new", true},
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new", Forced: true, Uncopied: -1}, wantState: "new"},
		{name: "domain migrating->new count fails", config: "migrating", uncopied: failing, do: step{"domain", "new", false},
			wantErr: errors.New("store unreachable"), wantState: "migrating"},
		{name: "domain migrating->new count fails forced", config: "migrating", uncopied: failing, do: step{"domain", "new", true},
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new", Forced: true, Uncopied: -1}, wantState: "new"},
		{name: "domain via migrating to new", config: "old", uncopied: count(0), before: []step{{"domain", "migrating", false}}, do: step{"domain", "new", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new"}, wantState: "new"},
		{name: "domain same state records", config: "old", do: step{"domain", "old", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "old"}, wantState: "old"},
		{name: "domain bad state", config: "old", do: step{"domain", "finished", true}, wantErr: store.ErrBadState, wantState: "old"},
		{name: "domain empty state", config: "old", do: step{"domain", "", false}, wantErr: store.ErrBadState, wantState: "old"},
		{name: "domain unknown", config: "old", do: step{"domain-x", "migrating", false}, wantErr: store.ErrUnknownDomain, wantState: "old"},
		{name: "domain without new: migrating", config: "old", do: step{"solo", "migrating", true}, wantErr: store.ErrNoNewProvider, wantState: "old"},
		{name: "domain without new: new", config: "old", do: step{"solo", "new", true}, wantErr: store.ErrNoNewProvider, wantState: "old"},
		{name: "domain without new: old", config: "old", do: step{"solo", "old", false},
			want: store.Change{Kind: "domain", Name: "solo.test", From: "old", To: "old"}, wantState: "old"},
		{name: "user override beats domain", config: "old", before: []step{{"user", "migrating", false}}, do: step{"domain", "migrating", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "migrating"}, wantState: "migrating"},
		{name: "user pinned stays old", config: "old", before: []step{{"user", "old", false}}, do: step{"domain", "migrating", false},
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "migrating"}, wantState: "old"},
		{name: "user old->migrating", config: "old", do: step{"user", "migrating", false},
			want: store.Change{Kind: "user", Name: user, From: "old", To: "migrating"}, wantState: "migrating"},
		{name: "user old->new refused", config: "old", uncopied: count(0), do: step{"user", "new", false},
			wantErr: refused(0), wantState: "old"},
		{name: "user migrating->new uncopied refused", config: "migrating", uncopied: count(3), do: step{"user", "new", false},
			wantErr: refused(3), wantState: "migrating"},
		{name: "user migrating->new copied", config: "migrating", uncopied: count(0), do: step{"user", "new", false},
			want: store.Change{Kind: "user", Name: user, From: "migrating", To: "new"}, wantState: "new"},
		{name: "user migrating->old rollback", config: "migrating", do: step{"user", "old", false},
			want: store.Change{Kind: "user", Name: user, From: "migrating", To: "old"}, wantState: "old"},
		{name: "user new->old refused", config: "new", do: step{"user", "old", false}, wantErr: refused(0), wantState: "new"},
		{name: "user of a domain without new", config: "old", do: step{"solo-user", "migrating", true}, wantErr: store.ErrNoNewProvider, wantState: "old"},
		{name: "user not an address", config: "old", do: step{"bad-user", "migrating", false}, wantErr: store.ErrBadUser, wantState: "old"},
		{name: "user of an unknown domain", config: "old", do: step{"unknown-user", "migrating", false}, wantErr: store.ErrUnknownDomain, wantState: "old"},
		{name: "clear pinned old into new refused", config: "old", uncopied: count(0),
			before: []step{{"user", "old", false}, {"domain", "migrating", false}, {"domain", "new", false}},
			do:     step{"clear", "", false}, wantErr: refused(0), wantState: "old"},
		{name: "clear pinned old into new forced", config: "old", uncopied: count(9),
			before: []step{{"user", "old", false}, {"domain", "migrating", false}, {"domain", "new", true}},
			do:     step{"clear", "", true},
			want:   store.Change{Kind: "user", Name: user, From: "old", To: "new", Cleared: true, Forced: true, Uncopied: 9}, wantState: "new"},
		{name: "clear migrating into old", config: "old", before: []step{{"user", "migrating", false}}, do: step{"clear", "", false},
			want: store.Change{Kind: "user", Name: user, From: "migrating", To: "old", Cleared: true}, wantState: "old"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			db := openBolt(t, t.TempDir())
			defer db.Close()
			r := newRouter(t, routerConfig(t, tc.config), db)
			r.Uncopied = tc.uncopied
			apply := func(s step) (*store.Change, error) {
				switch s.kind {
				case "domain":
					return r.SetDomain(ctx, "a.test", s.state, s.force)
				case "domain-x":
					return r.SetDomain(ctx, "x.test", s.state, s.force)
				case "solo":
					return r.SetDomain(ctx, "solo.test", s.state, s.force)
				case "user":
					return r.SetUser(ctx, user, s.state, s.force)
				case "solo-user":
					return r.SetUser(ctx, "mario@solo.test", s.state, s.force)
				case "bad-user":
					return r.SetUser(ctx, "mario", s.state, s.force)
				case "unknown-user":
					return r.SetUser(ctx, "mario@x.test", s.state, s.force)
				case "clear":
					return r.ClearUser(ctx, user, s.force)
				}
				panic(s.kind)
			}
			for _, s := range tc.before {
				if _, err := apply(s); err != nil {
					t.Fatalf("before %+v: %v", s, err)
				}
			}
			c, err := apply(tc.do)
			var re, wantRE *store.RefusedError
			switch {
			case tc.wantErr == nil:
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				if !reflect.DeepEqual(*c, tc.want) {
					t.Errorf("change = %+v, want %+v", *c, tc.want)
				}
			case errors.As(tc.wantErr, &wantRE):
				if !errors.As(err, &re) {
					t.Fatalf("err = %v, want a *RefusedError", err)
				}
				if re.Uncopied != wantRE.Uncopied || re.Reason == "" {
					t.Errorf("refused %+v, want uncopied %d and a reason", re, wantRE.Uncopied)
				}
			case errors.Is(tc.wantErr, store.ErrBadState), errors.Is(tc.wantErr, store.ErrUnknownDomain),
				errors.Is(tc.wantErr, store.ErrNoNewProvider), errors.Is(tc.wantErr, store.ErrBadUser):
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			default:
				if err == nil || errors.As(err, &re) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			}
			if got := r.Route(user).State; got != tc.wantState {
				t.Errorf("state of %s afterwards = %s, want %s", user, got, tc.wantState)
			}
			// What the router holds is what the store holds.
			r2 := newRouter(t, routerConfig(t, tc.config), db)
			if got := r2.Route(user).State; got != tc.wantState {
				t.Errorf("state of %s after reload = %s, want %s", user, got, tc.wantState)
			}
		})
	}
}

func TestRouterUncopiedArguments(t *testing.T) {
	ctx := context.Background()
	db := openBolt(t, t.TempDir())
	defer db.Close()
	r := newRouter(t, routerConfig(t, "migrating"), db)
	var calls []string
	r.Uncopied = func(_ context.Context, domain, user string) (int, error) {
		calls = append(calls, domain+"|"+user)
		return 0, nil
	}
	if _, err := r.SetUser(ctx, "Mario@A.test", "new", false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetDomain(ctx, "a.test", "new", false); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.test|mario@a.test", "a.test|"}; !reflect.DeepEqual(calls, want) {
		t.Errorf("Uncopied calls = %q, want %q", calls, want)
	}
}

func TestRouterPersists(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := openBolt(t, dir)
	r := newRouter(t, routerConfig(t, "old"), db)
	for _, s := range []func() (*store.Change, error){
		func() (*store.Change, error) { return r.SetDomain(ctx, "a.test", "migrating", false) },
		func() (*store.Change, error) { return r.SetUser(ctx, "luigi@a.test", "old", false) },
		func() (*store.Change, error) { return r.SetUser(ctx, "peach@a.test", "migrating", false) },
		func() (*store.Change, error) { return r.SetUser(ctx, "toad@a.test", "old", false) },
		func() (*store.Change, error) { return r.ClearUser(ctx, "toad@a.test", false) },
	} {
		if _, err := s(); err != nil {
			t.Fatal(err)
		}
	}
	before := r.Domains()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openBolt(t, dir)
	defer db.Close()
	r = newRouter(t, routerConfig(t, "old"), db)
	if len(r.Ignored()) != 0 {
		t.Errorf("Ignored = %+v", r.Ignored())
	}
	if after := r.Domains(); !reflect.DeepEqual(before, after) {
		t.Errorf("Domains after reopen = %+v, want %+v", after, before)
	}
	want := []store.DomainStatus{
		{Name: "a.test", Config: "old", State: "migrating", Overridden: true, Old: "oldp", New: "newp", Users: 2},
		{Name: "solo.test", Config: "old", State: "old", Old: "oldp"},
	}
	if got := r.Domains(); !reflect.DeepEqual(got, want) {
		t.Errorf("Domains = %+v, want %+v", got, want)
	}
	wantUsers := []store.UserStatus{{User: "luigi@a.test", State: "old"}, {User: "peach@a.test", State: "migrating"}}
	if got := r.Users("A.test"); !reflect.DeepEqual(got, wantUsers) {
		t.Errorf("Users = %+v, want %+v", got, wantUsers)
	}
	for user, state := range map[string]string{"mario@a.test": "migrating", "luigi@a.test": "old", "peach@a.test": "migrating", "toad@a.test": "migrating"} {
		if got := r.Route(user).State; got != state {
			t.Errorf("%s after reopen: %s, want %s", user, got, state)
		}
	}
	if got, err := r.Domain("A.TEST"); err != nil || got != want[0] {
		t.Errorf("Domain = %+v, %v", got, err)
	}
	if _, err := r.Domain("x.test"); !errors.Is(err, store.ErrUnknownDomain) {
		t.Errorf("Domain(x.test) err = %v", err)
	}
}

func TestRouterIgnoresStaleOverrides(t *testing.T) {
	ctx := context.Background()
	db := openBolt(t, t.TempDir())
	defer db.Close()
	err := db.Update(ctx, func(tx store.Tx) error {
		for _, o := range []store.Override{
			{Kind: "domain", Name: "gone.test", State: "migrating"},
			{Kind: "domain", Name: "solo.test", State: "new"}, // config names no new provider
			{Kind: "domain", Name: "a.test", State: "new"},
			{Kind: "user", Name: "mario@solo.test", State: "migrating"},
			{Kind: "user", Name: "mario@gone.test", State: "old"},
			{Kind: "user", Name: "luigi@a.test", State: "migrating"},
		} {
			if err := store.SetOverride(tx, o.Kind, o.Name, o.State); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r := newRouter(t, routerConfig(t, "old"), db)
	var ignored []string
	for _, o := range r.Ignored() {
		if o.Reason == "" {
			t.Errorf("no reason for %+v", o)
		}
		ignored = append(ignored, o.Kind+":"+o.Name)
	}
	want := []string{"domain:gone.test", "domain:solo.test", "user:mario@gone.test", "user:mario@solo.test"}
	if !reflect.DeepEqual(ignored, want) {
		t.Errorf("ignored = %q, want %q", ignored, want)
	}
	for user, state := range map[string]string{"x@a.test": "new", "luigi@a.test": "migrating", "mario@solo.test": "old"} {
		if got := r.Route(user).State; got != state {
			t.Errorf("%s: %s, want %s", user, got, state)
		}
	}
}

func TestRouterSubscribe(t *testing.T) {
	ctx := context.Background()
	db := openBolt(t, t.TempDir())
	defer db.Close()
	r := newRouter(t, routerConfig(t, "old"), db)
	ch, cancel := r.Subscribe()
	ch2, cancel2 := r.Subscribe()
	defer cancel2()
	got := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	}
	if _, err := r.SetDomain(ctx, "a.test", "migrating", false); err != nil {
		t.Fatal(err)
	}
	if !got(ch) || !got(ch2) {
		t.Fatal("no token after a flip")
	}
	// Two changes before the reader looks: one token, and no blocking.
	r.SetUser(ctx, "mario@a.test", "old", false)
	r.ClearUser(ctx, "mario@a.test", false)
	if !got(ch) || got(ch) {
		t.Error("want exactly one token for two unread changes")
	}
	// A refused change and one that moves nobody send nothing.
	if _, err := r.SetDomain(ctx, "a.test", "migrating", false); err != nil {
		t.Fatal(err)
	}
	r.Uncopied = func(context.Context, string, string) (int, error) { return 1, nil }
	if _, err := r.SetDomain(ctx, "a.test", "new", false); err == nil {
		t.Fatal("want refusal")
	}
	if got(ch) {
		t.Error("token without a change")
	}
	cancel()
	cancel() // idempotent
	if _, err := r.SetDomain(ctx, "a.test", "old", false); err != nil {
		t.Fatal(err)
	}
	if got(ch) {
		t.Error("token after cancel")
	}
	if !got(ch2) {
		t.Error("the other subscriber missed the change")
	}
}

// TestRouterConcurrent runs logins against flips (go test -race).
func TestRouterConcurrent(t *testing.T) {
	ctx := context.Background()
	db := openBolt(t, t.TempDir())
	defer db.Close()
	r := newRouter(t, routerConfig(t, "old"), db)
	r.Uncopied = func(context.Context, string, string) (int, error) { return 0, nil }
	stop := make(chan struct{})
	var wg gosync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch, cancel := r.Subscribe()
			defer cancel()
			user := fmt.Sprintf("u%d@a.test", i)
			for {
				select {
				case <-stop:
					return
				case <-ch:
				default:
				}
				if rt := r.Route(user); rt == nil || rt.State == "" {
					t.Errorf("Route(%s) = %+v", user, rt)
					return
				}
				r.Domains()
				r.Users("a.test")
			}
		}()
	}
	states := []string{"migrating", "new", "migrating", "old"}
	for i := range 40 {
		if _, err := r.SetDomain(ctx, "a.test", states[i%len(states)], false); err != nil {
			t.Fatal(err)
		}
		if _, err := r.SetUser(ctx, "u1@a.test", states[(i+1)%len(states)], true); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// A member whose mail nobody counted yet makes a flip to new a refusal
// (409 through the API, forceable), not an internal error.
func TestRouterRefusesWhileNotCounted(t *testing.T) {
	ctx := context.Background()
	db := openBolt(t, t.TempDir())
	defer db.Close()
	r := newRouter(t, routerConfig(t, "migrating"), db)
	r.Uncopied = func(context.Context, string, string) (int, error) {
		return 0, fmt.Errorf("%w: 1 members (sara@a.test)", store.ErrNotCounted)
	}
	_, err := r.SetDomain(ctx, "a.test", "new", false)
	var re *store.RefusedError
	if !errors.As(err, &re) || !strings.Contains(re.Reason, "sara@a.test") || !strings.Contains(re.Reason, "counted") {
		t.Fatalf("SetDomain(new) = %v, want a refusal naming sara@a.test", err)
	}
	if st, _ := r.Domain("a.test"); st.State != "migrating" {
		t.Fatalf("state after the refusal = %s, want migrating", st.State)
	}
	c, err := r.SetDomain(ctx, "a.test", "new", true)
	if err != nil || !c.Forced || c.Uncopied != -1 || c.To != "new" {
		t.Fatalf("forced SetDomain(new) = %+v, %v; want forced, uncopied -1", c, err)
	}
}
