package preflight_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync/preflight"
)

const domain = "pec.ordine.example"

// Members of the test domain, one for each way to fail, and a healthy one.
var (
	healthy    = "sano@" + domain       // everything fine
	wrongOld   = "pwvecchia@" + domain  // the password given for old is wrong
	wrongNew   = "pwnuova@" + domain    // the vault's password for new is wrong
	overQuota  = "quota@" + domain      // mailbox larger than new's quota
	oversized  = "grande@" + domain     // a message over new's size limit
	badFolder  = "cartella@" + domain   // a folder name new refuses
	noPassword = "nopassword@" + domain // no password given for old (passthrough)
	noVault    = "novault@" + domain    // the vault holds nothing for new
	twoFactor  = "otp@" + domain        // old wants an app password (two-factor login)
	imapOff    = "imapoff@" + domain    // IMAP is disabled for the account on new
	members    = []string{healthy, wrongOld, wrongNew, overQuota, oversized, badFolder, noPassword, noVault, twoFactor, imapOff}
)

const (
	quotaBytes = 200 << 10 // new's quota per user (whole KiB: GETQUOTAROOT counts KiB)
	sizeLimit  = 64 << 10  // new's max_message_size
	refused    = "Fatture 2023.01"
)

// message returns a CRLF message of about size bytes.
func message(subject string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: a@%s\r\nTo: b@%s\r\nSubject: %s\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\nMessage-ID: <%s@test>\r\n\r\n", domain, domain, subject, strings.ReplaceAll(subject, " ", "."))
	for b.Len() < size {
		b.WriteString(strings.Repeat("x", 76) + "\r\n")
	}
	return b.Bytes()
}

// secrets is a vault for new: it counts the lookups per user.
type secrets struct {
	mu    gosync.Mutex
	creds map[string][2]string
	calls map[string]int
}

func (s *secrets) Credential(_ context.Context, provider, user string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[user]++
	c, ok := s.creds[user]
	if !ok || provider != "new" {
		return "", "", fmt.Errorf("%s on %s: %w", user, provider, backend.ErrNoCredential)
	}
	return c[0], c[1], nil
}

// counter forwards TCP connections to addr and counts them: each is one
// login attempt, since preflight logs in once per connection.
type counter struct {
	ln    net.Listener
	mu    gosync.Mutex
	conns int
}

func newCounter(t *testing.T, addr string) *counter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &counter{ln: ln}
	var wg gosync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.conns++
			c.mu.Unlock()
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.Close(); out.Close() }()
		}
	}()
	return c
}

func (c *counter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns
}

type setup struct {
	old, new         *dovetest.Server
	oldCount, newCnt *counter
	cfg              *config.Config
	bs               *backend.Set
	vault            *secrets
	passwords        map[string]string
}

func start(t *testing.T) *setup { t.Helper(); return startWith(t, quotaBytes, nil) }

// startWith starts old and new, new with a quota of newQuota bytes per
// user enforced and announced by Dovecot (QUOTA), none when 0, and its
// options changed by edit (nil: none).
func startWith(t *testing.T, newQuota int64, edit func(*dovetest.Options)) *setup {
	t.Helper()
	dovetest.Require(t)
	var oldUsers, newUsers []dovetest.User
	// Dovecot refuses a right password with NO [CONTACTADMIN] and the
	// reason for a user with "nologin" (see dovetest.User.Extra), as
	// providers do for accounts with two-factor login or IMAP disabled.
	extra := map[string][2]string{
		twoFactor: {"nologin reason=Two-factor-authentication-is-on,-use-an-app-password", ""},
		imapOff:   {"", "nologin"},
	}
	for _, u := range members {
		oldUsers = append(oldUsers, dovetest.User{Address: u, Extra: extra[u][0]})
		newUsers = append(newUsers, dovetest.User{Address: u, Extra: extra[u][1]})
	}
	s := &setup{}
	s.old = dovetest.Start(t, dovetest.Options{Name: "old", Delimiter: "/", Layout: dovetest.LayoutFS, Users: oldUsers})
	newOpts := dovetest.Options{Name: "new", Delimiter: "/", QuotaBytes: newQuota, Users: newUsers}
	if edit != nil {
		edit(&newOpts)
	}
	s.new = dovetest.Start(t, newOpts)

	for _, u := range members {
		s.old.Deliver(t, u, "INBOX", message("benvenuto "+u, 2000))
	}
	s.old.CreateMailbox(t, healthy, "Archivio/2023")
	s.old.Deliver(t, healthy, "Archivio/2023", message("archivio", 3000))
	for i := range 6 {
		s.old.Deliver(t, overQuota, "INBOX", message(fmt.Sprintf("allegato %d", i), 50_000))
	}
	s.old.Deliver(t, oversized, "INBOX", message("planimetrie", 100_000))
	s.old.CreateMailbox(t, badFolder, refused)
	s.old.Deliver(t, badFolder, refused, message("fattura", 2000))
	s.old.Deliver(t, badFolder, refused, message("fattura 2", 2000))

	s.passwords = map[string]string{}
	for _, u := range members {
		switch u {
		case noPassword:
		case wrongOld:
			s.passwords[u] = "not-" + s.old.Password(u)
		default:
			s.passwords[u] = s.old.Password(u)
		}
	}
	s.vault = &secrets{creds: map[string][2]string{}, calls: map[string]int{}}
	for _, u := range members {
		switch u {
		case noVault:
		case wrongNew:
			s.vault.creds[u] = [2]string{u, "not-" + s.new.Password(u)}
		default:
			s.vault.creds[u] = [2]string{u, s.new.Password(u)}
		}
	}
	s.oldCount, s.newCnt = newCounter(t, s.old.IMAPSAddr), newCounter(t, s.new.IMAPSAddr)
	s.cfg = &config.Config{
		Server: config.Server{Hostname: "localhost"},
		Providers: map[string]*config.Provider{
			"old": {IMAP: "imaps://" + s.oldCount.ln.Addr().String(), Auth: config.AuthPassthrough, CA: s.old.CAFile},
			"new": {IMAP: "imaps://" + s.newCnt.ln.Addr().String(), Auth: config.AuthVault, CA: s.new.CAFile, MaxMessageSize: sizeLimit},
		},
		Domains: map[string]*config.Domain{domain: {Old: "old", New: "new", State: config.StateOld}},
	}
	for name, p := range s.cfg.Providers {
		p.Name = name
	}
	for name, d := range s.cfg.Domains {
		d.Name = name
	}
	var err error
	if s.bs, err = backend.New(s.cfg, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *setup) options() preflight.Options {
	return preflight.Options{
		Config: s.cfg, Backends: s.bs, Secrets: s.vault, Concurrency: 2,
		Password: func(u string) (string, bool) { pw, ok := s.passwords[u]; return pw, ok },
	}
}

func kinds(m *preflight.Member) []string {
	var out []string
	for _, p := range m.Problems {
		k := p.Side + ":" + p.Kind
		if p.Refusal != "" {
			k += ":" + string(p.Refusal)
		}
		if !p.Blocks {
			k += ":warning"
		}
		out = append(out, k)
	}
	return out
}

// concurrency follows the members being checked through the log lines
// "checking member" and "member checked", and holds each member at its
// first step (the password lookup) until as many members as the limit are
// being checked, or every member has started: checked members then overlap
// as much as the code allows, so max is exactly the limit when the bound
// holds, and more when it does not.
type concurrency struct {
	mu                       gosync.Mutex
	cond                     *gosync.Cond
	limit, total             int
	active, started, maxSeen int
}

func newConcurrency(limit, total int) *concurrency {
	c := &concurrency{limit: limit, total: total}
	c.cond = gosync.NewCond(&c.mu)
	return c
}

func (c *concurrency) Enabled(context.Context, slog.Level) bool { return true }
func (c *concurrency) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *concurrency) WithGroup(string) slog.Handler            { return c }
func (c *concurrency) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.Message {
	case "checking member":
		c.active++
		c.started++
		c.maxSeen = max(c.maxSeen, c.active)
	case "member checked":
		c.active--
	}
	c.cond.Broadcast()
	return nil
}

func (c *concurrency) hold() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.active < c.limit && c.started < c.total {
		c.cond.Wait()
	}
}

// TestDomainAgainstDovecot: every member set up to fail in one way is
// reported with that reason and only that one, the healthy member passes,
// the flip is not safe, and each member got at most one login attempt per
// provider.
func TestDomainAgainstDovecot(t *testing.T) {
	s := start(t)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	o := s.options()
	o.Store = st
	conc := newConcurrency(o.Concurrency, len(members))
	o.Log = slog.New(conc).With("test", t.Name())
	password := o.Password
	o.Password = func(u string) (string, bool) { conc.hold(); return password(u) }
	r, err := preflight.Domain(context.Background(), o, domain, members)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() {
		t.Error("report OK with blocking members")
	}
	want := map[string][]string{
		healthy:    nil,
		wrongOld:   {"old:login:credentials"},
		wrongNew:   {"new:login:credentials"},
		overQuota:  {"new:quota"},
		oversized:  {"new:oversize"},
		badFolder:  {"new:folder"},
		noPassword: {"old:no-password:warning"},
		noVault:    {"new:login:no-credential"},
		twoFactor:  {"old:login:two-factor"},
		imapOff:    {"new:login:protocol-disabled"},
	}
	got := map[string]*preflight.Member{}
	for _, m := range r.Members {
		got[m.User] = m
		if k := kinds(m); !slices.Equal(k, want[m.User]) {
			t.Errorf("%s: problems %q, want %q; %+v", m.User, k, want[m.User], m.Problems)
		}
		for _, p := range m.Problems {
			if p.Message == "" || p.Advice == "" {
				t.Errorf("%s: problem without message or advice: %+v", m.User, p)
			}
		}
	}
	if len(got) != len(members) {
		t.Fatalf("%d members reported, want %d", len(got), len(members))
	}
	var blocking []string
	for _, m := range r.Blocking() {
		blocking = append(blocking, m.User)
	}
	wantBlocking := []string{badFolder, oversized, wrongNew, wrongOld, noVault, overQuota, twoFactor, imapOff}
	slices.Sort(wantBlocking)
	if !slices.Equal(blocking, wantBlocking) {
		t.Errorf("blocking members %v, want %v", blocking, wantBlocking)
	}
	if v := got[noPassword].Verdict(); v != "warning" {
		t.Errorf("member without password: verdict %q, want warning", v)
	}

	h := got[healthy]
	if h.Verdict() != "ok" || h.OldLogin != preflight.LoginOK || h.NewLogin != preflight.LoginOK {
		t.Errorf("healthy member: %+v", h)
	}
	if h.Messages != 2 || h.QuotaSource != "GETQUOTAROOT" || h.QuotaLimit != quotaBytes || h.SizeLimit != sizeLimit || !h.FoldersChecked {
		t.Errorf("healthy member: messages %d, quota %d (%s), size limit %d, folders checked %v", h.Messages, h.QuotaLimit, h.QuotaSource, h.SizeLimit, h.FoldersChecked)
	}
	if !slices.Contains(h.FoldersCreated, "Archivio/2023") {
		t.Errorf("healthy member: folders created on new %q, want Archivio/2023", h.FoldersCreated)
	}
	if st, err := s.new.Dial(t, healthy).Status("Archivio/2023", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil || *st.NumMessages != 0 {
		t.Errorf("Archivio/2023 on new after preflight: %v, %v; want it there, empty", st, err)
	}

	q := got[overQuota]
	if q.Bytes <= quotaBytes || q.Messages != 7 {
		t.Errorf("over-quota member: %d messages, %d bytes; want 7 and more than %d", q.Messages, q.Bytes, quotaBytes)
	}
	big := got[oversized]
	if len(big.Oversize) != 1 || big.Oversize[0].Subject != "planimetrie" || big.Oversize[0].Size <= sizeLimit || big.Oversize[0].Folder != "INBOX" {
		t.Errorf("oversized member: %+v", big.Oversize)
	}
	f := got[badFolder]
	if len(f.FolderRefusals) != 1 || f.FolderRefusals[0].Folder != refused || f.FolderRefusals[0].Messages != 2 ||
		!strings.Contains(f.FolderRefusals[0].Reason, "Character not allowed in mailbox name: '.'") {
		t.Errorf("folder refusals: %+v", f.FolderRefusals)
	}
	for _, p := range got[twoFactor].Problems {
		if !strings.Contains(p.Advice, "app password") || !strings.Contains(p.Message, "Two-factor") {
			t.Errorf("two-factor member: %+v", p)
		}
	}
	if got[wrongOld].NewLogin != preflight.LoginOK || got[wrongOld].OldLogin != preflight.LoginRefused {
		t.Errorf("wrong old password: logins %s/%s, want refused/ok", got[wrongOld].OldLogin, got[wrongOld].NewLogin)
	}

	// One login attempt per member per provider: one connection to old for
	// each member with a password, one to new for each member with vault
	// credentials, one vault lookup per member.
	if n, want := s.oldCount.count(), len(members)-1; n != want {
		t.Errorf("%d connections to old, want %d (one per member with a password)", n, want)
	}
	if n, want := s.newCnt.count(), len(members)-1; n != want {
		t.Errorf("%d connections to new, want %d (one per member with vault credentials)", n, want)
	}
	for _, u := range members {
		if n := s.vault.calls[u]; n != 1 {
			t.Errorf("%s: %d vault lookups, want 1", u, n)
		}
	}

	if conc.maxSeen != o.Concurrency || conc.active != 0 || conc.started != len(members) {
		t.Errorf("members checked at once: at most %d (want %d, the limit); %d started, %d still active", conc.maxSeen, o.Concurrency, conc.started, conc.active)
	}

	var csvOut bytes.Buffer
	if err := r.WriteCSV(&csvOut); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&csvOut).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(members)+1 || !slices.Equal(recs[0], preflight.CSVHeader) {
		t.Fatalf("CSV: %d lines, header %q", len(recs), recs[0])
	}
	col := func(name string) int { return slices.Index(preflight.CSVHeader, name) }
	for _, rec := range recs[1:] {
		m := got[rec[0]]
		if rec[col("verdict")] != m.Verdict() || rec[col("old_login")] != m.OldLogin {
			t.Errorf("CSV row %q does not match %+v", rec, m)
		}
		if rec[0] == badFolder && !strings.Contains(rec[col("folders_refused")], refused+" -> "+refused) {
			t.Errorf("CSV folders_refused %q", rec[col("folders_refused")])
		}
	}
}

// TestHealthyOnly: a domain whose members are all fine is OK.
func TestHealthyOnly(t *testing.T) {
	s := start(t)
	r, err := preflight.Domain(context.Background(), s.options(), domain, []string{healthy, oversized})
	if err != nil {
		t.Fatal(err)
	}
	if b := r.Blocking(); r.OK() || len(b) != 1 || b[0].User != oversized {
		t.Fatalf("blocking %v, want only %s", b, oversized)
	}
	s.cfg.Providers["new"].MaxMessageSize = 0 // no limit known: nothing is too big
	if s.bs, err = backend.New(s.cfg, nil); err != nil {
		t.Fatal(err)
	}
	r, err = preflight.Domain(context.Background(), s.options(), domain, []string{healthy, oversized})
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		for _, m := range r.Members {
			t.Errorf("%s: %q", m.User, kinds(m))
		}
	}
}

// TestQuotaBytes: without QUOTA on new, the provider's quota_bytes is the
// quota, against what new's folders hold.
func TestQuotaBytes(t *testing.T) {
	s := startWith(t, 0, nil)
	s.cfg.Providers["new"].QuotaBytes = quotaBytes
	var err error
	if s.bs, err = backend.New(s.cfg, nil); err != nil {
		t.Fatal(err)
	}
	s.new.Deliver(t, healthy, "INBOX", message("già sul nuovo", 4000))
	r, err := preflight.Domain(context.Background(), s.options(), domain, []string{healthy, overQuota})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range r.Members {
		if m.QuotaSource != "quota_bytes" || m.QuotaLimit != quotaBytes {
			t.Errorf("%s: quota %d from %q, want %d from quota_bytes", m.User, m.QuotaLimit, m.QuotaSource, quotaBytes)
		}
		if want := []string{"new:quota"}; m.User == overQuota && !slices.Equal(kinds(m), want) || m.User == healthy && len(m.Problems) > 0 {
			t.Errorf("%s: problems %q", m.User, kinds(m))
		}
		if m.User == healthy && (m.QuotaUsed < 4000 || m.QuotaUsed > 5000) {
			t.Errorf("%s: %d bytes used on new, want the one message of about 4000", m.User, m.QuotaUsed)
		}
	}
}

// TestSpecialUseFolders: old's special-use folders map to new's by role,
// whatever each calls them, so none is created on new; a folder new lacks
// is created once, and a second run finds it there.
func TestSpecialUseFolders(t *testing.T) {
	s := startWith(t, quotaBytes, func(o *dovetest.Options) {
		o.Delimiter = "."
		o.SpecialUse = map[string]string{`\Sent`: "Posta inviata", `\Trash`: "Cestino", `\Drafts`: "Bozze", `\Junk`: "Spam"}
	})
	r, err := preflight.Domain(context.Background(), s.options(), domain, []string{healthy})
	if err != nil {
		t.Fatal(err)
	}
	m := r.Members[0]
	if !m.FoldersChecked || !slices.Equal(m.FoldersCreated, []string{"Archivio.2023"}) || len(m.Problems) > 0 {
		t.Errorf("folders created %q (want only Archivio.2023: the delimiter converted, the roles mapped), problems %q", m.FoldersCreated, kinds(m))
	}
	r, err = preflight.Domain(context.Background(), s.options(), domain, []string{healthy})
	if err != nil {
		t.Fatal(err)
	}
	if m := r.Members[0]; len(m.FoldersCreated) > 0 || !m.FoldersChecked {
		t.Errorf("second run created %q", m.FoldersCreated)
	}
}

// TestNoStoreInMigrating: without the store (the folder map) in state
// migrating, folders are not created on new: the member may have deleted
// one during the migration.
func TestNoStoreInMigrating(t *testing.T) {
	s := start(t)
	s.cfg.Domains[domain].State = config.StateMigrating
	r, err := preflight.Domain(context.Background(), s.options(), domain, []string{healthy})
	if err != nil {
		t.Fatal(err)
	}
	m := r.Members[0]
	if m.FoldersChecked || len(m.FoldersCreated) > 0 || !strings.Contains(r.FoldersNotChecked, "store") {
		t.Errorf("folders checked %v, created %q, report note %q", m.FoldersChecked, m.FoldersCreated, r.FoldersNotChecked)
	}
	_, err = s.new.Dial(t, healthy).Status("Archivio/2023", &imap.StatusOptions{NumMessages: true}).Wait()
	if err == nil {
		t.Error("Archivio/2023 was created on new")
	}
}

// TestDomainErrors: bad input is refused before anything is dialled.
func TestDomainErrors(t *testing.T) {
	cfg := &config.Config{
		Providers: map[string]*config.Provider{"old": {Name: "old", IMAP: "imaps://127.0.0.1:1"}, "new": {Name: "new", IMAP: "imaps://127.0.0.1:2"}},
		Domains: map[string]*config.Domain{
			domain:          {Name: domain, Old: "old", New: "new", State: config.StateOld},
			"altro.example": {Name: "altro.example", Old: "old", State: config.StateOld},
		},
	}
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	o := preflight.Options{Config: cfg, Backends: bs}
	for _, tc := range []struct {
		domain string
		users  []string
		want   error
	}{
		{"ignoto.example", nil, preflight.ErrUnknownDomain},
		{"altro.example", nil, preflight.ErrNoNewProvider},
		{domain, []string{"a@altro.example"}, preflight.ErrNotMember},
	} {
		if _, err := preflight.Domain(context.Background(), o, tc.domain, tc.users); !errors.Is(err, tc.want) {
			t.Errorf("Domain(%s, %v): %v, want %v", tc.domain, tc.users, err, tc.want)
		}
	}
}
