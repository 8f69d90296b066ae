package proxy

// SMTP submission: 465 (implicit TLS) and 587 (STARTTLS), AUTH required,
// every message relayed by streaming to the submission endpoint of the
// user's provider with the provider's replies passed through.
//
// Facts about go-smtp v0.25.1 (server.go, conn.go, data.go, client.go) that
// this file relies on; re-check them when upgrading:
//   - One smtp.Server serves any number of listeners. A connection counts as
//     TLS when its net.Conn is a *tls.Conn (handleConn, TLSConnectionState):
//     tls.NewListener gives implicit TLS; on a plain listener the server
//     offers STARTTLS when TLSConfig is set. The TLS type assertion is why the
//     connection wrapper below sits UNDER the TLS layer.
//   - Backend.NewSession runs at the first EHLO/HELO and again at the first
//     EHLO after STARTTLS (the pre-TLS session gets Logout first).
//   - AUTH is advertised and accepted only on TLS unless AllowInsecureAuth;
//     AUTH on plaintext gets "523 5.7.10 TLS is required". The library never
//     requires AUTH before MAIL: Session.Mail must refuse.
//   - A Session method's error reaches the client through writeError /
//     dataErrorToStatus: a *smtp.SMTPError (plain type assertion, so never
//     wrapped) is written as its code, enhanced code and text; any other
//     error's text is sent verbatim. So every error returned here is a bare
//     *smtp.SMTPError with a generic text; details go to the log. The same
//     path lets Data return a 250 SMTPError to pass the provider's own final
//     reply text through.
//   - smtp.ErrAuthRequired is 502 5.7.0; RFC 4954 section 6 says 530 5.7.0,
//     so errSMTPAuthRequired below is our own.
//   - DATA is read with the read deadline set when the DATA line was read
//     (readLine); nothing extends it. Data pushes it forward itself.
//   - The server's DATA reader enforces MaxMessageBytes with
//     smtp.ErrDataTooLarge, and a message of exactly MaxMessageBytes already
//     fails (the limit check runs before the end-of-data line is seen). The
//     SIZE= check in MAIL uses the same limit. After Data returns, the
//     library drains the rest of the message and then writes the reply.
//   - CHUNKING (BDAT) is always advertised, and a BDAT chunk cut short by a
//     disconnect reads as complete (handleBdat io.Copy's from a LimitReader,
//     and io.Copy takes EOF for success; with TLS the client's close_notify
//     is that EOF): with LAST, Data sees a clean EOF on a truncated message.
//     handleBdat adds each chunk's declared size to Conn.bytesReceived
//     before it closes the pipe, so Data compares the bytes it read with
//     that (unexported) counter, read by reflection, before the final dot;
//     if go-smtp drops the field, BDAT messages are refused, never
//     truncated (TestSMTPBDAT fails then).
//   - With BDAT, Data runs on its own goroutine reading a pipe, and RSET or
//     a dropped client closes the pipe with smtp.ErrDataReset while Data may
//     still run, then calls Session.Reset. Conn.Close calls Session.Logout
//     under the connection's lock, also while Data runs. Hence the two
//     locks of smtpSession.
//   - Server.Close after Server.Shutdown returns ErrServerClosed without
//     closing anything; connections are therefore tracked here too.
//   - Client: Mail adds BODY=8BITMIME whenever the upstream offers 8BITMIME,
//     SIZE= when it offers SIZE and the size is known, SMTPUTF8 only if
//     offered (else a plain error). Rcpt/Mail success texts are not returned,
//     so a client sees go-smtp's own 250 text for MAIL and RCPT; refusals and
//     the final DATA reply are the provider's. Data's writer dot-stuffs and
//     turns a bare LF into CRLF (textproto.DotWriter); messages in proper
//     CRLF form, as SMTP requires, pass byte for byte. DataCommand.Close
//     sends the final dot: after a failed copy it must never be called.
//   - Client commands carry their own deadlines (CommandTimeout 5 min), but
//     the DATA body writes have none: a watchdog closes a stalled upstream.
//   - Client.Reset makes the next command send EHLO again, and Extension
//     answers false when that EHLO fails: "not offered" and "connection
//     dead" look alike until another command is tried.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
)

const (
	// smtpDefaultMaxMessageSize applies when Config.Server.MaxMessageSize is
	// zero (config documents 100 MiB as the default).
	smtpDefaultMaxMessageSize = 100 << 20
	// smtpReadTimeout bounds the wait for a client command (RFC 5321
	// section 4.5.3.2.7: server timeout 5 minutes) and, during DATA, the
	// wait for each further piece of the message.
	smtpReadTimeout = 5 * time.Minute
	// smtpWriteTimeout bounds writing one reply to the client.
	smtpWriteTimeout = time.Minute
	// smtpDataTimeout bounds one whole DATA upload, however steadily the
	// client sends (100 MiB needs about 460 kbit/s).
	smtpDataTimeout = 30 * time.Minute
	// smtpUpstreamIdle closes an upstream that accepts no message bytes
	// for this long during DATA (go-smtp's client sets no write deadline).
	smtpUpstreamIdle = 5 * time.Minute
	// smtpQuitTimeout bounds the polite QUIT to the upstream at logout.
	smtpQuitTimeout = 3 * time.Second
	// smtpCloseWait bounds how long Close waits for connection goroutines
	// after cutting their connections.
	smtpCloseWait = 5 * time.Second
)

// Replies the gateway itself produces. Texts stay generic; the log has the
// details (STYLE rule 4).
var (
	// errSMTPAuthRequired: MAIL before AUTH (RFC 4954 section 6).
	errSMTPAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	// errSMTPAuthFailed: unknown domain or credentials refused upstream.
	errSMTPAuthFailed = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication failed"}
	// errSMTPAuthTemporary: the provider could not be asked (RFC 4954 section 6).
	errSMTPAuthTemporary = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	// errSMTPBadSASL: a malformed SASL exchange.
	errSMTPBadSASL = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Invalid SASL response"}
	// errSMTPTooBig: over the server's or the user's provider's size limit
	// (RFC 1870 section 6.1: 552 after SIZE= or after the data).
	errSMTPTooBig = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Max message size exceeded"}
	// errSMTPUpstream: the provider connection broke; nothing was delivered.
	errSMTPUpstream = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Connection to the mail provider lost, try again later"}
	// errSMTPUpstreamUnavailable: the provider could not be reached for a new
	// transaction.
	errSMTPUpstreamUnavailable = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "Mail provider unavailable, try again later"}
	// errSMTPDataAborted: the client's data stream failed; nothing was sent on.
	errSMTPDataAborted = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Message transfer aborted, nothing was delivered"}
	// errSMTPNo8BitMIME and errSMTPNoSMTPUTF8: the client asked for an extension the
	// provider does not offer; pecgate never converts a message (invariant 5).
	errSMTPNo8BitMIME = &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 6, 3}, Message: "The mail provider does not accept 8-bit messages"}
	errSMTPNoSMTPUTF8 = &smtp.SMTPError{Code: 555, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "The mail provider does not support SMTPUTF8"}
	// errSMTPThrottled: too many failed logins from this IP or for this
	// account; the provider is not asked (no lock-outs there).
	errSMTPThrottled = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed logins, try again in a few minutes"}
	// errSMTPShuttingDown: a command arrived while the gateway stops.
	errSMTPShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down, try again later"}
)

// SMTPServer is the client-facing submission server. One SMTPServer serves
// any number of implicit-TLS (ServeTLS) and STARTTLS (Serve) listeners.
type SMTPServer struct {
	opts     Options
	log      *slog.Logger
	srv      *smtp.Server
	hostname string
	maxBytes int64 // server-level limit, advertised as SIZE
	auth     *authn

	// Timeouts of a DATA transfer, from smtpDataTimeout and
	// smtpUpstreamIdle.
	dataTimeout  time.Duration
	upstreamIdle time.Duration

	nextID atomic.Uint64

	mu        gosync.Mutex
	closed    bool
	listeners []net.Listener
	conns     map[*smtpConn]struct{}
	connWG    gosync.WaitGroup // one per accepted connection, until go-smtp closes it
	bgWG      gosync.WaitGroup // background QUITs to upstreams
}

// NewSMTP builds a submission server. It listens on nothing until Serve or
// ServeTLS.
func NewSMTP(opts Options) *SMTPServer {
	s := &SMTPServer{
		opts:         opts,
		log:          opts.logger().With("proto", "smtp"),
		hostname:     "localhost",
		maxBytes:     smtpDefaultMaxMessageSize,
		dataTimeout:  smtpDataTimeout,
		upstreamIdle: smtpUpstreamIdle,
		conns:        make(map[*smtpConn]struct{}),
	}
	if s.opts.Limiter == nil {
		s.opts.Limiter = NewAuthLimiter()
	}
	s.auth = newAuthn(&s.opts)
	if opts.Config != nil {
		if h := opts.Config.Server.Hostname; h != "" {
			s.hostname = h
		}
		if m := opts.Config.Server.MaxMessageSize; m > 0 {
			s.maxBytes = m
		}
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = s.hostname
	srv.TLSConfig = opts.TLS
	srv.AllowInsecureAuth = false // AUTH only under TLS
	srv.ReadTimeout = smtpReadTimeout
	srv.WriteTimeout = smtpWriteTimeout
	srv.MaxMessageBytes = s.maxBytes
	// Advertised so that SMTPUTF8 clients can submit; MAIL refuses it when
	// the user's provider does not offer it.
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = smtpErrorLog{s.log}
	// srv.Debug stays nil: a protocol trace would contain AUTH secrets.
	s.srv = srv
	return s
}

// Serve accepts STARTTLS submission connections (port 587) on ln until
// Close or Shutdown, after which it returns nil (smtp.ErrServerClosed if
// called after them). AUTH is neither offered nor accepted, and MAIL is
// refused, until the client has started TLS.
func (s *SMTPServer) Serve(ln net.Listener) error {
	return s.serve(ln, "submission", false)
}

// ServeTLS accepts implicit-TLS submission connections (port 465) on ln,
// doing the TLS handshake with Options.TLS.
func (s *SMTPServer) ServeTLS(ln net.Listener) error {
	return s.serve(ln, "smtps", true)
}

func (s *SMTPServer) serve(ln net.Listener, name string, implicitTLS bool) error {
	if implicitTLS && s.opts.TLS == nil {
		return errors.New("proxy: smtps listener needs a TLS configuration")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return smtp.ErrServerClosed
	}
	tl := &smtpListener{Listener: ln, srv: s, name: name}
	s.listeners = append(s.listeners, tl)
	s.mu.Unlock()

	var l net.Listener = tl
	if implicitTLS {
		// The TLS layer must be outermost: go-smtp detects TLS by type.
		l = tls.NewListener(tl, s.opts.TLS)
	}
	s.log.Info("smtp listening", "listener", name, "addr", ln.Addr().String())
	err := s.srv.Serve(l)
	if s.isClosed() {
		return nil
	}
	return err
}

func (s *SMTPServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// stopAccepting marks the server closed and closes its listeners.
func (s *SMTPServer) stopAccepting() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var err error
	for _, l := range s.listeners {
		if lerr := l.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) && err == nil {
			err = lerr
		}
	}
	s.listeners = nil
	return err
}

// Shutdown stops accepting connections, lets the open sessions finish (a
// client that QUITs, or any transfer in progress) until ctx ends, and then
// closes what is left. It returns ctx's error when it had to cut sessions.
func (s *SMTPServer) Shutdown(ctx context.Context) error {
	lerr := s.stopAccepting()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		// Close or Shutdown ran before; stopAccepting closed the listeners.
		err = nil
	}
	if ctx.Err() != nil {
		s.cut()
		return ctx.Err()
	}
	s.waitGoroutines()
	if err == nil {
		err = lerr
	}
	return err
}

// Close immediately closes the listeners, every client connection and
// every upstream connection, and waits (briefly) for the connection
// goroutines to end.
func (s *SMTPServer) Close() error {
	lerr := s.stopAccepting()
	err := s.srv.Close()
	if errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	s.cut()
	if err == nil {
		err = lerr
	}
	return err
}

// cut aborts every session's upstream work and closes every client
// connection under go-smtp's feet, then waits for the goroutines.
func (s *SMTPServer) cut() {
	s.mu.Lock()
	conns := make([]*smtpConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if sess := c.session.Load(); sess != nil {
			sess.abort()
		}
		c.Conn.Close() // the raw connection: go-smtp's Close still runs later
	}
	s.waitGoroutines()
}

func (s *SMTPServer) waitGoroutines() {
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		s.bgWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(smtpCloseWait):
		s.log.Warn("smtp connections still running after close")
	}
}

// smtpListener tags each accepted connection with an id and the listener
// name, and tracks it for Close.
type smtpListener struct {
	net.Listener
	srv  *SMTPServer
	name string
}

func (l *smtpListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &smtpConn{
		Conn:     nc,
		srv:      l.srv,
		id:       fmt.Sprintf("smtp-%d", l.srv.nextID.Add(1)),
		listener: l.name,
	}
	s := l.srv
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return nil, net.ErrClosed
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	c.mt = s.opts.Metrics.SessionStarted(metrics.ProtocolSMTP)
	s.log.Info("session start", "cid", c.id, "listener", c.listener, "remote", nc.RemoteAddr().String())
	return c, nil
}

// smtpConn is the raw client connection, below any TLS layer.
type smtpConn struct {
	net.Conn
	srv      *SMTPServer
	id       string
	listener string
	session  atomic.Pointer[smtpSession]
	once     gosync.Once

	mt *metrics.Session // pecgate_sessions; nil without metrics
}

// Close is called by go-smtp (directly or through tls.Conn) when the
// connection's goroutine ends (or at QUIT, just before it ends).
func (c *smtpConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
		log := c.srv.log.With("cid", c.id, "listener", c.listener)
		if sess := c.session.Load(); sess != nil {
			sess.mu.Lock()
			log = sess.log // carries user, domain and provider once logged in
			sess.mu.Unlock()
		}
		log.Info("session end")
		c.mt.End()
		c.srv.connWG.Done()
	})
	return err
}

// smtpRawConn finds our smtpConn under a go-smtp connection.
func smtpRawConn(nc net.Conn) *smtpConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*smtpConn)
	return c
}

// newSession is go-smtp's Backend: called at EHLO/HELO.
func (s *SMTPServer) newSession(c *smtp.Conn) (smtp.Session, error) {
	if s.isClosed() {
		return nil, errSMTPShuttingDown
	}
	_, isTLS := c.TLSConnectionState()
	id, listener := "", ""
	raw := smtpRawConn(c.Conn())
	if raw != nil {
		id, listener = raw.id, raw.listener
	} else {
		id = fmt.Sprintf("smtp-%d", s.nextID.Add(1))
	}
	ctx, cancel := context.WithCancel(context.Background())
	sess := &smtpSession{
		srv:    s,
		conn:   c,
		ctx:    ctx,
		cancel: cancel,
		log: s.log.With("cid", id, "listener", listener,
			"remote", c.Conn().RemoteAddr().String(), "tls", isTLS),
	}
	if raw != nil {
		raw.session.Store(sess)
		sess.mt = raw.mt
	}
	sess.log.Debug("smtp session started", "helo", c.Hostname())
	return sess, nil
}

// smtpSession is one client's SMTP session (go-smtp makes a new one after
// STARTTLS). Locking: ioMu serialises all use of the upstream client
// (Mail, Rcpt, Data, Reset); mu guards the fields and is never held across
// network I/O, so Logout (which go-smtp may call while Data runs) only
// closes the upstream and never waits for it.
type smtpSession struct {
	srv    *SMTPServer
	conn   *smtp.Conn
	ctx    context.Context // cancelled by Logout: aborts an upstream dial
	cancel context.CancelFunc
	log    *slog.Logger
	mt     *metrics.Session // the connection's; nil without metrics

	ioMu gosync.Mutex

	mu       gosync.Mutex
	closed   bool
	route    *Route
	username string
	password smtpSecret // kept to re-dial an upstream that died
	limit    int64      // per-user message size limit
	up       *smtp.Client
	inTx     bool // the upstream has a MAIL transaction open
}

var _ smtp.AuthSession = (*smtpSession)(nil)

// smtpSecret is a password that formats as *** everywhere (fmt, slog).
type smtpSecret string

func (smtpSecret) String() string             { return "***" }
func (smtpSecret) Format(f fmt.State, _ rune) { io.WriteString(f, "***") }
func (smtpSecret) LogValue() slog.Value       { return slog.StringValue("***") }
func (s smtpSecret) reveal() string           { return string(s) }

// AuthMechanisms implements smtp.AuthSession. go-smtp advertises them only
// on TLS.
func (s *smtpSession) AuthMechanisms() []string {
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return smtpSASLErrors{sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				// Passthrough cannot carry an authorization identity
				// (RFC 4616 section 2): no acting as somebody else.
				s.log.Warn("smtp auth refused", "reason", "authorization identity differs", "user", username, "authzid", identity)
				s.srv.opts.Metrics.AuthFailure(metrics.ProtocolSMTP, metrics.ReasonBadIdentity)
				s.srv.opts.Limiter.Failed(s.remoteIP(), username)
				return errSMTPAuthFailed
			}
			return s.login(username, password)
		})}, nil
	case sasl.Login:
		return smtpSASLErrors{&smtpLoginServer{authenticate: s.login}}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login authenticates the client by logging in to its provider's
// submission endpoint with the client's own credentials (passthrough) and
// keeps that upstream connection for the session.
func (s *smtpSession) login(username, password string) error {
	limiter, ip := s.srv.opts.Limiter, s.remoteIP()
	if !limiter.Allowed(ip, username) {
		s.log.Warn("smtp auth refused", "reason", "too many failures", "user", username)
		s.srv.opts.Metrics.AuthFailure(metrics.ProtocolSMTP, metrics.ReasonThrottled)
		return errSMTPThrottled
	}
	route := s.srv.opts.resolve(username)
	if route == nil {
		// Invariant 7: an unknown domain dials nothing.
		limiter.Failed(ip, username)
		s.log.Warn("smtp auth refused", "reason", "domain not served", "user", username)
		s.srv.opts.Metrics.AuthFailure(metrics.ProtocolSMTP, metrics.ReasonUnknownDomain)
		return errSMTPAuthFailed
	}
	log := s.log.With("user", username, "domain", route.Domain.Name, "provider", route.Provider.Name, "state", route.State)
	// The message goes to the submission endpoint of the provider the
	// state names (old -> old, otherwise new), with that provider's
	// credentials; when it does not see the client's own password, the
	// client is checked against the pinned verifier (or old) first.
	// In state old the client's own credentials go to old, as IMAP's
	// plain proxy does: a master or vault login there would not check them.
	var err error
	if route.State != config.StateOld && route.Provider.Config().Auth != config.AuthPassthrough {
		err = s.srv.auth.check(s.ctx, route, username, password)
	}
	var up *smtp.Client
	switch {
	case err != nil:
	case route.State == config.StateOld:
		up, err = route.Provider.LoginSMTP(s.ctx, s.srv.hostname, username, password)
	default:
		up, err = route.Provider.LoginUserSMTP(s.ctx, s.srv.hostname, username, password, s.srv.opts.Secrets)
	}
	if err != nil {
		if backend.IsAuthFailure(err) {
			// err carries the provider's text; the client gets ours.
			limiter.Failed(ip, username)
			log.Warn("smtp auth refused", "reason", "provider refused", "err", err)
			s.srv.opts.Metrics.AuthFailure(metrics.ProtocolSMTP, metrics.ReasonBadPassword)
			return errSMTPAuthFailed
		}
		log.Warn("smtp auth failed", "reason", "provider unavailable", "err", err)
		s.srv.opts.Metrics.AuthFailure(metrics.ProtocolSMTP, metrics.ReasonUpstreamUnavailable)
		return errSMTPAuthTemporary
	}
	limiter.Succeeded(username)
	limit := s.srv.maxBytes
	if m := route.Provider.Config().MaxMessageSize; m > 0 && m < limit {
		limit = m
	}
	if m, ok := up.MaxMessageSize(); ok && m > 0 && int64(m) < limit {
		limit = int64(m)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		up.Close()
		return errSMTPShuttingDown
	}
	s.route = route
	s.username = username
	s.password = smtpSecret(password)
	s.limit = limit
	s.up = up
	s.log = log
	s.mu.Unlock()
	s.mt.SetState(route.State)
	log.Info("smtp login", "max_message_size", limit)
	return nil
}

// remoteIP is the client's IP address, the limiter's key.
func (s *smtpSession) remoteIP() string {
	addr := s.conn.Conn().RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// upstream returns the session's upstream client, dialling and logging in
// again when the previous one died. Called with ioMu held.
func (s *smtpSession) upstream() (*smtp.Client, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errSMTPShuttingDown
	}
	up, route, user, pass := s.up, s.route, s.username, s.password
	s.mu.Unlock()
	if up != nil {
		return up, nil
	}
	up, err := route.Provider.LoginUserSMTP(s.ctx, s.srv.hostname, user, pass.reveal(), s.srv.opts.Secrets)
	if err != nil {
		s.log.Warn("smtp upstream redial failed", "err", err)
		return nil, errSMTPUpstreamUnavailable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		up.Close()
		return nil, errSMTPShuttingDown
	}
	s.up = up
	s.log.Info("smtp upstream redialled")
	return up, nil
}

// current returns the upstream client without dialling.
func (s *smtpSession) current() *smtp.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.up
}

// drop closes up (without QUIT, and so without ever ending a DATA with the
// final dot) and forgets it if it is still the session's upstream.
func (s *smtpSession) drop(up *smtp.Client) {
	s.mu.Lock()
	if s.up == up {
		s.up = nil
		s.inTx = false
	}
	s.mu.Unlock()
	up.Close()
}

// upstreamError turns an upstream failure into the client's reply: the
// provider's own reply unchanged, or errSMTPUpstream when the connection broke.
func (s *smtpSession) upstreamError(up *smtp.Client, op string, err error) error {
	if se, ok := err.(*smtp.SMTPError); ok {
		s.log.Info("smtp upstream refused", "op", op, "code", se.Code,
			"enhanced", fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2]), "text", se.Message)
		if se.Code == 421 {
			s.drop(up) // the provider is closing the connection
		}
		return se
	}
	s.log.Warn("smtp upstream failed", "op", op, "err", err)
	s.mu.Lock()
	route := s.route
	s.mu.Unlock()
	if route != nil {
		s.srv.opts.Metrics.UpstreamError(route.Provider.Name, metrics.ErrBroken)
	}
	s.drop(up)
	return errSMTPUpstream
}

// Mail implements smtp.Session.
func (s *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	s.ioMu.Lock()
	defer s.ioMu.Unlock()
	s.mu.Lock()
	authed, limit := s.route != nil, s.limit
	s.mu.Unlock()
	if !authed {
		return errSMTPAuthRequired
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	if opts.Size > limit {
		// go-smtp checked the server-wide limit; this is the provider's.
		return errSMTPTooBig
	}
	for attempt := 0; ; attempt++ {
		up, err := s.upstream()
		if err != nil {
			return err
		}
		err = s.mail(up, from, opts)
		if err == nil {
			s.mu.Lock()
			s.inTx = true
			s.mu.Unlock()
			return nil
		}
		se, isReply := err.(*smtp.SMTPError)
		if attempt == 0 && (!isReply || se.Code == 421) {
			// The kept connection died while idle (a provider that times
			// out idle sessions says 421 and closes, e.g. Postfix). No
			// transaction was open: dial again, once.
			s.log.Info("smtp upstream lost while idle", "err", err)
			s.drop(up)
			continue
		}
		if se == errSMTPNo8BitMIME || se == errSMTPNoSMTPUTF8 {
			return se
		}
		return s.upstreamError(up, "mail", err)
	}
}

// mail sends MAIL upstream with the options the provider can take: SIZE,
// BODY=8BITMIME (the client library adds it whenever offered), SMTPUTF8,
// AUTH=. An extension the client asked for and the provider lacks is
// refused, never emulated.
func (s *smtpSession) mail(up *smtp.Client, from string, opts *smtp.MailOptions) error {
	var missing *smtp.SMTPError
	if ok, _ := up.Extension("8BITMIME"); !ok && opts.Body == smtp.Body8BitMIME {
		missing = errSMTPNo8BitMIME
	} else if ok, _ := up.Extension("SMTPUTF8"); !ok && opts.UTF8 {
		missing = errSMTPNoSMTPUTF8
	}
	if missing != nil {
		// Extension also says false when the EHLO it may send (after a
		// RSET) failed: tell a dead connection from a missing extension.
		if err := up.Noop(); err != nil {
			return err
		}
		return missing
	}
	fwd := &smtp.MailOptions{Size: opts.Size, Body: opts.Body, UTF8: opts.UTF8, Auth: opts.Auth}
	return up.Mail(from, fwd)
}

// Rcpt implements smtp.Session.
func (s *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.ioMu.Lock()
	defer s.ioMu.Unlock()
	up := s.current()
	if up == nil {
		return errSMTPUpstream
	}
	if err := up.Rcpt(to, opts); err != nil {
		return s.upstreamError(up, "rcpt", err)
	}
	return nil
}

// Data implements smtp.Session: it streams the message to the provider and
// returns the provider's final reply. If reading from the client fails
// (disconnect, timeout, size limit) the upstream connection is closed
// without the final dot, so the provider delivers nothing. Each message
// is counted by its outcome in pecgate_smtp_submissions_total.
func (s *smtpSession) Data(r io.Reader) error {
	err := s.data(r)
	var result string
	se, _ := err.(*smtp.SMTPError)
	switch {
	case se == errSMTPAuthRequired:
		return err // not a submission
	case se != nil && se.Code == 250:
		result = metrics.SubmissionDelivered
	case se == errSMTPDataAborted:
		result = metrics.SubmissionAborted
	case se == errSMTPUpstream || se == nil:
		result = metrics.SubmissionFailed
	default:
		result = metrics.SubmissionRejected
	}
	s.srv.opts.Metrics.SMTPSubmission(result)
	return err
}

func (s *smtpSession) data(r io.Reader) error {
	s.ioMu.Lock()
	defer s.ioMu.Unlock()
	s.mu.Lock()
	up, limit, authed := s.up, s.limit, s.route != nil
	s.mu.Unlock()
	if !authed {
		return errSMTPAuthRequired
	}
	if up == nil {
		return errSMTPUpstream
	}
	w, err := up.Data()
	if err != nil {
		return s.upstreamError(up, "data", err)
	}

	src := &smtpDataSource{r: r, limit: limit}
	_, isBDAT := r.(*io.PipeReader) // DATA gives go-smtp's dataReader
	if nc := s.conn.Conn(); nc != nil {
		// go-smtp set the read deadline once, at the DATA line: push it
		// forward while the client makes progress, up to dataTimeout.
		end := time.Now().Add(s.srv.dataTimeout)
		src.extend = func() {
			d := time.Now().Add(s.srv.srv.ReadTimeout)
			if d.After(end) {
				d = end
			}
			nc.SetReadDeadline(d)
		}
	}
	dst := &smtpWatchWriter{w: w, idle: s.srv.upstreamIdle}
	dst.timer = time.AfterFunc(dst.idle, func() {
		s.log.Warn("smtp upstream stalled during data")
		up.Close()
	})
	n, err := io.Copy(dst, src)
	dst.timer.Stop()
	if err != nil {
		// NEVER w.Close() here: it would send the final dot and deliver a
		// truncated message. Closing the connection aborts the DATA.
		s.drop(up)
		switch {
		case src.err == errSMTPTooBig || src.err == smtp.ErrDataTooLarge:
			s.log.Info("smtp message refused", "reason", "too big", "limit", limit, "read", n)
			return errSMTPTooBig
		case src.err != nil:
			s.log.Warn("smtp data aborted", "reason", "client", "err", src.err, "read", n)
			return errSMTPDataAborted
		default:
			s.log.Warn("smtp data aborted", "reason", "upstream", "err", err, "read", n)
			return errSMTPUpstream
		}
	}
	if isBDAT {
		// A BDAT chunk cut short still ends in EOF (see the go-smtp facts
		// above): only the declared sizes tell. No final dot unless equal.
		if declared, ok := bdatDeclared(s.conn); !ok || declared != n {
			s.drop(up)
			s.log.Warn("smtp data aborted", "reason", "bdat chunk cut short", "read", n, "declared", declared, "known", ok)
			return errSMTPDataAborted
		}
	}
	resp, err := w.CloseWithResponse()
	s.mu.Lock()
	s.inTx = false
	s.mu.Unlock()
	if err != nil {
		return s.upstreamError(up, "data end", err)
	}
	s.log.Info("smtp message relayed", "size", n, "reply", resp.StatusText)
	return smtpOKReply(resp.StatusText)
}

// bdatDeclared returns the sum of the BDAT chunk sizes go-smtp has taken in
// for the current message: smtp.Conn's unexported bytesReceived, which
// handleBdat updates before it closes the pipe Data reads (so reading it
// after that EOF does not race). ok is false if go-smtp no longer has it.
func bdatDeclared(c *smtp.Conn) (n int64, ok bool) {
	v := reflect.ValueOf(c).Elem().FieldByName("bytesReceived")
	if !v.IsValid() || v.Kind() != reflect.Int64 {
		return 0, false
	}
	return v.Int(), true
}

// smtpOKReply passes the provider's final 250 reply through unchanged: go-smtp
// writes an *SMTPError returned by Data as is, whatever its code.
func smtpOKReply(text string) error {
	e := &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCodeNotSet, Message: text}
	// As go-smtp's client does for errors (toSMTPErr): a leading x.y.z is
	// the enhanced code, repeated at the start of each further line.
	code, rest, ok := strings.Cut(text, " ")
	if !ok {
		return e
	}
	parts := strings.Split(code, ".")
	if len(parts) != 3 {
		return e
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 {
			return e
		}
		ec[i] = v
	}
	e.EnhancedCode = ec
	e.Message = strings.ReplaceAll(rest, "\n"+code+" ", "\n")
	return e
}

// Reset implements smtp.Session (RSET, a new EHLO, the end of every DATA).
// It ends the upstream transaction if one is open; an upstream that fails
// RSET is dropped and dialled again at the next MAIL.
func (s *smtpSession) Reset() {
	s.ioMu.Lock()
	defer s.ioMu.Unlock()
	s.mu.Lock()
	up, inTx := s.up, s.inTx
	s.inTx = false
	s.mu.Unlock()
	if up == nil || !inTx {
		return
	}
	if err := up.Reset(); err != nil {
		s.log.Info("smtp upstream reset failed", "err", err)
		s.drop(up)
	}
}

// Logout implements smtp.Session. go-smtp calls it under its connection
// lock, possibly while Data runs on another goroutine, so it never waits
// for upstream I/O: an idle upstream gets a QUIT in the background, a busy
// one is closed.
func (s *smtpSession) Logout() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	up := s.up
	s.up = nil
	s.password = ""
	s.mu.Unlock()
	s.cancel()
	if up == nil {
		return nil
	}
	if !s.ioMu.TryLock() {
		up.Close()
		return nil
	}
	s.srv.bgWG.Go(func() {
		defer s.ioMu.Unlock()
		t := time.AfterFunc(smtpQuitTimeout, func() { up.Close() })
		defer t.Stop()
		if err := up.Quit(); err != nil {
			up.Close()
		}
	})
	return nil
}

// abort is Logout for a forced close: no QUIT, everything cut now.
func (s *smtpSession) abort() {
	s.mu.Lock()
	s.closed = true
	up := s.up
	s.up = nil
	s.mu.Unlock()
	s.cancel()
	if up != nil {
		up.Close()
	}
}

// smtpDataSource reads the client's message, enforcing the per-user limit and
// remembering the first read error (to tell it from an upstream error).
type smtpDataSource struct {
	r      io.Reader
	limit  int64 // 0: none
	n      int64
	err    error
	extend func()
}

func (d *smtpDataSource) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.extend != nil {
		d.extend()
	}
	n, err := d.r.Read(p)
	d.n += int64(n)
	if d.limit > 0 && d.n > d.limit {
		d.err = errSMTPTooBig
		return 0, d.err
	}
	if err != nil && err != io.EOF {
		d.err = err
	}
	return n, err
}

// smtpWatchWriter re-arms the upstream watchdog after every write.
type smtpWatchWriter struct {
	w     io.Writer
	idle  time.Duration
	timer *time.Timer
}

func (w *smtpWatchWriter) Write(p []byte) (int, error) {
	w.timer.Reset(w.idle)
	return w.w.Write(p)
}

// smtpLoginServer is the server side of the LOGIN SASL mechanism
// (draft-murchison-sasl-login-00), which go-sasl offers only as a client.
// The client may send the username as an initial response (go-sasl's
// client and Thunderbird do); the challenges are the customary "Username:"
// and "Password:" (go-sasl's client insists on the latter).
type smtpLoginServer struct {
	authenticate func(username, password string) error
	step         int
	username     string
}

func (a *smtpLoginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch a.step {
	case 0:
		if response == nil {
			a.step = 1
			return []byte("Username:"), false, nil
		}
		a.username = string(response)
		a.step = 2
		return []byte("Password:"), false, nil
	case 1:
		a.username = string(response)
		a.step = 2
		return []byte("Password:"), false, nil
	case 2:
		a.step = 3
		return nil, true, a.authenticate(a.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// smtpSASLErrors makes every SASL failure an *smtp.SMTPError, so that go-sasl's
// plain error texts never reach the client.
type smtpSASLErrors struct{ sasl.Server }

func (s smtpSASLErrors) Next(response []byte) ([]byte, bool, error) {
	c, done, err := s.Server.Next(response)
	if err != nil {
		if _, ok := err.(*smtp.SMTPError); !ok {
			err = errSMTPBadSASL
		}
	}
	return c, done, err
}

// smtpErrorLog adapts go-smtp's ErrorLog (accept errors, failed TLS
// handshakes, panics) to slog.
type smtpErrorLog struct{ log *slog.Logger }

func (l smtpErrorLog) Printf(format string, v ...any) {
	l.log.Warn("smtp server error", "detail", fmt.Sprintf(format, v...))
}

func (l smtpErrorLog) Println(v ...any) {
	l.log.Warn("smtp server error", "detail", strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}
