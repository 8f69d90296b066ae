package admin

import (
	"context"
	"encoding/base64"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

const memberConfig = `
[server]
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = ""

[providers.aruba]
imap = "imaps://old.test"
smtp = "smtps://old.test"

[providers.infocert]
imap = "imaps://new.test"
smtp = "smtps://new.test"
auth = "vault"

[vault]
key_file = "/nonexistent/vault.key"

[domains."pec.ordine.example"]
old = "aruba"
new = "infocert"
state = "migrating"

[domains."solo.example"]
old = "aruba"
`

const (
	anna  = "anna.rossi@pec.ordine.example"
	marco = "marco.bianchi@pec.ordine.example"
	sara  = "sara.neri@solo.example"
)

// fakeAuth stands for the gateway's login check: passwords by user, and a
// limiter that refuses a user after limit failures.
type fakeAuth struct {
	mu        gosync.Mutex
	passwords map[string]string
	newCred   map[string]bool // users whose vault credentials are missing
	fails     map[string]int
	limit     int
	down      bool
	calls     []string // "ip user"
}

func (a *fakeAuth) CheckLogin(ctx context.Context, ip, user, password string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, ip+" "+user)
	u := strings.ToLower(user)
	switch {
	case a.fails[u] >= a.limit:
		return ErrMemberThrottled
	case a.down:
		return ErrMemberUnavailable
	case a.passwords[u] == "" || a.passwords[u] != password:
		a.fails[u]++
		return ErrMemberRefused
	}
	a.fails[u] = 0
	if a.newCred[u] {
		return ErrMemberNewCredential
	}
	return nil
}

func (a *fakeAuth) callCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.calls)
}

// fakeCreds stands for the vault: the new provider accepts one username
// and password per user; stored is what was saved.
type fakeCreds struct {
	mu     gosync.Mutex
	vault  map[string]bool
	accept map[string][2]string
	stored map[string][2]string
	tries  int
}

func (c *fakeCreds) NewProviderUsesVault(user string) bool { return c.vault[strings.ToLower(user)] }

func (c *fakeCreds) SetCredential(ctx context.Context, ip, user, username, password string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tries++
	if c.tries > 5 {
		return ErrMemberThrottled
	}
	if c.accept[user] != [2]string{username, password} {
		return ErrMemberRefused
	}
	c.stored[user] = [2]string{username, password}
	return nil
}

func (c *fakeCreds) get(user string) ([2]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.stored[user]
	return v, ok
}

type memberFixture struct {
	srv   *httptest.Server
	page  *memberPage
	auth  *fakeAuth
	creds *fakeCreds
	st    store.Store
}

// newMemberFixture serves the member page on a bbolt store holding the
// progress, folders and UID maps of anna and marco.
func newMemberFixture(t *testing.T, tlsServer bool) *memberFixture {
	t.Helper()
	cfg, err := config.Parse([]byte(memberConfig), "member.toml")
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
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	err = db.Update(context.Background(), func(tx store.Tx) error {
		for _, p := range []*store.Progress{
			{User: anna, State: PhaseCopying, MessagesDone: 1234, MessagesTotal: 5678, BytesDone: 1 << 20, BytesTotal: 9 << 20, Updated: at,
				Errors: []store.ProgressError{{Kind: "oversize", Message: "message of 120 MB over the limit", Mailbox: "Archivio/&AMg- 2024", V: 7, At: at}}},
			{User: marco, State: PhaseQuota, MessagesDone: 97531, MessagesTotal: 86420, Updated: at,
				Errors: []store.ProgressError{{Kind: "quota", Message: "marco-secret-detail", At: at}}},
		} {
			if err := store.PutProgress(tx, p); err != nil {
				return err
			}
		}
		if err := store.PutFolderMap(tx, anna, &store.FolderMap{OldDelim: "/", NewDelim: "/", Folders: []store.Folder{
			{Old: "INBOX", New: "INBOX"}, {Old: "Sent", New: "Inviata", SpecialUse: `\Sent`}, {Old: "Archivio/&AMg- 2024", New: "Archivio/&AMg- 2024"},
		}}); err != nil {
			return err
		}
		if err := store.PutFolderMap(tx, marco, &store.FolderMap{Folders: []store.Folder{{Old: "INBOX"}, {Old: "Marco-Private-Folder"}}}); err != nil {
			return err
		}
		m := store.NewMap(1, 101) // old UIDs 1..100 before the freeze
		for v := store.UID(1); v <= 40; v++ {
			if err := m.SetNew(v, 500+v); err != nil {
				return err
			}
		}
		m.Expunge(3)
		return store.PutMap(tx, anna, "INBOX", m)
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &memberFixture{
		auth: &fakeAuth{passwords: map[string]string{anna: "anna-pw", marco: "marco-pw", sara: "sara-pw"},
			newCred: map[string]bool{}, fails: map[string]int{}, limit: 3},
		creds: &fakeCreds{vault: map[string]bool{anna: true, marco: true}, stored: map[string][2]string{},
			accept: map[string][2]string{anna: {"IC-12345", "new-secret"}, marco: {"IC-999", "marco-new"}}},
		st: db,
	}
	s := &server{Options: Options{Router: r, Store: db, Log: slog.New(slog.DiscardHandler), MemberAuth: f.auth, Credentials: f.creds}, rates: newRates()}
	f.page = newMemberPage(s)
	mux := http.NewServeMux()
	f.page.routes(mux)
	if tlsServer {
		f.srv = httptest.NewTLSServer(mux)
	} else {
		f.srv = httptest.NewServer(mux)
	}
	t.Cleanup(f.srv.Close)
	return f
}

// client is a browser: a cookie jar, redirects followed.
func (f *memberFixture) client(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := *f.srv.Client()
	c.Jar = jar
	return &c
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func post(t *testing.T, c *http.Client, u string, form url.Values) (int, string) {
	t.Helper()
	resp, err := c.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", body)
	}
	return m[1]
}

// login opens /me and logs in; it returns the answer to the login.
func (f *memberFixture) login(t *testing.T, c *http.Client, user, password string) (int, string) {
	t.Helper()
	code, body := get(t, c, f.srv.URL+"/me")
	if code != http.StatusOK || !strings.Contains(body, `action="/me/login"`) {
		t.Fatalf("GET /me before login: %d\n%s", code, body)
	}
	return post(t, c, f.srv.URL+"/me/login", url.Values{"csrf": {csrfOf(t, body)}, "address": {user}, "password": {password}})
}

func mustContain(t *testing.T, what, body string, subs ...string) {
	t.Helper()
	body = html.UnescapeString(body)
	for _, s := range subs {
		if !strings.Contains(body, s) {
			t.Errorf("%s: page lacks %q", what, s)
		}
	}
}

func mustNotContain(t *testing.T, what, body string, subs ...string) {
	t.Helper()
	body = html.UnescapeString(body)
	for _, s := range subs {
		if strings.Contains(body, s) {
			t.Errorf("%s: page shows %q", what, s)
		}
	}
}

// marcoMarks are what of marco's records must never reach anna.
var marcoMarks = []string{marco, "97531", "86420", "marco-secret-detail", "Marco-Private-Folder"}

func TestMemberLoginShowsOwnProgress(t *testing.T) {
	f := newMemberFixture(t, false)
	c := f.client(t)
	code, body := f.login(t, c, "  Anna.Rossi@PEC.ordine.example ", "anna-pw")
	if code != http.StatusOK {
		t.Fatalf("login: %d\n%s", code, body)
	}
	mustContain(t, "anna's page", body,
		anna, `<span id="done">1234</span> / <span id="total">5678</span>`, "21%",
		"La sua posta viene copiata ora", "Your mail is being copied",
		"nulla viene cancellato dal vecchio gestore", // the old mailbox is only read
		"Archivio/È 2024", "posta inviata", "sent mail",
		"<td class=\"num\">39</td>", // 40 copied to INBOX, one expunged since
		"<td class=\"num\">—</td>",  // Sent: not started
		"più grande di quanto il nuovo gestore accetti", "larger than the new provider accepts",
		`action="/me/credential"`, `action="/me/logout"`)
	mustNotContain(t, "anna's page", body, marcoMarks...)
	if i, j := strings.Index(body, "<td>INBOX"), strings.Index(body, "<td>Archivio"); i < 0 || j < 0 || i > j {
		t.Errorf("INBOX is not the first folder")
	}
	// The address comes from the session, never from the request.
	for _, u := range []string{"/me?user=" + url.QueryEscape(marco), "/me?address=" + url.QueryEscape(marco)} {
		_, body := get(t, c, f.srv.URL+u)
		mustContain(t, u, body, anna)
		mustNotContain(t, u, body, marcoMarks...)
	}
	if got := f.auth.calls[0]; got != "127.0.0.1 Anna.Rossi@PEC.ordine.example" {
		t.Errorf("CheckLogin got %q, want the client's IP and the address trimmed", got)
	}
}

func TestMemberLoginRefusals(t *testing.T) {
	f := newMemberFixture(t, false)
	c := f.client(t)
	var bodies []string
	for _, tc := range []struct{ user, pw string }{{anna, "wrong"}, {"nobody@elsewhere.example", "x"}} {
		code, body := f.login(t, c, tc.user, tc.pw)
		if code != http.StatusUnauthorized {
			t.Fatalf("%s with a wrong password: %d", tc.user, code)
		}
		mustContain(t, "refused", body, "Indirizzo o password non corretti", "Wrong address or password", `action="/me/login"`)
		mustNotContain(t, "refused", body, "1234", `action="/me/logout"`)
		bodies = append(bodies, csrfRE.ReplaceAllString(strings.ReplaceAll(body, tc.user, "ADDR"), ""))
	}
	if bodies[0] != bodies[1] {
		t.Error("a wrong password and an unknown address answer differently (an oracle)")
	}
	// Past the limiter's threshold even the right password is refused.
	for range 2 {
		f.login(t, c, anna, "wrong")
	}
	code, body := f.login(t, c, anna, "anna-pw")
	if code != http.StatusTooManyRequests {
		t.Fatalf("right password after 3 failures: %d", code)
	}
	mustContain(t, "throttled", body, "attenda almeno 5 minuti", "wait at least 5 minutes")
	mustNotContain(t, "throttled", body, "1234")

	f.auth.down = true
	code, body = f.login(t, c, marco, "marco-pw")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("provider down: %d", code)
	}
	mustContain(t, "unavailable", body, "Riprovi tra qualche minuto", "try again in a few minutes")

	code, body = f.login(t, c, marco, "")
	if code != http.StatusBadRequest {
		t.Fatalf("empty password: %d", code)
	}
	mustContain(t, "empty", body, "Scriva l'indirizzo PEC completo")
}

func TestMemberCSRFAndSession(t *testing.T) {
	f := newMemberFixture(t, false)
	c := f.client(t)
	n := f.auth.callCount()
	// No token, a wrong token, no cookie: nothing is checked.
	get(t, c, f.srv.URL+"/me")
	for name, form := range map[string]url.Values{
		"no token":    {"address": {anna}, "password": {"anna-pw"}},
		"wrong token": {"csrf": {"AAAA"}, "address": {anna}, "password": {"anna-pw"}},
	} {
		code, body := post(t, c, f.srv.URL+"/me/login", form)
		if code != http.StatusForbidden {
			t.Errorf("%s: %d", name, code)
		}
		mustContain(t, name, body, "La sessione è scaduta")
	}
	_, body := get(t, c, f.srv.URL+"/me")
	token := csrfOf(t, body)
	bare := &http.Client{} // a token stolen, without the cookie
	if code, _ := post(t, bare, f.srv.URL+"/me/login", url.Values{"csrf": {token}, "address": {anna}, "password": {"anna-pw"}}); code != http.StatusForbidden {
		t.Errorf("token without its cookie: %d", code)
	}
	if f.auth.callCount() != n {
		t.Fatalf("CheckLogin called for a request without a valid CSRF token")
	}

	code, body := post(t, c, f.srv.URL+"/me/login", url.Values{"csrf": {token}, "address": {anna}, "password": {"anna-pw"}})
	if code != http.StatusOK || !strings.Contains(body, "1234") {
		t.Fatalf("login: %d", code)
	}
	u, _ := url.Parse(f.srv.URL + "/me")
	var cookie *http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == memberCookie {
			cookie = ck
		}
	}
	if cookie == nil {
		t.Fatal("no session cookie after login")
	}
	// The token of the anonymous session is not the logged-in session's.
	if newToken := csrfOf(t, body); newToken == token {
		t.Error("the session id was not renewed at login")
	}

	withCookie := func(value string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, f.srv.URL+"/me", nil)
		req.AddCookie(&http.Cookie{Name: memberCookie, Value: value})
		resp, err := f.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if _, body := withCookie(cookie.Value); !strings.Contains(body, "1234") {
		t.Fatal("the session cookie replayed by another client does not show the page: the test's cookie is wrong")
	}
	// Tampered cookies: the address swapped for marco's (signature kept,
	// or re-signed with another key), or cut.
	b64, sig, _ := strings.Cut(cookie.Value, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(b64)
	swapped := append(payload[:41:41], marco...)
	swappedB64 := base64.RawURLEncoding.EncodeToString(swapped)
	other := newMemberPage(f.page.s)
	ses := f.page.session(&http.Request{Header: http.Header{"Cookie": {memberCookie + "=" + cookie.Value}}})
	forged := other.encode(&session{exp: ses.exp, id: ses.id, user: marco})
	for name, v := range map[string]string{
		"address swapped":    swappedB64 + "." + sig,
		"signed by another":  forged,
		"no signature":       swappedB64,
		"signature appended": swappedB64 + "." + sig + "A",
		"empty":              "",
	} {
		code, body := withCookie(v)
		if code != http.StatusOK || !strings.Contains(body, `action="/me/login"`) {
			t.Errorf("%s: %d, want the login form", name, code)
		}
		mustNotContain(t, name, body, marcoMarks...)
		mustNotContain(t, name, body, "1234")
	}

	// Expired: 31 minutes later the cookie is worth nothing.
	f.page.now = func() time.Time { return time.Now().Add(memberSessionTTL + time.Minute) }
	if _, body := withCookie(cookie.Value); !strings.Contains(body, `action="/me/login"`) {
		t.Error("an expired session still shows the page")
	}
	f.page.now = time.Now

	// Logout revokes the session: the old cookie shows the form.
	_, body = get(t, c, f.srv.URL+"/me")
	code, body = post(t, c, f.srv.URL+"/me/logout", url.Values{"csrf": {csrfOf(t, body)}})
	if code != http.StatusOK || !strings.Contains(body, `action="/me/login"`) {
		t.Fatalf("logout: %d", code)
	}
	if _, body := withCookie(cookie.Value); !strings.Contains(body, `action="/me/login"`) {
		t.Error("the session's cookie still works after logout")
	}
}

func TestMemberCookieAttributes(t *testing.T) {
	for _, tlsServer := range []bool{false, true} {
		f := newMemberFixture(t, tlsServer)
		resp, err := f.srv.Client().Get(f.srv.URL + "/me")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var ck *http.Cookie
		for _, c := range resp.Cookies() {
			if c.Name == memberCookie {
				ck = c
			}
		}
		if ck == nil {
			t.Fatal("GET /me set no session cookie (the login form's CSRF needs one)")
		}
		if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/me" || ck.MaxAge <= 0 || ck.MaxAge > int(memberSessionTTL/time.Second) {
			t.Errorf("cookie %+v: want HttpOnly, SameSite=Strict, Path=/me, Max-Age within 30 minutes", ck)
		}
		if ck.Secure != tlsServer {
			t.Errorf("over TLS %v: Secure = %v", tlsServer, ck.Secure)
		}
		for _, h := range []string{"Content-Security-Policy", "X-Frame-Options"} {
			if resp.Header.Get(h) == "" {
				t.Errorf("no %s header", h)
			}
		}
	}
}

func TestMemberCredential(t *testing.T) {
	f := newMemberFixture(t, false)
	f.auth.newCred[anna] = true
	c := f.client(t)
	code, body := f.login(t, c, anna, "anna-pw")
	if code != http.StatusOK {
		t.Fatalf("login with the vault's credentials missing: %d, want the page", code)
	}
	mustContain(t, "needs credentials", body, `id="needs-credential"`, `action="/me/credential"`)
	token := csrfOf(t, body)

	set := func(form url.Values) (int, string) {
		form.Set("csrf", token)
		return post(t, c, f.srv.URL+"/me/credential", form)
	}
	code, body = set(url.Values{"username": {"IC-12345"}, "password": {"wrong"}})
	if code != http.StatusBadRequest {
		t.Fatalf("wrong new-provider password: %d", code)
	}
	mustContain(t, "refused credentials", body, "non è stato salvato nulla", "nothing was stored")
	if _, ok := f.creds.get(anna); ok {
		t.Fatal("refused credentials were stored")
	}
	if code, _ := set(url.Values{"username": {""}, "password": {"x"}}); code != http.StatusBadRequest {
		t.Errorf("empty username: %d", code)
	}
	// Without the token nothing is tried.
	tries := f.creds.tries
	if code, _ := post(t, c, f.srv.URL+"/me/credential", url.Values{"username": {"IC-12345"}, "password": {"new-secret"}}); code != http.StatusForbidden {
		t.Errorf("credential without CSRF token: %d", code)
	}
	if f.creds.tries != tries {
		t.Error("SetCredential called without a CSRF token")
	}
	// A user named in the form is ignored: the session's is used.
	code, body = set(url.Values{"username": {"IC-12345"}, "password": {"new-secret"}, "user": {marco}, "address": {marco}})
	if code != http.StatusOK {
		t.Fatalf("right credentials: %d\n%s", code, body)
	}
	mustContain(t, "saved", body, "salvate in modo cifrato", "stored encrypted")
	mustNotContain(t, "saved", body, `id="needs-credential"`)
	if got, ok := f.creds.get(anna); !ok || got != [2]string{"IC-12345", "new-secret"} {
		t.Fatalf("stored %v %v, want anna's", got, ok)
	}
	if _, ok := f.creds.get(marco); ok {
		t.Fatal("credentials stored for another member")
	}
	// The notice is gone on the next visit too (the session was reissued).
	if _, body := get(t, c, f.srv.URL+"/me"); strings.Contains(body, `id="needs-credential"`) {
		t.Error("the missing-credentials notice is still shown after saving them")
	}
	for range 5 {
		set(url.Values{"username": {"x"}, "password": {"y"}})
	}
	code, body = set(url.Values{"username": {"IC-12345"}, "password": {"new-secret"}})
	if code != http.StatusTooManyRequests {
		t.Fatalf("after many refusals: %d", code)
	}
	mustContain(t, "throttled", body, "attenda almeno 5 minuti")

	// A member whose new provider does not use the vault sees no form and
	// cannot post one.
	c2 := f.client(t)
	_, body = f.login(t, c2, sara, "sara-pw")
	mustNotContain(t, "sara", body, `action="/me/credential"`)
	mustContain(t, "sara", body, "non è ancora in trasloco")
	tries = f.creds.tries
	code, _ = post(t, c2, f.srv.URL+"/me/credential", url.Values{"csrf": {csrfOf(t, body)}, "username": {"a"}, "password": {"b"}})
	if code != http.StatusNotFound || f.creds.tries != tries {
		t.Errorf("credential for a non-vault member: %d, tries %d -> %d", code, tries, f.creds.tries)
	}
}

// TestMemberHandlers: the member page through admin.New and NewMember;
// NewMember serves nothing else.
func TestMemberHandlers(t *testing.T) {
	cfg, err := config.Parse([]byte(memberConfig), "member.toml")
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r, err := store.NewRouter(context.Background(), cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	auth := &fakeAuth{passwords: map[string]string{anna: "anna-pw"}, fails: map[string]int{}, limit: 3}
	opts := Options{Router: r, Token: "tok", Store: db, MemberAuth: auth}

	adm := httptest.NewServer(New(opts))
	defer adm.Close()
	mem := httptest.NewServer(NewMember(opts))
	defer mem.Close()
	none := httptest.NewServer(New(Options{Router: r, Token: "tok"}))
	defer none.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		srv    *httptest.Server
		path   string
		status int
		has    string
	}{
		{adm, "/me", 200, `action="/me/login"`},
		{adm, "/api/v1/domains", 401, "bearer token"},
		{mem, "/me", 200, `action="/me/login"`},
		{mem, "/", 303, ""},
		{mem, "/api/v1/domains", 404, "Pagina inesistente"},
		{mem, "/healthz", 404, "Pagina inesistente"},
		{mem, "/metrics", 404, "Pagina inesistente"},
		{mem, "/me/nothing", 404, "Pagina inesistente"},
		{mem, "/me/login", 405, "non consentita"},
		{none, "/me", 404, "no such path"},
	} {
		resp, err := noRedirect.Get(tc.srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.has) {
			t.Errorf("GET %s: %d, want %d with %q\n%s", tc.path, resp.StatusCode, tc.status, tc.has, b)
		}
	}
}

func TestETAText(t *testing.T) {
	for d, want := range map[time.Duration]string{
		10 * time.Second:             "about a minute",
		90 * time.Second:             "about 2 minutes",
		119 * time.Minute:            "about 119 minutes",
		150 * time.Minute:            "about 3 hours",
		3*24*time.Hour + time.Minute: "about 3 days",
	} {
		if got := etaText(d).EN; got != want {
			t.Errorf("etaText(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestMemberInsecure: over plain HTTP from another machine the page shows
// no form and takes no password.
func TestMemberInsecure(t *testing.T) {
	f := newMemberFixture(t, false)
	mux := http.NewServeMux()
	f.page.routes(mux)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/me"}, {"POST", "/me/login"}, {"POST", "/me/credential"}, {"POST", "/me/logout"},
	} {
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader("address="+url.QueryEscape(anna)+"&password=anna-pw"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.RemoteAddr = "192.0.2.7:40000"
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		body := rec.Body.String()
		if rec.Code != http.StatusForbidden || strings.Contains(body, "<form") {
			t.Errorf("%s %s from another machine in clear: %d, form shown %v", tc.method, tc.path, rec.Code, strings.Contains(body, "<form"))
		}
		mustContain(t, tc.path, body, "https")
		mustNotContain(t, tc.path, body, `href="/me"`) // back to this very page: a loop
	}
	if n := f.auth.callCount(); n != 0 {
		t.Errorf("CheckLogin called %d times for clear-text requests", n)
	}
}

// TestMemberCredentialForm: a member whose copy waits for the new
// provider's credentials is told, in the problem list, to enter them in
// the form, which is open; a member whose copy runs sees the form folded
// (nothing more to do), open again after a refusal, to retry.
func TestMemberCredentialForm(t *testing.T) {
	f := newMemberFixture(t, false)
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	err := f.st.Update(context.Background(), func(tx store.Tx) error {
		return store.PutProgress(tx, &store.Progress{User: marco, State: PhaseFailed, Updated: at,
			Errors: []store.ProgressError{{Kind: "no-credential", Message: "infocert vault login: no vault credentials", At: at},
				{Kind: "needs-login", Message: "copy waits", At: at}, {Kind: "something-new", Message: "?", At: at}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	c := f.client(t)
	_, body := f.login(t, c, marco, "marco-pw")
	mustContain(t, "marco without credentials", body,
		"Mancano le credenziali del nuovo gestore", "The new provider's credentials are missing",
		"nel modulo", `id="credential-box"`, `action="/me/credential"`,
		"La copia è ferma: servono le credenziali del nuovo gestore", "The copy is stopped: it needs the new provider's credentials",
		"non è ancora noto") // no total yet: not "shortly"
	mustNotContain(t, "marco without credentials", body, `id="credential-change"`, "retries by itself",
		"gateway") // a word for IT staff, not for a doctor or a nurse

	c = f.client(t)
	_, body = f.login(t, c, anna, "anna-pw")
	mustContain(t, "anna, copying", body, `id="credential-change"`, "Cambiare le credenziali", `action="/me/credential"`)
	mustNotContain(t, "anna, copying", body, `id="credential-box"`)
	code, body := post(t, c, f.srv.URL+"/me/credential", url.Values{"csrf": {csrfOf(t, body)}, "username": {"x"}, "password": {"y"}})
	if code != http.StatusBadRequest {
		t.Fatalf("refused credentials: %d", code)
	}
	mustContain(t, "anna, refused", body, `id="credential-box"`, "non è stato salvato nulla")
}

// TestMemberEscapesFolderAndProviderText: folder names (the member's own
// choice) and provider error texts are shown as text, never as markup.
func TestMemberEscapesFolderAndProviderText(t *testing.T) {
	f := newMemberFixture(t, false)
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	err := f.st.Update(context.Background(), func(tx store.Tx) error {
		if err := store.PutFolderMap(tx, marco, &store.FolderMap{Folders: []store.Folder{{Old: "INBOX"}, {Old: `"><img src=x onerror=alert(1)>`}}}); err != nil {
			return err
		}
		return store.PutProgress(tx, &store.Progress{User: marco, State: PhaseFailed, Updated: at,
			Errors: []store.ProgressError{{Kind: "upstream", Message: "NO <script>alert(2)</script>", Mailbox: `<svg onload=alert(3)>`, At: at}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	c := f.client(t)
	_, body := f.login(t, c, marco, "marco-pw")
	if !strings.Contains(body, "&lt;script&gt;alert(2)&lt;/script&gt;") || !strings.Contains(body, "&lt;img src=x onerror=alert(1)&gt;") {
		t.Fatalf("the folder or the provider's text is not on the page, escaped:\n%s", body)
	}
	for _, bad := range []string{"<script>alert", "<img src=x", "<svg onload"} {
		if strings.Contains(body, bad) {
			t.Errorf("the page carries %q as markup", bad)
		}
	}
}

// TestMemberCredentialRedirects: saving the credentials answers a
// redirect to /me (post/redirect/get), which says once that they were
// saved: reloading the page neither sends them again nor repeats it.
func TestMemberCredentialRedirects(t *testing.T) {
	f := newMemberFixture(t, false)
	c := f.client(t)
	_, body := f.login(t, c, anna, "anna-pw")
	noFollow := *c
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noFollow.PostForm(f.srv.URL+"/me/credential", url.Values{"csrf": {csrfOf(t, body)}, "username": {"IC-12345"}, "password": {"new-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/me" {
		t.Fatalf("right credentials: %d Location %q, want 303 to /me", resp.StatusCode, resp.Header.Get("Location"))
	}
	tries := f.creds.tries
	_, body = get(t, c, f.srv.URL+"/me")
	mustContain(t, "after saving", body, "salvate in modo cifrato", "accepted the credentials")
	_, body = get(t, c, f.srv.URL+"/me") // a reload
	mustNotContain(t, "reloaded", body, "salvate in modo cifrato", "accepted the credentials")
	if f.creds.tries != tries {
		t.Errorf("the page tried the credentials %d more times after saving", f.creds.tries-tries)
	}
}
