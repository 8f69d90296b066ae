package backend

// Credential strategies (DESIGN.md, Credentials): each provider says how
// pecgate logs in there on a user's behalf.
//
//   - passthrough: the client's own username and password.
//   - master: a master user acting for the user. master_style "sasl" sends
//     AUTHENTICATE PLAIN (IMAP) or AUTH PLAIN (SMTP) with the user as
//     authorization identity and the master as authentication identity
//     (RFC 4616 section 2); "separator" logs in as "user*master" with the
//     master password (Dovecot's auth_master_user_separator = *). Dovecot
//     accepts both with a master passdb.
//   - vault: the user's own credentials for that provider, from Secrets
//     (the store's vault), e.g. an InfoCert User ID and its password.
//
// With master and vault the client's password is not sent anywhere: the
// caller must have authenticated the client before (a pinned verifier, or
// the primary provider), because LoginUser will log in as whoever it is
// asked to. The master password is read once by NewProvider and appears in
// no log line and no error; an imapclient DebugWriter sees the login lines
// masked.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
)

// Secrets gives a provider's vault credentials for a user (nil if the
// provider doesn't use vault). Credential returns an error wrapping
// ErrNoCredential when it holds none for (provider, user); any other error
// is a failure of the secret store itself.
type Secrets interface {
	Credential(ctx context.Context, provider, user string) (username, password string, err error)
}

// ErrNoCredential: a provider with auth = "vault" has no credentials for
// the user (never imported, or removed). It is not ErrAuthFailed: the
// provider refused nothing, and the client's password may be right.
var ErrNoCredential = errors.New("backend: no vault credentials for the user on this provider")

// MasterSeparator joins user and master user with master_style =
// "separator", as Dovecot's auth_master_user_separator = * expects.
const MasterSeparator = "*"

// readMasterPassword reads a master_password_file: its content up to a
// trailing line break. Errors name the file, never its content.
func readMasterPassword(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("master_password_file: %w", err)
	}
	pw := strings.TrimRight(string(data), "\r\n")
	clear(data)
	switch {
	case pw == "":
		return "", fmt.Errorf("master_password_file %s is empty", file)
	case strings.ContainsAny(pw, "\x00\r\n"):
		return "", fmt.Errorf("master_password_file %s holds more than one line or a NUL byte", file)
	}
	return pw, nil
}

// LoginUser logs in to the provider's IMAP endpoint on behalf of user,
// with the provider's credential strategy: passthrough uses (user,
// clientPassword); master uses the master credentials in the configured
// style; vault asks secrets. A refusal is an *Error wrapping ErrAuthFailed,
// as with LoginIMAP; a vault without credentials for the user is an *Error
// wrapping ErrNoCredential. opts may be nil; a DebugWriter in it sees the
// login command masked.
func (p *Provider) LoginUser(ctx context.Context, user, clientPassword string, secrets Secrets, opts *imapclient.Options) (*IMAPConn, error) {
	switch p.cfg.Auth {
	case config.AuthMaster:
		if err := p.checkMasterTarget(user); err != nil {
			return nil, err
		}
		var login func(c *IMAPConn) error
		if p.cfg.MasterStyle == config.MasterStyleSeparator {
			login = func(c *IMAPConn) error {
				return c.Login(user+MasterSeparator+p.cfg.MasterUser, p.masterPassword).Wait()
			}
		} else {
			login = func(c *IMAPConn) error {
				if !c.Caps().Has(imap.AuthCap(sasl.Plain)) {
					return errNoPlain
				}
				return c.Authenticate(sasl.NewPlainClient(user, p.cfg.MasterUser, p.masterPassword))
			}
		}
		c, err := p.loginIMAP(ctx, opts, login)
		return c, p.masterError(err, user)
	case config.AuthVault:
		username, password, err := p.vaultCredential(ctx, user, secrets)
		if err != nil {
			return nil, err
		}
		c, err := p.loginIMAP(ctx, opts, func(c *IMAPConn) error {
			return c.Login(username, password).Wait()
		})
		return c, p.vaultError(err, user)
	default:
		return p.loginIMAP(ctx, opts, func(c *IMAPConn) error {
			return c.Login(user, clientPassword).Wait()
		})
	}
}

// LoginUserSMTP dials the provider's submission endpoint, says EHLO helo
// and authenticates on behalf of user with the provider's credential
// strategy, as LoginUser does for IMAP. master_style "sasl" needs AUTH
// PLAIN; the other cases use PLAIN, or LOGIN when PLAIN is not offered.
func (p *Provider) LoginUserSMTP(ctx context.Context, helo, user, clientPassword string, secrets Secrets) (*smtp.Client, error) {
	switch p.cfg.Auth {
	case config.AuthMaster:
		if err := p.checkMasterTarget(user); err != nil {
			return nil, err
		}
		if p.cfg.MasterStyle == config.MasterStyleSeparator {
			c, err := p.LoginSMTP(ctx, helo, user+MasterSeparator+p.cfg.MasterUser, p.masterPassword)
			return c, p.masterError(err, user)
		}
		c, err := p.DialSMTP(ctx, helo)
		if err != nil {
			return nil, err
		}
		if !c.SupportsAuth(sasl.Plain) {
			c.Close()
			return nil, p.masterError(&Error{Provider: p.Name, Op: "smtp auth", Permanent: true, Err: errNoPlain}, user)
		}
		if err := p.smtpAuth(ctx, c, sasl.NewPlainClient(user, p.cfg.MasterUser, p.masterPassword)); err != nil {
			c.Close()
			return nil, p.masterError(err, user)
		}
		return c, nil
	case config.AuthVault:
		username, password, err := p.vaultCredential(ctx, user, secrets)
		if err != nil {
			return nil, err
		}
		c, err := p.LoginSMTP(ctx, helo, username, password)
		return c, p.vaultError(err, user)
	default:
		return p.LoginSMTP(ctx, helo, user, clientPassword)
	}
}

var errNoPlain = errors.New("the provider does not offer SASL PLAIN, which master_style = \"sasl\" needs (try \"separator\" on Dovecot)")

// checkMasterTarget refuses a user name that a master login could
// misread: empty, with a control character (NUL ends a SASL PLAIN field),
// or holding the separator ("a*admin" would pick another master user).
func (p *Provider) checkMasterTarget(user string) error {
	bad := user == "" || strings.ContainsFunc(user, func(r rune) bool { return r < ' ' || r == 0x7f })
	if p.cfg.MasterStyle == config.MasterStyleSeparator && strings.Contains(user, MasterSeparator) {
		bad = true
	}
	if bad {
		return &Error{Provider: p.Name, Op: "login", Permanent: true,
			Err: fmt.Errorf("%w: user name %q cannot be used with a master login", ErrAuthFailed, user)}
	}
	return nil
}

// vaultCredential asks secrets for user's credentials on p.
func (p *Provider) vaultCredential(ctx context.Context, user string, secrets Secrets) (username, password string, err error) {
	if secrets == nil {
		return "", "", &Error{Provider: p.Name, Op: "vault", Permanent: true, Err: errors.New("auth = \"vault\" but no vault is configured")}
	}
	username, password, err = secrets.Credential(ctx, p.Name, user)
	switch {
	case errors.Is(err, ErrNoCredential):
		return "", "", &Error{Provider: p.Name, Op: "vault", Permanent: true, Err: err,
			Hint: fmt.Sprintf("import credentials for %s with pecgate vault import", user)}
	case err != nil:
		return "", "", &Error{Provider: p.Name, Op: "vault", Err: fmt.Errorf("credentials of %s: %w", user, err)}
	case username == "" || password == "":
		return "", "", &Error{Provider: p.Name, Op: "vault", Permanent: true, Err: fmt.Errorf("%w: empty username or password for %s", ErrNoCredential, user)}
	}
	return username, password, nil
}

// masterError adds to a refusal which master login was refused.
func (p *Provider) masterError(err error, user string) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	switch {
	case errors.Is(err, ErrAuthFailed):
		e.Op = "master " + e.Op
		e.Hint = fmt.Sprintf("master user %s acting for %s, master_style %s: a wrong master password (master_password_file %s), or no such user there",
			p.cfg.MasterUser, user, p.cfg.MasterStyle, p.cfg.MasterPasswordFile)
	case errors.Is(err, errNoPlain):
		e.Op = "master " + e.Op
	}
	return err
}

// vaultError adds to a refusal that the vault's credentials were refused.
func (p *Provider) vaultError(err error, user string) error {
	var e *Error
	if errors.As(err, &e) && errors.Is(err, ErrAuthFailed) {
		e.Op = "vault " + e.Op
		hint := fmt.Sprintf("the vault's credentials for %s were refused: import current ones with pecgate vault import", user)
		if e.Hint != "" {
			hint += "; " + e.Hint
		}
		e.Hint = hint
	}
	return err
}

// loginIMAP dials, then runs login, bounded by the login timeout and ctx
// (the connection is closed when either ends first). A DebugWriter in
// opts sees the lines written and read during login masked.
func (p *Provider) loginIMAP(ctx context.Context, opts *imapclient.Options, login func(*IMAPConn) error) (*IMAPConn, error) {
	var mask *authMask
	if opts != nil && opts.DebugWriter != nil {
		o := *opts
		mask = &authMask{w: o.DebugWriter}
		o.DebugWriter = mask
		opts = &o
	}
	c, err := p.DialIMAP(ctx, opts)
	if err != nil {
		return nil, err
	}
	mask.set(true)
	t := time.AfterFunc(p.loginTimeout(), func() { c.Client.Close() })
	stop := context.AfterFunc(ctx, func() { c.Client.Close() })
	err = login(c)
	t.Stop()
	stop()
	mask.set(false)
	if err != nil {
		c.Close()
		if errors.Is(err, errNoPlain) {
			err = &Error{Provider: p.Name, Op: "login", Permanent: true, Err: err}
		} else if ctxErr := ctx.Err(); ctxErr != nil {
			err = &Error{Provider: p.Name, Op: "login", Err: fmt.Errorf("%w: %v", ErrUnavailable, ctxErr)}
		} else {
			err = p.loginError(err)
		}
	}
	p.countLogin(metrics.ProtocolIMAP, err)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// countLogin counts a login's result: ok, refused (the credentials), or
// error (also an upstream error of kind login).
func (p *Provider) countLogin(protocol string, err error) {
	switch {
	case err == nil:
		p.metrics.UpstreamLogin(p.Name, protocol, metrics.LoginOK)
	case IsAuthFailure(err):
		p.metrics.UpstreamLogin(p.Name, protocol, metrics.LoginRefused)
	default:
		p.metrics.UpstreamLogin(p.Name, protocol, metrics.LoginError)
		p.metrics.UpstreamError(p.Name, metrics.ErrLogin)
	}
}

// smtpAuth runs AUTH with mech, bounded by the login timeout and ctx. A 535
// reply is an *Error wrapping ErrAuthFailed.
func (p *Provider) smtpAuth(ctx context.Context, c *smtp.Client, mech sasl.Client) error {
	err := p.smtpAuthRun(ctx, c, mech)
	p.countLogin(metrics.ProtocolSMTP, err)
	return err
}

func (p *Provider) smtpAuthRun(ctx context.Context, c *smtp.Client, mech sasl.Client) error {
	saved := c.CommandTimeout
	c.CommandTimeout = p.loginTimeout()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := c.Auth(mech)
	stop()
	c.CommandTimeout = saved
	if err == nil {
		return nil
	}
	if se, ok := err.(*smtp.SMTPError); ok && se.Code == 535 {
		e := &Error{Provider: p.Name, Op: "smtp auth", Permanent: true, Err: fmt.Errorf("%w: %s", ErrAuthFailed, se.Message)}
		if p.cfg.AppPasswords {
			e.Hint = "if two-factor login is on for this account, the provider wants an app password"
		}
		return e
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &Error{Provider: p.Name, Op: "smtp auth", Err: fmt.Errorf("%w: %v", ErrUnavailable, ctxErr)}
	}
	return &Error{Provider: p.Name, Op: "smtp auth", Err: err}
}

// authMask wraps an imapclient DebugWriter, which sees both directions of
// the connection. While on (during login) it writes each line as its first
// two words and "***" ("T1 LOGIN ***", "T1 OK ***"), so no password,
// SASL response or literal reaches the trace. It never fails a write: an
// error of the trace must not break the connection (imapclient tees into it).
// A nil *authMask does nothing.
type authMask struct {
	mu   sync.Mutex
	w    io.Writer
	on   bool
	line []byte
}

func (m *authMask) set(on bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !on && len(m.line) > 0 {
		m.w.Write(maskLine(m.line))
		m.line = m.line[:0]
	}
	m.on = on
}

func (m *authMask) Write(b []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.on {
		m.w.Write(b)
		return len(b), nil
	}
	rest := b
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			m.line = append(m.line, rest...)
			break
		}
		m.line = append(m.line, rest[:i+1]...)
		m.w.Write(maskLine(m.line))
		m.line = m.line[:0]
		rest = rest[i+1:]
	}
	return len(b), nil
}

// maskLine keeps the first two words of line when it has more, and
// replaces the rest by "***".
func maskLine(line []byte) []byte {
	f := bytes.Fields(line)
	if len(f) > 2 {
		return fmt.Appendf(nil, "%s %s ***\r\n", f[0], f[1])
	}
	return []byte("***\r\n")
}
