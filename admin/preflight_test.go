package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// pfServer serves the admin API with preflight run by fn (nil: none).
func pfServer(t *testing.T, fn admin.PreflightFunc) *httptest.Server {
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
	srv := httptest.NewServer(admin.New(admin.Options{Router: r, Token: token, Preflight: fn}))
	t.Cleanup(srv.Close)
	return srv
}

func pfCall(t *testing.T, srv *httptest.Server, method, path, auth, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
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
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPreflightRoute: POST /api/v1/domains/{domain}/preflight needs the
// token, refuses bad input with the JSON error, maps the runner's errors,
// hands it the request and answers its report.
func TestPreflightRoute(t *testing.T) {
	var (
		mu  gosync.Mutex
		got []admin.PreflightRequest
	)
	srv := pfServer(t, func(ctx context.Context, domain string, req admin.PreflightRequest) (any, error) {
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		switch domain {
		case "ignoto.example":
			return nil, fmt.Errorf("%w: %s", store.ErrUnknownDomain, domain)
		case "solo.example":
			return nil, fmt.Errorf("%w: %s", store.ErrNoNewProvider, domain)
		}
		return map[string]any{"domain": domain, "ok": false}, nil
	})
	const path = "/api/v1/domains/pec.ordine.example/preflight"
	for _, tc := range []struct {
		name, method, path, auth, body string
		status                         int
		want                           string
	}{
		{"no token", "POST", path, "", "{}", 401, `"error": "missing or wrong bearer token`},
		{"wrong token", "POST", path, "Bearer nope", "{}", 401, "bearer token"},
		{"GET", "GET", path, bearer, "", 405, "allowed: POST"},
		{"bad JSON", "POST", path, bearer, "{", 400, "bad request body"},
		{"unknown field", "POST", path, bearer, `{"userz":[]}`, 400, "unknown field"},
		{"two values", "POST", path, bearer, "{} {}", 400, "more than one JSON value"},
		{"negative concurrency", "POST", path, bearer, `{"concurrency":-1}`, 400, "concurrency -1"},
		{"user without @", "POST", path, bearer, `{"users":[{"user":"mario"}]}`, 400, `users[0]: \"mario\" is not an address`},
		{"unknown domain", "POST", "/api/v1/domains/ignoto.example/preflight", bearer, "{}", 404, "domain not served"},
		{"no new provider", "POST", "/api/v1/domains/solo.example/preflight", bearer, "{}", 409, "no new provider"},
		{"empty body", "POST", path, bearer, "", 200, `"domain": "pec.ordine.example"`},
		{"members and passwords", "POST", path, bearer, `{"users":[{"user":"a@pec.ordine.example","password":"pw"}],"no_create":true,"concurrency":3}`, 200, `"ok": false`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := pfCall(t, srv, tc.method, tc.path, tc.auth, tc.body)
			if status != tc.status || !strings.Contains(body, tc.want) {
				t.Fatalf("%s %s: %d %s; want %d and %q", tc.method, tc.path, status, body, tc.status, tc.want)
			}
			if status != 200 {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
					t.Errorf("not the JSON error document: %s", body)
				}
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	// Only the requests that passed validation reached the runner.
	if len(got) != 4 {
		t.Fatalf("runner called %d times, want 4: %+v", len(got), got)
	}
	last := got[3]
	if len(last.Users) != 1 || last.Users[0] != (admin.PreflightUser{User: "a@pec.ordine.example", Password: "pw"}) || !last.NoCreate || last.Concurrency != 3 {
		t.Errorf("request reached the runner as %+v", last)
	}
}

// TestPreflightRouteOneAtATime: a second preflight while one runs is
// refused with 409; the client waits for the first one's report.
func TestPreflightRouteOneAtATime(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	srv := pfServer(t, func(ctx context.Context, domain string, req admin.PreflightRequest) (any, error) {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return map[string]any{"domain": domain, "ok": true}, nil
	})
	c := &admin.Client{BaseURL: srv.URL, Token: token}
	errc := make(chan error, 1)
	var first struct {
		Domain string
		OK     bool
	}
	go func() {
		errc <- c.Preflight(context.Background(), "pec.ordine.example", admin.PreflightRequest{}, &first)
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first preflight did not start")
	}
	status, body := pfCall(t, srv, "POST", "/api/v1/domains/pec.ordine.example/preflight", bearer, "{}")
	if status != 409 || !strings.Contains(body, "already running") {
		t.Errorf("second preflight: %d %s", status, body)
	}
	close(release)
	if err := <-errc; err != nil || first.Domain != "pec.ordine.example" || !first.OK {
		t.Errorf("first preflight: %v, %+v", err, first)
	}
}

// TestPreflightRouteNotWired: a gateway without preflight answers 501.
func TestPreflightRouteNotWired(t *testing.T) {
	srv := pfServer(t, nil)
	status, body := pfCall(t, srv, "POST", "/api/v1/domains/pec.ordine.example/preflight", bearer, "{}")
	if status != 501 || !strings.Contains(body, "does not run preflight") {
		t.Errorf("%d %s", status, body)
	}
	var e *admin.Error
	err := (&admin.Client{BaseURL: srv.URL, Token: token}).Preflight(context.Background(), "pec.ordine.example", admin.PreflightRequest{}, &struct{}{})
	if !errors.As(err, &e) || e.Status != 501 {
		t.Errorf("client: %v", err)
	}
}
