package admin

// Preflight inside the gateway (issue 5, `pecgate preflight`): the
// embedded store allows one process, so while the gateway runs the CLI asks
// the gateway, which has the store (known members, folder maps, the vault),
// to run the check:
//
//	POST /api/v1/domains/{domain}/preflight   PreflightRequest -> the report
//
// The answer is 200 with the report (sync/preflight.Report as JSON; "ok"
// says whether the flip is safe) whatever the members' verdicts; 400 for a
// bad body or a user of another domain, 404 for a domain not served, 409
// for a domain without a new provider or while another preflight runs, 501
// when the gateway was started without preflight support
// (Options.Preflight nil). The check takes as long as it takes (one login
// per member and provider): the handler lifts the server's write timeout
// for its answer, and ends the check when the caller goes away.
//
// The body may hold members' passwords (for providers with auth =
// "passthrough"): it is never logged, and the admin listener is loopback
// and token-protected.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PreflightRequest is the body of POST /api/v1/domains/{domain}/preflight.
// Every field is optional; an empty body ({}) checks every member the
// store knows.
type PreflightRequest struct {
	// Users are the members to check; none means every member the store
	// knows.
	Users []PreflightUser `json:"users,omitempty"`
	// NoCreate leaves folder names unchecked (no CREATE on new).
	NoCreate bool `json:"no_create,omitempty"`
	// Concurrency caps the members checked at once per provider; 0 means
	// each provider's copy_connections.
	Concurrency int `json:"concurrency,omitempty"`
}

// PreflightUser is one member to check, with the member's own password for
// providers with auth = "passthrough" ("" when not known).
type PreflightUser struct {
	User     string `json:"user"`
	Password string `json:"password,omitempty"`
}

// PreflightFunc runs a preflight of domain and returns its report (any
// JSON-encodable value). Errors wrapping store.ErrUnknownDomain answer
// 404, store.ErrNoNewProvider 409; an *Error is answered as it is.
type PreflightFunc func(ctx context.Context, domain string, req PreflightRequest) (any, error)

// maxPreflightBody bounds a preflight request: thousands of members with
// passwords.
const maxPreflightBody = 8 << 20

// preflightTimeout bounds one preflight run inside the gateway.
const preflightTimeout = 2 * time.Hour

// preflightRunning allows one preflight at a time per handler (*server ->
// *atomic.Bool): each one takes provider connections from the gateway's
// own. A handler's entry lives as long as the process (one per New).
var preflightRunning sync.Map

func (s *server) preflightLock() *atomic.Bool {
	v, _ := preflightRunning.LoadOrStore(s, new(atomic.Bool))
	return v.(*atomic.Bool)
}

// routePreflightAPI registers POST /api/v1/domains/{domain}/preflight
// (under /api, behind the token).
func (s *server) routePreflightAPI(api *http.ServeMux) {
	api.Handle("POST /api/v1/domains/{domain}/preflight", s.serve(s.postPreflight))
	api.Handle("/api/v1/domains/{domain}/preflight", s.notAllowed("POST"))
}

func (s *server) postPreflight(w http.ResponseWriter, r *http.Request) error {
	if s.Preflight == nil {
		return errorf(http.StatusNotImplemented, "this gateway does not run preflight checks: stop it and run pecgate preflight, which then reads the store itself")
	}
	var req PreflightRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPreflightBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		return errorf(http.StatusBadRequest, "bad request body, want {\"users\":[{\"user\":\"...\",\"password\":\"...\"}],\"no_create\":false,\"concurrency\":0} (every field optional): %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errorf(http.StatusBadRequest, "bad request body: more than one JSON value")
	}
	if req.Concurrency < 0 {
		return errorf(http.StatusBadRequest, "concurrency %d: want 0 (each provider's copy_connections) or more", req.Concurrency)
	}
	for i, u := range req.Users {
		if !strings.Contains(u.User, "@") {
			return errorf(http.StatusBadRequest, "users[%d]: %q is not an address", i, u.User)
		}
	}
	running := s.preflightLock()
	if !running.CompareAndSwap(false, true) {
		return errorf(http.StatusConflict, "a preflight is already running in this gateway: wait for it to end")
	}
	defer running.Store(false)
	// The server's WriteTimeout would cut a long check's answer.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(preflightTimeout + time.Minute))
	ctx, cancel := context.WithTimeout(r.Context(), preflightTimeout)
	defer cancel()
	domain := r.PathValue("domain")
	s.Log.Info("preflight started", "domain", domain, "users", len(req.Users), "remote", r.RemoteAddr)
	rep, err := s.Preflight(ctx, domain, req)
	if err != nil {
		s.Log.Warn("preflight failed", "domain", domain, "err", err, "remote", r.RemoteAddr)
		return err
	}
	s.Log.Info("preflight done", "domain", domain, "remote", r.RemoteAddr)
	return writeJSON(w, http.StatusOK, rep)
}

// Preflight asks the gateway to check the members of domain (see
// PreflightRequest) and decodes its report into out (a
// *preflight.Report). It waits as long as the check takes, or until ctx
// ends: unlike the other calls it has no 30 s timeout unless c.HTTP sets
// one.
func (c *Client) Preflight(ctx context.Context, domain string, req PreflightRequest, out any) error {
	cc := *c
	if cc.HTTP == nil {
		cc.HTTP = &http.Client{}
	}
	return cc.do(ctx, http.MethodPost, "/api/v1/domains/"+url.PathEscape(domain)+"/preflight", req, out)
}
