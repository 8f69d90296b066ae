package sync

import (
	"context"
	"fmt"
	"slices"
	gosync "sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
)

// settableSecrets is a vault whose one credential appears when set.
type settableSecrets struct {
	mu             gosync.Mutex
	username, pass string
}

func (s *settableSecrets) Credential(_ context.Context, provider, user string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.username == "" {
		return "", "", fmt.Errorf("%w: %s at %s", backend.ErrNoCredential, user, provider)
	}
	return s.username, s.pass, nil
}

// TestRetryAfterCredentials: a pass that failed for want of the new
// provider's vault credentials waits an hour (authRetry) before the next;
// Retry, called when a member sets them on the member page, starts it now.
func TestRetryAfterCredentials(t *testing.T) {
	r := startRig(t, rigOptions{newProv: func(p *config.Provider) {
		p.Auth, p.MasterUser, p.MasterPasswordFile = config.AuthVault, "", ""
	}})
	fixtures := dovetest.LoadFixtures(t)
	r.old.SeedMaildir(t, testUser, corpus(fixtures, "INBOX", 0, 5))
	secrets := &settableSecrets{}
	bs, err := backend.New(r.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	eng := NewEngine(Options{Config: r.cfg, Store: r.st, Maps: r.maps, Router: r.router, Backends: bs, Secrets: secrets, Log: testLogger(t)})
	eng.Remember(testUser, r.old.Password(testUser))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- eng.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	wait := func(what string, ok func(p *store.Progress) bool) *store.Progress {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second) // far below authRetry
		for {
			var p *store.Progress
			r.st.View(ctx, func(tx store.Tx) error {
				p, _ = store.GetProgress(tx, testUser)
				return nil
			})
			if p != nil && ok(p) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: progress %+v", what, p)
			}
			time.Sleep(50 * time.Millisecond) // polling the store, not synchronising
		}
	}
	p := wait("a pass failing for want of credentials", func(p *store.Progress) bool { return p.State == StateFailed })
	if !slices.Contains(kinds(p), KindNoCredential) {
		t.Fatalf("problems %v, want %s", kinds(p), KindNoCredential)
	}
	secrets.mu.Lock()
	secrets.username, secrets.pass = testUser, r.new.Password(testUser)
	secrets.mu.Unlock()
	eng.Retry(testUser)
	p = wait("the retried pass", func(p *store.Progress) bool { return p.State == StateDone })
	if p.MessagesDone != 5 {
		t.Errorf("copied %d messages, want 5", p.MessagesDone)
	}
}
