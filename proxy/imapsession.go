package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	gosync "sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/store"
)

// imapSession serves one client connection from one upstream connection
// to the provider of the user's route (state old: a transparent proxy).
//
// Sequence numbers are the upstream's: the session forwards every EXISTS
// and EXPUNGE the upstream sends, in order, so the client's view and the
// upstream's stay equal and message numbers pass through unchanged.
//
// Locking: imapserver calls Session methods one at a time, except Idle,
// which runs on its own goroutine while the connection reads DONE. mu
// guards the fields the unilateral-data handlers (upstream reader
// goroutine) touch: queue, gen.
type imapSession struct {
	srv    *IMAPServer
	conn   *imapserver.Conn
	cid    uint64
	log    *slog.Logger
	events chan struct{} // one token: the queue grew

	mt      *metrics.Session // pecgate_sessions; nil without metrics
	connLog *slog.Logger     // log before login (cid, proto, remote); routeLog adds the route

	route    *Route
	password string // the client's, in memory only, to reconnect upstream

	up       *backend.IMAPConn // state old: the one upstream
	selected string            // "" when no mailbox is selected

	// States migrating and new (virtual mode): oldUp is nil in state new.
	oldUp, newUp       *backend.IMAPConn
	oldDelim, newDelim rune
	roleNew, roleOld   map[string]string // special-use pairs: old name <-> new name
	vm                 *vmail            // the selected mailbox's view
	oldExamined        string            // mailbox EXAMINEd on oldUp, "" when unsure
	wIsOld             bool              // state old after a rollback: newUp is old's connection, mapped by the Old side
	oldSelData         *imap.SelectData
	vc                 vcache // virtual mode: what SELECT may reuse (virtual.go)
	state              string // the state the session serves
	flips              <-chan struct{}
	unsubscribe        func()
	readOnly           bool
	selData            *imap.SelectData // at SELECT; NumMessages follows what the client was told
	touched            bool             // a method talked to the upstream since the last Poll

	mu      gosync.Mutex
	gen     int // upstream connection generation; stale handlers are ignored
	queue   []update
	active  int  // session methods running
	idling  bool // inside Idle: BYE may be sent at once
	byeSoon bool // shutdown asked while a method ran
	closed  bool
}

type updateKind int

const (
	updExists updateKind = iota
	updExpunge
	updFlags
	updMailboxFlags
	updResync    // virtual mode: an upstream changed, refresh the view
	updSideFlags // virtual mode: a flag change on one side
	updVExists   // virtual mode: tell the client EXISTS num as is
)

type update struct {
	kind  updateKind
	side  string // updSideFlags: "old" or "new"
	num   uint32 // EXISTS count or sequence number
	uid   imap.UID
	flags []imap.Flag
}

var (
	_ imapserver.Session            = (*imapSession)(nil)
	_ imapserver.SessionNamespace   = (*imapSession)(nil)
	_ imapserver.SessionMove        = (*imapSession)(nil)
	_ imapserver.SessionAppendLimit = (*imapSession)(nil)
)

func (s *imapSession) enter() {
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
	s.checkFlip()
}

// timed counts an IMAP command and returns what ends its timing: defer
// s.timed("fetch")().
func (s *imapSession) timed(command string) (done func()) {
	return s.srv.opts.Metrics.IMAPCommand(command)
}

// routeLog is the session's logger for route: the connection's attributes
// plus user, domain, provider and state (each once, also after a flip).
func (s *imapSession) routeLog(route *Route) *slog.Logger {
	return s.connLog.With("user", route.User, "domain", route.Domain.Name, "provider", route.Provider.Name, "state", route.State)
}

// upstreamBroke counts c's connection as broken mid-command.
func (s *imapSession) upstreamBroke(c *backend.IMAPConn) {
	if c != nil && c.Provider != nil {
		s.srv.opts.Metrics.UpstreamError(c.Provider.Name, metrics.ErrBroken)
	}
}

func (s *imapSession) leave() {
	s.mu.Lock()
	s.active--
	bye := s.byeSoon && s.active == 0
	s.mu.Unlock()
	if bye {
		// After the method returns imapserver writes the tagged reply; the
		// BYE goes out on its own goroutine under the connection's
		// encoder lock, so responses never interleave.
		go s.conn.Bye("Server shutting down, please reconnect")
	}
}

// shutdown says BYE now when the session is between commands or idling,
// or as soon as its running command ends.
func (s *imapSession) shutdown() {
	s.mu.Lock()
	if s.active > 0 && !s.idling {
		s.byeSoon = true
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.conn.Bye("Server shutting down, please reconnect")
}

// Close implements imapserver.Session.
func (s *imapSession) Close() error {
	s.mu.Lock()
	s.closed = true
	s.gen++
	s.mu.Unlock()
	for _, c := range []*backend.IMAPConn{s.up, s.oldUp, s.newUp} {
		if c != nil {
			c.Logout()
		}
	}
	s.up, s.oldUp, s.newUp = nil, nil, nil
	if s.unsubscribe != nil {
		s.unsubscribe()
	}
	s.srv.sessionDone(s)
	s.log.Info("session end")
	s.mt.End()
	return nil
}

// Login implements imapserver.Session (LOGIN and AUTHENTICATE PLAIN).
func (s *imapSession) Login(username, password string) error {
	defer s.timed("login")()
	s.enter()
	defer s.leave()
	limiter, ip := s.srv.opts.Limiter, remoteIP(s.conn.NetConn())
	if !limiter.Allowed(ip, username) {
		s.log.Warn("login refused", "user", username, "reason", "too many failures")
		s.srv.opts.Metrics.AuthFailure(metrics.ProtocolIMAP, metrics.ReasonThrottled)
		return errThrottled
	}
	route := s.srv.opts.resolve(username)
	if route == nil {
		limiter.Failed(ip, username)
		s.log.Info("login refused", "user", username, "reason", "unknown domain")
		s.srv.opts.Metrics.AuthFailure(metrics.ProtocolIMAP, metrics.ReasonUnknownDomain)
		return imapserver.ErrAuthFailed
	}
	s.connLog = s.log
	log := s.routeLog(route)
	var up *backend.IMAPConn
	var err error
	if route.State == config.StateOld && !s.hasMaps(username, route) {
		up, err = s.dialUpstream(route, username, password)
	} else {
		err = s.loginVirtual(route, username, password)
	}
	if err != nil {
		if backend.IsAuthFailure(err) {
			limiter.Failed(ip, username)
			log.Info("login refused", "reason", "upstream refused", "err", err)
			s.srv.opts.Metrics.AuthFailure(metrics.ProtocolIMAP, metrics.ReasonBadPassword)
			return imapserver.ErrAuthFailed
		}
		log.Warn("login failed", "reason", "upstream unavailable", "err", err)
		s.srv.opts.Metrics.AuthFailure(metrics.ProtocolIMAP, metrics.ReasonUpstreamUnavailable)
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable,
			Text: "The mail provider is unreachable, please retry later"}
	}
	limiter.Succeeded(username)
	if route.State == config.StateOld && route.New != nil {
		// The domain will move: pin a verifier of the password old accepts
		// now, so the member keeps it after old is gone.
		s.srv.auth.pin(context.Background(), username, password)
	}
	s.srv.opts.remember(route, username, password)
	s.route, s.password, s.up, s.log, s.state = route, password, up, log, route.State
	s.mt.SetState(route.State)
	if r := s.srv.opts.Router; r != nil {
		s.flips, s.unsubscribe = r.Subscribe()
	}
	log.Info("login")
	return nil
}

func (s *imapSession) dialUpstream(route *Route, username, password string) (*backend.IMAPConn, error) {
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	return route.Provider.LoginIMAP(ctx, username, password, &imapclient.Options{
		UnilateralDataHandler: s.handler(gen),
		WordDecoder:           wordDecoder,
	})
}

// handler returns the unilateral-data handler of upstream generation gen.
// It runs on the upstream reader goroutine (Expunge, Mailbox) or on a
// fresh goroutine (Fetch): it only queues, never calls the client.
func (s *imapSession) handler(gen int) *imapclient.UnilateralDataHandler {
	push := func(u update) {
		s.mu.Lock()
		if s.gen == gen && !s.closed {
			s.queue = append(s.queue, u)
		}
		s.mu.Unlock()
		select {
		case s.events <- struct{}{}:
		default:
		}
	}
	return &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { push(update{kind: updExpunge, num: seq}) },
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				push(update{kind: updExists, num: *d.NumMessages})
			}
			if d.Flags != nil {
				push(update{kind: updMailboxFlags, flags: d.Flags})
			}
		},
		// An unsolicited FETCH is a flag change made elsewhere. This
		// handler runs on its own goroutine (imapclient fetch.go
		// handleFetch: `go handler(msg)`), so in theory it can be queued
		// after an EXPUNGE that the upstream sent later; Dovecot sends
		// flag changes and expunges in separate bursts, and a wrong
		// sequence number here costs a client a stale flag, not a message.
		Fetch: func(msg *imapclient.FetchMessageData) {
			buf, err := msg.Collect()
			if err != nil || buf.Flags == nil {
				return
			}
			push(update{kind: updFlags, num: buf.SeqNum, uid: buf.UID, flags: buf.Flags})
		},
	}
}

// upstream returns a live upstream connection, reconnecting once when the
// library dropped it (an unknown untagged response, a rejected APPEND, a
// provider restart). When a mailbox was selected it is selected again and
// must look the same (UIDVALIDITY, EXISTS, UIDNEXT), else the client's
// message numbers would lie: then the client gets BYE.
func (s *imapSession) upstream() (*backend.IMAPConn, error) {
	s.touched = true
	if s.up != nil {
		select {
		case <-s.up.Closed():
		default:
			return s.up, nil
		}
		s.up.Close()
		s.up = nil
	}
	if s.route == nil {
		return nil, errUpstreamGone
	}
	s.log.Info("upstream reconnect")
	up, err := s.dialUpstream(s.route, s.route.User, s.password)
	if err != nil {
		s.log.Warn("upstream reconnect failed", "err", err)
		return nil, errUpstreamGone
	}
	if s.selected != "" {
		data, err := up.Select(s.selected, &imap.SelectOptions{ReadOnly: s.readOnly}).Wait()
		if err != nil || data.UIDValidity != s.selData.UIDValidity ||
			data.NumMessages != s.selData.NumMessages || data.UIDNext != s.selData.UIDNext {
			up.Close()
			s.log.Warn("upstream reconnect: mailbox changed meanwhile, closing client", "mailbox", s.selected)
			go s.conn.Bye("Mailbox state lost, please reconnect")
			return nil, errUpstreamGone
		}
	}
	s.up = up
	return up, nil
}

// markClosedOnIOError drops the upstream after a non-IMAP error so the
// next command reconnects.
func (s *imapSession) check(err error) error {
	if err == nil {
		return nil
	}
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) && s.up != nil {
		s.upstreamBroke(s.up)
		s.up.Close()
	}
	return upstreamError(err)
}

// Select implements imapserver.Session (SELECT and EXAMINE).
func (s *imapSession) Select(mailbox string, options *imap.SelectOptions) (*imap.SelectData, error) {
	defer s.timed(selectName(options))()
	s.enter()
	defer s.leave()
	if s.virtual() {
		return s.vSelect(mailbox, options)
	}
	up, err := s.upstream()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.queue = nil // updates of the previous mailbox are void
	s.mu.Unlock()
	s.selected = ""
	data, err := up.Select(mailbox, options).Wait()
	if err != nil {
		return nil, s.check(err)
	}
	s.selected, s.readOnly, s.selData = mailbox, options != nil && options.ReadOnly, data
	return data, nil
}

// selectName is the command name of a SELECT or EXAMINE.
func selectName(options *imap.SelectOptions) string {
	if options != nil && options.ReadOnly {
		return "examine"
	}
	return "select"
}

// Unselect implements imapserver.Session (UNSELECT; CLOSE after Expunge).
func (s *imapSession) Unselect() error {
	defer s.timed("unselect")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		return s.vUnselect()
	}
	up, err := s.upstream()
	if err != nil {
		return err
	}
	if err := up.Unselect().Wait(); err != nil {
		return s.check(err)
	}
	s.selected = ""
	s.mu.Lock()
	s.queue = nil
	s.mu.Unlock()
	return nil
}

func (s *imapSession) simple(f func(up *backend.IMAPConn) error) error {
	s.enter()
	defer s.leave()
	up, err := s.upstream()
	if err != nil {
		return err
	}
	return s.check(f(up))
}

// Create implements imapserver.Session.
func (s *imapSession) Create(mailbox string, options *imap.CreateOptions) error {
	defer s.timed("create")()
	if s.virtual() {
		return s.vdo(func() error { return s.vCreate(mailbox, options) })
	}
	return s.simple(func(up *backend.IMAPConn) error { return up.Create(mailbox, options).Wait() })
}

// Delete implements imapserver.Session.
func (s *imapSession) Delete(mailbox string) error {
	defer s.timed("delete")()
	if s.virtual() {
		return s.vdo(func() error { return s.vDelete(mailbox) })
	}
	return s.simple(func(up *backend.IMAPConn) error { return up.Delete(mailbox).Wait() })
}

// Rename implements imapserver.Session.
func (s *imapSession) Rename(mailbox, newName string, options *imap.RenameOptions) error {
	defer s.timed("rename")()
	if s.virtual() {
		return s.vdo(func() error { return s.vRename(mailbox, newName, options) })
	}
	return s.simple(func(up *backend.IMAPConn) error { return up.Rename(mailbox, newName, options).Wait() })
}

// Subscribe implements imapserver.Session.
func (s *imapSession) Subscribe(mailbox string) error {
	defer s.timed("subscribe")()
	if s.virtual() {
		return s.vdo(func() error { return s.checkNew(s.newUp.Subscribe(s.newName(mailbox)).Wait()) })
	}
	return s.simple(func(up *backend.IMAPConn) error { return up.Subscribe(mailbox).Wait() })
}

// Unsubscribe implements imapserver.Session.
func (s *imapSession) Unsubscribe(mailbox string) error {
	defer s.timed("unsubscribe")()
	if s.virtual() {
		return s.vdo(func() error { return s.checkNew(s.newUp.Unsubscribe(s.newName(mailbox)).Wait()) })
	}
	return s.simple(func(up *backend.IMAPConn) error { return up.Unsubscribe(mailbox).Wait() })
}

// List implements imapserver.Session (LIST and LSUB).
func (s *imapSession) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	defer s.timed("list")()
	if s.virtual() {
		return s.vdo(func() error { return s.vList(w, ref, patterns, options) })
	}
	return s.simple(func(up *backend.IMAPConn) error {
		for _, pattern := range patterns {
			cmd := up.List(ref, pattern, options)
			for {
				data := cmd.Next()
				if data == nil {
					break
				}
				if err := w.WriteList(data); err != nil {
					cmd.Close()
					return err
				}
			}
			if err := cmd.Close(); err != nil {
				return err
			}
		}
		return nil
	})
}

// Status implements imapserver.Session. Every item the client asked for is
// filled (imapserver dereferences them all): an item the upstream left out
// is an error rather than a panic.
func (s *imapSession) Status(mailbox string, options *imap.StatusOptions) (*imap.StatusData, error) {
	defer s.timed("status")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		return s.statusVirtual(mailbox, options)
	}
	up, err := s.upstream()
	if err != nil {
		return nil, err
	}
	upOpts := *options
	upOpts.NumRecent = false // imapclient cannot ask for RECENT
	data, err := up.Status(mailbox, &upOpts).Wait()
	if err != nil {
		return nil, s.check(err)
	}
	if options.NumRecent && data.NumRecent == nil {
		var zero uint32
		data.NumRecent = &zero
	}
	if (options.NumMessages && data.NumMessages == nil) || (options.NumUnseen && data.NumUnseen == nil) ||
		(options.NumDeleted && data.NumDeleted == nil) || (options.Size && data.Size == nil) ||
		(options.AppendLimit && data.AppendLimit == nil) || (options.DeletedStorage && data.DeletedStorage == nil) {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
			Text: "The mail provider did not return every STATUS item"}
	}
	return data, nil
}

// AppendLimit implements imapserver.SessionAppendLimit.
func (s *imapSession) AppendLimit() uint32 {
	limit := s.srv.opts.maxMessageSize(s.route)
	if limit > int64(^uint32(0)) {
		return ^uint32(0)
	}
	return uint32(limit)
}

// Append implements imapserver.Session, streaming the literal upstream.
func (s *imapSession) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	defer s.timed("append")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		return s.appendVirtual(mailbox, r, options)
	}
	if limit := s.srv.opts.maxMessageSize(s.route); r.Size() > limit {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig,
			Text: fmt.Sprintf("Message too big: the limit is %d bytes", limit)}
	}
	up, err := s.upstream()
	if err != nil {
		return nil, err
	}
	cmd := up.Append(mailbox, r.Size(), options)
	n, copyErr := io.Copy(cmd, r)
	if copyErr == nil && n != r.Size() {
		// imapserver hands us a LimitReader: a client that vanished
		// mid-literal reads as a clean, short EOF.
		copyErr = io.ErrUnexpectedEOF
	}
	if copyErr != nil {
		// The upstream is still inside the literal: the only way to make
		// sure nothing is stored is to drop the connection.
		s.log.Info("append aborted", "mailbox", mailbox, "got", n, "want", r.Size(), "err", copyErr)
		up.Close()
		cmd.Close()
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "APPEND aborted: message incomplete, nothing stored"}
	}
	if err := cmd.Close(); err != nil {
		return nil, s.check(err)
	}
	data, err := cmd.Wait()
	if err != nil {
		// A NO before the continuation makes imapclient close the whole
		// connection (GOIMAP-NOTES): the next command reconnects.
		return nil, s.check(err)
	}
	return data, nil
}

// Poll implements imapserver.Session. It forwards queued upstream updates;
// when the command did not reach the upstream (NOOP, CHECK) it first asks
// the upstream with NOOP, so polling clients see new mail.
func (s *imapSession) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.virtual() {
		return s.vPoll(w, allowExpunge)
	}
	if !s.touched && s.up != nil {
		s.enter()
		if up, err := s.upstream(); err == nil {
			if err := up.Noop().Wait(); err != nil {
				s.check(err)
			}
		}
		s.leave()
	}
	s.touched = false
	return s.flush(w, allowExpunge)
}

// flush writes queued updates in order, stopping before an EXPUNGE when
// expunges are not allowed (during FETCH, STORE, SEARCH).
func (s *imapSession) flush(w *imapserver.UpdateWriter, allowExpunge bool) error {
	s.mu.Lock()
	q := s.queue
	i := 0
	for ; i < len(q); i++ {
		if q[i].kind == updExpunge && !allowExpunge {
			break
		}
	}
	s.queue = append([]update(nil), q[i:]...)
	s.mu.Unlock()
	for _, u := range q[:i] {
		var err error
		switch u.kind {
		case updExists:
			err = w.WriteNumMessages(u.num)
			if s.selData != nil {
				s.selData.NumMessages = u.num
			}
		case updExpunge:
			err = w.WriteExpunge(u.num)
			s.told(-1)
		case updFlags:
			err = w.WriteMessageFlags(u.num, u.uid, u.flags)
		case updMailboxFlags:
			err = w.WriteMailboxFlags(u.flags)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// told records that the client was told of a change of delta messages
// (EXISTS, EXPUNGE), so that a reconnect compares like with like.
func (s *imapSession) told(delta int) {
	if s.selData != nil {
		s.selData.NumMessages = uint32(int(s.selData.NumMessages) + delta)
	}
}

// Idle implements imapserver.Session: the upstream IDLEs too and its
// updates are relayed as they come. Without IDLE upstream, it polls with
// NOOP every 30 seconds. When the provider drops the connection the
// session reconnects and goes on idling; when it cannot, the client gets
// BYE: imapserver waits for the client's DONE after Idle returns, so an
// error alone would leave the client hanging.
func (s *imapSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	defer s.timed("idle")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		return s.vIdle(w, stop)
	}
	// An idling client waits for nothing: shutdown may say BYE at once
	// (the BYE closes the connection, which ends the IDLE).
	s.mu.Lock()
	s.idling = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.idling = false
		s.mu.Unlock()
	}()
	for attempt := 0; ; attempt++ {
		up, err := s.upstream()
		if err != nil || attempt == 3 {
			s.log.Warn("upstream lost during IDLE", "err", err)
			s.conn.Bye("The mail provider is unreachable, please reconnect later")
			return errUpstreamGone
		}
		if err := s.flush(w, true); err != nil {
			return err
		}
		var stopped bool
		if up.Caps().Has(imap.CapIdle) {
			var idle *imapclient.IdleCommand
			if idle, err = up.Idle(); err == nil {
				stopped, err = s.relayIdle(w, up, idle, stop)
			}
		} else {
			stopped, err = s.pollIdle(w, up, stop)
		}
		if stopped {
			return err
		}
		if errors.Is(err, errFlipped) {
			s.applyFlip()
			if s.virtual() {
				return s.vIdle(w, stop)
			}
			attempt--
			continue
		}
		if err != nil {
			s.check(err) // drops a broken upstream; the next round reconnects
		}
	}
}

// pollIdle stands in for IDLE upstream with a NOOP every 30 seconds.
func (s *imapSession) pollIdle(w *imapserver.UpdateWriter, up *backend.IMAPConn, stop <-chan struct{}) (stopped bool, err error) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return true, s.flush(w, true)
		case <-s.events:
			if err := s.flush(w, true); err != nil {
				return true, err
			}
		case <-t.C:
			if err := up.Noop().Wait(); err != nil {
				return false, err
			}
		case <-up.Closed():
			return false, errUpstreamGone
		case <-s.flips:
			return false, errFlipped
		}
	}
}

// relayIdle relays updates during one upstream IDLE until the client's
// DONE (stopped) or the upstream connection's end.
func (s *imapSession) relayIdle(w *imapserver.UpdateWriter, up *backend.IMAPConn, idle *imapclient.IdleCommand, stop <-chan struct{}) (stopped bool, err error) {
	for {
		select {
		case <-stop:
			// The client said DONE: whatever happens upstream now, this
			// IDLE ends here.
			if err := idle.Close(); err != nil {
				return true, s.check(err)
			}
			if err := idle.Wait(); err != nil {
				return true, s.check(err)
			}
			return true, s.flush(w, true)
		case <-s.events:
			if err := s.flush(w, true); err != nil {
				idle.Close()
				return true, err
			}
		case <-up.Closed():
			idle.Close()
			return false, errUpstreamGone
		case <-s.flips:
			// A flip reaches an idling session too (invariant 8): end the
			// upstream IDLE, apply it, and idle on in the new mode.
			if err := idle.Close(); err != nil {
				return false, err
			}
			if err := idle.Wait(); err != nil {
				return false, err
			}
			return false, errFlipped
		}
	}
}

// errFlipped ends an upstream IDLE so that a flip is applied.
var errFlipped = errors.New("proxy: state changed")

// Expunge implements imapserver.Session (EXPUNGE, UID EXPUNGE, CLOSE).
func (s *imapSession) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	defer s.timed("expunge")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		if s.vm == nil {
			return nil
		}
		s.touched = true
		return s.vm.expunge(w, uids)
	}
	if s.readOnly {
		return errReadOnly
	}
	up, err := s.upstream()
	if err != nil {
		return err
	}
	var cmd *imapclient.ExpungeCommand
	if uids != nil {
		if !up.Caps().Has(imap.CapUIDPlus) {
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
				Text: "The mail provider does not support UID EXPUNGE"}
		}
		cmd = up.UIDExpunge(*uids)
	} else {
		cmd = up.Expunge()
	}
	for seq := cmd.Next(); seq != 0; seq = cmd.Next() {
		if err := w.WriteExpunge(seq); err != nil {
			cmd.Close()
			return err
		}
	}
	return s.check(cmd.Close())
}

// errThrottled answers a login while too many have failed: the provider
// is not asked, so a wrong password cannot lock the account there.
var errThrottled = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed,
	Text: "Too many failed logins, try again in a few minutes"}

func remoteIP(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

var errReadOnly = &imap.Error{Type: imap.StatusResponseTypeNo, Code: "READ-ONLY",
	Text: "Mailbox is read-only (EXAMINE)"}

// Search implements imapserver.Session. ESEARCH results are computed here
// when the upstream has no ESEARCH.
func (s *imapSession) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	defer s.timed("search")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		s.touched = true
		return s.vm.search(kind, criteria, options)
	}
	up, err := s.upstream()
	if err != nil {
		return nil, err
	}
	esearch := options != nil && (options.ReturnMin || options.ReturnMax || options.ReturnAll || options.ReturnCount)
	upOpts := options
	if esearch && !up.Caps().Has(imap.CapESearch) && !up.Caps().Has(imap.CapIMAP4rev2) {
		upOpts = nil
	}
	var cmd *imapclient.SearchCommand
	if kind == imapserver.NumKindUID {
		cmd = up.UIDSearch(criteria, upOpts)
	} else {
		cmd = up.Search(criteria, upOpts)
	}
	data, err := cmd.Wait()
	if err != nil {
		return nil, s.check(err)
	}
	if esearch && upOpts == nil {
		fillESearch(data, kind)
	}
	if data.All == nil {
		// Nothing matched: an ESEARCH reply without ALL leaves All nil
		// (imapclient replaces the whole result), and imapserver's writers
		// fail on a nil set (writeSearch mid-line, writeESearch panics).
		data.All = emptyNumSet(kind)
	}
	return data, nil
}

// fillESearch computes MIN, MAX and COUNT from a plain SEARCH result.
func fillESearch(data *imap.SearchData, kind imapserver.NumKind) {
	var nums []uint32
	switch all := data.All.(type) {
	case imap.SeqSet:
		nums, _ = all.Nums()
	case imap.UIDSet:
		uids, _ := all.Nums()
		for _, u := range uids {
			nums = append(nums, uint32(u))
		}
	}
	data.Count = uint32(len(nums))
	for i, n := range nums {
		if i == 0 || n < data.Min {
			data.Min = n
		}
		if n > data.Max {
			data.Max = n
		}
	}
	if data.All == nil {
		data.All = emptyNumSet(kind)
	}
}

func emptyNumSet(kind imapserver.NumKind) imap.NumSet {
	if kind == imapserver.NumKindUID {
		return imap.UIDSet{}
	}
	return imap.SeqSet{}
}

// Fetch implements imapserver.Session: every item is relayed as the
// upstream sent it; body sections stream through without being held.
func (s *imapSession) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	defer s.timed("fetch")()
	s.enter()
	defer s.leave()
	if bc := batchOf(s.conn.NetConn()); bc != nil {
		bc.begin()
		defer bc.end()
	}
	if s.virtual() {
		s.touched = true
		return s.vm.fetch(w, numSet, options)
	}
	up, err := s.upstream()
	if err != nil {
		return err
	}
	cmd := up.Fetch(numSet, options)
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		if err := s.relayMessage(w, msg, options); err != nil {
			// The client is gone or the upstream broke mid-message: the
			// upstream connection may be inside a literal, drop it.
			up.Close()
			cmd.Close()
			return err
		}
	}
	return s.check(cmd.Close())
}

func (s *imapSession) relayMessage(w *imapserver.FetchWriter, msg *imapclient.FetchMessageData, options *imap.FetchOptions) error {
	rw := w.CreateMessage(msg.SeqNum)
	for item := msg.Next(); item != nil; item = msg.Next() {
		if err := relayItem(rw, item, options); err != nil {
			return err
		}
	}
	return rw.Close()
}

// relayItem writes one upstream FETCH item to the client.
func relayItem(rw *imapserver.FetchResponseWriter, item imapclient.FetchItemData, options *imap.FetchOptions) error {
	switch item := item.(type) {
	case imapclient.FetchItemDataUID:
		rw.WriteUID(item.UID)
	case imapclient.FetchItemDataFlags:
		rw.WriteFlags(item.Flags)
	case imapclient.FetchItemDataRFC822Size:
		rw.WriteRFC822Size(item.Size)
	case imapclient.FetchItemDataInternalDate:
		rw.WriteInternalDate(item.Time)
	case imapclient.FetchItemDataEnvelope:
		rw.WriteEnvelope(item.Envelope)
	case imapclient.FetchItemDataBodyStructure:
		if options.BodyStructure == nil {
			return nil
		}
		// imapserver panics on a non-extended structure when the client
		// asked BODYSTRUCTURE; imapclient leaves Extended nil when the
		// upstream sent no extension data.
		fillExtended(item.BodyStructure)
		rw.WriteBodyStructure(item.BodyStructure)
	case imapclient.FetchItemDataBodySection:
		sec := matchBodySection(options, &item)
		if sec == nil {
			_, err := io.Copy(io.Discard, item.Literal)
			return err
		}
		return copyLiteral(rw.WriteBodySection(sec, item.Literal.Size()), item.Literal)
	case imapclient.FetchItemDataBinarySection:
		for _, c := range options.BinarySection {
			if item.MatchCommand(c) {
				return copyLiteral(rw.WriteBinarySection(c, item.Literal.Size()), item.Literal)
			}
		}
		_, err := io.Copy(io.Discard, item.Literal)
		return err
	case imapclient.FetchItemDataBinarySectionSize:
		for _, c := range options.BinarySectionSize {
			if item.MatchCommand(c) {
				rw.WriteBinarySectionSize(c, item.Size)
				break
			}
		}
	}
	return nil
}

// matchBodySection returns the client's own section item for an upstream
// body section: imapserver keys obsolete names (RFC822, RFC822.HEADER...) by
// that pointer.
func matchBodySection(options *imap.FetchOptions, item *imapclient.FetchItemDataBodySection) *imap.FetchItemBodySection {
	for _, c := range options.BodySection {
		if item.MatchCommand(c) {
			return c
		}
	}
	return nil
}

func copyLiteral(w io.WriteCloser, lit imap.LiteralReader) error {
	n, err := io.Copy(w, lit)
	if err == nil && n != lit.Size() {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		// Closing a short literal writer would pad nothing: the client
		// stream is broken either way; report it.
		return fmt.Errorf("relay literal: %w", err)
	}
	return w.Close()
}

func fillExtended(bs imap.BodyStructure) {
	switch bs := bs.(type) {
	case *imap.BodyStructureSinglePart:
		if bs.Extended == nil {
			bs.Extended = &imap.BodyStructureSinglePartExt{}
		}
		if bs.MessageRFC822 != nil && bs.MessageRFC822.BodyStructure != nil {
			fillExtended(bs.MessageRFC822.BodyStructure)
		}
	case *imap.BodyStructureMultiPart:
		if bs.Extended == nil {
			bs.Extended = &imap.BodyStructureMultiPartExt{}
		}
		for _, c := range bs.Children {
			fillExtended(c)
		}
	}
}

// Store implements imapserver.Session.
func (s *imapSession) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	defer s.timed("store")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		s.touched = true
		return s.vm.store(w, numSet, flags, options)
	}
	if s.readOnly {
		return errReadOnly
	}
	up, err := s.upstream()
	if err != nil {
		return err
	}
	cmd := up.Store(numSet, flags, options)
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		buf, err := msg.Collect()
		if err != nil {
			cmd.Close()
			return s.check(err)
		}
		rw := w.CreateMessage(buf.SeqNum)
		if buf.UID != 0 {
			rw.WriteUID(buf.UID)
		}
		if buf.Flags != nil {
			rw.WriteFlags(buf.Flags)
		}
		if err := rw.Close(); err != nil {
			cmd.Close()
			return err
		}
	}
	return s.check(cmd.Close())
}

// Copy implements imapserver.Session.
func (s *imapSession) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	defer s.timed("copy")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		s.touched = true
		data, _, _, err := s.vm.copyTo(numSet, dest)
		return data, err
	}
	up, err := s.upstream()
	if err != nil {
		return nil, err
	}
	data, err := up.Copy(numSet, dest).Wait()
	if err != nil {
		return nil, s.check(err)
	}
	return data, nil
}

// Move implements imapserver.SessionMove. Without MOVE upstream it copies,
// and only when the copy succeeded marks the messages \Deleted and
// UID EXPUNGEs exactly them (imapclient's own fallback pipelines all three
// without checking COPY).
func (s *imapSession) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	defer s.timed("move")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		s.touched = true
		return s.vMove(w, numSet, dest)
	}
	if s.readOnly {
		return errReadOnly
	}
	up, err := s.upstream()
	if err != nil {
		return err
	}
	if up.Caps().Has(imap.CapMove) {
		data, err := up.Move(numSet, dest).Wait()
		if err != nil {
			return s.check(err)
		}
		if data.DestUIDs != nil {
			if err := w.WriteCopyData(&imap.CopyData{UIDValidity: data.UIDValidity, SourceUIDs: data.SourceUIDs.(imap.UIDSet), DestUIDs: data.DestUIDs.(imap.UIDSet)}); err != nil {
				return err
			}
		}
		// The upstream's EXPUNGEs arrived through the unilateral handler
		// (a MOVE is not an ExpungeCommand); relay them now, in order.
		return s.flushExpunges(w)
	}
	if !up.Caps().Has(imap.CapUIDPlus) {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot,
			Text: "The mail provider supports neither MOVE nor UIDPLUS; use COPY"}
	}
	uidSet, ok := numSet.(imap.UIDSet)
	if !ok {
		res, err := up.UIDSearch(&imap.SearchCriteria{SeqNum: []imap.SeqSet{numSet.(imap.SeqSet)}}, nil).Wait()
		if err != nil {
			return s.check(err)
		}
		uids := res.AllUIDs()
		if len(uids) == 0 {
			return nil
		}
		uidSet = imap.UIDSetNum(uids...)
	}
	data, err := up.Copy(uidSet, dest).Wait()
	if err != nil {
		return s.check(err)
	}
	if err := w.WriteCopyData(data); err != nil {
		return err
	}
	if err := up.Store(uidSet, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return s.check(err)
	}
	cmd := up.UIDExpunge(uidSet)
	for seq := cmd.Next(); seq != 0; seq = cmd.Next() {
		if err := w.WriteExpunge(seq); err != nil {
			cmd.Close()
			return err
		}
		s.told(-1)
	}
	return s.check(cmd.Close())
}

func (s *imapSession) flushExpunges(w *imapserver.MoveWriter) error {
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	var rest []update
	for _, u := range q {
		if u.kind == updExpunge {
			if err := w.WriteExpunge(u.num); err != nil {
				return err
			}
			s.told(-1)
		} else {
			rest = append(rest, u)
		}
	}
	if len(rest) > 0 {
		s.mu.Lock()
		s.queue = append(rest, s.queue...)
		s.mu.Unlock()
	}
	return nil
}

// Namespace implements imapserver.SessionNamespace; without NAMESPACE
// upstream it answers one personal namespace with the upstream delimiter.
func (s *imapSession) Namespace() (*imap.NamespaceData, error) {
	defer s.timed("namespace")()
	s.enter()
	defer s.leave()
	if s.virtual() {
		return s.vNamespace()
	}
	up, err := s.upstream()
	if err != nil {
		return nil, err
	}
	if up.Caps().Has(imap.CapNamespace) {
		data, err := up.Namespace().Wait()
		return data, s.check(err)
	}
	list, err := up.List("", "", nil).Collect()
	if err != nil {
		return nil, s.check(err)
	}
	var delim rune = '/'
	if len(list) > 0 {
		delim = list[0].Delim
	}
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: delim}}}, nil
}

// hasMaps reports whether user has UID maps (has been migrating): then
// state old is served through them (old as the only side), so a rollback
// never gives a virtual UID a second meaning.
func (s *imapSession) hasMaps(user string, route *Route) bool {
	if route.New == nil || s.srv.opts.Maps == nil {
		return false
	}
	var names []string
	s.srv.opts.Maps.Store().View(context.Background(), func(tx store.Tx) error {
		names, _ = store.ListMaps(tx, user)
		return nil
	})
	return len(names) > 0
}
