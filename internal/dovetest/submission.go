package dovetest

import (
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Submission is one message accepted by a server's submission endpoint.
type Submission struct {
	// From is the MAIL FROM address, To every accepted RCPT TO address
	// (local users, who got the message in their INBOX, and others, who did
	// not), in command order.
	From string
	To   []string
	// Data is the message exactly as received, without the final dot and
	// with dot-stuffing removed. Nothing is added (no Received header).
	Data []byte
	// AuthUsername is the user who authenticated the session.
	AuthUsername string
}

// Replies of the submission endpoint. The texts are Postfix-like, so tests
// can tell them from go-smtp's own.
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errAuthInvalid  = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Error: authentication failed"}
	errDelivery     = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Error: local delivery failed"}
	errShutdown     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down"}
)

// rejectRecipient is the reply to RCPT TO an address starting with
// "reject-".
func rejectRecipient(addr string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: fmt.Sprintf("<%s>: Recipient address rejected: test", addr)}
}

// submission is one run of the endpoint: a go-smtp server on two
// listeners.
type submission struct {
	srv       *smtp.Server
	listeners []net.Listener
	serve     sync.WaitGroup // the two Serve loops

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // DATA transfers and their deliveries
}

// begin registers a DATA transfer; false once the endpoint is stopping.
func (sub *submission) begin() bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.closed {
		return false
	}
	sub.inflight.Add(1)
	return true
}

// startSubmission listens on SubmissionAddr and SubmissionStartTLSAddr
// (new ports the first time, the same ones on Restart) and serves. Called
// with s.mu held.
func (s *Server) startSubmission() error {
	tlsAddr, plainAddr := s.SubmissionAddr, s.SubmissionStartTLSAddr
	if tlsAddr == "" {
		tlsAddr, plainAddr = "127.0.0.1:0", "127.0.0.1:0"
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{s.pki.leaf}, MinVersion: tls.VersionTLS12}
	sub := &submission{}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{s: s, sub: sub}, nil
	}))
	srv.Domain = "localhost"
	srv.TLSConfig = tlsConfig // offers STARTTLS on the plain listener
	srv.MaxMessageBytes = s.SubmissionMaxSize
	srv.MaxRecipients = 100
	srv.ReadTimeout = 2 * time.Minute // one deadline for a whole DATA
	srv.WriteTimeout = 2 * time.Minute
	srv.ErrorLog = log.New(s.subLog, "smtp: ", log.LstdFlags|log.Lmicroseconds)
	sub.srv = srv

	tl, err := net.Listen("tcp", tlsAddr)
	if err != nil {
		return fmt.Errorf("submission: %w", err)
	}
	pl, err := net.Listen("tcp", plainAddr)
	if err != nil {
		tl.Close()
		return fmt.Errorf("submission: %w", err)
	}
	s.SubmissionAddr, s.SubmissionStartTLSAddr = tl.Addr().String(), pl.Addr().String()
	sub.listeners = []net.Listener{tl, pl}
	for _, l := range []net.Listener{tls.NewListener(tl, tlsConfig), pl} {
		sub.serve.Add(1)
		go func() {
			defer sub.serve.Done()
			srv.Serve(l)
		}()
	}
	s.sub = sub
	return nil
}

// stopSubmission closes the listeners and connections and waits until no
// DATA transfer or delivery runs any more, so nothing is delivered after
// Stop or Kill returns. Called with s.mu held.
func (s *Server) stopSubmission() {
	sub := s.sub
	if sub == nil {
		return
	}
	s.sub = nil
	sub.srv.Close()
	// go-smtp's Close only closes the listeners Serve has registered; a
	// Serve goroutine that has not got that far yet would accept forever
	// (seen with Kill right after Start). Closing them here ends it too:
	// Serve returns once Accept fails after Close.
	for _, l := range sub.listeners {
		l.Close()
	}
	sub.mu.Lock()
	sub.closed = true
	sub.mu.Unlock()
	sub.inflight.Wait()
	sub.serve.Wait()
}

// Submissions returns a copy of every message accepted so far, in order.
func (s *Server) Submissions() []Submission {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	out := make([]Submission, len(s.subs))
	for i, sm := range s.subs {
		sm.To = append([]string(nil), sm.To...)
		sm.Data = append([]byte(nil), sm.Data...)
		out[i] = sm
	}
	return out
}

// AbortedData is how many DATA transfers ended without the final dot
// (client gone, timeout, over SubmissionMaxSize). None of them was
// delivered or recorded.
func (s *Server) AbortedData() int {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	return s.aborted
}

// WaitAbortedData waits until AbortedData is at least n, for tests that
// abort a transfer and must know the server has noticed before they check
// that nothing was delivered. It fails the test after 10 s.
func (s *Server) WaitAbortedData(t testing.TB, n int) {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	for {
		s.subsMu.Lock()
		got, changed := s.aborted, s.subsCond
		s.subsMu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("dovetest: %s: %d aborted DATA transfers after 10s, want %d", s.Name, got, n)
		}
	}
}

// record notes an accepted message (sm != nil) or an aborted transfer.
func (s *Server) record(sm *Submission) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	if sm != nil {
		s.subs = append(s.subs, *sm)
	} else {
		s.aborted++
	}
	close(s.subsCond)
	s.subsCond = make(chan struct{})
}

// session is one SMTP connection's state. go-smtp calls its methods from
// the connection's goroutine only.
type session struct {
	s    *Server
	sub  *submission
	user string // authenticated user, "" before AUTH
	from string
	to   []string
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) logf(format string, args ...any) {
	ss.sub.srv.ErrorLog.Printf(format, args...)
}

func (ss *session) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

func (ss *session) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(ss.authenticate), nil
	case sasl.Login:
		return &loginServer{authenticate: func(u, p string) error { return ss.authenticate("", u, p) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate checks username and password against this server's users.
// The master user may act for a user as Dovecot's IMAP allows: PLAIN with
// the user as authorization identity, or "user*master" as username. Any
// other authorization identity is refused.
func (ss *session) authenticate(identity, username, password string) error {
	if user, master, ok := strings.Cut(username, "*"); ok && identity == "" {
		identity, username = user, master
	}
	if identity != "" && identity != username && username == ss.s.MasterUser && ss.s.Password(identity) != "" &&
		subtle.ConstantTimeCompare([]byte(ss.s.MasterPassword), []byte(password)) == 1 {
		ss.user = identity
		ss.logf("master auth ok for %q", identity)
		return nil
	}
	want := ss.s.Password(username)
	if (identity != "" && identity != username) || want == "" ||
		subtle.ConstantTimeCompare([]byte(want), []byte(password)) != 1 {
		ss.logf("auth failed for %q", username)
		return errAuthInvalid
	}
	ss.user = username
	ss.logf("auth ok for %q", username)
	return nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.user == "" {
		return errAuthRequired
	}
	ss.from = from
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.user == "" {
		return errAuthRequired
	}
	if strings.HasPrefix(strings.ToLower(to), "reject-") {
		return rejectRecipient(to)
	}
	ss.to = append(ss.to, to)
	return nil
}

// Data reads the whole message, then saves it into the INBOX of each
// local recipient (once per user) before answering 250, so a client that
// got 250 finds it there. A transfer that does not end with the final dot
// delivers and records nothing.
func (ss *session) Data(r io.Reader) error {
	if !ss.sub.begin() {
		return errShutdown
	}
	defer ss.sub.inflight.Done()
	data, err := io.ReadAll(r)
	if err != nil {
		ss.logf("DATA from %q aborted after %d bytes: %v", ss.user, len(data), err)
		ss.s.record(nil)
		return err // an *smtp.SMTPError for a too large message
	}
	done := map[string]bool{}
	for _, rcpt := range ss.to {
		a := strings.ToLower(rcpt)
		if ss.s.Password(a) == "" || done[a] {
			continue
		}
		done[a] = true
		if err := ss.s.save(a, "INBOX", data); err != nil {
			ss.logf("deliver to %q: %v", a, err)
			return errDelivery
		}
	}
	ss.logf("accepted %d bytes from %q for %q", len(data), ss.from, ss.to)
	ss.s.record(&Submission{From: ss.from, To: append([]string(nil), ss.to...), Data: data, AuthUsername: ss.user})
	return nil
}

func (ss *session) Reset() {
	ss.from, ss.to = "", nil
}

func (ss *session) Logout() error { return nil }

// loginServer is the server side of SASL LOGIN
// (draft-murchison-sasl-login), which go-sasl only has as a client. The
// username may come as the initial response (AUTH LOGIN dXNlcg==), as
// go-sasl's client sends it, or after the "Username:" challenge.
type loginServer struct {
	authenticate func(username, password string) error
	step         int
	username     string
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.step {
	case 0:
		if response == nil {
			l.step = 1
			return []byte("Username:"), false, nil
		}
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 1:
		l.username, l.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.authenticate(l.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
