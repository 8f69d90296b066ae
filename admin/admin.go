// Package admin is pecgate's admin HTTP API, its status page and its
// client (Client, used by `pecgate route` and `pecgate status`).
//
// Routes (DESIGN.md, "Contracts that tests and operators rely on"):
//
//	GET /healthz                     200 "ok": the process answers; no token
//	GET /readyz                      200 "ok" or 503 with the reason (Options.Ready); no token
//	GET /metrics                     Prometheus text format (Options.Metrics), with the token; 501 when not kept
//	GET /                            the status page (page.go); the admin token through a login form and a session cookie
//	GET /api/v1/domains              every served domain (DomainList), with its copy progress (DomainProgress)
//	GET /api/v1/domains/{domain}     one domain, its user overrides, its progress and the members with problems (Domain)
//	PUT /api/v1/domains/{domain}     {"state":"migrating","force":false} (StateRequest) -> ChangeResult
//	GET /api/v1/users/{user}         a user's route and copy progress (User)
//	PUT /api/v1/users/{user}         the same body; {"state":""} removes the user's own state
//	GET /api/v1/users/{user}/progress  the copy progress alone (404 when not kept)
//	GET /api/v1/backup               a consistent copy of the store file, streamed (backup.go)
//	POST /api/v1/domains/{domain}/preflight  run the pre-flip check in the gateway (preflight.go)
//
// Copy progress (progress.go) is read from Options.Store: per user with
// measured rates, an ETA and a hint per problem (UserProgress), per domain
// its members counted by phase (DomainProgress).
//
// Every /api call needs "Authorization: Bearer TOKEN", compared in constant
// time; without it the answer is 401. Every error is one JSON document,
// Error, rendered in one place from the error a handler returns: 400 bad
// input, 401 no or wrong token, 404 unknown domain, user or path, 405
// method not allowed, 409 refused change (with the reason, and "uncopied"
// when messages are not yet in new), 500 anything else (details logged,
// not sent).
//
// The package changes state only through store.Router, which persists it;
// every change and refusal is logged here, with the caller's address.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// Options configure the admin handler.
type Options struct {
	// Router answers and changes the routing. Required.
	Router *store.Router
	// Token is the bearer token every /api call needs. "" refuses every
	// /api call (401).
	Token string
	// Log receives a line per change, refusal and internal error. nil
	// discards them.
	Log *slog.Logger
	// Ready says whether the gateway can serve (GET /readyz): nil when
	// ready, else why not. nil means always ready.
	Ready func(ctx context.Context) error
	// Progress returns a user's copy progress (any JSON-encodable value,
	// e.g. *store.Progress), or an error wrapping store.ErrNotFound when
	// none is recorded. nil means progress is not kept: GET
	// /api/v1/users/{user} leaves it out and .../progress answers 404.
	Progress func(ctx context.Context, user string) (any, error)
	// Store is where the back-fill engine keeps its progress records. When
	// set, the domain documents carry their progress (DomainProgress) and,
	// unless Progress is set, a user's progress is read from it
	// (UserProgress). nil: no progress but what Progress returns.
	Store store.Store
	// Metrics serves GET /metrics (promhttp on the gateway's registry).
	// nil answers 501.
	Metrics http.Handler
	// Preflight runs POST /api/v1/domains/{domain}/preflight (preflight.go).
	// nil answers 501.
	Preflight PreflightFunc
	// MemberAuth checks a member's address and password on the member
	// page (/me, member.go) as an IMAP login would. nil: no member page
	// (/me answers 404).
	MemberAuth MemberAuth
	// Credentials lets a member whose new provider uses vault credentials
	// set them on the member page. nil: no such form.
	Credentials CredentialSetter
	// History is the copy history the status page charts (its owner runs
	// History.Run). nil: the page shows no chart.
	History *History
	// Config is the gateway's configuration; the status page reads the
	// providers' quirks from it (app_passwords). nil: none known.
	Config *config.Config
}

// maxBody bounds a PUT body.
const maxBody = 64 << 10

type server struct {
	Options
	tokenHash [sha256.Size]byte
	rates     *rates // the last progress snapshots, for the rates
}

// handlerFunc is a handler that returns its error for serve to render.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// New returns the admin HTTP handler. It panics when opts.Router is nil.
func New(opts Options) http.Handler {
	if opts.Router == nil {
		panic("admin: nil Router")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &server{Options: opts, tokenHash: sha256.Sum256([]byte(opts.Token)), rates: newRates()}
	if s.Progress == nil && s.Store != nil {
		s.Progress = s.storeProgress
	}

	api := http.NewServeMux()
	api.Handle("GET /api/v1/domains", s.serve(s.getDomains))
	api.Handle("/api/v1/domains", s.notAllowed("GET"))
	api.Handle("GET /api/v1/domains/{domain}", s.serve(s.getDomain))
	api.Handle("PUT /api/v1/domains/{domain}", s.serve(s.putDomain))
	api.Handle("/api/v1/domains/{domain}", s.notAllowed("GET, PUT"))
	api.Handle("GET /api/v1/users/{user}", s.serve(s.getUser))
	api.Handle("PUT /api/v1/users/{user}", s.serve(s.putUser))
	api.Handle("/api/v1/users/{user}", s.notAllowed("GET, PUT"))
	api.Handle("GET /api/v1/users/{user}/progress", s.serve(s.getProgress))
	api.Handle("/api/v1/users/{user}/progress", s.notAllowed("GET"))
	s.routePageAPI(api)
	s.routeBackup(api)
	s.routePreflightAPI(api)
	api.Handle("/api/", s.serve(func(w http.ResponseWriter, r *http.Request) error {
		return errorf(http.StatusNotFound, "no such API path: %s", r.URL.Path)
	}))

	mux := http.NewServeMux()
	mux.Handle("/api/", s.auth(api))
	mux.Handle("GET /healthz", s.serve(func(w http.ResponseWriter, r *http.Request) error {
		return writeText(w, "ok\n")
	}))
	mux.Handle("/healthz", s.notAllowed("GET"))
	mux.Handle("GET /readyz", s.serve(s.getReady))
	mux.Handle("/readyz", s.notAllowed("GET"))
	// /metrics needs the token like the API (Prometheus sends it with
	// authorization: credentials_file): its labels name the Order's
	// domains and providers, and its counters what they do.
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.auth(s.Metrics))
	} else {
		mux.Handle("GET /metrics", s.auth(s.serve(func(w http.ResponseWriter, r *http.Request) error {
			return errorf(http.StatusNotImplemented, "metrics are not kept by this gateway")
		})))
	}
	mux.Handle("/metrics", s.notAllowed("GET"))
	s.routePage(mux)
	s.routeMember(mux)
	mux.Handle("/", s.serve(func(w http.ResponseWriter, r *http.Request) error {
		return errorf(http.StatusNotFound, "no such path: %s", r.URL.Path)
	}))
	return mux
}

// serve renders the error h returns, once, as an Error document.
func (s *server) serve(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

func (s *server) notAllowed(allow string) http.Handler {
	return s.serve(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Allow", allow)
		return errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow)
	})
}

// auth lets a request through only with the right bearer token (RFC 6750
// section 2.1; the scheme name is case-insensitive, RFC 9110 section 11.1).
func (s *server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		// Hashing first makes the comparison constant-time in the length too.
		got := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if s.Token == "" || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pecgate"`)
			s.writeError(w, r, errorf(http.StatusUnauthorized, "missing or wrong bearer token: send \"Authorization: Bearer TOKEN\" with the token from the file [admin] token_file names"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// toError turns any error into the Error document it is answered with.
func toError(err error) *Error {
	var ae *Error
	var re *store.RefusedError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &re):
		return &Error{Status: http.StatusConflict, Message: re.Reason, Uncopied: re.Uncopied, Forceable: true}
	case errors.Is(err, store.ErrBadState), errors.Is(err, store.ErrBadUser):
		return &Error{Status: http.StatusBadRequest, Message: strings.TrimPrefix(err.Error(), "store: ")}
	case errors.Is(err, store.ErrUnknownDomain):
		return &Error{Status: http.StatusNotFound, Message: strings.TrimPrefix(err.Error(), "store: ")}
	case errors.Is(err, store.ErrNoNewProvider):
		return &Error{Status: http.StatusConflict, Message: strings.TrimPrefix(err.Error(), "store: ")}
	}
	return &Error{Status: http.StatusInternalServerError, Message: "internal error (see the gateway's log)"}
}

func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := toError(err)
	if e.Status >= 500 && e.Status != http.StatusNotImplemented && e.Status != http.StatusServiceUnavailable {
		s.Log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
	}
	writeJSON(w, e.Status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err = w.Write(append(b, '\n'))
	return err
}

func writeText(w http.ResponseWriter, s string) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err := io.WriteString(w, s)
	return err
}

func (s *server) getReady(w http.ResponseWriter, r *http.Request) error {
	if s.Ready != nil {
		if err := s.Ready(r.Context()); err != nil {
			return errorf(http.StatusServiceUnavailable, "not ready: %v", err)
		}
	}
	return writeText(w, "ok\n")
}

func domainDoc(d store.DomainStatus) Domain {
	return Domain{
		Name: d.Name, State: d.State, ConfigState: d.Config, Overridden: d.Overridden,
		Old: d.Old, New: d.New, UserOverrides: d.Users,
	}
}

func (s *server) getDomains(w http.ResponseWriter, r *http.Request) error {
	list := DomainList{Domains: []Domain{}}
	for _, d := range s.Router.Domains() {
		list.Domains = append(list.Domains, domainDoc(d))
	}
	if err := s.fillProgress(r.Context(), list.Domains, false); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, list)
}

func (s *server) domain(name string) (*Domain, error) {
	st, err := s.Router.Domain(name)
	if err != nil {
		return nil, err
	}
	d := domainDoc(st)
	for _, u := range s.Router.Users(d.Name) {
		d.Users = append(d.Users, UserOverride{User: u.User, State: u.State})
	}
	return &d, nil
}

func (s *server) getDomain(w http.ResponseWriter, r *http.Request) error {
	d, err := s.domain(r.PathValue("domain"))
	if err != nil {
		return err
	}
	list := []Domain{*d}
	if err := s.fillProgress(r.Context(), list, true); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, list[0])
}

// user returns the route of user, and its progress when withProgress.
func (s *server) user(ctx context.Context, user string, withProgress bool) (*User, error) {
	if !strings.Contains(user, "@") {
		return nil, fmt.Errorf("%w: %q", store.ErrBadUser, user)
	}
	rt := s.Router.Route(user)
	if rt == nil {
		return nil, errorf(http.StatusNotFound, "domain of %q is not served by this gateway", user)
	}
	ds, err := s.Router.Domain(rt.Domain.Name)
	if err != nil {
		return nil, err
	}
	u := &User{
		User: store.CanonicalUser(user), Domain: rt.Domain.Name, State: rt.State, DomainState: ds.State,
		Overridden: rt.Overridden, Old: rt.Old, New: rt.New,
	}
	if withProgress && s.Progress != nil {
		p, err := s.Progress(ctx, u.User)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, fmt.Errorf("progress of %s: %w", u.User, err)
		default:
			if u.Progress, err = json.Marshal(p); err != nil {
				return nil, fmt.Errorf("encode progress of %s: %w", u.User, err)
			}
		}
	}
	return u, nil
}

func (s *server) getUser(w http.ResponseWriter, r *http.Request) error {
	u, err := s.user(r.Context(), r.PathValue("user"), true)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, u)
}

func (s *server) getProgress(w http.ResponseWriter, r *http.Request) error {
	u, err := s.user(r.Context(), r.PathValue("user"), false)
	if err != nil {
		return err
	}
	if s.Progress == nil {
		return errorf(http.StatusNotFound, "copy progress is not kept by this gateway (no back-fill is running)")
	}
	p, err := s.Progress(r.Context(), u.User)
	if errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "no copy progress recorded for %s", u.User)
	}
	if err != nil {
		return fmt.Errorf("progress of %s: %w", u.User, err)
	}
	return writeJSON(w, http.StatusOK, p)
}

// readState decodes a StateRequest body: one JSON object, known fields
// only, "state" present.
func readState(w http.ResponseWriter, r *http.Request) (StateRequest, error) {
	var req StateRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, errorf(http.StatusBadRequest, "bad request body, want {\"state\":\"old|migrating|new\",\"force\":false}: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, errorf(http.StatusBadRequest, "bad request body: more than one JSON value")
	}
	if req.State == nil {
		return req, errorf(http.StatusBadRequest, "bad request body: \"state\" is required (old, migrating or new)")
	}
	return req, nil
}

func (s *server) putDomain(w http.ResponseWriter, r *http.Request) error {
	req, err := readState(w, r)
	if err != nil {
		return err
	}
	name := r.PathValue("domain")
	c, err := s.Router.SetDomain(r.Context(), name, *req.State, req.Force)
	s.logChange(r, "domain", name, *req.State, c, err)
	if err != nil {
		return err
	}
	res := changeDoc(c)
	if res.Domain, err = s.domain(c.Name); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

func (s *server) putUser(w http.ResponseWriter, r *http.Request) error {
	req, err := readState(w, r)
	if err != nil {
		return err
	}
	name := r.PathValue("user")
	var c *store.Change
	if *req.State == "" {
		c, err = s.Router.ClearUser(r.Context(), name, req.Force)
	} else {
		c, err = s.Router.SetUser(r.Context(), name, *req.State, req.Force)
	}
	s.logChange(r, "user", name, *req.State, c, err)
	if err != nil {
		return err
	}
	res := changeDoc(c)
	if res.User, err = s.user(r.Context(), c.Name, false); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}

func changeDoc(c *store.Change) ChangeResult {
	return ChangeResult{Kind: c.Kind, Name: c.Name, From: c.From, To: c.To, Cleared: c.Cleared, Forced: c.Forced, Uncopied: c.Uncopied}
}

// logChange logs a change, a forced change (warning) or a refusal.
func (s *server) logChange(r *http.Request, kind, name, state string, c *store.Change, err error) {
	// who names the flipped domain or user with the keys every other log
	// line uses (domain, user), so one filter finds a member's whole story.
	who := func(kind, name string) []any {
		if kind == "user" {
			_, domain, _ := strings.Cut(strings.ToLower(name), "@")
			return []any{"kind", kind, "user", strings.ToLower(name), "domain", domain}
		}
		return []any{"kind", kind, "domain", strings.ToLower(name)}
	}
	var re *store.RefusedError
	switch {
	case errors.As(err, &re):
		s.Log.Warn("route change refused", append(who(kind, name), "state", state, "reason", re.Reason, "uncopied", re.Uncopied, "remote", r.RemoteAddr)...)
	case err != nil:
		// Bad input is the caller's problem; a store failure is logged by writeError.
	case c.Forced:
		s.Log.Warn("route changed by force", append(who(c.Kind, c.Name), "from", c.From, "to", c.To, "cleared", c.Cleared, "uncopied", c.Uncopied, "remote", r.RemoteAddr)...)
	default:
		s.Log.Info("route changed", append(who(c.Kind, c.Name), "from", c.From, "to", c.To, "cleared", c.Cleared, "remote", r.RemoteAddr)...)
	}
}
