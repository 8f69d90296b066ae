package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

// Errors of LoginChecker.Check; test with errors.Is.
var (
	// ErrLoginThrottled: too many logins failed lately from the address or
	// for the account; nothing was asked of any provider.
	ErrLoginThrottled = errors.New("proxy: too many failed logins; wait and retry later")
	// ErrLoginRefused: a wrong address or password, or a domain the gateway
	// does not serve. The two are one error on purpose: whoever asks learns
	// nothing about which addresses exist.
	ErrLoginRefused = errors.New("proxy: wrong address or password")
	// ErrLoginUnavailable: a provider could not be reached or failed while
	// logging in; the password may be right.
	ErrLoginUnavailable = errors.New("proxy: the mail provider is unavailable")
	// ErrNewCredential: the member's password is right (the old provider or
	// the pinned verifier accepted it), but the new provider, which uses
	// vault credentials, has none for the member or refused them. An IMAP
	// login fails then; the member page lets the member in, so that they
	// can set those credentials.
	ErrNewCredential = errors.New("proxy: password right, but the new provider's vault credentials are missing or refused")
)

// loginCheckTimeout bounds one Check, as a session bounds its LOGIN.
const loginCheckTimeout = 45 * time.Second

// LoginChecker checks a member's address and password as an IMAP LOGIN
// through the gateway would (imapSession.Login): the same throttling,
// through the AuthLimiter of Options.Limiter, so failures here and on
// IMAP or SMTP count together; the same routing (an unknown domain is a
// plain refusal and dials nothing, invariant 7); the same logins upstream
// for the member's state, logged out at once. Like a session it pins a
// verifier of a password the old provider accepted and tells the back-fill
// (Options.Backfill) the password and that the member is active.
//
// It differs from a session in two ways, both to the member's benefit:
// with an old provider that does not see the client's password (master or
// vault) in state migrating, or old after a rollback, the password is
// checked against the pinned verifier first, as in state new (a session
// logs in to old on the provider's credentials alone); and when the password is right but the
// new provider's vault credentials are missing or refused, Check answers
// ErrNewCredential rather than a refusal, and counts no failure.
//
// It is safe for concurrent use.
type LoginChecker struct {
	opts Options
	auth *authn
}

// NewLoginChecker returns a checker over opts: Config, Backends and
// Limiter are required (pass the Limiter the IMAP and SMTP servers use);
// Router, Maps, Secrets, Backfill and Log as for NewIMAP. It panics
// without a Limiter: a checker with a limiter of its own would let
// whoever is throttled on IMAP go on guessing here.
func NewLoginChecker(opts Options) *LoginChecker {
	if opts.Limiter == nil {
		panic("proxy: NewLoginChecker needs the Limiter the IMAP and SMTP servers share")
	}
	c := &LoginChecker{opts: opts}
	c.auth = newAuthn(&c.opts)
	return c
}

// Check authenticates user with password, ip being the client's address
// (for the limiter). It returns nil when an IMAP login would succeed, or
// an error wrapping exactly one of ErrLoginThrottled, ErrLoginRefused,
// ErrLoginUnavailable or ErrNewCredential (see each). The error's text
// may name providers and their replies: log it, do not show it.
func (c *LoginChecker) Check(ctx context.Context, ip, user, password string) error {
	ctx, cancel := context.WithTimeout(ctx, loginCheckTimeout)
	defer cancel()
	limiter, log := c.opts.Limiter, c.opts.logger().With("proto", "member", "remote", ip, "user", user)
	if !limiter.Allowed(ip, user) {
		log.Warn("login refused", "reason", "too many failures")
		return ErrLoginThrottled
	}
	route := c.opts.resolve(user)
	if route == nil {
		limiter.Failed(ip, user)
		log.Info("login refused", "reason", "unknown domain")
		return ErrLoginRefused
	}
	log = log.With("domain", route.Domain.Name, "provider", route.Provider.Name, "state", route.State)
	err := c.login(ctx, route, user, password)
	switch {
	case errors.Is(err, ErrNewCredential):
		// The member's own password was accepted.
		limiter.Succeeded(user)
		log.Warn("login accepted; the new provider's vault credentials are missing or refused", "err", err)
		c.opts.remember(route, user, password)
		return err
	case err != nil && backend.IsAuthFailure(err):
		limiter.Failed(ip, user)
		log.Info("login refused", "reason", "upstream refused", "err", err)
		return fmt.Errorf("%w (%v)", ErrLoginRefused, err)
	case err != nil:
		log.Warn("login failed", "reason", "upstream unavailable", "err", err)
		return fmt.Errorf("%w (%v)", ErrLoginUnavailable, err)
	}
	limiter.Succeeded(user)
	if route.State == config.StateOld && route.New != nil {
		// As a session does: pin the password old accepts now, so the
		// member keeps it after old is gone.
		c.auth.pin(ctx, user, password)
	}
	c.opts.remember(route, user, password)
	log.Info("login")
	return nil
}

// login logs in where a session of route's state would and logs out
// again. Its error is the upstream one (backend.IsAuthFailure tells a
// refusal), or wraps ErrNewCredential.
func (c *LoginChecker) login(ctx context.Context, route *Route, user, password string) error {
	secrets := c.opts.Secrets
	if route.State == config.StateOld {
		var up *backend.IMAPConn
		var err error
		if c.hasMaps(ctx, user, route) {
			// After a rollback a session logs in to old as the old
			// provider's credential strategy says; one that does not
			// see the client's password checks it first.
			if route.Old.Config().Auth != config.AuthPassthrough {
				if err := c.auth.check(ctx, route, user, password); err != nil {
					return err
				}
			}
			up, err = route.Old.LoginUser(ctx, user, password, secrets, nil)
		} else {
			up, err = route.Provider.LoginIMAP(ctx, user, password, nil)
		}
		if err != nil {
			return err
		}
		up.Logout()
		return nil
	}
	checked := false // the member's own password has been verified
	if route.State == config.StateMigrating {
		if route.Old.Config().Auth != config.AuthPassthrough {
			if err := c.auth.check(ctx, route, user, password); err != nil {
				return err
			}
		}
		up, err := route.Old.LoginUser(ctx, user, password, secrets, nil)
		if err != nil {
			return err
		}
		up.Logout()
		if route.Old.Config().Auth == config.AuthPassthrough {
			c.auth.pin(ctx, user, password)
		}
		checked = true
	} else if route.New.Config().Auth != config.AuthPassthrough {
		if err := c.auth.check(ctx, route, user, password); err != nil {
			return err
		}
		checked = true
	}
	up, err := route.New.LoginUser(ctx, user, password, secrets, nil)
	if err != nil {
		if checked && route.New.Config().Auth == config.AuthVault &&
			(errors.Is(err, backend.ErrNoCredential) || backend.IsAuthFailure(err)) {
			return fmt.Errorf("%w: %v", ErrNewCredential, err)
		}
		return err
	}
	up.Logout()
	return nil
}

// hasMaps reports whether user has UID maps, as imapSession.hasMaps: a
// domain rolled back to old is served through them.
func (c *LoginChecker) hasMaps(ctx context.Context, user string, route *Route) bool {
	if route.New == nil || c.opts.Maps == nil {
		return false
	}
	var names []string
	c.opts.Maps.Store().View(ctx, func(tx store.Tx) error {
		names, _ = store.ListMaps(tx, strings.TrimSpace(user))
		return nil
	})
	return len(names) > 0
}
