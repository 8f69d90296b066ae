package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/pecgate/pecgate/internal/metrics"
)

// IMAPCaps is what the gateway advertises, whatever the upstream: each
// capability here is either passed through or emulated by the session when
// the upstream lacks it (see imapSession). The imapserver library adds
// LITERAL-, SASL-IR, IDLE, UNSELECT, ENABLE, UTF8=ACCEPT, STARTTLS and
// AUTH=PLAIN/LOGINDISABLED by itself. APPENDLIMIT comes from
// SessionAppendLimit.
//
// Not advertised because imapserver (beta.8) cannot serve them: ID,
// CONDSTORE/QRESYNC, SORT, THREAD, QUOTA, ACL, METADATA, COMPRESS,
// MULTIAPPEND; nor IMAP4rev2, SEARCHRES, LIST-STATUS, STATUS=SIZE and
// BINARY, which not every provider offers and the gateway does not emulate.
var IMAPCaps = imap.CapSet{
	imap.CapIMAP4rev1:    {},
	imap.CapLiteralPlus:  {},
	imap.CapNamespace:    {},
	imap.CapUIDPlus:      {},
	imap.CapMove:         {},
	imap.CapSpecialUse:   {},
	imap.CapChildren:     {},
	imap.CapESearch:      {},
	imap.CapListExtended: {},
}

// IMAPServer is the client-facing IMAP server.
type IMAPServer struct {
	opts   Options
	srv    *imapserver.Server
	nextID atomic.Uint64

	auth *authn

	mu       gosync.Mutex
	sessions map[*imapSession]struct{}
	closing  bool
	wg       gosync.WaitGroup
}

// NewIMAP returns an IMAP server; call Serve or ServeTLS to use it.
func NewIMAP(opts Options) *IMAPServer {
	if opts.Limiter == nil {
		opts.Limiter = NewAuthLimiter()
	}
	s := &IMAPServer{opts: opts, sessions: make(map[*imapSession]struct{})}
	s.auth = newAuthn(&opts)
	s.srv = imapserver.New(&imapserver.Options{
		NewSession: s.newSession,
		Caps:       IMAPCaps,
		Logger:     slogPrintf{opts.logger()},
		TLSConfig:  opts.TLS,
	})
	return s
}

// slogPrintf adapts imapserver's Printf logger to slog.
type slogPrintf struct{ log *slog.Logger }

func (l slogPrintf) Printf(format string, args ...any) {
	l.log.Warn("imapserver", "detail", fmt.Sprintf(format, args...))
}

// Serve serves STARTTLS IMAP (port 143) on ln.
func (s *IMAPServer) Serve(ln net.Listener) error { return s.srv.Serve(batchListener{ln}) }

// ServeTLS serves implicit-TLS IMAP (port 993) on ln.
func (s *IMAPServer) ServeTLS(ln net.Listener) error {
	return s.srv.Serve(tls.NewListener(batchListener{ln}, s.opts.TLS))
}

var errIMAPShuttingDown = &imap.Error{Type: imap.StatusResponseTypeBye, Text: "Server shutting down, please reconnect"}

func (s *IMAPServer) newSession(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, nil, errIMAPShuttingDown
	}
	id := s.nextID.Add(1)
	sess := &imapSession{
		srv:    s,
		conn:   conn,
		cid:    id,
		log:    s.opts.logger().With("cid", id, "proto", "imap", "remote", conn.NetConn().RemoteAddr().String()),
		events: make(chan struct{}, 1),
		mt:     s.opts.Metrics.SessionStarted(metrics.ProtocolIMAP),
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	sess.log.Info("session start")
	return sess, nil, nil
}

func (s *IMAPServer) sessionDone(sess *imapSession) {
	s.mu.Lock()
	if _, ok := s.sessions[sess]; ok {
		delete(s.sessions, sess)
		s.wg.Done()
	}
	s.mu.Unlock()
}

// Shutdown refuses new connections, sends BYE to sessions that are not in
// the middle of a command (idle or between commands) and waits for the
// others until ctx ends, then closes everything.
func (s *IMAPServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	var list []*imapSession
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	for _, sess := range list {
		sess.shutdown()
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return s.srv.Close()
}

// Close closes every listener and connection at once.
func (s *IMAPServer) Close() error { return s.srv.Close() }

// errUpstreamGone is what a client sees when its provider connection broke
// and could not be restored.
var errUpstreamGone = &imap.Error{
	Type: imap.StatusResponseTypeNo,
	Code: imap.ResponseCodeUnavailable,
	Text: "The mail provider is unreachable, please retry",
}

// upstreamError turns an upstream failure into what the client sees: an
// upstream *imap.Error passes through verbatim (its code and text are the
// provider's); anything else (I/O, timeouts) is UNAVAILABLE.
func upstreamError(err error) error {
	if err == nil {
		return nil
	}
	var imapErr *imap.Error
	if errors.As(err, &imapErr) {
		return imapErr
	}
	return errUpstreamGone
}

// deadline bounds how long a session waits for an upstream answer to one
// command before giving up on the connection.
const upstreamCommandTimeout = 2 * time.Minute
