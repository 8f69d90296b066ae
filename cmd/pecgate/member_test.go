package main

// The member page against a whole gateway (startGateway, in process)
// fronting real Dovecot old and new in state migrating: the login is the
// IMAP login, throttled by the same limiter; the page shows the member's
// own progress as the back-fill engine writes it; vault credentials are
// stored only after the new provider accepted them, and then serve.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
)

const (
	mAnna  = "anna.rossi@example.org"
	mMarco = "marco.bianchi@example.org"
)

// memberGW is a running gateway with the member page on its own listener.
type memberGW struct {
	*e2eSetup
	gw       *gateway
	cfg      *config.Config
	old, new *dovetest.Server
	log      *lockedBuffer
}

// startMemberGW starts Dovecot old and new with mAnna and mMarco, seeds
// their old mailboxes (anna: 4 in INBOX, 2 in "Pratiche"; marco: 3 in
// "MarcoPrivato"), and a gateway in state migrating whose new provider
// logs in with newAuth ("master" or "vault"), with admin and member
// listeners and a vault key.
func startMemberGW(t *testing.T, newAuth string) *memberGW {
	t.Helper()
	dovetest.Require(t)
	old, nw := dovetest.StartPair(t, mAnna, mMarco)
	msg := func(i int, who string) []byte {
		return fmt.Appendf(nil, "From: ordine@example.org\r\nTo: %s\r\nSubject: Comunicazione %d\r\nMessage-ID: <m%d.%s>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0100\r\n\r\nTesto %d.\r\n", who, i, i, who, i)
	}
	old.Doveadm(t, "mailbox", "create", "-u", mAnna, "Pratiche")
	old.Doveadm(t, "mailbox", "create", "-u", mMarco, "MarcoPrivato")
	for i := range 4 {
		old.Deliver(t, mAnna, "INBOX", msg(i, mAnna))
	}
	for i := range 2 {
		old.Deliver(t, mAnna, "Pratiche", msg(10+i, mAnna))
	}
	for i := range 3 {
		old.Deliver(t, mMarco, "MarcoPrivato", msg(20+i, mMarco))
	}

	s, certFile, keyFile := newE2ESetup(t)
	addrs := freeAddrs(t, 2)
	tok := make([]byte, 16)
	rand.Read(tok)
	write := func(name, content string) string {
		p := filepath.Join(s.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tokenFile := write("admin.token", hex.EncodeToString(tok))
	keyBytes := make([]byte, 32)
	rand.Read(keyBytes)
	vaultKey := write("vault.key", hex.EncodeToString(keyBytes))
	newAuthTOML := "auth = \"vault\"\n"
	if newAuth == config.AuthMaster {
		masterFile := write("new.master", nw.MasterPassword+"\n")
		newAuthTOML = fmt.Sprintf("auth = \"master\"\nmaster_user = %q\nmaster_password_file = %q\nmaster_style = \"sasl\"\n", nw.MasterUser, masterFile)
	}
	cfgText := fmt.Sprintf(`[server]
hostname = "localhost"
imaps = %q
imap = %q
smtps = %q
submission = %q
admin = %q
member = %q

[tls]
cert = %q
key = %q

[store]
path = %q

[admin]
token_file = %q

[vault]
key_file = %q

[providers.old]
imap = "imaps://%s"
smtp = "smtps://%s"
auth = "passthrough"
ca = %q

[providers.new]
imap = "imaps://%s"
smtp = "smtps://%s"
ca = %q
%s
[domains."example.org"]
old = "old"
new = "new"
state = "migrating"
`, s.addrs["imaps"], s.addrs["imap"], s.addrs["smtps"], s.addrs["submission"], addrs[0], addrs[1],
		certFile, keyFile, filepath.Join(s.dir, "store"), tokenFile, vaultKey,
		old.IMAPSAddr, old.SubmissionAddr, old.CAFile,
		nw.IMAPSAddr, nw.SubmissionAddr, nw.CAFile, newAuthTOML)
	write("pecgate.toml", cfgText)
	cfg, err := config.Load(s.configPath)
	if err != nil {
		t.Fatal(err)
	}
	logBuf := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	gw, err := startGateway(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	m := &memberGW{e2eSetup: s, gw: gw, cfg: cfg, old: old, new: nw, log: logBuf}
	t.Cleanup(func() {
		gw.shutdown(5 * time.Second)
		cancel()
		if t.Failed() {
			t.Logf("gateway log:\n%s", logBuf)
		}
	})
	return m
}

// browser is a member's browser on the member listener.
type browser struct {
	t    *testing.T
	c    *http.Client
	base string
}

func (m *memberGW) browser(t *testing.T, base string) *browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: m.tlsConfig()}
	t.Cleanup(tr.CloseIdleConnections)
	return &browser{t: t, base: base, c: &http.Client{Jar: jar, Transport: tr, Timeout: e2eIOTimeout * 2}}
}

func (m *memberGW) memberURL() string { return "https://" + m.gw.addrs["member"] }

var memberCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) do(method, path string, form url.Values) (int, string) {
	b.t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodGet {
		resp, err = b.c.Get(b.base + path)
	} else {
		resp, err = b.c.PostForm(b.base+path, form)
	}
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp.StatusCode, html.UnescapeString(string(body))
}

// csrf returns the token of the page at /me.
func (b *browser) csrf() string {
	b.t.Helper()
	_, body := b.do(http.MethodGet, "/me", nil)
	m := memberCSRF.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatalf("no CSRF token on /me:\n%s", body)
	}
	return m[1]
}

func (b *browser) login(user, password string) (int, string) {
	b.t.Helper()
	return b.do(http.MethodPost, "/me/login", url.Values{"csrf": {b.csrf()}, "address": {user}, "password": {password}})
}

// waitPage polls /me until ok accepts the page.
func (b *browser) waitPage(what string, ok func(string) bool) string {
	b.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body := b.do(http.MethodGet, "/me", nil)
		if code == http.StatusOK && ok(body) {
			return body
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("the member page never showed %s:\n%s", what, body)
		}
		time.Sleep(100 * time.Millisecond) // polling the page, not synchronising
	}
}

func imapLogin(m *memberGW, user, password string) error {
	c, err := imapclient.DialTLS(m.addrs["imaps"], &imapclient.Options{TLSConfig: m.tlsConfig()})
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Login(user, password).Wait()
}

func TestMemberPage(t *testing.T) {
	m := startMemberGW(t, config.AuthMaster)
	annaPW, marcoPW := m.old.Password(mAnna), m.old.Password(mMarco)

	// Marco reads his mail through the gateway: his copy runs too.
	if err := imapLogin(m, mMarco, marcoPW); err != nil {
		t.Fatal(err)
	}

	b := m.browser(t, m.memberURL())
	code, body := b.login(mAnna, m.new.Password(mAnna)) // new's, not the one anna uses
	if code != http.StatusUnauthorized || !strings.Contains(body, "Wrong address or password") {
		t.Fatalf("login with a wrong password: %d\n%s", code, body)
	}
	code, body = b.login(mAnna, annaPW)
	if code != http.StatusOK || !strings.Contains(body, mAnna) {
		t.Fatalf("login with anna's password: %d\n%s", code, body)
	}
	// Logging in here gave the back-fill anna's password: her 6 messages
	// get copied, and the page shows it.
	body = b.waitPage("6 of 6 messages copied", func(s string) bool {
		return strings.Contains(s, `<span id="done">6</span> / <span id="total">6</span>`)
	})
	for _, want := range []string{"Tutta la sua posta è stata copiata", "All your mail has been copied", "Pratiche", "INBOX", "100%"} {
		if !strings.Contains(body, want) {
			t.Errorf("anna's page lacks %q", want)
		}
	}
	folders := regexp.MustCompile(`<tr><td>([^<]+?)(?: <small>.*?)?</td><td class="num">(\d+ / \d+)</td></tr>`).FindAllStringSubmatch(body, -1)
	got := map[string]string{}
	for _, f := range folders {
		got[f[1]] = f[2]
	}
	if got["INBOX"] != "4 / 4" || got["Pratiche"] != "2 / 2" {
		t.Errorf("folders on the page %v, want INBOX 4 / 4 and Pratiche 2 / 2 copied", got)
	}
	// The copy is real: new holds anna's 6 messages.
	nc := m.new.Dial(t, mAnna)
	n := 0
	for _, mb := range []string{"INBOX", "Pratiche"} {
		st, err := nc.Status(mb, &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		n += int(*st.NumMessages)
	}
	if n != 6 {
		t.Errorf("new holds %d of anna's messages, want 6", n)
	}
	// Only anna's: wait for marco's copy to be recorded, then look again.
	mb := m.browser(t, m.memberURL())
	if code, _ := mb.login(mMarco, marcoPW); code != http.StatusOK {
		t.Fatalf("marco's login: %d", code)
	}
	mb.waitPage("marco's 3 messages copied", func(s string) bool {
		return strings.Contains(s, `<span id="total">3</span>`) && strings.Contains(s, "MarcoPrivato")
	})
	_, body = b.do(http.MethodGet, "/me", nil)
	_, body2 := b.do(http.MethodGet, "/me?user="+url.QueryEscape(mMarco), nil)
	for _, page := range []string{body, body2} {
		for _, leak := range []string{mMarco, "MarcoPrivato", `<span id="total">3</span>`} {
			if strings.Contains(page, leak) {
				t.Errorf("anna's page shows marco's %q", leak)
			}
		}
	}

	// The member listener serves /me alone; the admin listener has it too.
	for path, want := range map[string]int{"/api/v1/domains": 404, "/healthz": 404, "/metrics": 404, "/me": 200} {
		if code, _ := b.do(http.MethodGet, path, nil); code != want {
			t.Errorf("member listener GET %s: %d, want %d", path, code, want)
		}
	}
	ab := &browser{t: t, base: "http://" + m.gw.addrs["admin"], c: &http.Client{Timeout: e2eIOTimeout}}
	if code, body := ab.do(http.MethodGet, "/me", nil); code != http.StatusOK || !strings.Contains(body, `action="/me/login"`) {
		t.Errorf("admin listener GET /me: %d", code)
	}

	// Throttled like IMAP, in one limiter: 5 wrong passwords on the page,
	// then the right one is refused on the page and over IMAP alike.
	tb := m.browser(t, m.memberURL())
	for i := range 5 {
		if code, _ := tb.login(mMarco, fmt.Sprintf("wrong-%d", i)); code != http.StatusUnauthorized {
			t.Fatalf("wrong password %d: %d", i, code)
		}
	}
	code, body = tb.login(mMarco, marcoPW)
	if code != http.StatusTooManyRequests || !strings.Contains(body, "wait at least 5 minutes") {
		t.Fatalf("right password after 5 failures on the page: %d\n%s", code, body)
	}
	err := imapLogin(m, mMarco, marcoPW)
	var ie *imap.Error
	if !errors.As(err, &ie) || !strings.Contains(ie.Text, "Too many") {
		t.Fatalf("IMAP LOGIN with the right password after 5 failures on the page: %v, want throttled", err)
	}
}

func TestMemberPageVault(t *testing.T) {
	m := startMemberGW(t, config.AuthVault)
	annaPW, annaNewPW := m.old.Password(mAnna), m.new.Password(mAnna)
	vault, err := store.OpenVault(m.cfg.Vault.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	stored := func(user string) (string, string, error) {
		var u, p string
		err := m.gw.store.View(context.Background(), func(tx store.Tx) error {
			var err error
			u, p, err = vault.Get(tx, "new", user)
			return err
		})
		return u, p, err
	}

	// No credentials yet: IMAP cannot reach new, the page lets anna in.
	if err := imapLogin(m, mAnna, annaPW); err == nil {
		t.Fatal("IMAP LOGIN succeeded without vault credentials for new")
	}
	b := m.browser(t, m.memberURL())
	code, body := b.login(mAnna, annaPW)
	if code != http.StatusOK || !strings.Contains(body, `id="needs-credential"`) || !strings.Contains(body, `action="/me/credential"`) {
		t.Fatalf("login without vault credentials: %d\n%s", code, body)
	}
	// A wrong new-provider password: refused by new, nothing stored.
	code, body = b.do(http.MethodPost, "/me/credential", url.Values{"csrf": {b.csrf()}, "username": {mAnna}, "password": {annaPW}})
	if code != http.StatusBadRequest || !strings.Contains(body, "nothing was stored") {
		t.Fatalf("wrong new-provider password: %d\n%s", code, body)
	}
	if _, _, err := stored(mAnna); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after a refused credential the vault holds %v, want nothing", err)
	}
	// The right one, with another member named in the form: stored for
	// anna alone.
	code, body = b.do(http.MethodPost, "/me/credential", url.Values{"csrf": {b.csrf()}, "username": {mAnna}, "password": {annaNewPW}, "address": {mMarco}})
	if code != http.StatusOK || !strings.Contains(body, "stored encrypted") {
		t.Fatalf("right new-provider password: %d\n%s", code, body)
	}
	if u, p, err := stored(mAnna); err != nil || u != mAnna || p != annaNewPW {
		t.Fatalf("vault after saving: %q %v, want anna's new credentials", u, err)
	}
	if _, _, err := stored(mMarco); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("marco's vault entry: %v, want none", err)
	}
	// Now they serve: an IMAP login through the gateway logs in to new
	// with them (state migrating logs in to both sides).
	if err := imapLogin(m, mAnna, annaPW); err != nil {
		t.Fatalf("IMAP LOGIN after the member set the vault credentials: %v", err)
	}
	for _, line := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(line, annaNewPW) || strings.Contains(line, annaPW) {
			t.Fatalf("a password in the gateway's log: %s", line)
		}
	}
}
