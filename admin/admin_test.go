package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	gosync "sync"
	"testing"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

const token = "s3cret-token"

const testConfig = `
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

[domains."pec.ordine.example"]
old = "aruba"
new = "infocert"

[domains."solo.example"]
old = "aruba"
`

type lockedBuffer struct {
	mu gosync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type fixture struct {
	srv    *httptest.Server
	router *store.Router
	log    *lockedBuffer
}

// newFixture serves the admin API on a real socket, on a bbolt store;
// edit changes the Options before New.
func newFixture(t *testing.T, edit func(*admin.Options)) *fixture {
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
	f := &fixture{router: r, log: &lockedBuffer{}}
	opts := admin.Options{Router: r, Token: token, Log: slog.New(slog.NewTextHandler(f.log, nil))}
	if edit != nil {
		edit(&opts)
	}
	f.srv = httptest.NewServer(admin.New(opts))
	t.Cleanup(f.srv.Close)
	return f
}

// call does one request; auth is the Authorization header ("" for none).
func (f *fixture) call(t *testing.T, method, path, auth, body string) (int, http.Header, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func (f *fixture) client() *admin.Client {
	return &admin.Client{BaseURL: f.srv.URL, Token: token}
}

const bearer = "Bearer " + token

func TestRequests(t *testing.T) {
	tests := []struct {
		name, method, path, auth, body string
		status                         int
		// want is a substring of the body; wantJSON decodes it as an Error
		// and compares.
		want     string
		wantJSON *admin.Error
		allow    string
	}{
		{name: "healthz without token", method: "GET", path: "/healthz", status: 200, want: "ok"},
		{name: "healthz HEAD", method: "HEAD", path: "/healthz", status: 200},
		{name: "healthz POST", method: "POST", path: "/healthz", status: 405, allow: "GET", wantJSON: &admin.Error{Message: "method POST not allowed on /healthz; allowed: GET"}},
		{name: "readyz without Ready", method: "GET", path: "/readyz", status: 200, want: "ok"},
		{name: "metrics not kept", method: "GET", path: "/metrics", auth: bearer, status: 501, want: `not kept`},
		{name: "metrics without token", method: "GET", path: "/metrics", status: 401, want: `missing or wrong bearer token`},
		{name: "page without a session", method: "GET", path: "/", status: 200, want: `id="login-form"`},
		{name: "unknown page", method: "GET", path: "/nothing", status: 404, want: `"error": "no such path: /nothing"`},
		{name: "no token", method: "GET", path: "/api/v1/domains", status: 401, want: `"error": "missing or wrong bearer token`},
		{name: "wrong token", method: "GET", path: "/api/v1/domains", auth: "Bearer nope", status: 401, want: `missing or wrong bearer token`},
		{name: "token prefix", method: "GET", path: "/api/v1/domains", auth: bearer[:len(bearer)-1], status: 401, want: `missing or wrong bearer token`},
		{name: "basic auth", method: "GET", path: "/api/v1/domains", auth: "Basic " + token, status: 401, want: `missing or wrong bearer token`},
		{name: "no token on PUT", method: "PUT", path: "/api/v1/domains/pec.ordine.example", body: `{"state":"migrating"}`, status: 401},
		{name: "no token on unknown path", method: "GET", path: "/api/v2/x", status: 401},
		{name: "scheme case", method: "GET", path: "/api/v1/domains", auth: "bearer " + token, status: 200, want: `"name": "pec.ordine.example"`},
		{name: "unknown api path", method: "GET", path: "/api/v2/x", auth: bearer, status: 404, wantJSON: &admin.Error{Message: "no such API path: /api/v2/x"}},
		{name: "domains POST", method: "POST", path: "/api/v1/domains", auth: bearer, status: 405, allow: "GET"},
		{name: "domain DELETE", method: "DELETE", path: "/api/v1/domains/pec.ordine.example", auth: bearer, status: 405, allow: "GET, PUT"},
		{name: "user POST", method: "POST", path: "/api/v1/users/a@pec.ordine.example", auth: bearer, status: 405, allow: "GET, PUT"},
		{name: "unknown domain GET", method: "GET", path: "/api/v1/domains/x.example", auth: bearer, status: 404, want: `domain not served: \"x.example\"`},
		{name: "unknown domain PUT", method: "PUT", path: "/api/v1/domains/x.example", auth: bearer, body: `{"state":"migrating"}`, status: 404},
		{name: "bad JSON", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"state":`, status: 400, want: "bad request body"},
		{name: "empty body", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, status: 400, want: "bad request body"},
		{name: "unknown field", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"state":"new","forse":true}`, status: 400, want: `unknown field \"forse\"`},
		{name: "two values", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"state":"old"}{}`, status: 400, want: "more than one JSON value"},
		{name: "missing state", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"force":true}`, status: 400, want: `\"state\" is required`},
		{name: "bad state", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"state":"done"}`, status: 400, want: "state must be old, migrating or new"},
		{name: "empty state for a domain", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"state":""}`, status: 400},
		{name: "no new provider", method: "PUT", path: "/api/v1/domains/solo.example", auth: bearer, body: `{"state":"migrating","force":true}`, status: 409,
			wantJSON: &admin.Error{Message: `no new provider: solo.example cannot be migrating until its config names one ([domains."solo.example"] new)`}},
		{name: "old to new refused", method: "PUT", path: "/api/v1/domains/pec.ordine.example", auth: bearer, body: `{"state":"new"}`, status: 409, want: `"forceable": true`},
		{name: "user not an address", method: "GET", path: "/api/v1/users/mario", auth: bearer, status: 400, want: "not a user address"},
		{name: "user PUT not an address", method: "PUT", path: "/api/v1/users/mario", auth: bearer, body: `{"state":"old"}`, status: 400},
		{name: "user of an unknown domain", method: "GET", path: "/api/v1/users/mario@x.example", auth: bearer, status: 404, want: "not served"},
		{name: "user", method: "GET", path: "/api/v1/users/Mario@PEC.ordine.example", auth: bearer, status: 200, want: `"user": "mario@pec.ordine.example"`},
		{name: "user escaped", method: "GET", path: "/api/v1/users/mario%40pec.ordine.example", auth: bearer, status: 200, want: `"state": "old"`},
		{name: "progress not kept", method: "GET", path: "/api/v1/users/mario@pec.ordine.example/progress", auth: bearer, status: 404, want: "not kept"},
	}
	f := newFixture(t, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, h, body := f.call(t, tc.method, tc.path, tc.auth, tc.body)
			if status != tc.status {
				t.Fatalf("status %d, want %d; body %s", status, tc.status, body)
			}
			if !strings.Contains(body, tc.want) {
				t.Errorf("body %s, want it to contain %s", body, tc.want)
			}
			if tc.allow != "" && h.Get("Allow") != tc.allow {
				t.Errorf("Allow %q, want %q", h.Get("Allow"), tc.allow)
			}
			if status == 401 && h.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if status >= 400 && tc.method != "HEAD" {
				// Every error is one JSON document.
				if ct := h.Get("Content-Type"); ct != "application/json" {
					t.Errorf("error Content-Type %q", ct)
				}
				var e admin.Error
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Message == "" {
					t.Errorf("error body %s is not an Error: %v", body, err)
				}
				if tc.wantJSON != nil && e != *tc.wantJSON {
					t.Errorf("error %+v, want %+v", e, *tc.wantJSON)
				}
			}
		})
	}
	// Nothing above changed anything.
	if d := f.router.Domains()[0]; d.State != "old" || d.Overridden {
		t.Errorf("state after the bad requests: %+v", d)
	}
}

func TestReady(t *testing.T) {
	var mu gosync.Mutex
	var why error
	f := newFixture(t, func(o *admin.Options) {
		o.Ready = func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			return why
		}
	})
	if status, _, body := f.call(t, "GET", "/readyz", "", ""); status != 200 || body != "ok\n" {
		t.Errorf("ready: %d %q", status, body)
	}
	mu.Lock()
	why = errors.New("store not open")
	mu.Unlock()
	status, _, body := f.call(t, "GET", "/readyz", "", "")
	if status != 503 || !strings.Contains(body, `"error": "not ready: store not open"`) {
		t.Errorf("not ready: %d %s", status, body)
	}
}

func TestNoTokenConfigured(t *testing.T) {
	f := newFixture(t, func(o *admin.Options) { o.Token = "" })
	for _, auth := range []string{"", "Bearer ", "Bearer"} {
		if status, _, body := f.call(t, "GET", "/api/v1/domains", auth, ""); status != 401 {
			t.Errorf("auth %q with no token configured: %d %s", auth, status, body)
		}
	}
}

// TestChanges walks a domain and a user through a migration over HTTP,
// with Client, checking that each change is in the next GET.
func TestChanges(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	var mu gosync.Mutex
	uncopied := map[string]int{"": 12, "luigi@pec.ordine.example": 0}
	f.router.Uncopied = func(_ context.Context, domain, user string) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return uncopied[user], nil
	}
	c := f.client()
	const dom = "pec.ordine.example"
	state := func(want string) {
		t.Helper()
		d, err := c.Domain(ctx, dom)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != want {
			t.Errorf("domain state %s, want %s", d.State, want)
		}
		list, err := c.Domains(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if list[0].Name != dom || list[0].State != want || list[0].ConfigState != "old" {
			t.Errorf("Domains()[0] = %+v, want state %s", list[0], want)
		}
	}
	wantRefused := func(err error, uncopied int, forceable bool) {
		t.Helper()
		var e *admin.Error
		if !errors.As(err, &e) || e.Status != 409 || e.Uncopied != uncopied || e.Forceable != forceable || e.Message == "" {
			t.Fatalf("err = %#v, want a 409 with uncopied %d", err, uncopied)
		}
	}

	state("old")
	_, err := c.SetDomain(ctx, dom, "new", false)
	wantRefused(err, 0, true)
	state("old")

	res, err := c.SetDomain(ctx, dom, "migrating", false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "domain" || res.From != "old" || res.To != "migrating" || res.Forced || res.Domain == nil || res.Domain.State != "migrating" || !res.Domain.Overridden {
		t.Errorf("change %+v", res)
	}
	state("migrating")

	_, err = c.SetDomain(ctx, dom, "new", false)
	wantRefused(err, 12, true)
	if !strings.Contains(err.Error(), "12 messages are not yet in new") {
		t.Errorf("refusal %q does not say how many", err)
	}
	state("migrating")

	// One user goes ahead: its own back-fill is complete.
	res, err = c.SetUser(ctx, "Luigi@pec.ordine.example", "new", false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "user" || res.Name != "luigi@pec.ordine.example" || res.To != "new" || res.User == nil || res.User.Overridden != "user" || res.User.DomainState != "migrating" {
		t.Errorf("user change %+v", res)
	}
	u, err := c.User(ctx, "luigi@pec.ordine.example")
	if err != nil {
		t.Fatal(err)
	}
	if u.State != "new" || u.Overridden != "user" || u.Old != "aruba" || u.New != "infocert" || u.Progress != nil {
		t.Errorf("user %+v", u)
	}
	d, err := c.Domain(ctx, dom)
	if err != nil {
		t.Fatal(err)
	}
	if d.UserOverrides != 1 || len(d.Users) != 1 || d.Users[0] != (admin.UserOverride{User: "luigi@pec.ordine.example", State: "new"}) {
		t.Errorf("domain users %+v", d)
	}

	// Forced, and the answer says what was left.
	res, err = c.SetDomain(ctx, dom, "new", true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Forced || res.Uncopied != 12 || res.To != "new" {
		t.Errorf("forced change %+v", res)
	}
	state("new")

	// Clearing the user: it follows the domain again.
	res, err = c.SetUser(ctx, "luigi@pec.ordine.example", "", false)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Cleared || res.User.Overridden != "domain" {
		t.Errorf("clear %+v", res)
	}
	if u, err := c.User(ctx, "luigi@pec.ordine.example"); err != nil || u.Overridden != "domain" || u.State != "new" {
		t.Errorf("user after clear %+v, %v", u, err)
	}

	// Rollback: new -> old refused, through migrating fine.
	_, err = c.SetDomain(ctx, dom, "old", false)
	wantRefused(err, 0, true)
	for _, s := range []string{"migrating", "old"} {
		if _, err := c.SetDomain(ctx, dom, s, false); err != nil {
			t.Fatal(err)
		}
		state(s)
	}

	logs := f.log.String()
	for _, want := range []string{
		`msg="route changed" kind=domain domain=pec.ordine.example from=old to=migrating`,
		`msg="route change refused" kind=domain domain=pec.ordine.example state=new reason="pec.ordine.example: 12 messages are not yet in new" uncopied=12`,
		`msg="route changed by force" kind=domain domain=pec.ordine.example from=migrating to=new cleared=false uncopied=12`,
		`msg="route changed" kind=user user=luigi@pec.ordine.example domain=pec.ordine.example from=new to=new cleared=true`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s:\n%s", want, logs)
		}
	}
}

func TestProgress(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, func(o *admin.Options) {
		o.Progress = func(_ context.Context, user string) (any, error) {
			switch user {
			case "mario@pec.ordine.example":
				return &store.Progress{User: user, State: "copying", MessagesDone: 3, MessagesTotal: 10}, nil
			case "broken@pec.ordine.example":
				return nil, errors.New("disk on fire")
			}
			return nil, fmt.Errorf("progress of %s: %w", user, store.ErrNotFound)
		}
	})
	c := f.client()
	u, err := c.User(ctx, "Mario@pec.ordine.example")
	if err != nil {
		t.Fatal(err)
	}
	var p store.Progress
	if err := json.Unmarshal(u.Progress, &p); err != nil || p.MessagesDone != 3 || p.State != "copying" {
		t.Errorf("progress %s: %+v %v", u.Progress, p, err)
	}
	if u, err := c.User(ctx, "luigi@pec.ordine.example"); err != nil || u.Progress != nil {
		t.Errorf("user without progress: %+v %v", u, err)
	}
	status, _, body := f.call(t, "GET", "/api/v1/users/mario@pec.ordine.example/progress", bearer, "")
	if status != 200 || !strings.Contains(body, `"messages_done": 3`) {
		t.Errorf("progress: %d %s", status, body)
	}
	status, _, body = f.call(t, "GET", "/api/v1/users/luigi@pec.ordine.example/progress", bearer, "")
	if status != 404 || !strings.Contains(body, "no copy progress recorded for luigi@pec.ordine.example") {
		t.Errorf("no progress: %d %s", status, body)
	}
	// A failure is a 500 whose details stay in the log.
	status, _, body = f.call(t, "GET", "/api/v1/users/broken@pec.ordine.example", bearer, "")
	if status != 500 || strings.Contains(body, "fire") {
		t.Errorf("broken progress: %d %s", status, body)
	}
	if !strings.Contains(f.log.String(), "disk on fire") {
		t.Errorf("the failure is not logged:\n%s", f.log.String())
	}
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	c := f.client()
	c.Token = "wrong"
	var e *admin.Error
	if _, err := c.Domains(ctx); !errors.As(err, &e) || e.Status != 401 {
		t.Errorf("wrong token: %v", err)
	}
	f.srv.Close()
	if _, err := f.client().Domains(ctx); err == nil || !strings.Contains(err.Error(), "is pecgate serve running?") {
		t.Errorf("server down: %v", err)
	}
	for addr, want := range map[string]string{
		"127.0.0.1:8080": "http://127.0.0.1:8080",
		":8080":          "http://127.0.0.1:8080",
		"0.0.0.0:9":      "http://127.0.0.1:9",
		"[::]:9":         "http://[::1]:9",
		"localhost:9":    "http://localhost:9",
	} {
		c, err := admin.NewClient(addr, "t")
		if err != nil || c.BaseURL != want {
			t.Errorf("NewClient(%q) = %+v, %v; want %s", addr, c, err, want)
		}
	}
	if _, err := admin.NewClient("nonsense", "t"); err == nil {
		t.Error("NewClient accepted an address without a port")
	}
}
