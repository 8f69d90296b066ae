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
	"crypto/tls"
	"log/slog"
	"mime"

	"github.com/emersion/go-message/charset"
	"strings"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
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
	// Limiter throttles failed logins; share one between the IMAP and
	// SMTP servers. Nil: each server makes its own with NewAuthLimiter.
	Limiter *AuthLimiter
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
	Provider *backend.Provider
}

// resolve maps a login to its route, or returns nil when the domain is not
// served (the caller answers with a plain authentication failure).
func (o *Options) resolve(username string) *Route {
	d := o.Config.LookupDomain(strings.TrimSpace(username))
	if d == nil {
		return nil
	}
	name := d.Old
	if d.State == config.StateNew && d.New != "" {
		name = d.New
	}
	p := o.Backends.Provider(name)
	if p == nil {
		return nil
	}
	return &Route{User: username, Domain: d, Provider: p}
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
