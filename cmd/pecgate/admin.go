package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	gosync "sync"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// startAdmin serves the admin API on [server] admin until stop is called
// or ctx ends; addr is the bound address. It keeps no progress and is
// always ready: startAdminFor with no store and no providers.
func startAdmin(ctx context.Context, cfg *config.Config, router *store.Router, log *slog.Logger) (addr string, stop func(), err error) {
	return startAdminFor(ctx, cfg, adminDeps{Router: router}, log)
}

// adminDeps are what the admin listener serves from. Router is required;
// every other field may be nil.
type adminDeps struct {
	Router *store.Router
	// Store is where the copy progress is read; with Backends, what GET
	// /readyz checks.
	Store    store.Store
	Backends *backend.Set
	// Metrics serves GET /metrics; nil answers 501.
	Metrics http.Handler
	// Preflight runs preflight checks for `pecgate preflight` (preflight.go
	// gatewayPreflight); nil answers 501.
	Preflight admin.PreflightFunc
	// MemberAuth and Credentials serve the member page (/me); nil
	// MemberAuth: no member page on the admin listener.
	MemberAuth  admin.MemberAuth
	Credentials admin.CredentialSetter
}

// startAdminFor serves the admin API on [server] admin until stop is
// called or ctx ends; addr is the bound address. With the listener
// disabled ("") it returns "", a no-op stop and no error. The token comes
// from [admin] token_file, trimmed; an empty token is an error, a file
// that group or others may read only a warning. deps.Store, when not nil,
// is where the copy progress is read; deps.Store and deps.Backends, when
// not nil, are what GET /readyz checks (ready).
func startAdminFor(ctx context.Context, cfg *config.Config, deps adminDeps, log *slog.Logger) (addr string, stop func(), err error) {
	router, st, backends := deps.Router, deps.Store, deps.Backends
	listen := config.Addr(cfg.Server.Admin)
	if listen == "" {
		return "", func() {}, nil
	}
	token, err := readToken(cfg.Admin.TokenFile, log)
	if err != nil {
		return "", nil, err
	}
	opts := admin.Options{Router: router, Token: token, Log: log, Store: st, Metrics: deps.Metrics, Preflight: deps.Preflight,
		MemberAuth: deps.MemberAuth, Credentials: deps.Credentials, Config: cfg}
	if st != nil || backends != nil {
		opts.Ready = ready(router, st, backends)
	}
	if st != nil {
		// The status page's chart: samples of the copy, every 30 s.
		opts.History = admin.NewHistory(admin.HistoryOptions{Router: router, Store: st, Log: log})
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return "", nil, fmt.Errorf("server.admin: %w", err)
	}
	srv := &http.Server{
		Handler:           admin.New(opts),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second, // a member-page login may wait 45 s for a provider
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		log.Info("listening", "listener", "admin", "addr", ln.Addr().String())
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		if opts.History != nil {
			opts.History.Run(ctx)
		}
	}()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		<-ctx.Done()
		// Admin calls are short: wait a little for them, then cut.
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	return ln.Addr().String(), func() { cancel(); <-shut; <-done; <-sampled }, nil
}

// readToken reads the admin bearer token from path.
// minTokenLen is the admin token length below which serve warns.
const minTokenLen = 32

func readToken(path string, log *slog.Logger) (string, error) {
	if path == "" {
		return "", errors.New("admin.token_file: required while server.admin is enabled")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("admin.token_file: %s is empty; put a long random token in it (e.g. openssl rand -hex 32 > %s)", path, path)
	}
	if len(token) < minTokenLen {
		// The API has no throttle of its own (one would let anyone on the
		// machine lock the CLI out): a long token is what stops guessing.
		log.Warn("admin token is short; use a long random one (openssl rand -hex 32)", "file", path, "length", len(token), "want_at_least", minTokenLen)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("admin token file is readable by group or others; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	return token, nil
}

// readyTimeout bounds one GET /readyz.
const readyTimeout = 5 * time.Second

// ready returns the check of GET /readyz: the store answers a read, and
// the IMAP endpoint of every provider the routing uses now (a domain's or
// a user's old provider unless it is in state new, its new one unless it
// is in state old) accepts a TCP connection and the TLS handshake
// (implicit or STARTTLS) and greets; then pecgate says LOGOUT. A provider
// whose connection cap is reached counts as up: its connections are in
// use. Everything is checked at once, within readyTimeout. st or backends
// nil: that part is not checked.
func ready(router *store.Router, st store.Store, backends *backend.Set) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, readyTimeout)
		defer cancel()
		if st != nil {
			err := st.View(ctx, func(tx store.Tx) error {
				_, err := tx.Get(store.BucketOverrides, "domain:")
				return err
			})
			if err != nil {
				return fmt.Errorf("store: %w", err)
			}
		}
		if backends == nil {
			return nil
		}
		names := providersInUse(router)
		errs := make([]error, len(names))
		var wg gosync.WaitGroup
		for i, name := range names {
			wg.Go(func() { errs[i] = probeIMAP(ctx, backends.Provider(name), name) })
		}
		wg.Wait()
		var msgs []string
		for _, err := range errs {
			if err != nil {
				msgs = append(msgs, err.Error())
			}
		}
		if len(msgs) > 0 {
			return errors.New(strings.Join(msgs, "; "))
		}
		return nil
	}
}

// providersInUse returns the providers the routing uses now, sorted.
func providersInUse(router *store.Router) []string {
	var out []string
	use := func(state, old, new string) {
		if state != config.StateNew {
			out = append(out, old)
		}
		if state != config.StateOld && new != "" {
			out = append(out, new)
		}
	}
	for _, d := range router.Domains() {
		use(d.State, d.Old, d.New)
		for _, u := range router.Users(d.Name) {
			use(u.State, d.Old, d.New)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// probeIMAP dials p's IMAP endpoint and logs out, within ctx.
func probeIMAP(ctx context.Context, p *backend.Provider, name string) error {
	if p == nil {
		return fmt.Errorf("provider %s: not configured", name)
	}
	c, err := p.DialIMAP(ctx, nil)
	if errors.Is(err, backend.ErrBusy) {
		return nil
	}
	var be *backend.Error
	if errors.As(err, &be) {
		return err // names the provider and the step
	}
	if err != nil {
		return fmt.Errorf("provider %s: %w", name, err)
	}
	// LOGOUT is polite, not needed: Close cuts it short when ctx ends.
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Logout()
	}()
	select {
	case <-done:
	case <-ctx.Done():
		c.Close()
		<-done
	}
	return nil
}
