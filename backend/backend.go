// Package backend owns pecgate's connections to the upstream providers: it
// dials IMAP and SMTP submission endpoints with implicit TLS or STARTTLS,
// verifies certificates against the system roots plus an optional
// per-provider CA bundle, logs in, and caps concurrent IMAP connections per
// provider. It knows nothing of clients or virtual UIDs.
//
// Invariant 7 (closed routing) lives here: a Provider can only be built from
// a configured [providers.NAME] and dials only that provider's endpoints.
package backend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrAuthFailed: the provider refused the credentials.
	ErrAuthFailed = errors.New("backend: upstream refused the credentials")
	// ErrBusy: the provider's connection cap is reached and no slot freed
	// before the context ended.
	ErrBusy = errors.New("backend: too many connections to provider")
	// ErrUnavailable: the provider could not be reached or broke the
	// connection before logging in.
	ErrUnavailable = errors.New("backend: provider unavailable")
)

// Error describes an upstream failure.
type Error struct {
	Provider string
	Op       string // "dial", "starttls", "greeting", "login", ...
	// Permanent is true when retrying with the same input cannot succeed
	// (refused credentials, certificate mismatch).
	Permanent bool
	// Hint is a human hint for operators and users, e.g. about app passwords.
	Hint string
	Err  error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s: %v", e.Provider, e.Op, e.Err)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Set is every configured provider by name.
type Set struct {
	providers map[string]*Provider
}

// New builds a Provider for each configured provider. It reads CA bundles
// but dials nothing.
func New(cfg *config.Config, log *slog.Logger) (*Set, error) {
	s := &Set{providers: make(map[string]*Provider)}
	var errs []error
	for name, pc := range cfg.Providers {
		p, err := NewProvider(name, pc, log)
		if err != nil {
			errs = append(errs, fmt.Errorf("providers.%s: %w", name, err))
			continue
		}
		s.providers[name] = p
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// Provider returns the named provider, or nil.
func (s *Set) Provider(name string) *Provider { return s.providers[name] }

// SetMetrics makes every provider of s count its dials, logins and
// failures in m (nil: none, the default). Call it before the providers are
// used.
func (s *Set) SetMetrics(m *metrics.Metrics) {
	for _, p := range s.providers {
		p.SetMetrics(m)
	}
}

// Provider is one upstream mail service.
type Provider struct {
	Name   string
	cfg    config.Provider
	imapEP config.Endpoint
	smtpEP config.Endpoint
	tls    *tls.Config
	slots  chan struct{} // nil: unlimited
	log    *slog.Logger
	// masterPassword is read from MasterPasswordFile by NewProvider when
	// Auth is "master"; never logged, never in an error.
	masterPassword string

	// metrics counts dials, logins and failures; nil: none.
	metrics *metrics.Metrics
}

// NewProvider builds a provider from its configuration.
func NewProvider(name string, pc *config.Provider, log *slog.Logger) (*Provider, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Provider{Name: name, cfg: *pc, log: log.With("provider", name)}
	var err error
	if p.imapEP, err = pc.IMAPEndpoint(); err != nil {
		return nil, fmt.Errorf("imap: %w", err)
	}
	if pc.SMTP != "" {
		if p.smtpEP, err = pc.SMTPEndpoint(); err != nil {
			return nil, fmt.Errorf("smtp: %w", err)
		}
	}
	p.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	if pc.CA != "" {
		pem, err := os.ReadFile(pc.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca: no PEM certificate in %s", pc.CA)
		}
		p.tls.RootCAs = pool
	}
	if pc.MaxConnections > 0 {
		p.slots = make(chan struct{}, pc.MaxConnections)
	}
	if pc.Auth == config.AuthMaster {
		if p.masterPassword, err = readMasterPassword(pc.MasterPasswordFile); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// SetMetrics makes p count its dials, logins and failures in m (nil:
// none, the default). Call it before p is used.
func (p *Provider) SetMetrics(m *metrics.Metrics) { p.metrics = m }

// fail counts a failure of kind (metrics.Err*) and returns err.
func (p *Provider) fail(kind string, err error) error {
	p.metrics.UpstreamError(p.Name, kind)
	return err
}

// Config returns the provider's configuration.
func (p *Provider) Config() config.Provider { return p.cfg }

// IMAPEndpoint and SMTPEndpoint are the parsed upstream endpoints.
func (p *Provider) IMAPEndpoint() config.Endpoint { return p.imapEP }
func (p *Provider) SMTPEndpoint() config.Endpoint { return p.smtpEP }

// TLSConfig returns a copy of the TLS client configuration for host.
func (p *Provider) TLSConfig(host string) *tls.Config {
	c := p.tls.Clone()
	c.ServerName = host
	return c
}

func (p *Provider) connectTimeout() time.Duration {
	if p.cfg.ConnectTimeout > 0 {
		return time.Duration(p.cfg.ConnectTimeout)
	}
	return 15 * time.Second
}

func (p *Provider) loginTimeout() time.Duration {
	if p.cfg.LoginTimeout > 0 {
		return time.Duration(p.cfg.LoginTimeout)
	}
	return 30 * time.Second
}

func (p *Provider) acquire(ctx context.Context) (release func(), err error) {
	if p.slots == nil {
		return func() {}, nil
	}
	select {
	case p.slots <- struct{}{}:
		var done bool
		return func() {
			if !done {
				done = true
				<-p.slots
			}
		}, nil
	case <-ctx.Done():
		return nil, p.fail(metrics.ErrBusy, &Error{Provider: p.Name, Op: "dial", Err: fmt.Errorf("%w: %v", ErrBusy, ctx.Err())})
	}
}

// dial opens a TCP connection, and the TLS session when implicit;
// protocol (metrics.ProtocolIMAP or ProtocolSMTP) labels the metrics.
func (p *Provider) dial(ctx context.Context, ep config.Endpoint, protocol string) (net.Conn, error) {
	p.metrics.UpstreamDial(p.Name, protocol)
	d := &net.Dialer{Timeout: p.connectTimeout()}
	ctx, cancel := context.WithTimeout(ctx, p.connectTimeout())
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", ep.Addr())
	if err != nil {
		return nil, p.fail(metrics.ErrConnect, &Error{Provider: p.Name, Op: "dial", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
	}
	if !ep.ImplicitTLS {
		return conn, nil
	}
	tc := tls.Client(conn, p.TLSConfig(ep.Host))
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, p.fail(metrics.ErrTLS, &Error{Provider: p.Name, Op: "tls", Permanent: isCertError(err), Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
	}
	return tc, nil
}

func isCertError(err error) bool {
	var (
		unk  x509.UnknownAuthorityError
		host x509.HostnameError
		inv  x509.CertificateInvalidError
		verr *tls.CertificateVerificationError
	)
	return errors.As(err, &unk) || errors.As(err, &host) || errors.As(err, &inv) || errors.As(err, &verr)
}

// IMAPConn is an upstream IMAP connection holding one of the provider's
// connection slots until Close.
type IMAPConn struct {
	*imapclient.Client
	Provider *Provider
	release  func()
}

// Close logs out (best effort, bounded), closes the connection and frees
// the slot. Safe to call more than once.
func (c *IMAPConn) Close() error {
	defer c.release()
	return c.Client.Close()
}

// Logout sends LOGOUT, waits at most a few seconds, then closes.
func (c *IMAPConn) Logout() error {
	done := make(chan struct{})
	go func() {
		c.Client.Logout().Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
	}
	return c.Close()
}

// DialIMAP connects to the provider's IMAP endpoint (TLS or STARTTLS) and
// waits for the greeting, without logging in. opts may be nil; its
// TLSConfig is replaced by the provider's.
func (p *Provider) DialIMAP(ctx context.Context, opts *imapclient.Options) (*IMAPConn, error) {
	release, err := p.acquire(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := p.dial(ctx, p.imapEP, metrics.ProtocolIMAP)
	if err != nil {
		release()
		return nil, err
	}
	var o imapclient.Options
	if opts != nil {
		o = *opts
	}
	o.TLSConfig = p.TLSConfig(p.imapEP.Host)
	// imapclient has no context: bound the greeting and STARTTLS by a
	// deadline on the raw connection, lifted once they are done.
	conn.SetDeadline(time.Now().Add(p.loginTimeout()))
	var c *imapclient.Client
	if p.imapEP.ImplicitTLS {
		c = imapclient.New(conn, &o)
		if err := c.WaitGreeting(); err != nil {
			c.Close()
			release()
			return nil, p.fail(metrics.ErrGreeting, &Error{Provider: p.Name, Op: "greeting", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
		}
	} else {
		c, err = imapclient.NewStartTLS(conn, &o)
		if err != nil {
			conn.Close()
			release()
			return nil, p.fail(metrics.ErrTLS, &Error{Provider: p.Name, Op: "starttls", Permanent: isCertError(err), Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
		}
	}
	// The raw conn's deadline also applies under TLS; imapclient sets its
	// own per-read/per-write deadlines from here on.
	conn.SetDeadline(time.Time{})
	return &IMAPConn{Client: c, Provider: p, release: release}, nil
}

// LoginIMAP dials and logs in as username with password. A refusal is an
// *Error wrapping ErrAuthFailed, never retried (no lock-outs).
func (p *Provider) LoginIMAP(ctx context.Context, username, password string, opts *imapclient.Options) (*IMAPConn, error) {
	return p.loginIMAP(ctx, opts, func(c *IMAPConn) error {
		return c.Login(username, password).Wait()
	})
}

func (p *Provider) loginError(err error) error {
	var imapErr *imap.Error
	if errors.As(err, &imapErr) && imapErr.Type == imap.StatusResponseTypeNo {
		e := &Error{Provider: p.Name, Op: "login", Permanent: true, Err: fmt.Errorf("%w: %s", ErrAuthFailed, imapErr.Text)}
		if imapErr.Code != imap.ResponseCodeAuthenticationFailed && imapErr.Code != "" {
			e.Err = fmt.Errorf("%w: [%s] %s", ErrAuthFailed, imapErr.Code, imapErr.Text)
		}
		if p.cfg.AppPasswords {
			e.Hint = "if two-factor login is on for this account, the provider wants an app password"
		}
		return e
	}
	return &Error{Provider: p.Name, Op: "login", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)}
}

// IsAuthFailure reports whether err is a refusal of credentials.
func IsAuthFailure(err error) bool { return errors.Is(err, ErrAuthFailed) }

// domainOf returns the lower-cased domain of an address.
