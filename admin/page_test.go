package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

const pageDomain = "pec.ordine.example"

// pageFixture serves the admin handler with a store, on a real socket.
type pageFixture struct {
	srv    *httptest.Server
	db     *bolt.DB
	router *store.Router
	log    *lockedBuffer
}

func newPageFixture(t *testing.T) *pageFixture {
	t.Helper()
	// infocert, the new provider, wants app passwords with two-factor
	// login, as the aruba preset does.
	conf := strings.Replace(testConfig, "smtp = \"smtps://new.test\"\n", "smtp = \"smtps://new.test\"\napp_passwords = true\n", 1)
	cfg, err := config.Parse([]byte(conf), "admin.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Providers["infocert"].AppPasswords {
		t.Fatal("testConfig changed: infocert has no app_passwords")
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
	f := &pageFixture{db: db, router: r, log: &lockedBuffer{}}
	h := admin.NewHistory(admin.HistoryOptions{Router: r, Store: db})
	f.srv = httptest.NewServer(admin.New(admin.Options{
		Router: r, Token: token, Store: db, History: h, Config: cfg,
		Log: slog.New(slog.NewTextHandler(f.log, nil)),
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *pageFixture) put(t *testing.T, ps ...*store.Progress) {
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

// browser is an HTTP client with a cookie jar that does not follow
// redirects, so tests see each answer.
type browser struct {
	f *pageFixture
	c *http.Client
}

func (f *pageFixture) browser(t *testing.T) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{f: f, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(t *testing.T, method, path string, form url.Values, headers ...string) answer {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.f.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, string(data)}
}

func (b *browser) get(t *testing.T, path string) answer { return b.do(t, "GET", path, nil) }

// login logs in with the token and checks the cookie's attributes.
func (b *browser) login(t *testing.T) {
	t.Helper()
	a := b.do(t, "POST", "/login", url.Values{"token": {token}, "next": {"/"}})
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/" {
		t.Fatalf("login: %d Location %q, want 303 to /; body %s", a.status, a.header.Get("Location"), a.body)
	}
	sc := a.header.Get("Set-Cookie")
	for _, want := range []string{"pecgate_admin=", "HttpOnly", "SameSite=Strict", "Path=/"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %s", sc, want)
		}
	}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of a page's forms.
func csrf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", body)
	}
	return m[1]
}

// apiDomain reads a domain through the JSON API.
func (f *pageFixture) apiDomain(t *testing.T, name string) *admin.Domain {
	t.Helper()
	d, err := (&admin.Client{BaseURL: f.srv.URL, Token: token}).Domain(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

const member = "giulia.verdi@pec.ordine.example"

func TestPageNeedsToken(t *testing.T) {
	f := newPageFixture(t)
	f.put(t, &store.Progress{User: member, State: "quota", MessagesDone: 5, MessagesTotal: 10, Updated: time.Now()}) // listed: a problem
	b := f.browser(t)

	t.Run("no session shows the login form only", func(t *testing.T) {
		a := b.get(t, "/")
		if a.status != 200 || !strings.Contains(a.body, `id="login-form"`) {
			t.Fatalf("GET / without session: %d\n%s", a.status, a.body)
		}
		for _, secret := range []string{member, pageDomain} {
			if strings.Contains(a.body, secret) {
				t.Errorf("the login form shows %q", secret)
			}
		}
		if csp := a.header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("Content-Security-Policy %q", csp)
		}
	})
	t.Run("wrong token", func(t *testing.T) {
		a := b.do(t, "POST", "/login", url.Values{"token": {"nope"}})
		if a.status != 401 || !strings.Contains(a.body, "Wrong token") || a.header.Get("Set-Cookie") != "" {
			t.Fatalf("wrong token: %d Set-Cookie %q\n%s", a.status, a.header.Get("Set-Cookie"), a.body)
		}
		if !strings.Contains(f.log.String(), "admin page login refused") {
			t.Errorf("refusal not logged: %s", f.log)
		}
		if strings.Contains(f.log.String(), "nope") {
			t.Errorf("the log shows the tried token: %s", f.log)
		}
	})
	t.Run("cross-origin login", func(t *testing.T) {
		a := b.do(t, "POST", "/login", url.Values{"token": {token}}, "Origin", "http://evil.example")
		if a.status != 403 || a.header.Get("Set-Cookie") != "" {
			t.Fatalf("cross-origin login: %d Set-Cookie %q", a.status, a.header.Get("Set-Cookie"))
		}
	})
	t.Run("flip page without session", func(t *testing.T) {
		a := b.get(t, "/domains/"+pageDomain+"/flip?state=migrating")
		if a.status != 401 || !strings.Contains(a.body, `id="login-form"`) || !strings.Contains(a.body, `name="next" value="/domains/`) {
			t.Fatalf("flip page without session: %d\n%s", a.status, a.body)
		}
	})
	t.Run("flip without session changes nothing", func(t *testing.T) {
		a := b.do(t, "POST", "/domains/"+pageDomain+"/flip", url.Values{"state": {"migrating"}})
		if a.status != 401 {
			t.Fatalf("POST flip without session: %d", a.status)
		}
		if got := f.apiDomain(t, pageDomain).State; got != "old" {
			t.Errorf("state %s after a refused flip, want old", got)
		}
	})
	t.Run("forged cookie", func(t *testing.T) {
		u, _ := url.Parse(f.srv.URL)
		exp := time.Now().Add(time.Hour).Unix()
		b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "pecgate_admin", Value: fmt.Sprintf("v1.%d.00112233445566778899aabbccddeeff.AAAA", exp)}})
		if a := b.get(t, "/"); !strings.Contains(a.body, `id="login-form"`) {
			t.Fatalf("a forged cookie opened the page:\n%s", a.body)
		}
	})
	t.Run("bearer token", func(t *testing.T) {
		a := f.browser(t).do(t, "GET", "/", nil, "Authorization", "Bearer "+token)
		if a.status != 200 || !strings.Contains(a.body, member) {
			t.Fatalf("GET / with the bearer token: %d\n%s", a.status, a.body)
		}
	})
	t.Run("login, page, logout", func(t *testing.T) {
		b := f.browser(t)
		b.login(t)
		a := b.get(t, "/")
		if a.status != 200 || !strings.Contains(a.body, member) || !strings.Contains(a.body, `data-domain="`+pageDomain+`"`) {
			t.Fatalf("GET / after login: %d\n%s", a.status, a.body)
		}
		if a := b.do(t, "POST", "/logout", url.Values{}); a.status != 403 {
			t.Fatalf("logout without CSRF token: %d, want 403", a.status)
		}
		u, _ := url.Parse(f.srv.URL)
		old := b.c.Jar.Cookies(u)
		if a := b.do(t, "POST", "/logout", url.Values{"csrf": {csrf(t, a.body)}}); a.status != 303 {
			t.Fatalf("logout: %d", a.status)
		}
		if a := b.get(t, "/"); !strings.Contains(a.body, `id="login-form"`) {
			t.Fatal("still logged in after logout")
		}
		// The old cookie, replayed, is dead too.
		b.c.Jar.SetCookies(u, old)
		if a := b.get(t, "/"); !strings.Contains(a.body, `id="login-form"`) {
			t.Fatal("the cookie of a logged-out session still opens the page")
		}
	})
}

func TestPageAssetsAndMethods(t *testing.T) {
	f := newPageFixture(t)
	b := f.browser(t)
	for path, ctype := range map[string]string{"/assets/status.css": "text/css", "/assets/status.js": "text/javascript"} {
		a := b.get(t, path) // no session: the assets hold no data
		if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), ctype) || len(a.body) < 100 {
			t.Errorf("GET %s: %d %q, %d bytes", path, a.status, a.header.Get("Content-Type"), len(a.body))
		}
	}
	for _, tc := range []struct{ method, path, allow string }{
		{"POST", "/", "GET"},
		{"GET", "/login", "POST"},
		{"GET", "/logout", "POST"},
		{"PUT", "/domains/" + pageDomain + "/flip", "GET, POST"},
	} {
		a := b.do(t, tc.method, tc.path, nil)
		if a.status != 405 || a.header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 Allow %q", tc.method, tc.path, a.status, a.header.Get("Allow"), tc.allow)
		}
		// A person who opens /login by hand gets a page with the way back.
		if !strings.HasPrefix(a.header.Get("Content-Type"), "text/html") || !strings.Contains(a.body, `href="/"`) {
			t.Errorf("%s %s: %q, want an HTML page linking back to /\n%s", tc.method, tc.path, a.header.Get("Content-Type"), a.body)
		}
	}
}

func TestPageLoginThrottled(t *testing.T) {
	f := newPageFixture(t)
	b := f.browser(t)
	for i := range 10 {
		if a := b.do(t, "POST", "/login", url.Values{"token": {"wrong"}}); a.status != 401 {
			t.Fatalf("wrong token %d: %d, want 401", i, a.status)
		}
	}
	a := b.do(t, "POST", "/login", url.Values{"token": {token}})
	if a.status != 429 || a.header.Get("Set-Cookie") != "" || !strings.Contains(a.body, "wait a minute") {
		t.Fatalf("11th try within a minute: %d Set-Cookie %q, want 429 without a session\n%s", a.status, a.header.Get("Set-Cookie"), a.body)
	}
}

func TestPagePreviewAPI(t *testing.T) {
	f := newPageFixture(t)
	call := func(t *testing.T, method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, f.srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		return resp.StatusCode, string(b)
	}
	preview := func(t *testing.T, domain, state string) admin.FlipPreview {
		t.Helper()
		status, body := call(t, "GET", "/api/v1/domains/"+domain+"/preview?state="+state)
		if status != 200 {
			t.Fatalf("preview %s %s: %d %s", domain, state, status, body)
		}
		var p admin.FlipPreview
		if err := json.Unmarshal([]byte(body), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}

	errs := []struct {
		name, method, path string
		status             int
		want               string
	}{
		{"no state", "GET", "/api/v1/domains/" + pageDomain + "/preview", 400, "?state=old|migrating|new"},
		{"bad state", "GET", "/api/v1/domains/" + pageDomain + "/preview?state=done", 400, "state must be old, migrating or new"},
		{"unknown domain", "GET", "/api/v1/domains/x.example/preview?state=new", 404, "domain not served"},
		{"POST", "POST", "/api/v1/domains/" + pageDomain + "/preview?state=new", 405, "not allowed"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(t, tc.method, tc.path)
			var e admin.Error
			if status != tc.status || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Message, tc.want) {
				t.Fatalf("%d %s, want %d and an error with %q", status, body, tc.status, tc.want)
			}
		})
	}
	t.Run("no token", func(t *testing.T) {
		resp, err := http.Get(f.srv.URL + "/api/v1/domains/" + pageDomain + "/preview?state=new")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("preview without token: %d", resp.StatusCode)
		}
	})
	t.Run("no new provider", func(t *testing.T) {
		p := preview(t, "solo.example", "migrating")
		if p.Allowed || p.Forceable || !strings.Contains(p.Reason, "no new provider") || p.From != "old" || p.To != "migrating" {
			t.Fatalf("preview %+v", p)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		p := preview(t, pageDomain, "migrating")
		if want := (admin.FlipPreview{Domain: pageDomain, From: "old", To: "migrating", Allowed: true}); p != want {
			t.Fatalf("preview %+v, want %+v", p, want)
		}
	})
	t.Run("uncopied is the count the PUT refuses with", func(t *testing.T) {
		f.router.Uncopied = func(context.Context, string, string) (int, error) { return 412, nil }
		if _, err := f.router.SetDomain(context.Background(), pageDomain, "migrating", false); err != nil {
			t.Fatal(err)
		}
		p := preview(t, pageDomain, "new")
		if want := (admin.FlipPreview{Domain: pageDomain, From: "migrating", To: "new", Reason: p.Reason, Uncopied: 412, Forceable: true}); p != want || p.Reason == "" {
			t.Fatalf("preview %+v, want %+v with a reason", p, want)
		}
		if cp, err := (&admin.Client{BaseURL: f.srv.URL, Token: token}).PreviewDomain(context.Background(), pageDomain, "new"); err != nil || *cp != p {
			t.Fatalf("Client.PreviewDomain: %+v, %v; want %+v", cp, err, p)
		}
		if _, err := (&admin.Client{BaseURL: f.srv.URL, Token: token}).PreviewDomain(context.Background(), pageDomain, "done"); err == nil {
			t.Fatal("Client.PreviewDomain of a bad state: no error")
		}
		_, err := (&admin.Client{BaseURL: f.srv.URL, Token: token}).SetDomain(context.Background(), pageDomain, "new", false)
		var e *admin.Error
		if !asError(err, &e) || e.Status != 409 || e.Uncopied != p.Uncopied || e.Message != p.Reason {
			t.Fatalf("PUT after the preview: %v, want the previewed refusal (409, uncopied %d, %q)", err, p.Uncopied, p.Reason)
		}
		if got := f.apiDomain(t, pageDomain).State; got != "migrating" {
			t.Errorf("state %s after preview and refusal, want migrating", got)
		}
	})
}

func TestPageFlip(t *testing.T) {
	f := newPageFixture(t)
	b := f.browser(t)
	b.login(t)
	page := b.get(t, "/")
	tok := csrf(t, page.body)
	flipPath := "/domains/" + pageDomain + "/flip"

	t.Run("the page offers the flip", func(t *testing.T) {
		if !strings.Contains(page.body, `action="/domains/`+pageDomain+`/flip"`) || !strings.Contains(page.body, `data-flip="migrating"`) {
			t.Fatalf("no flip control for %s:\n%s", pageDomain, page.body)
		}
	})
	t.Run("preview", func(t *testing.T) {
		a := b.get(t, flipPath+"?state=migrating")
		if a.status != 200 || !strings.Contains(a.body, `id="confirm-form"`) || !strings.Contains(a.body, `data-allowed="true"`) || strings.Contains(a.body, `name="force"`) {
			t.Fatalf("preview: %d\n%s", a.status, a.body)
		}
	})
	bad := []struct {
		name, path string
		form       url.Values
		headers    []string
		status     int
		want       string
	}{
		{"no CSRF token", flipPath, url.Values{"state": {"migrating"}}, nil, 403, "security token"},
		{"wrong CSRF token", flipPath, url.Values{"state": {"migrating"}, "csrf": {"x" + tok}}, nil, 403, "security token"},
		{"cross-origin", flipPath, url.Values{"state": {"migrating"}, "csrf": {tok}}, []string{"Origin", "http://evil.example"}, 403, "cross-origin"},
		{"no state", flipPath, url.Values{"csrf": {tok}}, nil, 400, "no state"},
		{"bad state", flipPath, url.Values{"state": {"done"}, "csrf": {tok}}, nil, 400, "state must be old, migrating or new"},
		{"unknown domain", "/domains/x.example/flip", url.Values{"state": {"migrating"}, "csrf": {tok}}, nil, 404, "domain not served"},
		{"old to new refused", flipPath, url.Values{"state": {"new"}, "csrf": {tok}}, nil, 409, "skips migrating"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			a := b.do(t, "POST", tc.path, tc.form, tc.headers...)
			if a.status != tc.status || !strings.Contains(a.body, tc.want) || !strings.Contains(a.header.Get("Content-Type"), "text/html") {
				t.Fatalf("%d %s, want %d and a page saying %q", a.status, a.header.Get("Content-Type"), tc.status, tc.want)
			}
			if got := f.apiDomain(t, pageDomain).State; got != "old" {
				t.Fatalf("state %s after a refused flip, want old", got)
			}
		})
	}
	t.Run("preview errors", func(t *testing.T) {
		for path, status := range map[string]int{
			flipPath:                               400,
			flipPath + "?state=done":               400,
			"/domains/x.example/flip?state=new":    404,
			"/domains/solo.example/flip?state=new": 200, // explained, without a form
		} {
			a := b.get(t, path)
			if a.status != status {
				t.Errorf("GET %s: %d, want %d\n%s", path, a.status, status, a.body)
			}
			if status == 200 && (strings.Contains(a.body, `id="confirm-form"`) || !strings.Contains(a.body, "no new provider")) {
				t.Errorf("GET %s offers a change the config forbids:\n%s", path, a.body)
			}
		}
	})
	t.Run("flip to migrating", func(t *testing.T) {
		a := b.do(t, "POST", flipPath, url.Values{"state": {"migrating"}, "csrf": {tok}})
		if a.status != 303 || !strings.HasPrefix(a.header.Get("Location"), "/?changed="+pageDomain) {
			t.Fatalf("flip: %d Location %q\n%s", a.status, a.header.Get("Location"), a.body)
		}
		if got := f.apiDomain(t, pageDomain).State; got != "migrating" {
			t.Fatalf("API state %s after the flip, want migrating", got)
		}
		page := b.get(t, a.header.Get("Location"))
		if !strings.Contains(page.body, `data-domain="`+pageDomain+`" data-state="migrating"`) || !strings.Contains(page.body, `id="changed"`) {
			t.Errorf("the page after the flip does not show migrating:\n%s", page.body)
		}
		if !strings.Contains(f.log.String(), "route changed") {
			t.Errorf("the flip is not logged: %s", f.log)
		}
	})
	t.Run("forced flip to new", func(t *testing.T) {
		f.router.Uncopied = func(context.Context, string, string) (int, error) { return 1234, nil }
		a := b.get(t, flipPath+"?state=new")
		for _, want := range []string{`data-uncopied="1234"`, "1,234 messages not yet copied", `name="force" value="1"`, "leaving 1,234 messages behind"} {
			if !strings.Contains(a.body, want) {
				t.Errorf("preview lacks %q", want)
			}
		}
		if t.Failed() {
			t.Fatalf("preview:\n%s", a.body)
		}
		// Forcing needs the domain's name typed.
		for _, confirm := range []string{"", "x.example"} {
			a = b.do(t, "POST", flipPath, url.Values{"state": {"new"}, "force": {"1"}, "confirm": {confirm}, "csrf": {tok}})
			if a.status != 400 || !strings.Contains(a.body, "type the domain") {
				t.Fatalf("forced flip confirmed with %q: %d\n%s", confirm, a.status, a.body)
			}
		}
		// Without force, the rules refuse it, as the preview said.
		a = b.do(t, "POST", flipPath, url.Values{"state": {"new"}, "csrf": {tok}})
		if a.status != 409 || !strings.Contains(a.body, "1234 messages are not yet in new") {
			t.Fatalf("unforced flip: %d\n%s", a.status, a.body)
		}
		if got := f.apiDomain(t, pageDomain).State; got != "migrating" {
			t.Fatalf("state %s before the confirmed flip, want migrating", got)
		}
		a = b.do(t, "POST", flipPath, url.Values{"state": {"new"}, "force": {"1"}, "confirm": {strings.ToUpper(pageDomain)}, "csrf": {tok}})
		if a.status != 303 {
			t.Fatalf("confirmed forced flip: %d\n%s", a.status, a.body)
		}
		if got := f.apiDomain(t, pageDomain).State; got != "new" {
			t.Fatalf("API state %s after the forced flip, want new", got)
		}
		if !strings.Contains(f.log.String(), "route changed by force") || !strings.Contains(f.log.String(), "uncopied=1234") {
			t.Errorf("the forced flip is not logged with what was left: %s", f.log)
		}
	})
	t.Run("bearer token needs no CSRF token", func(t *testing.T) {
		a := f.browser(t).do(t, "POST", flipPath, url.Values{"state": {"migrating"}}, "Authorization", "Bearer "+token)
		if a.status != 303 {
			t.Fatalf("flip with the bearer token: %d\n%s", a.status, a.body)
		}
		if got := f.apiDomain(t, pageDomain).State; got != "migrating" {
			t.Fatalf("state %s, want migrating", got)
		}
	})
}

// TestPageNumbers checks that the page shows the API's numbers and says
// what to do about each problem.
func TestPageNumbers(t *testing.T) {
	f := newPageFixture(t)
	if _, err := f.router.SetDomain(context.Background(), pageDomain, "migrating", false); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	at := func(user string) string { return user + "@" + pageDomain }
	f.put(t,
		&store.Progress{User: at("a.copying"), State: "copying", MessagesDone: 1200, MessagesTotal: 5000, BytesDone: 3_000_000, BytesTotal: 9_000_000, Updated: now},
		&store.Progress{User: at("b.done"), State: "done", MessagesDone: 300, MessagesTotal: 300, BytesDone: 1_000_000, BytesTotal: 1_000_000, Updated: now},
		&store.Progress{User: at("c.twofactor"), State: "failed", MessagesTotal: 40, Updated: now, Errors: []store.ProgressError{{Kind: "auth", At: now,
			Message: "infocert login: backend: upstream refused the credentials: [AUTHENTICATIONFAILED] Authentication failed. (if two-factor login is on for this account, the provider wants an app password)"}}},
		&store.Progress{User: at("d.wrongpass"), State: "failed", MessagesTotal: 40, Updated: now, Errors: []store.ProgressError{{Kind: "auth", At: now,
			Message: "infocert login: backend: upstream refused the credentials: Authentication failed."}}},
		&store.Progress{User: at("e.quota"), State: "quota", MessagesDone: 10, MessagesTotal: 900, Updated: now, Errors: []store.ProgressError{{Kind: "quota", At: now, Message: "new has 1 MB free, the account needs 80 MB"}}},
		&store.Progress{User: at("f.oversize"), State: "incomplete", MessagesDone: 99, MessagesTotal: 100, Updated: now, Errors: []store.ProgressError{{Kind: "oversize", At: now, Message: "message of 61 MB over the limit"}}},
		&store.Progress{User: at("g.upstream"), State: "copying", MessagesDone: 1, MessagesTotal: 10, Updated: now, Errors: []store.ProgressError{
			{Kind: "upstream", At: now, Message: "aruba fetch: connection reset"}, {Kind: "upstream", At: now, Message: "aruba fetch: i/o timeout"}}},
		&store.Progress{User: at("h.login"), State: "needs-login", Updated: now},
		&store.Progress{User: at("i.master"), State: "failed", Updated: now, Errors: []store.ProgressError{{Kind: "auth", At: now,
			Message: "infocert master login: backend: upstream refused the credentials: [AUTHORIZATIONFAILED] Authorization failed (master user master acting for i.master@pec.ordine.example, master_style sasl: a wrong master password (master_password_file /etc/pecgate/infocert.master), or no such user there)"}}},
		&store.Progress{User: at("j.oldmaster"), State: "failed", Updated: now, Errors: []store.ProgressError{{Kind: "auth", At: now,
			Message: "aruba master login: backend: upstream refused the credentials: [AUTHORIZATIONFAILED] Authorization failed (master user master acting for j.oldmaster@pec.ordine.example, master_style sasl: a wrong master password (master_password_file /etc/pecgate/aruba.master), or no such user there)"}}},
		&store.Progress{User: at("k.novault"), State: "failed", Updated: now, Errors: []store.ProgressError{{Kind: "auth", At: now,
			Message: "aruba vault: backend: no vault credentials for the user on this provider (import credentials for k.novault@pec.ordine.example with pecgate vault import)"}}},
		// The kind the engine writes since it tells a missing credential apart.
		&store.Progress{User: at("l.nocred"), State: "failed", Updated: now, Errors: []store.ProgressError{{Kind: "no-credential", At: now,
			Message: "aruba vault: backend: no vault credentials for the user on this provider (import credentials for l.nocred@pec.ordine.example with pecgate vault import)"}}},
	)
	b := f.browser(t)
	b.login(t)
	page := b.get(t, "/").body
	d := f.apiDomain(t, pageDomain)
	p := d.Progress
	section := page[strings.Index(page, `data-domain="`+pageDomain+`"`):]
	section = section[:strings.Index(section, "</section>")]
	for _, want := range []string{
		fmt.Sprintf(`data-field="messages" data-done="%d" data-total="%d"`, p.MessagesDone, p.MessagesTotal),
		fmt.Sprintf(`data-field="bytes" data-done="%d" data-total="%d"`, p.BytesDone, p.BytesTotal),
		fmt.Sprintf(`data-field="members" data-total="%d"`, p.MembersTotal),
		fmt.Sprintf(`data-phase="copying" data-count="%d"`, p.Members["copying"]),
		fmt.Sprintf(`data-phase="failed" data-count="%d"`, p.Members["failed"]),
		fmt.Sprintf(`data-phase="needs-login" data-count="%d"`, p.Members["needs-login"]),
		"1,610", // messages done, as a person reads it
		`<svg class="chart"`,
	} {
		if !strings.Contains(section, want) {
			t.Errorf("the page's %s section lacks %q", pageDomain, want)
		}
	}
	if p.MembersTotal != 12 || p.MessagesDone != 1610 {
		t.Fatalf("API progress %+v; the fixture wants 12 members, 1610 messages done", p)
	}
	for user, want := range map[string]string{
		"c.twofactor": "Two-factor / app password suspected",
		"d.wrongpass": "Login refused",
		"e.quota":     "New mailbox full",
		"f.oversize":  "Message over the size limit",
		"g.upstream":  "Provider error",
		"h.login":     "Waiting for the member",
		"i.master":    "Two-factor / app password suspected", // infocert has app_passwords
		"j.oldmaster": "Login refused",                       // aruba has not
		"k.novault":   "No credentials in the vault",
		"l.nocred":    "No credentials in the vault",
	} {
		i := strings.Index(section, `data-user="`+at(user)+`"`)
		if i < 0 {
			t.Errorf("%s is not listed among the problems", at(user))
			continue
		}
		row := section[i:]
		row = row[:strings.Index(row, "</tr>")]
		if !strings.Contains(row, want) || !strings.Contains(row, `class="action"`) {
			t.Errorf("%s: row %s, want %q with what to do", user, row, want)
		}
	}
	if strings.Contains(section, `data-user="`+at("a.copying")+`"`) || strings.Contains(section, `data-user="`+at("b.done")+`"`) {
		t.Error("members without problems are listed among the problems")
	}
}

func asError(err error, target **admin.Error) bool {
	e, ok := err.(*admin.Error)
	if ok {
		*target = e
	}
	return ok
}

// from returns a browser whose connections come from the loopback address
// ip (Linux answers all of 127.0.0.0/8), so that tests see the status
// page's throttle per client address.
func (f *pageFixture) from(t *testing.T, ip string) *browser {
	t.Helper()
	b := f.browser(t)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	b.c.Transport = &http.Transport{DialContext: d.DialContext}
	return b
}

// TestPageLoginThrottlePerAddress: wrong tokens from one address lock out
// that address only (not the operator at another), and a bearer token is
// no way around the throttle: wrong ones count, and a throttled address's
// right one is not taken.
func TestPageLoginThrottlePerAddress(t *testing.T) {
	f := newPageFixture(t)
	attacker, operator, guesser := f.from(t, "127.0.0.2"), f.from(t, "127.0.0.3"), f.from(t, "127.0.0.4")
	for i := range 10 {
		if a := attacker.do(t, "POST", "/login", url.Values{"token": {"wrong"}}); a.status != 401 {
			t.Fatalf("wrong token %d: %d, want 401", i, a.status)
		}
	}
	if a := attacker.do(t, "POST", "/login", url.Values{"token": {token}}); a.status != 429 || a.header.Get("Set-Cookie") != "" {
		t.Fatalf("attacker's right token after 10 wrong ones: %d Set-Cookie %q, want 429 without a session", a.status, a.header.Get("Set-Cookie"))
	}
	operator.login(t)
	if a := operator.get(t, "/"); a.status != 200 || !strings.Contains(a.body, `id="status"`) {
		t.Fatalf("the operator at another address, after logging in: %d, want the status page", a.status)
	}

	// Wrong bearer tokens count as wrong tokens; once throttled, not even
	// the right one is taken.
	for i := range 10 {
		if a := guesser.do(t, "GET", "/", nil, "Authorization", "Bearer wrong"); a.status != 200 || !strings.Contains(a.body, `id="login-form"`) {
			t.Fatalf("wrong bearer token %d: %d, want the login form", i, a.status)
		}
	}
	if a := guesser.do(t, "POST", "/login", url.Values{"token": {token}}); a.status != 429 {
		t.Fatalf("right token after 10 wrong bearer tokens: %d, want 429", a.status)
	}
	if a := guesser.do(t, "GET", "/", nil, "Authorization", "Bearer "+token); !strings.Contains(a.body, `id="login-form"`) {
		t.Fatalf("a throttled address's bearer token was taken: %d\n%s", a.status, a.body)
	}
	if !strings.Contains(f.log.String(), "remote=127.0.0.2") || strings.Contains(f.log.String(), token) {
		t.Errorf("log lacks the attacker's address, or shows the token:\n%s", f.log.String())
	}
}

// TestPageLoginNextStaysHere: the page a login returns to is a path on
// the gateway, whatever the form says: never another host, also not
// through characters a browser drops ("/\t/host" is "//host" to it).
func TestPageLoginNextStaysHere(t *testing.T) {
	f := newPageFixture(t)
	for next, want := range map[string]string{
		"/domains/" + pageDomain + "/flip?state=new": "/domains/" + pageDomain + "/flip?state=new",
		"//evil.example/":       "/",
		"/\\evil.example/":      "/",
		"/\t/evil.example/":     "/",
		"/\n/evil.example/":     "/",
		"/\x7f/evil.example":    "/",
		"https://evil.example/": "/",
	} {
		b := f.browser(t)
		a := b.do(t, "POST", "/login", url.Values{"token": {token}, "next": {next}})
		if a.status != http.StatusSeeOther || a.header.Get("Location") != want {
			t.Errorf("login with next %q: %d Location %q, want 303 to %q", next, a.status, a.header.Get("Location"), want)
		}
	}
}

// TestPageEscapesProviderText: a provider's error text, which a member's
// folder name can reach, is shown as text, never as markup.
func TestPageEscapesProviderText(t *testing.T) {
	f := newPageFixture(t)
	evil := `infocert: NO [CANNOT] "><script>alert(1)</script><img src=x onerror=alert(2)> refused`
	f.put(t, &store.Progress{User: member, State: "failed", MessagesDone: 1, MessagesTotal: 2, Updated: time.Now(),
		Errors: []store.ProgressError{{Kind: "folder", Message: evil, Mailbox: `"><svg onload=alert(3)>`, At: time.Now()}}})
	b := f.browser(t)
	b.login(t)
	a := b.get(t, "/")
	if a.status != 200 || !strings.Contains(a.body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Fatalf("the problem's text is not on the page, escaped: %d\n%s", a.status, a.body)
	}
	for _, bad := range []string{"<script>alert", "<img src=x", "<svg onload"} {
		if strings.Contains(a.body, bad) {
			t.Errorf("the page carries %q as markup", bad)
		}
	}
}

// TestPageLoginClearTextWarning: the token form says so when the token
// would cross the network in clear text, and not over loopback or TLS.
func TestPageLoginClearTextWarning(t *testing.T) {
	f := newPageFixture(t)
	// A listener beyond loopback, reached by name.
	h := admin.New(admin.Options{Router: f.router, Token: token, Config: &config.Config{Admin: config.Admin{AllowNonLoopback: true}}})
	for _, tc := range []struct {
		remote string
		tls    bool
		warn   bool
	}{{"192.0.2.7:40000", false, true}, {"127.0.0.1:40000", false, false}, {"[::1]:40000", false, false}, {"192.0.2.7:40000", true, false}} {
		target := "http://gateway.example/"
		if tc.tls {
			target = "https://gateway.example/" // sets req.TLS
		}
		req := httptest.NewRequest("GET", target, nil)
		req.RemoteAddr = tc.remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		body := rec.Body.String()
		if !strings.Contains(body, `id="login-form"`) || strings.Contains(body, `id="clear-text"`) != tc.warn {
			t.Errorf("login form from %s (TLS %v): clear-text warning %v, want %v", tc.remote, tc.tls, strings.Contains(body, `id="clear-text"`), tc.warn)
		}
	}
}

// TestPageRefusesForeignHost: the status page answers only requests that
// name the gateway by IP address or localhost: a site whose DNS name an
// attacker re-points at 127.0.0.1 (DNS rebinding) gets neither the form
// nor a session.
func TestPageRefusesForeignHost(t *testing.T) {
	f := newPageFixture(t)
	port := f.srv.URL[strings.LastIndex(f.srv.URL, ":")+1:]
	for host, ok := range map[string]bool{
		"127.0.0.1:" + port:      true,
		"localhost:" + port:      true,
		"LOCALHOST.:" + port:     true,
		"[::1]:" + port:          true,
		"evil.example:" + port:   false,
		"127.0.0.1.evil.example": false,
		"localhost.evil.example": false,
	} {
		for _, method := range []string{"GET", "POST"} {
			var body io.Reader
			path := "/"
			if method == "POST" {
				path, body = "/login", strings.NewReader(url.Values{"token": {token}}.Encode())
			}
			req, err := http.NewRequest(method, f.srv.URL+path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = host
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := f.browser(t).c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			refused := resp.StatusCode == http.StatusMisdirectedRequest
			if refused == ok || (!ok && (resp.Header.Get("Set-Cookie") != "" || strings.Contains(string(data), `id="login-form"`))) {
				t.Errorf("%s %s with Host %q: %d Set-Cookie %q, want refused %v", method, path, host, resp.StatusCode, resp.Header.Get("Set-Cookie"), !ok)
			}
		}
	}
}

// TestPageLoginReturns: after a wrong token, or a session that ended on
// the confirmation of a flip, the form still returns to that page.
func TestPageLoginReturns(t *testing.T) {
	f := newPageFixture(t)
	b := f.browser(t)
	flip := "/domains/" + pageDomain + "/flip?state=migrating"
	a := b.do(t, "POST", "/domains/"+pageDomain+"/flip", url.Values{"state": {"migrating"}, "csrf": {"stale"}})
	if a.status != 401 || !strings.Contains(a.body, `name="next" value="`+strings.ReplaceAll(flip, "&", "&amp;")+`"`) {
		t.Fatalf("flip with the session gone: %d, want the form returning to %s\n%s", a.status, flip, a.body)
	}
	a = b.do(t, "POST", "/login", url.Values{"token": {"wrong"}, "next": {flip}})
	if a.status != 401 || !strings.Contains(a.body, `name="next" value="`+flip+`"`) {
		t.Fatalf("wrong token: %d, want the form returning to %s\n%s", a.status, flip, a.body)
	}
	a = b.do(t, "POST", "/login", url.Values{"token": {token}, "next": {flip}})
	if a.status != 303 || a.header.Get("Location") != flip {
		t.Fatalf("right token: %d Location %q, want 303 to %s", a.status, a.header.Get("Location"), flip)
	}
	if got := f.apiDomain(t, pageDomain).State; got != "old" {
		t.Errorf("state %s: a login changed it", got)
	}
}
