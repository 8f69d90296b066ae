package store_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/store"
)

// TestRouterPreviewDomain checks that PreviewDomain changes nothing and
// says exactly what SetDomain then does: the same Change, with force when
// it reports a refusal, and the same refusal without.
func TestRouterPreviewDomain(t *testing.T) {
	count := func(n int) func(context.Context, string, string) (int, error) {
		return func(context.Context, string, string) (int, error) { return n, nil }
	}
	failing := func(context.Context, string, string) (int, error) { return 0, errors.New("store unreachable") }
	tests := []struct {
		name     string
		config   string // a.test's config state
		uncopied func(context.Context, string, string) (int, error)
		before   string // a.test's state set first ("" none)
		domain   string // default a.test
		state    string
		want     store.Change
		// refused is the refusal's Uncopied, or -2 for no refusal.
		refused int
		wantErr error
	}{
		{name: "old->migrating", config: "old", state: "migrating", refused: -2,
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "migrating"}},
		{name: "migrating->new copied", config: "migrating", uncopied: count(0), state: "new", refused: -2,
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new"}},
		{name: "migrating->new uncopied", config: "migrating", uncopied: count(412), state: "new", refused: 412,
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new", Forced: true, Uncopied: 412}},
		{name: "migrating->new progress unknown", config: "migrating", state: "new", refused: 0,
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "new", Forced: true, Uncopied: -1}},
		{name: "migrating->new count fails", config: "migrating", uncopied: failing, state: "new", wantErr: errors.New("store unreachable")},
		{name: "old->new", config: "old", uncopied: count(7), state: "new", refused: 0,
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "new", Forced: true, Uncopied: 7}},
		{name: "new->old", config: "new", state: "old", refused: 0,
			want: store.Change{Kind: "domain", Name: "a.test", From: "new", To: "old", Forced: true}},
		{name: "migrating->old rollback", config: "migrating", uncopied: count(5), state: "old", refused: -2,
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "old"}},
		{name: "same override", config: "old", before: "migrating", uncopied: count(3), state: "migrating", refused: -2,
			want: store.Change{Kind: "domain", Name: "a.test", From: "migrating", To: "migrating"}},
		{name: "case-insensitive domain", config: "old", domain: "A.Test", state: "migrating", refused: -2,
			want: store.Change{Kind: "domain", Name: "a.test", From: "old", To: "migrating"}},
		{name: "bad state", config: "old", state: "done", wantErr: store.ErrBadState},
		{name: "unknown domain", config: "old", domain: "x.test", state: "migrating", wantErr: store.ErrUnknownDomain},
		{name: "no new provider", config: "old", domain: "solo.test", state: "migrating", wantErr: store.ErrNoNewProvider},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			db := openBolt(t, t.TempDir())
			defer db.Close()
			cfg := routerConfig(t, tc.config)
			r := newRouter(t, cfg, db)
			r.Uncopied = tc.uncopied
			if tc.before != "" {
				if _, err := r.SetDomain(ctx, "a.test", tc.before, true); err != nil {
					t.Fatal(err)
				}
			}
			domain := tc.domain
			if domain == "" {
				domain = "a.test"
			}
			stateBefore := r.Domains()
			changed, cancel := r.Subscribe()
			defer cancel()

			p, err := r.PreviewDomain(ctx, domain, tc.state)
			switch {
			case tc.wantErr != nil && err == nil:
				t.Fatalf("preview %+v, want error %v", p, tc.wantErr)
			case tc.wantErr == nil && err != nil:
				t.Fatalf("preview: %v", err)
			case tc.wantErr != nil:
				if isSentinel(tc.wantErr) && !errors.Is(err, tc.wantErr) {
					t.Fatalf("preview error %v, want %v", err, tc.wantErr)
				}
				if !isSentinel(tc.wantErr) && !strings.Contains(err.Error(), tc.wantErr.Error()) {
					t.Fatalf("preview error %v, want one that says %q", err, tc.wantErr)
				}
				var re *store.RefusedError
				if errors.As(err, &re) {
					t.Fatalf("preview error is a refusal (%v); refusals are Preview.Refused", err)
				}
			default:
				if !reflect.DeepEqual(p.Change, tc.want) {
					t.Errorf("preview change %+v, want %+v", p.Change, tc.want)
				}
				switch {
				case tc.refused == -2 && p.Refused != nil:
					t.Errorf("preview refused (%+v), want allowed", p.Refused)
				case tc.refused != -2 && p.Refused == nil:
					t.Errorf("preview allowed, want refused with uncopied %d", tc.refused)
				case p.Refused != nil && (p.Refused.Uncopied != tc.refused || p.Refused.Reason == ""):
					t.Errorf("refused %+v, want uncopied %d and a reason", p.Refused, tc.refused)
				}
			}

			// Nothing moved: not in the router, not in the store, no
			// subscriber woken.
			if got := r.Domains(); !reflect.DeepEqual(got, stateBefore) {
				t.Errorf("domains after the preview %+v, want %+v", got, stateBefore)
			}
			if got := newRouter(t, cfg, db).Domains(); !reflect.DeepEqual(got, stateBefore) {
				t.Errorf("stored domains after the preview %+v, want %+v", got, stateBefore)
			}
			select {
			case <-changed:
				t.Error("the preview notified subscribers of a change")
			default:
			}
			if err != nil {
				// The preview's error is SetDomain's too.
				if _, serr := r.SetDomain(ctx, domain, tc.state, false); serr == nil || serr.Error() != err.Error() {
					t.Errorf("SetDomain after the preview's error %v: %v, want the same error", err, serr)
				}
				return
			}

			// SetDomain does what the preview said: refused without force
			// when it said so, and then, with force, the previewed change.
			if p.Refused != nil {
				_, err := r.SetDomain(ctx, domain, tc.state, false)
				var re *store.RefusedError
				if !errors.As(err, &re) || re.Uncopied != p.Refused.Uncopied || re.Reason != p.Refused.Reason {
					t.Errorf("SetDomain without force: %v, want the previewed refusal %+v", err, p.Refused)
				}
			}
			c, err := r.SetDomain(ctx, domain, tc.state, p.Refused != nil)
			if err != nil {
				t.Fatalf("SetDomain after the preview: %v", err)
			}
			if !reflect.DeepEqual(*c, p.Change) {
				t.Errorf("SetDomain made %+v, the preview said %+v", *c, p.Change)
			}
		})
	}
}

func isSentinel(err error) bool {
	for _, s := range []error{store.ErrBadState, store.ErrUnknownDomain, store.ErrNoNewProvider, store.ErrBadUser} {
		if err == s {
			return true
		}
	}
	return false
}
