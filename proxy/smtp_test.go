package proxy

// Unit tests of the submission side against an in-process go-smtp server
// acting as the provider (implicit TLS, AUTH PLAIN, test CA). Every test
// runs on real sockets on 127.0.0.1:0, compares SMTP replies exactly, and
// waits on events with a bounded timeout, never on sleeps.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
)

const (
	smtpTestHost   = "smtp.gateway.test"
	smtpTestDomain = "pec.vecchio.test"
	smtpTestUser   = "giulia.verdi@pec.vecchio.test"
	smtpTestPass   = "Segreta-Passw0rd!"
	smtpTestRcpt   = "mario.rossi@pec.nuovo.test"
	// smtpProviderRefusal is the fake provider's AUTH refusal text: logged by
	// the gateway, never shown to the client.
	smtpProviderRefusal = "Error: authentication failed: provider-internal-detail"
	// smtpWait bounds every wait on an event.
	smtpWait = 15 * time.Second
)

// ---------------------------------------------------------------------------
// TLS

type smtpTestTLS struct {
	caFile    string      // the CA in PEM, for the provider's "ca" key
	server    *tls.Config // the gateway's and the fake provider's certificate
	clientTLS *tls.Config // trusts the CA, expects smtpTestHost
}

func newSMTPTestTLS(t *testing.T) *smtpTestTLS {
	t.Helper()
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(smtpTestHost, "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	return &smtpTestTLS{
		caFile:    caFile,
		server:    &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		clientTLS: &tls.Config{RootCAs: pool, ServerName: smtpTestHost, MinVersion: tls.VersionTLS12},
	}
}

// ---------------------------------------------------------------------------
// The fake provider

type smtpUpOptions struct {
	noSMTPUTF8 bool
	// idle421 answers the second MAIL of a connection with 421 4.4.2, as a
	// provider does that timed the connection out while it was idle.
	idle421 bool
}

type smtpUpMessage struct {
	User string
	Helo string
	From string
	Opts smtp.MailOptions
	To   []string
	Data []byte
}

type smtpUpEvent struct {
	kind string // "delivered", "aborted", "logout"
	err  error  // for "aborted": what the provider's DATA reader saw
}

// smtpFakeProvider is a submission server on implicit TLS that requires AUTH
// PLAIN, refuses RCPT to reject-* with 550 5.1.1, and records everything.
type smtpFakeProvider struct {
	opts     smtpUpOptions
	addr     string
	srv      *smtp.Server
	accepted atomic.Int64 // TCP connections accepted
	events   chan smtpUpEvent

	mu       gosync.Mutex
	msgs     []smtpUpMessage
	mails    int // MAIL commands accepted
	sessions map[*smtpUpSession]struct{}
	waiters  []smtpByteWaiter
}

type smtpByteWaiter struct {
	n  int64
	ch chan struct{}
}

func startSMTPProvider(t *testing.T, tt *smtpTestTLS, o smtpUpOptions) *smtpFakeProvider {
	t.Helper()
	u := &smtpFakeProvider{opts: o, events: make(chan smtpUpEvent, 100), sessions: make(map[*smtpUpSession]struct{})}
	u.srv = smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s := &smtpUpSession{u: u, conn: c}
		u.mu.Lock()
		u.sessions[s] = struct{}{}
		u.mu.Unlock()
		return s, nil
	}))
	u.srv.Domain = "smtp.provider.test"
	u.srv.TLSConfig = tt.server
	u.srv.EnableSMTPUTF8 = !o.noSMTPUTF8
	u.srv.ReadTimeout = time.Minute
	u.srv.WriteTimeout = time.Minute
	u.srv.ErrorLog = smtpErrorLog{slog.New(slog.DiscardHandler)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() {
		done <- u.srv.Serve(tls.NewListener(&smtpCountListener{Listener: ln, n: &u.accepted}, tt.server))
	}()
	t.Cleanup(func() {
		u.srv.Close()
		if err := <-done; err != nil {
			t.Errorf("fake provider Serve: %v", err)
		}
	})
	return u
}

type smtpCountListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *smtpCountListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func (u *smtpFakeProvider) messages() []smtpUpMessage {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]smtpUpMessage(nil), u.msgs...)
}

func (u *smtpFakeProvider) mailCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.mails
}

// reached returns a channel closed once some DATA has brought in n bytes.
func (u *smtpFakeProvider) reached(n int64) <-chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	ch := make(chan struct{})
	u.waiters = append(u.waiters, smtpByteWaiter{n, ch})
	return ch
}

func (u *smtpFakeProvider) progress(total int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	keep := u.waiters[:0]
	for _, w := range u.waiters {
		if total >= w.n {
			close(w.ch)
		} else {
			keep = append(keep, w)
		}
	}
	u.waiters = keep
}

// closeAll drops every provider-side connection (an idle timeout).
func (u *smtpFakeProvider) closeAll() {
	u.mu.Lock()
	var conns []*smtp.Conn
	for s := range u.sessions {
		conns = append(conns, s.conn)
	}
	u.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// wait returns the next event, failing unless it is of kind.
func (u *smtpFakeProvider) wait(t *testing.T, kind string) smtpUpEvent {
	t.Helper()
	select {
	case ev := <-u.events:
		if ev.kind != kind {
			t.Fatalf("provider event %q (err %v), want %q", ev.kind, ev.err, kind)
		}
		return ev
	case <-time.After(smtpWait):
		t.Fatalf("no provider event %q within %v", kind, smtpWait)
	}
	return smtpUpEvent{}
}

// waitAll waits for events of the given kinds in any order, failing on
// any other.
func (u *smtpFakeProvider) waitAll(t *testing.T, kinds ...string) {
	t.Helper()
	want := map[string]int{}
	for _, k := range kinds {
		want[k]++
	}
	for range kinds {
		select {
		case ev := <-u.events:
			if want[ev.kind] == 0 {
				t.Fatalf("provider event %q (err %v), want %v", ev.kind, ev.err, kinds)
			}
			want[ev.kind]--
		case <-time.After(smtpWait):
			t.Fatalf("provider events %v not all seen within %v", kinds, smtpWait)
		}
	}
}

type smtpUpSession struct {
	u     *smtpFakeProvider
	conn  *smtp.Conn
	user  string
	msg   smtpUpMessage
	mails int
}

func (s *smtpUpSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *smtpUpSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		// Like Dovecot's default auth_username_format=%Lu.
		if strings.ToLower(username) != smtpTestUser || password != smtpTestPass || identity != "" {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: smtpProviderRefusal}
		}
		s.user = username
		return nil
	}), nil
}

func (s *smtpUpSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.user == "" {
		return errSMTPAuthRequired
	}
	if s.mails++; s.mails == 2 && s.u.opts.idle421 {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "smtp.provider.test Error: timeout exceeded"}
	}
	s.msg = smtpUpMessage{User: s.user, Helo: s.conn.Hostname(), From: from}
	if opts != nil {
		s.msg.Opts = *opts
	}
	s.u.mu.Lock()
	s.u.mails++
	s.u.mu.Unlock()
	return nil
}

func (s *smtpUpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if strings.HasPrefix(to, "reject-") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
			Message: "<" + to + ">: Recipient address rejected: User unknown in virtual mailbox table"}
	}
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *smtpUpSession) Data(r io.Reader) error {
	var buf bytes.Buffer
	p := make([]byte, 32<<10)
	for {
		n, err := r.Read(p)
		buf.Write(p[:n])
		s.u.progress(int64(buf.Len()))
		if err == io.EOF {
			break
		}
		if err != nil {
			s.u.events <- smtpUpEvent{kind: "aborted", err: err}
			return err
		}
	}
	m := s.msg
	m.Data = buf.Bytes()
	s.u.mu.Lock()
	s.u.msgs = append(s.u.msgs, m)
	id := len(s.u.msgs)
	s.u.mu.Unlock()
	s.u.events <- smtpUpEvent{kind: "delivered"}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("Ok: queued as Q%d", id)}
}

func (s *smtpUpSession) Reset() { s.msg = smtpUpMessage{} }

func (s *smtpUpSession) Logout() error {
	s.u.mu.Lock()
	delete(s.u.sessions, s)
	s.u.mu.Unlock()
	s.u.events <- smtpUpEvent{kind: "logout"}
	return nil
}

// ---------------------------------------------------------------------------
// The gateway

type smtpGWOptions struct {
	serverMax   int64  // Config.Server.MaxMessageSize; 0: 8 MiB
	providerMax int64  // the provider's MaxMessageSize
	smtpURL     string // the provider's SMTP endpoint; "": the fake provider
	limiter     *AuthLimiter
}

type smtpGateway struct {
	srv        *SMTPServer
	smtps      string // implicit TLS address
	submission string // STARTTLS address
	logs       *smtpLogBuffer
	served     chan error // Serve and ServeTLS results
	// closed is closed when Shutdown or Close closes the STARTTLS listener.
	closed chan struct{}
}

type smtpLogBuffer struct {
	mu  gosync.Mutex
	buf bytes.Buffer
}

func (b *smtpLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *smtpLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type smtpNotifyListener struct {
	net.Listener
	once   gosync.Once
	closed chan struct{}
}

func (l *smtpNotifyListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { close(l.closed) })
	return err
}

func smtpTestConfig(upURL, caFile string, o smtpGWOptions) *config.Config {
	max := o.serverMax
	if max == 0 {
		max = 8 << 20
	}
	return &config.Config{
		Server: config.Server{Hostname: smtpTestHost, MaxMessageSize: max},
		Providers: map[string]*config.Provider{
			"vecchio": {Name: "vecchio", IMAP: "imaps://127.0.0.1:1", SMTP: upURL, CA: caFile,
				Auth: config.AuthPassthrough, MaxMessageSize: o.providerMax},
		},
		Domains: map[string]*config.Domain{
			smtpTestDomain: {Name: smtpTestDomain, Old: "vecchio", State: config.StateOld},
		},
	}
}

func startSMTPGateway(t *testing.T, tt *smtpTestTLS, up *smtpFakeProvider, o smtpGWOptions) *smtpGateway {
	t.Helper()
	url := o.smtpURL
	if url == "" {
		url = "smtps://" + up.addr
	}
	cfg := smtpTestConfig(url, tt.caFile, o)
	logs := &smtpLogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	set, err := backend.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	return serveSMTPGateway(t, Options{Config: cfg, Backends: set, TLS: tt.server, Log: log, Limiter: o.limiter}, logs)
}

// serveSMTPGateway serves opts on two loopback listeners until the test
// ends, then checks that the log holds none of the passwords (smtpTestPass
// and extra).
func serveSMTPGateway(t *testing.T, opts Options, logs *smtpLogBuffer, extra ...string) *smtpGateway {
	t.Helper()
	g := &smtpGateway{srv: NewSMTP(opts), logs: logs, served: make(chan error, 2), closed: make(chan struct{})}
	ln465, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln587, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.smtps, g.submission = ln465.Addr().String(), ln587.Addr().String()
	go func() { g.served <- g.srv.ServeTLS(ln465) }()
	go func() { g.served <- g.srv.Serve(&smtpNotifyListener{Listener: ln587, closed: g.closed}) }()
	t.Cleanup(func() {
		if err := g.srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		for range 2 {
			select {
			case err := <-g.served:
				if err != nil {
					t.Errorf("Serve returned %v after Close, want nil", err)
				}
			case <-time.After(smtpWait):
				t.Errorf("Serve did not return after Close")
			}
		}
		// Never a password in the log, in clear or inside a SASL blob.
		all := g.logs.String()
		for _, pw := range append([]string{smtpTestPass}, extra...) {
			for _, leak := range []string{pw, base64.StdEncoding.EncodeToString([]byte(pw))} {
				if strings.Contains(all, leak) {
					t.Errorf("the log contains a password (%q)", leak)
				}
			}
		}
		// Nor a SASL PLAIN blob (it would hold the password).
		if strings.Contains(all, "AGdpdWxpYS52ZXJkaU") {
			t.Errorf("the log contains a SASL PLAIN response")
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", all)
		}
	})
	return g
}

// ---------------------------------------------------------------------------
// A raw SMTP client, for exact transcripts

type smtpRaw struct {
	t    *testing.T
	conn net.Conn
	r    *textproto.Reader
	w    *bufio.Writer
}

// dialAuthed opens a go-smtp client to gw (STARTTLS on submission when
// startTLS, implicit TLS on smtps otherwise), says EHLO client.test and
// authenticates with mech; the client is closed when the test ends.
func dialAuthed(t *testing.T, gw *smtpGateway, clientTLS *tls.Config, startTLS bool, mech sasl.Client) *smtp.Client {
	t.Helper()
	var c *smtp.Client
	var err error
	if startTLS {
		c, err = smtp.DialStartTLS(gw.submission, clientTLS)
	} else {
		c, err = smtp.DialTLS(gw.smtps, clientTLS)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(mech); err != nil {
		t.Fatalf("AUTH: %v", err)
	}
	return c
}

// dialSMTP connects (with implicit TLS when tlsCfg is set) and checks the
// greeting.
func dialSMTP(t *testing.T, addr string, tlsCfg *tls.Config) *smtpRaw {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsCfg != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: smtpWait}, "tcp", addr, tlsCfg)
	} else {
		conn, err = net.DialTimeout("tcp", addr, smtpWait)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &smtpRaw{t: t}
	c.setConn(conn)
	if got, want := c.reply(), "220 "+smtpTestHost+" ESMTP Service Ready"; got != want {
		t.Fatalf("greeting %q, want %q", got, want)
	}
	return c
}

func (c *smtpRaw) setConn(conn net.Conn) {
	conn.SetDeadline(time.Now().Add(2 * smtpWait))
	c.conn = conn
	c.r = textproto.NewReader(bufio.NewReader(conn))
	c.w = bufio.NewWriter(conn)
}

func (c *smtpRaw) send(line string) {
	c.t.Helper()
	c.w.WriteString(line + "\r\n")
	if err := c.w.Flush(); err != nil {
		c.t.Fatalf("send %q: %v", line, err)
	}
}

// reply reads one reply; the lines of a multi-line reply are joined by "\n".
func (c *smtpRaw) reply() string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.r.ReadLine()
		if err != nil {
			c.t.Fatalf("read reply: %v (so far %q)", err, lines)
		}
		lines = append(lines, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

// do sends line and requires the reply want, exactly.
func (c *smtpRaw) do(line, want string) {
	c.t.Helper()
	c.send(line)
	if got := c.reply(); got != want {
		c.t.Fatalf("%s\n got: %q\nwant: %q", line, got, want)
	}
}

func (c *smtpRaw) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.do("STARTTLS", "220 2.0.0 Ready to start TLS")
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.setConn(tc)
}

func (c *smtpRaw) login(user, pass string) {
	c.t.Helper()
	c.do("AUTH PLAIN "+smtpPlainIR("", user, pass), "235 2.0.0 Authentication succeeded")
}

// writeData sends msg dot-stuffed, and the end-of-data line when end.
func (c *smtpRaw) writeData(msg []byte, end bool) {
	c.t.Helper()
	dw := textproto.NewWriter(c.w).DotWriter()
	if _, err := dw.Write(msg); err != nil {
		c.t.Fatal(err)
	}
	if end {
		err := dw.Close() // writes ".\r\n" and flushes
		if err != nil {
			c.t.Fatal(err)
		}
		return
	}
	if err := c.w.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

func smtpPlainIR(identity, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(identity + "\x00" + user + "\x00" + pass))
}

func smtpB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// smtpEHLOTLS is the gateway's EHLO reply under TLS with an 8 MiB limit.
const smtpEHLOTLS = "250-Hello client.test\n250-PIPELINING\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-CHUNKING\n250-AUTH PLAIN LOGIN\n250-SMTPUTF8\n250 SIZE 8388608"

// smtpEHLOPlain is its EHLO reply on the STARTTLS listener before STARTTLS: no AUTH.
const smtpEHLOPlain = "250-Hello client.test\n250-PIPELINING\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n250-CHUNKING\n250-STARTTLS\n250-SMTPUTF8\n250 SIZE 8388608"

// ---------------------------------------------------------------------------
// Messages

func smtpFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// smtpGenMessage makes a deterministic CRLF message of exactly size bytes
// (size >= 200) whose body has lines starting with "." and "..", and,
// with eightBit, bare bytes 0x80-0xFF.
func smtpGenMessage(size int, eightBit bool) []byte {
	rng := rand.New(rand.NewPCG(uint64(size), 7))
	var b bytes.Buffer
	b.WriteString("From: Giulia Verdi <" + smtpTestUser + ">\r\nTo: <" + smtpTestRcpt + ">\r\nSubject: prova\r\nMessage-ID: <gen@test>\r\nMIME-Version: 1.0\r\n")
	if eightBit {
		b.WriteString("Content-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	} else {
		b.WriteString("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	}
	const alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for line := 0; b.Len() < size-2; line++ {
		n := min(76, size-2-b.Len())
		for i := range n {
			switch {
			case i == 0 && line%7 == 3:
				b.WriteByte('.') // dot-stuffing on the way in and out
			case i == 1 && line%14 == 3:
				b.WriteByte('.')
			case eightBit && i%5 == 2:
				b.WriteByte(byte(0x80 + rng.IntN(0x80)))
			default:
				b.WriteByte(alpha[rng.IntN(len(alpha))])
			}
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func smtpSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// ---------------------------------------------------------------------------
// Tests

// TestSMTPSubmit submits through both listeners with go-smtp's client and
// checks that the provider got the message byte for byte, with the
// envelope and MAIL parameters, and that its final reply came back.
func TestSMTPSubmit(t *testing.T) {
	tt := newSMTPTestTLS(t)
	cases := []struct {
		name     string
		startTLS bool // 587 instead of 465
		mech     sasl.Client
		user     string
		msg      []byte
		opts     *smtp.MailOptions
	}{
		{name: "smtps PLAIN fixture", mech: sasl.NewPlainClient("", smtpTestUser, smtpTestPass), user: smtpTestUser,
			msg: smtpFixture(t, "10-non-pec-posta-inviata.eml")},
		{name: "submission STARTTLS LOGIN fixture with 8-bit headers", startTLS: true, mech: sasl.NewLoginClient(smtpTestUser, smtpTestPass), user: smtpTestUser,
			msg: smtpFixture(t, "11-oggetto-8bit-header-ripiegati.eml"), opts: &smtp.MailOptions{Body: smtp.Body8BitMIME}},
		{name: "8BITMIME bare 8-bit body with SIZE", mech: sasl.NewPlainClient("", smtpTestUser, smtpTestPass), user: smtpTestUser,
			msg: smtpGenMessage(300<<10, true), opts: &smtp.MailOptions{Body: smtp.Body8BitMIME, Size: 300 << 10}},
		{name: "5 MB on STARTTLS", startTLS: true, mech: sasl.NewPlainClient("", smtpTestUser, smtpTestPass), user: smtpTestUser,
			msg: smtpGenMessage(5<<20, false)},
		{name: "domain in other case", mech: sasl.NewPlainClient("", "giulia.verdi@PEC.Vecchio.TEST", smtpTestPass), user: "giulia.verdi@PEC.Vecchio.TEST",
			msg: smtpGenMessage(1000, false)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startSMTPProvider(t, tt, smtpUpOptions{})
			gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
			c := dialAuthed(t, gw, tt.clientTLS, tc.startTLS, tc.mech)
			if err := c.Mail(smtpTestUser, tc.opts); err != nil {
				t.Fatalf("MAIL: %v", err)
			}
			if err := c.Rcpt(smtpTestRcpt, nil); err != nil {
				t.Fatalf("RCPT: %v", err)
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(tc.msg); err != nil {
				t.Fatal(err)
			}
			resp, err := w.CloseWithResponse()
			if err != nil {
				t.Fatalf("end of DATA: %v", err)
			}
			// The provider's own final reply, enhanced code included.
			if want := "2.0.0 Ok: queued as Q1"; resp.StatusText != want {
				t.Errorf("final reply %q, want %q", resp.StatusText, want)
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			up.wait(t, "delivered")
			msgs := up.messages()
			if len(msgs) != 1 {
				t.Fatalf("provider got %d messages, want 1", len(msgs))
			}
			m := msgs[0]
			if got, want := smtpSum(m.Data), smtpSum(tc.msg); got != want {
				t.Errorf("provider got %d bytes sha256 %s, client sent %d bytes sha256 %s", len(m.Data), got, len(tc.msg), want)
			}
			if m.User != tc.user || m.From != smtpTestUser || len(m.To) != 1 || m.To[0] != smtpTestRcpt {
				t.Errorf("provider saw user %q from %q to %q", m.User, m.From, m.To)
			}
			if m.Helo != smtpTestHost {
				t.Errorf("provider saw EHLO %q, want %q", m.Helo, smtpTestHost)
			}
			var wantSize int64
			if tc.opts != nil {
				wantSize = tc.opts.Size
			}
			if m.Opts.Size != wantSize || m.Opts.Body != smtp.Body8BitMIME {
				t.Errorf("provider saw SIZE=%d BODY=%q, want SIZE=%d BODY=8BITMIME", m.Opts.Size, m.Opts.Body, wantSize)
			}
		})
	}
}

// TestSMTPDataIsStreamed proves that DATA is not buffered: the provider
// receives the first part of a 5 MB message while the client still holds
// back the rest.
func TestSMTPDataIsStreamed(t *testing.T) {
	tt := newSMTPTestTLS(t)
	up := startSMTPProvider(t, tt, smtpUpOptions{})
	gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
	msg := smtpGenMessage(5<<20, false)

	c := dialSMTP(t, gw.smtps, tt.clientTLS)
	c.do("EHLO client.test", smtpEHLOTLS)
	c.login(smtpTestUser, smtpTestPass)
	c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
	c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
	c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
	got1MiB := up.reached(1 << 20)
	c.writeData(msg[:2<<20], false)
	select {
	case <-got1MiB:
	case <-time.After(smtpWait):
		t.Fatal("the provider got less than 1 MiB while the client had sent 2 MiB and waits: DATA is buffered")
	}
	dw := textproto.NewWriter(c.w).DotWriter()
	dw.Write(msg[2<<20:])
	dw.Close()
	if got, want := c.reply(), "250 2.0.0 Ok: queued as Q1"; got != want {
		t.Fatalf("end of DATA: %q, want %q", got, want)
	}
	up.wait(t, "delivered")
	if m := up.messages(); len(m) != 1 || smtpSum(m[0].Data) != smtpSum(msg) {
		t.Fatalf("the provider did not get the message byte for byte")
	}
}

// TestSMTPTranscripts checks the gateway's and the provider's replies
// exactly, and what reached the provider.
func TestSMTPTranscripts(t *testing.T) {
	tt := newSMTPTestTLS(t)
	type step struct{ send, want string }
	mailOK := step{"MAIL FROM:<" + smtpTestUser + ">", "250 2.0.0 Roger, accepting mail from <" + smtpTestUser + ">"}
	authFailed := "535 5.7.8 Authentication failed"
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	cases := []struct {
		name      string
		startTLS  bool
		up        smtpUpOptions
		gw        smtpGWOptions
		steps     []step
		wantDials int64 // connections the provider accepted
		wantMails int   // MAIL commands the provider accepted
		wantLog   string
	}{
		{name: "MAIL before AUTH", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"MAIL FROM:<" + smtpTestUser + ">", "530 5.7.0 Authentication required"},
		}},
		{name: "wrong password PLAIN", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, "wrong"), authFailed},
			{"MAIL FROM:<" + smtpTestUser + ">", "530 5.7.0 Authentication required"},
		}, wantDials: 1, wantLog: smtpProviderRefusal},
		{name: "wrong password LOGIN", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH LOGIN", "334 " + smtpB64("Username:")},
			{smtpB64(smtpTestUser), "334 " + smtpB64("Password:")},
			{smtpB64("wrong"), authFailed},
		}, wantDials: 1, wantLog: smtpProviderRefusal},
		{name: "unknown domain dials nothing", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", "giulia.verdi@pec.altrove.test", smtpTestPass), authFailed},
			{"AUTH LOGIN " + smtpB64("nobody"), "334 " + smtpB64("Password:")},
			{smtpB64(smtpTestPass), authFailed},
		}, wantDials: 0},
		{name: "authorization identity refused", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("capo@pec.vecchio.test", smtpTestUser, smtpTestPass), authFailed},
		}, wantDials: 0},
		{name: "unsupported mechanism", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH CRAM-MD5", "504 5.7.4 Unsupported authentication mechanism"},
		}},
		{name: "malformed PLAIN", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpB64("no-nul-bytes"), "501 5.5.2 Invalid SASL response"},
		}},
		{name: "provider unreachable", gw: smtpGWOptions{smtpURL: "smtps://" + closedPort}, steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "454 4.7.0 Temporary authentication failure"},
		}},
		{name: "AUTH refused before STARTTLS", startTLS: true, steps: []step{
			{"EHLO client.test", smtpEHLOPlain},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "523 5.7.10 TLS is required"},
			{"MAIL FROM:<" + smtpTestUser + ">", "530 5.7.0 Authentication required"},
		}},
		{name: "throttled after failures: the provider is not asked", gw: smtpGWOptions{limiter: &AuthLimiter{
			PerIP: 10, PerUser: 2, Window: time.Hour, now: time.Now, fails: map[string][]time.Time{}}}, steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, "wrong1"), authFailed},
			{"AUTH PLAIN " + smtpPlainIR("", "Giulia.Verdi@pec.vecchio.test", "wrong2"), authFailed},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "454 4.7.0 Too many failed logins, try again in a few minutes"},
		}, wantDials: 2},
		{name: "LOGIN with initial response", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH LOGIN " + smtpB64(smtpTestUser), "334 " + smtpB64("Password:")},
			{smtpB64(smtpTestPass), "235 2.0.0 Authentication succeeded"},
			mailOK,
		}, wantDials: 1, wantMails: 1},
		{name: "RCPT 550 passes through unchanged", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "235 2.0.0 Authentication succeeded"},
			mailOK,
			{"RCPT TO:<reject-x@pec.nuovo.test>", "550 5.1.1 <reject-x@pec.nuovo.test>: Recipient address rejected: User unknown in virtual mailbox table"},
			{"RCPT TO:<" + smtpTestRcpt + ">", "250 2.0.0 I'll make sure <" + smtpTestRcpt + "> gets this"},
			{"DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>"},
			{"Subject: x\r\n\r\nbody\r\n.", "250 2.0.0 Ok: queued as Q1"},
		}, wantDials: 1, wantMails: 1},
		{name: "MAIL SIZE over the provider's limit", gw: smtpGWOptions{providerMax: 64 << 10}, steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "235 2.0.0 Authentication succeeded"},
			{"MAIL FROM:<" + smtpTestUser + "> SIZE=65537", "552 5.3.4 Max message size exceeded"},
			{"MAIL FROM:<" + smtpTestUser + "> SIZE=65536", "250 2.0.0 Roger, accepting mail from <" + smtpTestUser + ">"},
		}, wantDials: 1, wantMails: 1},
		{name: "MAIL SIZE over the server's limit", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "235 2.0.0 Authentication succeeded"},
			{"MAIL FROM:<" + smtpTestUser + "> SIZE=8388609", "552 5.3.4 Max message size exceeded"},
		}, wantDials: 1},
		{name: "SMTPUTF8 refused when the provider lacks it", up: smtpUpOptions{noSMTPUTF8: true}, steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "235 2.0.0 Authentication succeeded"},
			{"MAIL FROM:<" + smtpTestUser + "> SMTPUTF8", "555 5.6.7 The mail provider does not support SMTPUTF8"},
			mailOK,
		}, wantDials: 1, wantMails: 1},
		{name: "SMTPUTF8 and SIZE passed on", steps: []step{
			{"EHLO client.test", smtpEHLOTLS},
			{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, smtpTestPass), "235 2.0.0 Authentication succeeded"},
			{"MAIL FROM:<" + smtpTestUser + "> SMTPUTF8 SIZE=20 BODY=8BITMIME", "250 2.0.0 Roger, accepting mail from <" + smtpTestUser + ">"},
			{"RCPT TO:<" + smtpTestRcpt + ">", "250 2.0.0 I'll make sure <" + smtpTestRcpt + "> gets this"},
			{"DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>"},
			{"Subject: \xc3\xa0\r\n\r\nb\xc3\xa8\r\n.", "250 2.0.0 Ok: queued as Q1"},
		}, wantDials: 1, wantMails: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startSMTPProvider(t, tt, tc.up)
			gw := startSMTPGateway(t, tt, up, tc.gw)
			var c *smtpRaw
			if tc.startTLS {
				c = dialSMTP(t, gw.submission, nil)
			} else {
				c = dialSMTP(t, gw.smtps, tt.clientTLS)
			}
			for _, s := range tc.steps {
				c.do(s.send, s.want)
			}
			c.do("QUIT", "221 2.0.0 Bye")
			if got := up.accepted.Load(); got != tc.wantDials {
				t.Errorf("provider accepted %d connections, want %d", got, tc.wantDials)
			}
			if got := up.mailCount(); got != tc.wantMails {
				t.Errorf("provider accepted %d MAIL commands, want %d", got, tc.wantMails)
			}
			if tc.wantLog != "" && !strings.Contains(gw.logs.String(), tc.wantLog) {
				t.Errorf("the gateway log lacks the provider's text %q", tc.wantLog)
			}
		})
	}
}

// TestSMTPStartTLSThenAuth: on 587, the same AUTH that was refused in
// clear succeeds after STARTTLS, and mail flows.
func TestSMTPStartTLSThenAuth(t *testing.T) {
	tt := newSMTPTestTLS(t)
	up := startSMTPProvider(t, tt, smtpUpOptions{})
	gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
	c := dialSMTP(t, gw.submission, nil)
	c.do("EHLO client.test", smtpEHLOPlain)
	c.do("AUTH PLAIN "+smtpPlainIR("", smtpTestUser, smtpTestPass), "523 5.7.10 TLS is required")
	c.startTLS(tt.clientTLS)
	c.do("EHLO client.test", smtpEHLOTLS)
	c.login(smtpTestUser, smtpTestPass)
	c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
	c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
	c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
	msg := smtpGenMessage(4000, true)
	c.writeData(msg, true)
	if got, want := c.reply(), "250 2.0.0 Ok: queued as Q1"; got != want {
		t.Fatalf("end of DATA %q, want %q", got, want)
	}
	up.wait(t, "delivered")
	if m := up.messages(); len(m) != 1 || smtpSum(m[0].Data) != smtpSum(msg) {
		t.Fatal("message not delivered byte for byte")
	}
}

// TestSMTPClientDropsMidData: a client that disconnects in the middle of
// the message must not get a truncated message delivered: the gateway
// closes the provider connection without the final dot.
func TestSMTPClientDropsMidData(t *testing.T) {
	tt := newSMTPTestTLS(t)
	msg := smtpGenMessage(1<<20, false)
	cases := []struct {
		name     string
		startTLS bool
		bdat     bool
	}{
		{name: "smtps DATA"},
		{name: "submission DATA", startTLS: true},
		{name: "smtps BDAT", bdat: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startSMTPProvider(t, tt, smtpUpOptions{})
			gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
			var c *smtpRaw
			if tc.startTLS {
				c = dialSMTP(t, gw.submission, nil)
				c.do("EHLO client.test", smtpEHLOPlain)
				c.startTLS(tt.clientTLS)
			} else {
				c = dialSMTP(t, gw.smtps, tt.clientTLS)
			}
			c.do("EHLO client.test", smtpEHLOTLS)
			c.login(smtpTestUser, smtpTestPass)
			c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
			c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
			got64KiB := up.reached(64 << 10)
			if tc.bdat {
				c.send(fmt.Sprintf("BDAT %d", 256<<10))
				c.w.Write(msg[:256<<10])
				c.w.Flush()
				if got := c.reply(); got != "250 2.0.0 Continue" {
					t.Fatalf("BDAT: %q", got)
				}
				c.send(fmt.Sprintf("BDAT %d LAST", len(msg)-256<<10))
				c.w.Write(msg[256<<10 : 512<<10])
				c.w.Flush()
			} else {
				c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
				c.writeData(msg[:512<<10], false)
			}
			// The provider is inside DATA with part of the message...
			select {
			case <-got64KiB:
			case <-time.After(smtpWait):
				t.Fatal("the provider never received the start of the message")
			}
			// ...when the client goes away.
			c.conn.Close()
			ev := up.wait(t, "aborted")
			if !errors.Is(ev.err, io.ErrUnexpectedEOF) {
				t.Errorf("provider's DATA ended with %v, want unexpected EOF (connection closed without the final dot)", ev.err)
			}
			up.wait(t, "logout")
			if n := len(up.messages()); n != 0 {
				t.Fatalf("the provider delivered %d messages after the client dropped mid-DATA", n)
			}
		})
	}
}

// TestSMTPSizeInData: a message over the limit without SIZE= is refused
// with 552 after its data, nothing reaches the provider, and the session
// goes on with a fresh provider connection.
func TestSMTPSizeInData(t *testing.T) {
	tt := newSMTPTestTLS(t)
	cases := []struct {
		name string
		gw   smtpGWOptions
		size int
		ok   bool
	}{
		{name: "over the provider's limit", gw: smtpGWOptions{providerMax: 64 << 10}, size: 100 << 10},
		{name: "one byte over the provider's limit", gw: smtpGWOptions{providerMax: 64 << 10}, size: 64<<10 + 1},
		{name: "exactly the provider's limit", gw: smtpGWOptions{providerMax: 64 << 10}, size: 64 << 10, ok: true},
		{name: "over the server's limit", gw: smtpGWOptions{serverMax: 256 << 10}, size: 300 << 10},
		// go-smtp's DATA reader runs out of budget before it sees the
		// end-of-data line: a message of exactly MaxMessageBytes fails.
		{name: "exactly the server's limit", gw: smtpGWOptions{serverMax: 256 << 10}, size: 256 << 10},
		{name: "one byte under the server's limit", gw: smtpGWOptions{serverMax: 256 << 10}, size: 256<<10 - 1, ok: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startSMTPProvider(t, tt, smtpUpOptions{})
			gw := startSMTPGateway(t, tt, up, tc.gw)
			c := dialSMTP(t, gw.smtps, tt.clientTLS)
			c.send("EHLO client.test")
			c.reply()
			c.login(smtpTestUser, smtpTestPass)
			c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
			c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
			c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
			big := smtpGenMessage(tc.size, false)
			c.writeData(big, true)
			if tc.ok {
				if got, want := c.reply(), "250 2.0.0 Ok: queued as Q1"; got != want {
					t.Fatalf("end of DATA %q, want %q", got, want)
				}
				up.wait(t, "delivered")
				return
			}
			if got, want := c.reply(), "552 5.3.4 Max message size exceeded"; got != want {
				t.Fatalf("end of DATA %q, want %q", got, want)
			}
			up.wait(t, "aborted")
			up.wait(t, "logout")
			if n := len(up.messages()); n != 0 {
				t.Fatalf("provider delivered %d messages", n)
			}
			// The session continues over a new provider connection.
			c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
			c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
			c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
			small := smtpGenMessage(2000, false)
			c.writeData(small, true)
			if got, want := c.reply(), "250 2.0.0 Ok: queued as Q1"; got != want {
				t.Fatalf("second message: %q, want %q", got, want)
			}
			up.wait(t, "delivered")
			if m := up.messages(); len(m) != 1 || smtpSum(m[0].Data) != smtpSum(small) {
				t.Fatal("second message not delivered byte for byte")
			}
			if n := up.accepted.Load(); n != 2 {
				t.Errorf("provider accepted %d connections, want 2", n)
			}
		})
	}
}

// TestSMTPRedialAfterIdleDrop: the provider drops the kept connection
// between two messages, silently or saying 421; the next MAIL dials again
// transparently.
func TestSMTPRedialAfterIdleDrop(t *testing.T) {
	tt := newSMTPTestTLS(t)
	cases := []struct {
		name string
		up   smtpUpOptions
		drop bool // the provider closes its connections before the second MAIL
	}{
		{name: "connection closed", drop: true},
		{name: "421 on MAIL", up: smtpUpOptions{idle421: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startSMTPProvider(t, tt, tc.up)
			gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
			c := dialSMTP(t, gw.smtps, tt.clientTLS)
			c.do("EHLO client.test", smtpEHLOTLS)
			c.login(smtpTestUser, smtpTestPass)
			for i, msg := range [][]byte{smtpGenMessage(3000, false), smtpGenMessage(5000, true)} {
				if i == 1 && tc.drop {
					up.closeAll()
					up.wait(t, "logout")
					c.do("RSET", "250 2.0.0 Session reset")
				}
				c.do("MAIL FROM:<"+smtpTestUser+"> BODY=8BITMIME", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
				c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
				c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
				c.writeData(msg, true)
				if got, want := c.reply(), fmt.Sprintf("250 2.0.0 Ok: queued as Q%d", i+1); got != want {
					t.Fatalf("message %d: %q, want %q", i+1, got, want)
				}
				if i == 1 && tc.up.idle421 {
					up.waitAll(t, "logout", "delivered") // the 421 connection, the new one
				} else {
					up.wait(t, "delivered")
				}
				if m := up.messages(); len(m) != i+1 || smtpSum(m[i].Data) != smtpSum(msg) {
					t.Fatalf("message %d not delivered byte for byte", i+1)
				}
			}
			if n := up.accepted.Load(); n != 2 {
				t.Errorf("provider accepted %d connections, want 2", n)
			}
		})
	}
}

// TestSMTPShutdown: Shutdown lets a transaction in progress finish, and
// cuts idle sessions (and their provider connections) when ctx ends.
func TestSMTPShutdown(t *testing.T) {
	tt := newSMTPTestTLS(t)
	t.Run("session in progress finishes", func(t *testing.T) {
		up := startSMTPProvider(t, tt, smtpUpOptions{})
		gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
		c := dialSMTP(t, gw.smtps, tt.clientTLS)
		c.do("EHLO client.test", smtpEHLOTLS)
		c.login(smtpTestUser, smtpTestPass)
		c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
		c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")

		ctx, cancel := context.WithTimeout(context.Background(), smtpWait)
		defer cancel()
		shut := make(chan error, 1)
		go func() { shut <- gw.srv.Shutdown(ctx) }()
		select {
		case <-gw.closed:
		case <-time.After(smtpWait):
			t.Fatal("Shutdown did not close the listener")
		}
		c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
		msg := smtpGenMessage(10000, false)
		c.writeData(msg, true)
		if got, want := c.reply(), "250 2.0.0 Ok: queued as Q1"; got != want {
			t.Fatalf("end of DATA %q, want %q", got, want)
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v while a session was open", err)
		default:
		}
		c.do("QUIT", "221 2.0.0 Bye")
		select {
		case err := <-shut:
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		case <-time.After(smtpWait):
			t.Fatal("Shutdown did not return after the last session quit")
		}
		up.wait(t, "delivered")
		up.wait(t, "logout") // the gateway said QUIT upstream
		if _, err := net.DialTimeout("tcp", gw.smtps, smtpWait); err == nil {
			t.Error("the smtps listener still accepts after Shutdown")
		}
	})
	t.Run("idle session cut when ctx ends", func(t *testing.T) {
		up := startSMTPProvider(t, tt, smtpUpOptions{})
		gw := startSMTPGateway(t, tt, up, smtpGWOptions{})
		c := dialSMTP(t, gw.smtps, tt.clientTLS)
		c.do("EHLO client.test", smtpEHLOTLS)
		c.login(smtpTestUser, smtpTestPass)

		ctx, cancel := context.WithCancel(context.Background())
		shut := make(chan error, 1)
		go func() { shut <- gw.srv.Shutdown(ctx) }()
		select {
		case <-gw.closed:
		case <-time.After(smtpWait):
			t.Fatal("Shutdown did not close the listener")
		}
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned %v with a session open and ctx alive", err)
		default:
		}
		cancel()
		select {
		case err := <-shut:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Shutdown: %v, want context.Canceled", err)
			}
		case <-time.After(smtpWait):
			t.Fatal("Shutdown did not return when ctx ended")
		}
		if _, err := c.r.ReadLine(); err == nil {
			t.Error("the idle client connection is still open")
		}
		up.wait(t, "logout")
	})
}

func TestSMTPOkReply(t *testing.T) {
	cases := []struct {
		text string
		want smtp.SMTPError
	}{
		{"2.0.0 Ok: queued as 4F2A", smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as 4F2A"}},
		{"2.6.0 <id@x> [InternalId=1] Queued mail for delivery", smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 6, 0}, Message: "<id@x> [InternalId=1] Queued mail for delivery"}},
		{"Ok", smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCodeNotSet, Message: "Ok"}},
		{"queued as 12", smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCodeNotSet, Message: "queued as 12"}},
		{"2.0.0 first\n2.0.0 second", smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "first\nsecond"}},
	}
	for _, tc := range cases {
		t.Run(tc.text, func(t *testing.T) {
			got := smtpOKReply(tc.text).(*smtp.SMTPError)
			if *got != tc.want {
				t.Errorf("smtpOKReply(%q) = %+v, want %+v", tc.text, *got, tc.want)
			}
		})
	}
}

func TestSMTPSecretNeverPrints(t *testing.T) {
	s := smtpSecret(smtpTestPass)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	log.Info("x", "pw", s)
	out := buf.String() + fmt.Sprint(s) + fmt.Sprintf("%s %v %+v %#v %q %x", s, s, s, s, s, s) + fmt.Sprint(struct{ P smtpSecret }{s})
	if strings.Contains(out, smtpTestPass) || strings.Contains(out, hex.EncodeToString([]byte(smtpTestPass))) {
		t.Fatalf("secret printed: %s", out)
	}
	if s.reveal() != smtpTestPass {
		t.Fatal("reveal lost the password")
	}
}

// TestSMTPBDAT: CHUNKING (always offered by go-smtp) relays byte for byte,
// and enforces the provider's size limit across chunks.
func TestSMTPBDAT(t *testing.T) {
	tt := newSMTPTestTLS(t)
	msg := smtpGenMessage(200<<10, true)
	cases := []struct {
		name   string
		gw     smtpGWOptions
		chunks []int // sizes; the last one is sent with LAST
		want   []string
	}{
		{name: "one LAST chunk", chunks: []int{len(msg)},
			want: []string{"250 2.0.0 Ok: queued as Q1"}},
		{name: "three chunks", chunks: []int{1, 100 << 10, len(msg) - 1 - 100<<10},
			want: []string{"250 2.0.0 Continue", "250 2.0.0 Continue", "250 2.0.0 Ok: queued as Q1"}},
		{name: "empty LAST chunk", chunks: []int{len(msg), 0},
			want: []string{"250 2.0.0 Continue", "250 2.0.0 Ok: queued as Q1"}},
		{name: "over the provider's limit", gw: smtpGWOptions{providerMax: 150 << 10}, chunks: []int{100 << 10, len(msg) - 100<<10},
			want: []string{"250 2.0.0 Continue", "552 5.3.4 Max message size exceeded"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := startSMTPProvider(t, tt, smtpUpOptions{})
			gw := startSMTPGateway(t, tt, up, tc.gw)
			c := dialSMTP(t, gw.smtps, tt.clientTLS)
			c.do("EHLO client.test", smtpEHLOTLS)
			c.login(smtpTestUser, smtpTestPass)
			c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
			c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
			off := 0
			for i, n := range tc.chunks {
				cmd := fmt.Sprintf("BDAT %d", n)
				if i == len(tc.chunks)-1 {
					cmd += " LAST"
				}
				c.w.WriteString(cmd + "\r\n")
				c.w.Write(msg[off : off+n])
				off += n
				c.w.Flush()
				if got := c.reply(); got != tc.want[i] {
					t.Fatalf("%s: %q, want %q", cmd, got, tc.want[i])
				}
			}
			c.do("QUIT", "221 2.0.0 Bye")
			if strings.HasPrefix(tc.want[len(tc.want)-1], "250") {
				up.wait(t, "delivered")
				if m := up.messages(); len(m) != 1 || smtpSum(m[0].Data) != smtpSum(msg) {
					t.Fatal("message not delivered byte for byte")
				}
				return
			}
			up.wait(t, "aborted")
			up.wait(t, "logout")
			if n := len(up.messages()); n != 0 {
				t.Fatalf("provider delivered %d messages", n)
			}
		})
	}
}
