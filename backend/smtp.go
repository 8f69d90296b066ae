package backend

import (
	"context"
	"fmt"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/internal/metrics"
)

// DialSMTP connects to the provider's submission endpoint, completes TLS
// (implicit or STARTTLS; a server without STARTTLS is refused) and EHLO as
// helo. It does not authenticate.
func (p *Provider) DialSMTP(ctx context.Context, helo string) (*smtp.Client, error) {
	if p.smtpEP.Host == "" {
		return nil, &Error{Provider: p.Name, Op: "smtp dial", Permanent: true, Err: fmt.Errorf("no smtp endpoint configured")}
	}
	conn, err := p.dial(ctx, p.smtpEP, metrics.ProtocolSMTP)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(p.loginTimeout()))
	var c *smtp.Client
	if p.smtpEP.ImplicitTLS {
		c = smtp.NewClient(conn)
		if err := c.Hello(helo); err != nil {
			c.Close()
			return nil, p.fail(metrics.ErrGreeting, &Error{Provider: p.Name, Op: "smtp ehlo", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
		}
	} else {
		// NewClientStartTLS fails when the server does not offer STARTTLS:
		// no plaintext fallback.
		c, err = smtp.NewClientStartTLS(conn, p.TLSConfig(p.smtpEP.Host))
		if err != nil {
			conn.Close()
			return nil, p.fail(metrics.ErrTLS, &Error{Provider: p.Name, Op: "smtp starttls", Permanent: isCertError(err), Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
		}
		if err := c.Hello(helo); err != nil {
			c.Close()
			return nil, p.fail(metrics.ErrGreeting, &Error{Provider: p.Name, Op: "smtp ehlo", Err: fmt.Errorf("%w: %v", ErrUnavailable, err)})
		}
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

// LoginSMTP dials and authenticates with AUTH PLAIN (or LOGIN when PLAIN
// is not offered). A refusal wraps ErrAuthFailed.
func (p *Provider) LoginSMTP(ctx context.Context, helo, username, password string) (*smtp.Client, error) {
	c, err := p.DialSMTP(ctx, helo)
	if err != nil {
		return nil, err
	}
	var mech sasl.Client
	if c.SupportsAuth("PLAIN") || !c.SupportsAuth("LOGIN") {
		mech = sasl.NewPlainClient("", username, password)
	} else {
		mech = sasl.NewLoginClient(username, password)
	}
	if err := p.smtpAuth(ctx, c, mech); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
