package demo

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgate/pecgate/certs"
)

// Mailboxes every provider user starts with. imapmemserver's hierarchy
// delimiter is "/", the fixtures' too, so Fixture.Folder names them as is.
const (
	MailboxInbox    = "INBOX"
	MailboxSent     = "Posta inviata"
	MailboxPratiche = "Pratiche"
	MailboxCitta    = "Pratiche/Città"
)

// providerMaxMessageSize is the SMTP SIZE a provider announces and enforces
// (PEC providers accept 30-100 MB).
const providerMaxMessageSize = 100 << 20

// Provider is an in-process mail provider on loopback: go-imap's in-memory
// IMAP server (imapmemserver) on implicit TLS, and a go-smtp submission
// server on implicit TLS that requires AUTH PLAIN and delivers to the same
// in-memory mailboxes. It stands in for a PEC provider such as Aruba in the
// demo and in fast tests. Its methods are safe for concurrent use.
type Provider struct {
	// Name is the provider's name, e.g. "old".
	Name string
	// IMAPAddr and SMTPAddr are the bound 127.0.0.1:PORT addresses of the
	// IMAPS and SMTPS listeners.
	IMAPAddr, SMTPAddr string
	// CAFile is the PEM file of the CA that signed the provider's
	// certificate (which names 127.0.0.1 and localhost): give it to clients,
	// or as a provider's `ca` in the gateway's configuration.
	CAFile string

	log       *slog.Logger
	users     map[string]*imapmemserver.User // address -> user; read-only after start
	passwords map[string]string              // address -> password; read-only after start

	imap      *imapserver.Server
	smtp      *smtp.Server
	imapLn    *trackingListener
	smtpLn    *trackingListener
	serving   gosync.WaitGroup // the two Serve loops
	sessions  gosync.WaitGroup // one per accepted IMAP connection, until its session closes
	closeOnce gosync.Once
	closeErr  error
}

// StartProvider starts a provider called name with one account per entry of
// users (address -> password), each with the mailboxes INBOX, "Posta
// inviata", "Pratiche" and "Pratiche/Città", all empty and subscribed. Its
// certificate comes from ca; the CA's certificate is written to
// dir/NAME-ca.pem (CAFile). Both listeners are on 127.0.0.1 with a random
// port. Library errors are logged to slog.Default.
func StartProvider(name string, ca *certs.TestCA, dir string, users map[string]string) (*Provider, error) {
	return startProvider(name, ca, dir, users, slog.Default())
}

func startProvider(name string, ca *certs.TestCA, dir string, users map[string]string, log *slog.Logger) (*Provider, error) {
	if len(users) == 0 {
		return nil, errors.New("demo provider: no users")
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		return nil, fmt.Errorf("provider %s: certificate: %w", name, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("provider %s: certificate: %w", name, err)
	}
	caFile := filepath.Join(dir, name+"-ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("provider %s: %w", name, err)
	}
	p := &Provider{
		Name:      name,
		CAFile:    caFile,
		log:       log.With("provider", name),
		users:     make(map[string]*imapmemserver.User, len(users)),
		passwords: make(map[string]string, len(users)),
	}
	for addr, pass := range users {
		u := imapmemserver.NewUser(addr, pass)
		for _, m := range []struct {
			name string
			opts *imap.CreateOptions
		}{
			{MailboxInbox, nil},
			// imapmemserver (go-imap v2.0.0-beta.8) ignores CreateOptions,
			// so no folder carries a special-use attribute; the option says
			// what "Posta inviata" is for when a later version honours it.
			{MailboxSent, &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrSent}}},
			{MailboxPratiche, nil},
			{MailboxCitta, nil},
		} {
			if err := u.Create(m.name, m.opts); err != nil {
				return nil, fmt.Errorf("provider %s: create %q for %s: %w", name, m.name, addr, err)
			}
			if err := u.Subscribe(m.name); err != nil {
				return nil, fmt.Errorf("provider %s: subscribe %q for %s: %w", name, m.name, addr, err)
			}
		}
		p.users[addr] = u
		p.passwords[addr] = pass
	}

	tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	imapLn, err := listenTracking()
	if err != nil {
		return nil, fmt.Errorf("provider %s: imaps: %w", name, err)
	}
	smtpLn, err := listenTracking()
	if err != nil {
		imapLn.Close()
		return nil, fmt.Errorf("provider %s: smtps: %w", name, err)
	}
	p.imapLn, p.smtpLn = imapLn, smtpLn
	p.IMAPAddr, p.SMTPAddr = imapLn.Addr().String(), smtpLn.Addr().String()
	imapLn.onAccept = func() { p.sessions.Add(1) }

	p.imap = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return &imapSession{p: p}, nil, nil
		},
		// IMAP4rev2 brings UIDPLUS, MOVE, NAMESPACE, ESEARCH, LIST-STATUS:
		// what imapmemserver implements, and what a real provider offers.
		Caps:   imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		Logger: printfLogger{p.log.With("component", "imap")},
	})
	p.smtp = smtp.NewServer(smtpBackend{p})
	p.smtp.Domain = "localhost"
	p.smtp.MaxMessageBytes = providerMaxMessageSize
	p.smtp.MaxRecipients = 100
	p.smtp.ReadTimeout = 5 * time.Minute
	p.smtp.WriteTimeout = 5 * time.Minute
	p.smtp.ErrorLog = printfLogger{p.log.With("component", "smtp")}

	p.serving.Add(2)
	go func() {
		defer p.serving.Done()
		if err := p.imap.Serve(tls.NewListener(imapLn, tlsConfig)); err != nil {
			p.log.Error("imap server stopped", "err", err)
		}
	}()
	go func() {
		defer p.serving.Done()
		if err := p.smtp.Serve(tls.NewListener(smtpLn, tlsConfig)); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			p.log.Error("smtp server stopped", "err", err)
		}
	}()
	return p, nil
}

// Close stops both listeners, closes every connection and waits until every
// goroutine of the provider has returned. The mailboxes are lost.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		// go-smtp's Shutdown stops accepting and waits for the connection
		// handlers, but closes no connection; imapserver's Close closes
		// the connections it has registered, which may miss one accepted
		// just before. Once both accept loops have returned, every
		// accepted connection is in a trackingListener: close them all.
		shut := make(chan error, 1)
		go func() { shut <- p.smtp.Shutdown(context.Background()) }()
		imapErr := p.imap.Close()
		p.serving.Wait()
		p.imapLn.closeConns()
		p.smtpLn.closeConns()
		smtpErr := <-shut
		p.sessions.Wait()
		if errors.Is(imapErr, net.ErrClosed) {
			imapErr = nil
		}
		if errors.Is(smtpErr, net.ErrClosed) {
			smtpErr = nil
		}
		p.closeErr = errors.Join(imapErr, smtpErr)
	})
	return p.closeErr
}

// Seed appends every fixture (Fixtures) to address's mailboxes, in manifest
// order, each into its folder with its flags and INTERNALDATE, byte for
// byte. Seeding twice stores everything twice.
func (p *Provider) Seed(address string) error {
	fx, err := Fixtures()
	if err != nil {
		return err
	}
	return p.SeedWith(address, fx)
}

// SeedWith is Seed with the given fixtures, creating (and subscribing)
// the folders the provider does not start with.
func (p *Provider) SeedWith(address string, fx []Fixture) error {
	u := p.users[address]
	if u == nil {
		return fmt.Errorf("provider %s: no user %q", p.Name, address)
	}
	for _, f := range fx {
		mbox := strings.ReplaceAll(f.Folder, FixtureFolderDelim, "/") // imapmemserver's delimiter
		opts := &imap.AppendOptions{Flags: f.Flags, Time: f.InternalDate}
		_, err := u.Append(mbox, bytes.NewReader(f.Body), opts)
		var ierr *imap.Error
		if errors.As(err, &ierr) && ierr.Code == imap.ResponseCodeTryCreate {
			// A folder the provider does not start with (the archive).
			if err = u.Create(mbox, nil); err == nil {
				if err = u.Subscribe(mbox); err == nil {
					_, err = u.Append(mbox, bytes.NewReader(f.Body), opts)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("provider %s: append %s to %q of %s: %w", p.Name, f.File, mbox, address, err)
		}
	}
	return nil
}

// deliver appends msg to the INBOX of each local recipient.
func (p *Provider) deliver(rcpts []string, msg []byte) error {
	now := time.Now()
	for _, rcpt := range rcpts {
		if _, err := p.users[rcpt].Append(MailboxInbox, bytes.NewReader(msg), &imap.AppendOptions{Time: now}); err != nil {
			return fmt.Errorf("deliver to %s: %w", rcpt, err)
		}
	}
	return nil
}

// localUser returns the account an address names, comparing case-
// insensitively (SMTP recipients arrive in any case), or "".
func (p *Provider) localUser(address string) string {
	if _, ok := p.users[address]; ok {
		return address
	}
	for a := range p.users {
		if strings.EqualFold(a, address) {
			return a
		}
	}
	return ""
}

// imapSession is imapmemserver's session with our own Login (against the
// provider's users) and Close (to let Provider.Close wait for it).
type imapSession struct {
	*imapmemserver.UserSession // nil until Login succeeds
	p                          *Provider
	closed                     bool
}

var _ imapserver.SessionIMAP4rev2 = (*imapSession)(nil)

// Login checks the password of username (exact match, like imapmemserver).
func (s *imapSession) Login(username, password string) error {
	u := s.p.users[username]
	if u == nil {
		return imapserver.ErrAuthFailed
	}
	if err := u.Login(username, password); err != nil {
		return err
	}
	s.UserSession = imapmemserver.NewUserSession(u)
	return nil
}

// Close is called once by imapserver when the connection ends.
func (s *imapSession) Close() error {
	if !s.closed {
		s.closed = true
		defer s.p.sessions.Done()
	}
	return s.UserSession.Close() // nil-safe
}

// smtpBackend makes a session per SMTP connection (at EHLO).
type smtpBackend struct{ p *Provider }

var _ smtp.Backend = smtpBackend{}

func (b smtpBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &smtpSession{p: b.p}, nil
}

// smtpSession is one submission connection: AUTH PLAIN first, then any
// number of transactions. Local recipients (accounts of this provider) get
// the message in their INBOX; others are accepted and dropped.
type smtpSession struct {
	p     *Provider
	user  string   // authenticated address; "" before AUTH
	rcpts []string // local recipients of the current transaction, no duplicates
}

var _ smtp.AuthSession = (*smtpSession)(nil)

func (s *smtpSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		want, ok := s.p.passwords[username]
		if !ok || identity != "" && identity != username || !constantTimeEqual(password, want) {
			return smtp.ErrAuthFailed
		}
		s.user = username
		return nil
	}), nil
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return smtp.ErrAuthRequired
	}
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.user == "" {
		return smtp.ErrAuthRequired
	}
	if u := s.p.localUser(to); u != "" && !slices.Contains(s.rcpts, u) {
		s.rcpts = append(s.rcpts, u)
	}
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	msg, err := io.ReadAll(r)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se // ErrDataTooLarge: go-smtp wants it unwrapped
		}
		return err
	}
	if err := s.p.deliver(s.rcpts, msg); err != nil {
		s.p.log.Error("delivery failed", "user", s.user, "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Delivery failed, try again later"}
	}
	return nil
}

func (s *smtpSession) Reset() { s.rcpts = nil }

func (s *smtpSession) Logout() error { return nil }

// trackingListener is a TCP listener on 127.0.0.1:0 that remembers the
// connections it accepted until they are closed, so Close can end them all.
type trackingListener struct {
	net.Listener
	onAccept func() // called for each accepted connection, before Accept returns; may be nil

	mu    gosync.Mutex
	conns map[*trackedConn]struct{}
}

func listenTracking() (*trackingListener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &trackingListener{Listener: ln, conns: map[*trackedConn]struct{}{}}, nil
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	if l.onAccept != nil {
		l.onAccept()
	}
	return tc, nil
}

// closeConns closes every connection still open.
func (l *trackingListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		c.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	l *trackingListener
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// printfLogger adapts the Printf loggers of go-imap and go-smtp to slog.
type printfLogger struct{ log *slog.Logger }

func (l printfLogger) Printf(format string, args ...any) {
	l.log.Warn("server library", "detail", strings.TrimSuffix(fmt.Sprintf(format, args...), "\n"))
}

func (l printfLogger) Println(args ...any) {
	l.log.Warn("server library", "detail", strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}

func constantTimeEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}
