package proxy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// checkSetup is a LoginChecker and an IMAP gateway sharing one limiter, in
// front of real Dovecots old (passthrough) and new (newAuth).
type checkSetup struct {
	old, new *dovetest.Server
	checker  *LoginChecker
	gw       *testGateway
	limiter  *AuthLimiter
	router   *store.Router
	st       store.Store
	secrets  *fakeSecrets
	backfill *fakeBackfill
}

// fakeSecrets is a vault in memory.
type fakeSecrets struct {
	mu gosync.Mutex
	m  map[string][2]string
}

func (s *fakeSecrets) set(provider, user, username, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][2]string{}
	}
	s.m[provider+"\x00"+strings.ToLower(user)] = [2]string{username, password}
}

func (s *fakeSecrets) Credential(ctx context.Context, provider, user string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.m[provider+"\x00"+strings.ToLower(user)]
	if !ok {
		return "", "", backend.ErrNoCredential
	}
	return c[0], c[1], nil
}

// fakeBackfill records what the checker tells the back-fill.
type fakeBackfill struct {
	mu         gosync.Mutex
	remembered map[string]string
	touched    map[string]bool
}

func (b *fakeBackfill) Remember(user, password string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.remembered[user] = password
}

func (b *fakeBackfill) Touch(user string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.touched[user] = true
}

func (b *fakeBackfill) got(user string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.remembered[user], b.touched[user]
}

// newCheckSetup starts Dovecot old and new with users and a gateway whose
// domain (the users' own) is in state; a second domain,
// down.example, has a provider nobody listens on.
func newCheckSetup(t *testing.T, newAuth, state string, users ...string) *checkSetup {
	t.Helper()
	return newCheckSetupEdit(t, newAuth, state, nil, users...)
}

// newCheckSetupEdit is newCheckSetup with edit applied to the config.
func newCheckSetupEdit(t *testing.T, newAuth, state string, edit func(cfg *config.Config, old, nw *dovetest.Server, dir string), users ...string) *checkSetup {
	t.Helper()
	dovetest.Require(t)
	old, nw := dovetest.StartPair(t, users...)
	dir := t.TempDir()
	masterFile := filepath.Join(dir, "new.master")
	if err := os.WriteFile(masterFile, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	newProv := &config.Provider{IMAP: "imaps://" + nw.IMAPSAddr, SMTP: "smtps://" + nw.SubmissionAddr, Auth: newAuth, CA: nw.CAFile}
	if newAuth == config.AuthMaster {
		newProv.MasterUser, newProv.MasterPasswordFile, newProv.MasterStyle = nw.MasterUser, masterFile, config.MasterStyleSASL
	}
	domain := users[0][strings.IndexByte(users[0], '@')+1:]
	cfg := &config.Config{
		Server: config.Server{Hostname: "localhost"},
		Providers: map[string]*config.Provider{
			"old":  {IMAP: "imaps://" + old.IMAPSAddr, SMTP: "smtps://" + old.SubmissionAddr, Auth: config.AuthPassthrough, CA: old.CAFile},
			"new":  newProv,
			"down": {IMAP: "imaps://127.0.0.1:1", SMTP: "smtps://127.0.0.1:1", Auth: config.AuthPassthrough, ConnectTimeout: config.Duration(2 * time.Second)},
		},
		Domains: map[string]*config.Domain{
			domain:         {Old: "old", New: "new", State: state},
			"down.example": {Old: "down", State: config.StateOld},
		},
	}
	if edit != nil {
		edit(cfg, old, nw, dir)
	}
	for name, p := range cfg.Providers {
		p.Name = name
		if p.MaxConnections == 0 {
			p.MaxConnections = 10
		}
	}
	for name, d := range cfg.Domains {
		d.Name = name
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
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	s := &checkSetup{old: old, new: nw, limiter: NewAuthLimiter(), router: router, st: st,
		secrets: &fakeSecrets{}, backfill: &fakeBackfill{remembered: map[string]string{}, touched: map[string]bool{}}}
	maps := store.NewMapCache(st, 100)
	s.gw = startGatewayOpts(t, ca, cfg, func(o *Options) {
		o.Router, o.Maps, o.Limiter, o.Secrets, o.Backfill = router, maps, s.limiter, s.secrets, s.backfill
		s.checker = NewLoginChecker(*o)
	})
	return s
}

// imapLogin logs in through the gateway as a client would and returns the
// server's answer.
func (s *checkSetup) imapLogin(t *testing.T, user, password string) error {
	t.Helper()
	c := s.gw.dial(t, nil)
	defer c.Close()
	return c.Login(user, password).Wait()
}

func (s *checkSetup) check(user, password string) error {
	return s.checker.Check(context.Background(), "127.0.0.1", user, password)
}

// wantKind fails unless err wraps want and none of the other outcomes.
func wantKind(t *testing.T, what string, err, want error) {
	t.Helper()
	all := []error{ErrLoginThrottled, ErrLoginRefused, ErrLoginUnavailable, ErrNewCredential}
	if want == nil {
		if err != nil {
			t.Fatalf("%s: %v, want success", what, err)
		}
		return
	}
	for _, k := range all {
		if errors.Is(err, k) != (k == want) {
			t.Fatalf("%s: %v, want exactly %v", what, err, want)
		}
	}
}

func TestLoginCheckerStates(t *testing.T) {
	const user, other = "anna.rossi@ordine.example", "marco.bianchi@ordine.example"
	s := newCheckSetup(t, config.AuthMaster, config.StateMigrating, user, other)
	pw := s.old.Password(user)

	wantKind(t, "migrating, old's password", s.check(user, pw), nil)
	if got, touched := s.backfill.got(user); got != pw || !touched {
		t.Errorf("back-fill told (%q, touched %v), want the password and a touch", got, touched)
	}
	wantKind(t, "migrating, new's password", s.check(user, s.new.Password(user)), ErrLoginRefused)
	wantKind(t, "migrating, empty password", s.check(other, ""), ErrLoginRefused)
	wantKind(t, "unknown domain", s.check("anna.rossi@elsewhere.example", pw), ErrLoginRefused)
	wantKind(t, "no domain", s.check("anna.rossi", pw), ErrLoginRefused)
	wantKind(t, "provider down", s.check("x@down.example", "whatever"), ErrLoginUnavailable)

	// State new: new is reached with the master user, so the password is
	// checked against the verifier pinned at the migrating login above.
	if _, err := s.router.SetUser(context.Background(), user, config.StateNew, true); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "new, the pinned password", s.check(user, pw), nil)
	wantKind(t, "new, a wrong password", s.check(user, pw+"x"), ErrLoginRefused)
	// other never logged in: no verifier, and old still there checks it.
	if _, err := s.router.SetUser(context.Background(), other, config.StateNew, true); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "new, no verifier yet, old's password", s.check(other, s.old.Password(other)), nil)

	// State old (no UID map): old alone, with the member's password.
	if _, err := s.router.SetUser(context.Background(), user, config.StateOld, true); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "old, old's password", s.check(user, pw), nil)
	wantKind(t, "old, new's password", s.check(user, s.new.Password(user)), ErrLoginRefused)
}

// TestLoginCheckerSharesThrottle: the checker and the IMAP server count
// failures in one limiter: past the threshold the right password is
// refused on both, whichever side the wrong ones came from.
func TestLoginCheckerSharesThrottle(t *testing.T) {
	const user, other = "anna.rossi@ordine.example", "marco.bianchi@ordine.example"
	s := newCheckSetup(t, config.AuthMaster, config.StateMigrating, user, other)
	s.limiter.PerUser, s.limiter.PerIP = 3, 1000

	t.Run("checker then IMAP", func(t *testing.T) {
		for i := range s.limiter.PerUser {
			wantKind(t, "wrong password", s.check(user, "wrong"+string(rune('a'+i))), ErrLoginRefused)
		}
		wantKind(t, "right password after the threshold", s.check(user, s.old.Password(user)), ErrLoginThrottled)
		err := s.imapLogin(t, user, s.old.Password(user))
		var ie *imap.Error
		if !errors.As(err, &ie) || ie.Text != errThrottled.Text {
			t.Fatalf("IMAP LOGIN with the right password after the threshold: %v, want %q", err, errThrottled.Text)
		}
	})
	t.Run("IMAP then checker", func(t *testing.T) {
		for range s.limiter.PerUser {
			if err := s.imapLogin(t, other, "wrong"); err == nil {
				t.Fatal("IMAP LOGIN with a wrong password succeeded")
			}
		}
		wantKind(t, "right password after IMAP failures", s.check(other, s.old.Password(other)), ErrLoginThrottled)
	})
}

// TestLoginCheckerVault: a new provider with vault credentials. The
// member's own password decides; the vault's credentials missing or
// wrong are ErrNewCredential, never a refusal of the member.
func TestLoginCheckerVault(t *testing.T) {
	const user = "anna.rossi@ordine.example"
	s := newCheckSetup(t, config.AuthVault, config.StateMigrating, user)
	s.limiter.PerUser = 2
	pw := s.old.Password(user)

	// More than PerUser times: a credential problem is no failure of the
	// member's, so it never throttles them.
	for range s.limiter.PerUser + 1 {
		wantKind(t, "no credentials in the vault", s.check(user, pw), ErrNewCredential)
	}
	if err := s.imapLogin(t, user, pw); err == nil {
		t.Fatal("IMAP LOGIN without the new provider's vault credentials succeeded")
	}
	wantKind(t, "wrong password, no credentials", s.check(user, pw+"x"), ErrLoginRefused)
	s.secrets.set("new", user, user, "not-new's-password")
	wantKind(t, "refused credentials in the vault", s.check(user, pw), ErrNewCredential)
	s.secrets.set("new", user, user, s.new.Password(user))
	wantKind(t, "right credentials in the vault", s.check(user, pw), nil)
	wantKind(t, "wrong password, right credentials", s.check(user, pw+"x"), ErrLoginRefused)
	if err := s.imapLogin(t, user, pw); err != nil {
		t.Fatalf("IMAP LOGIN with the vault filled: %v", err)
	}
}

// TestLoginCheckerMasterOld: an old provider reached with a master user
// never sees the member's password, so the checker refuses a member
// without a pinned verifier, and checks the password against it once
// pinned.
func TestLoginCheckerMasterOld(t *testing.T) {
	const user = "anna.rossi@ordine.example"
	s := newCheckSetupEdit(t, config.AuthMaster, config.StateMigrating, func(cfg *config.Config, old, nw *dovetest.Server, dir string) {
		f := filepath.Join(dir, "old.master")
		if err := os.WriteFile(f, []byte(old.MasterPassword+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := cfg.Providers["old"]
		p.Auth, p.MasterUser, p.MasterPasswordFile, p.MasterStyle = config.AuthMaster, old.MasterUser, f, config.MasterStyleSASL
	}, user)
	pw := s.old.Password(user)
	// Old is reached with its master user, which says nothing of the
	// client's password: without a verifier, old itself checks it (a
	// login with the member's own credentials), and then it is pinned.
	wantKind(t, "no verifier, any password", s.check(user, "anything"), ErrLoginRefused)
	// The same over IMAP: a session must not let a wrong password in
	// because the master login to old succeeds.
	if err := s.imapLogin(t, user, "anything"); err == nil {
		t.Fatal("IMAP LOGIN with a wrong password succeeded in migrating with a master old provider")
	}
	if err := s.imapLogin(t, user, s.new.Password(user)); err == nil {
		t.Fatal("IMAP LOGIN with the new provider's password succeeded in migrating with a master old provider")
	}
	var phc string
	s.st.View(context.Background(), func(tx store.Tx) error { phc, _ = store.GetVerifier(tx, user); return nil })
	if phc != "" {
		t.Fatal("a verifier was pinned after refusals only")
	}
	wantKind(t, "no verifier, the right password", s.check(user, pw), nil)
	s.st.View(context.Background(), func(tx store.Tx) error { phc, _ = store.GetVerifier(tx, user); return nil })
	if ok, err := store.CheckPassword(phc, pw); err != nil || !ok {
		t.Fatalf("verifier after the right password: %q %v %v, want one of the password", phc, ok, err)
	}
	wantKind(t, "pinned, a wrong password", s.check(user, "anything"), ErrLoginRefused)
	wantKind(t, "pinned, the right password", s.check(user, pw), nil)
	if err := s.imapLogin(t, user, "anything"); err == nil {
		t.Fatal("IMAP LOGIN with a wrong password succeeded with a pinned verifier")
	}
	if err := s.imapLogin(t, user, pw); err != nil {
		t.Fatalf("IMAP LOGIN with the right password: %v", err)
	}
}
