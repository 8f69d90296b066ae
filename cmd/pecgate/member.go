package main

// The member self-service page's wiring (issue 5, item 3): admin declares
// what it needs (admin.MemberAuth, admin.CredentialSetter); this file
// implements them with the gateway's own login check (proxy.LoginChecker,
// sharing the IMAP and SMTP servers' AuthLimiter) and the vault, and
// serves /me on a TLS listener of its own when [server] member is set.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/proxy"
	"github.com/pecgate/pecgate/store"
)

// memberAuth is admin.MemberAuth over a proxy.LoginChecker.
type memberAuth struct{ c *proxy.LoginChecker }

var _ admin.MemberAuth = memberAuth{}

// CheckLogin implements admin.MemberAuth.
func (a memberAuth) CheckLogin(ctx context.Context, ip, user, password string) error {
	err := a.c.Check(ctx, ip, user, password)
	for _, m := range []struct{ from, to error }{
		{proxy.ErrLoginThrottled, admin.ErrMemberThrottled},
		{proxy.ErrLoginRefused, admin.ErrMemberRefused},
		{proxy.ErrLoginUnavailable, admin.ErrMemberUnavailable},
		{proxy.ErrNewCredential, admin.ErrMemberNewCredential},
	} {
		if errors.Is(err, m.from) {
			return fmt.Errorf("%w: %v", m.to, err)
		}
	}
	return err
}

// vaultSetter is admin.CredentialSetter: it stores a member's credentials
// for their new provider in the vault once that provider accepted them.
type vaultSetter struct {
	router   *store.Router
	backends *backend.Set
	vault    *store.Vault
	st       store.Store
	// limiter throttles refused credentials per client IP and per (new
	// provider, member), so that nobody locks a member's new mailbox by
	// guessing; it is the gateway's, so the IP's failures count together.
	limiter *proxy.AuthLimiter
	// backfill, when not nil, is told that the member may be copied now.
	backfill proxy.Backfill
	log      *slog.Logger
}

var _ admin.CredentialSetter = (*vaultSetter)(nil)

// newProvider returns the name and the provider of user's new provider
// when it uses the vault.
func (v *vaultSetter) newProvider(user string) (*store.Route, *backend.Provider) {
	if v == nil || v.vault == nil {
		return nil, nil
	}
	rt := v.router.Route(user)
	if rt == nil || rt.New == "" {
		return nil, nil
	}
	p := v.backends.Provider(rt.New)
	if p == nil || p.Config().Auth != config.AuthVault {
		return nil, nil
	}
	return rt, p
}

// NewProviderUsesVault implements admin.CredentialSetter.
func (v *vaultSetter) NewProviderUsesVault(user string) bool {
	_, p := v.newProvider(user)
	return p != nil
}

// credentialTimeout bounds the trial login of SetCredential.
const credentialTimeout = 45 * time.Second

// SetCredential implements admin.CredentialSetter: a real IMAP login to
// the new provider as username first; only when it succeeds are the
// credentials sealed into the vault.
func (v *vaultSetter) SetCredential(ctx context.Context, ip, user, username, password string) error {
	rt, p := v.newProvider(user)
	if p == nil {
		return fmt.Errorf("%s: the new provider does not use vault credentials", user)
	}
	key := "vault " + rt.New + " " + store.CanonicalUser(user)
	if !v.limiter.Allowed(ip, key) {
		v.log.Warn("member vault credentials not tried", "user", user, "provider", rt.New, "reason", "too many failures", "remote", ip)
		return admin.ErrMemberThrottled
	}
	ctx, cancel := context.WithTimeout(ctx, credentialTimeout)
	defer cancel()
	c, err := p.LoginIMAP(ctx, username, password, nil)
	if err != nil {
		if backend.IsAuthFailure(err) {
			v.limiter.Failed(ip, key)
			v.log.Info("member vault credentials refused", "user", user, "provider", rt.New, "remote", ip, "err", err)
			return fmt.Errorf("%w: %v", admin.ErrMemberRefused, err)
		}
		return fmt.Errorf("%w: %v", admin.ErrMemberUnavailable, err)
	}
	c.Logout()
	v.limiter.Succeeded(key)
	err = v.st.Update(ctx, func(tx store.Tx) error {
		return v.vault.Put(tx, rt.New, user, username, password)
	})
	if err != nil {
		return fmt.Errorf("store the vault credentials of %s for %s: %w", user, rt.New, err)
	}
	v.log.Info("vault credentials stored", "user", user, "provider", rt.New, "by", "member", "remote", ip)
	if v.backfill != nil && rt.State == config.StateMigrating {
		// The copy that waited for these credentials starts now (the
		// engine's Retry), not after its back-off.
		if r, ok := v.backfill.(interface{ Retry(string) }); ok {
			r.Retry(user)
		} else {
			v.backfill.Touch(user)
		}
	}
	return nil
}

// memberDeps builds what the member page needs from the gateway's parts:
// the login check over the same proxy options (and so the same limiter)
// as the IMAP and SMTP servers, and the vault setter when a vault is
// configured (vault nil: none).
func memberDeps(opts proxy.Options, router *store.Router, st store.Store, vault *store.Vault) (admin.MemberAuth, admin.CredentialSetter) {
	auth := memberAuth{proxy.NewLoginChecker(opts)}
	if vault == nil {
		return auth, nil
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return auth, &vaultSetter{router: router, backends: opts.Backends, vault: vault, st: st,
		limiter: opts.Limiter, backfill: opts.Backfill, log: log}
}

// startMember serves the member page alone on [server] member, over TLS
// with tlsCfg, until stop is called or ctx ends; addr is the bound
// address. With the listener disabled ("") it returns "", a no-op stop and
// no error.
func startMember(ctx context.Context, cfg *config.Config, opts admin.Options, tlsCfg *tls.Config, log *slog.Logger) (addr string, stop func(), err error) {
	if cfg.Server.Member == "" {
		return "", func() {}, nil
	}
	ln, err := net.Listen("tcp", cfg.Server.Member)
	if err != nil {
		return "", nil, fmt.Errorf("server.member: %w", err)
	}
	srv := &http.Server{
		Handler:           admin.NewMember(opts),
		TLSConfig:         tlsCfg.Clone(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A login or a credential check waits for a provider (45 s at most).
		WriteTimeout:   60 * time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		log.Info("listening", "listener", "member", "addr", ln.Addr().String())
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("member listener failed", "err", err)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	return ln.Addr().String(), func() { cancel(); <-shut; <-done }, nil
}
