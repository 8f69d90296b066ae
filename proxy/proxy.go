// Package proxy serves clients: IMAP (go-imap's imapserver, one Session per
// client connection) and SMTP submission (go-smtp). It resolves a login to
// its domain and provider and talks upstream only through package backend.
//
// Implementation notes:
//   - Authentication happens only under TLS (implicit or after STARTTLS);
//     imapserver and go-smtp both refuse AUTH otherwise.
//   - An unknown domain is a plain authentication failure and dials nothing
//     (invariant 7).
//   - Message bodies are streamed both ways, never held whole.
package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"mime"

	"github.com/emersion/go-message/charset"
	"strings"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/store"
)

// Options configure the IMAP and SMTP servers.
type Options struct {
	// Config is the loaded configuration (domains, hostname, limits).
	Config *config.Config
	// Backends are the configured upstream providers.
	Backends *backend.Set
	// TLS is the client-facing TLS configuration (certificates by SNI).
	TLS *tls.Config
	// Log receives one logger per connection; nil discards.
	Log *slog.Logger
	// Router gives each user's state at run time (overrides from the admin
	// API, live flips). Nil: the configured states, fixed.
	Router *store.Router
	// Maps caches the UID maps of mailboxes in use; required for states
	// migrating and new.
	Maps *store.MapCache
	// Copier copies one message from old to new and records the mapping;
	// required for writes during migrating.
	Copier Copier
	// Backfill, when set, learns of logins: the passwords passthrough
	// providers need for copying (kept in memory only), and which users
	// have live sessions (copied first).
	Backfill Backfill
	// Secrets gives vault credentials for providers with auth = "vault".
	Secrets backend.Secrets
	// Limiter throttles failed logins; share one between the IMAP and
	// SMTP servers. Nil: each server makes its own with NewAuthLimiter.
	Limiter *AuthLimiter
	// Metrics counts sessions, IMAP commands, SMTP submissions, refused
	// logins and copies on demand. Nil: none.
	Metrics *metrics.Metrics
}

func (o *Options) logger() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// Route is where a user's mail lives now.
type Route struct {
	User     string // the login, as the client typed it
	Domain   *config.Domain
	State    string            // old, migrating or new
	Provider *backend.Provider // the one that serves the state: old for old, new otherwise
	Old, New *backend.Provider // New is nil when the domain has no new provider
}

// Backfill is what the proxy tells the back-fill engine (package sync,
// wired in cmd).
type Backfill interface {
	Remember(user, password string)
	Touch(user string)
}

// Copier copies message v (old UID oldUID, in old's mailbox selected on
// oldC) to newMailbox on newC, streaming the bytes with their flags and
// INTERNALDATE, and records v -> new UID in entry's map in the same store
// transaction that ends the copy. The caller holds no lock on entry.
//
// Recover adopts copies a crash left unrecorded (see store.Intent): unknown
// are new UIDs that no map entry names; it returns those it adopted.
type Copier interface {
	CopyToNew(ctx context.Context, oldC, newC *backend.IMAPConn, entry *store.MapEntry, maps *store.MapCache, newMailbox string, v, oldUID store.UID) (store.UID, error)
	Recover(ctx context.Context, oldC, newC *backend.IMAPConn, entry *store.MapEntry, maps *store.MapCache, unknown []store.UID) ([]store.UID, error)
}

// resolve maps a login to its route, or returns nil when the domain is not
// served (the caller answers with a plain authentication failure).
func (o *Options) resolve(username string) *Route {
	username = strings.TrimSpace(username)
	d := o.Config.LookupDomain(username)
	if d == nil {
		return nil
	}
	state := d.State
	if o.Router != nil {
		r := o.Router.Route(username)
		if r == nil {
			return nil
		}
		state = r.State
	}
	route := &Route{User: username, Domain: d, State: state, Old: o.Backends.Provider(d.Old)}
	if d.New != "" {
		route.New = o.Backends.Provider(d.New)
	}
	if route.Old == nil {
		return nil
	}
	route.Provider = route.Old
	if state != config.StateOld {
		if route.New == nil {
			return nil
		}
		route.Provider = route.New
	}
	return route
}

// remember tells the back-fill of a successful login to a domain that
// moves (route.New set): its password, and for state migrating that the
// user is active. A session's Login and LoginChecker.Check share it.
func (o *Options) remember(route *Route, user, password string) {
	if b := o.Backfill; b != nil && route.New != nil {
		b.Remember(user, password)
		if route.State == config.StateMigrating {
			b.Touch(user)
		}
	}
}

// maxMessageSize is the APPEND/DATA limit for a route: the server's, or the
// provider's when that is smaller.
func (o *Options) maxMessageSize(r *Route) int64 {
	limit := o.Config.Server.MaxMessageSize
	if limit <= 0 {
		limit = 100 << 20
	}
	if r != nil {
		if p := r.Provider.Config().MaxMessageSize; p > 0 && p < limit {
			limit = p
		}
	}
	return limit
}

// wordDecoder decodes RFC 2047 words in ENVELOPE fields in every charset
// go-message knows (ISO-8859-*, Windows-125x...), so an upstream envelope
// in Latin-1 reaches the client instead of a decoding error.
var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}
