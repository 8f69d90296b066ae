package backend

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
)

const (
	testMasterUser = "pecgate-master"
	testMasterPW   = "M4ster-pw!secret"
)

// fakeSecrets is a vault: lower-cased "provider/user" -> credentials.
type fakeSecrets map[string][2]string

func (f fakeSecrets) Credential(_ context.Context, provider, user string) (string, string, error) {
	c, ok := f[provider+"/"+strings.ToLower(user)]
	if !ok {
		return "", "", fmt.Errorf("fake vault: %w", ErrNoCredential)
	}
	return c[0], c[1], nil
}

type brokenSecrets struct{}

func (brokenSecrets) Credential(context.Context, string, string) (string, string, error) {
	return "", "", errors.New("store unreadable")
}

// writeSecret writes a master password file, with a trailing newline as
// `echo` leaves one.
func writeSecret(t *testing.T, pw string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "master")
	if err := os.WriteFile(f, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// startDovecot returns a Dovecot with a master user and two users, anna
// with one message in INBOX and bruno with two (subjects "for ADDR #i").
func startDovecot(t *testing.T) *dovetest.Server {
	t.Helper()
	s := dovetest.Start(t, dovetest.Options{
		Name:           "creds",
		Users:          []dovetest.User{{Address: "anna@pec.example"}, {Address: "bruno@pec.example"}},
		MasterUser:     testMasterUser,
		MasterPassword: testMasterPW,
	})
	for i, u := range []string{"anna@pec.example", "bruno@pec.example"} {
		for j := range i + 1 {
			s.Deliver(t, u, "INBOX", fmt.Appendf(nil, "From: x@pec.example\r\nTo: %s\r\nSubject: for %s #%d\r\n\r\nhello\r\n", u, u, j))
		}
	}
	return s
}

// inboxOf checks that c is logged in as user: its INBOX holds the messages
// delivered to user and no one else's.
func inboxOf(t *testing.T, c *IMAPConn, user string, n uint32) {
	t.Helper()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	if sel.NumMessages != n {
		t.Fatalf("INBOX has %d messages, want %d (user %s)", sel.NumMessages, n, user)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH: %v", err)
	}
	if got, want := msgs[0].Envelope.Subject, "for "+user+" #0"; got != want {
		t.Fatalf("subject %q, want %q", got, want)
	}
}

func dovecotProvider(t *testing.T, s *dovetest.Server, pc config.Provider) *Provider {
	t.Helper()
	if pc.IMAP == "" {
		pc.IMAP = "imaps://" + s.IMAPSAddr
	}
	pc.SMTP = "smtps://" + s.SubmissionAddr
	pc.CA = s.CAFile
	return provider(t, pc)
}

func masterConfig(t *testing.T, style, password string) config.Provider {
	return config.Provider{Auth: config.AuthMaster, MasterUser: testMasterUser,
		MasterPasswordFile: writeSecret(t, password), MasterStyle: style}
}

func TestLoginUserDovecot(t *testing.T) {
	s := startDovecot(t)
	ctx := context.Background()
	starttls := "imap://" + s.IMAPAddr

	t.Run("master", func(t *testing.T) {
		for _, tc := range []struct {
			name, style, imap string
		}{
			{"sasl", config.MasterStyleSASL, ""},
			{"sasl default", "", ""},
			{"sasl STARTTLS", config.MasterStyleSASL, starttls},
			{"separator", config.MasterStyleSeparator, ""},
			{"separator STARTTLS", config.MasterStyleSeparator, starttls},
		} {
			t.Run(tc.name, func(t *testing.T) {
				pc := masterConfig(t, tc.style, testMasterPW)
				pc.IMAP = tc.imap
				p := dovecotProvider(t, s, pc)
				// The client's password plays no part.
				for user, n := range map[string]uint32{"anna@pec.example": 1, "Bruno@PEC.example": 2} {
					c, err := p.LoginUser(ctx, user, "not the password", nil, nil)
					if err != nil {
						t.Fatalf("%s: %v", user, err)
					}
					inboxOf(t, c, strings.ToLower(user), n)
					c.Logout()
				}
			})
		}
	})

	t.Run("master refused", func(t *testing.T) {
		for _, style := range []string{config.MasterStyleSASL, config.MasterStyleSeparator} {
			for _, tc := range []struct {
				name, user, password string
			}{
				{"wrong master password", "anna@pec.example", "wrong-master-pw"},
				{"no such user", "nobody@pec.example", testMasterPW},
				{"the user's own password as master password", "anna@pec.example", s.Password("anna@pec.example")},
			} {
				t.Run(style+"/"+tc.name, func(t *testing.T) {
					p := dovecotProvider(t, s, masterConfig(t, style, tc.password))
					_, err := p.LoginUser(ctx, tc.user, testMasterPW, nil, nil)
					var be *Error
					if !IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent {
						t.Fatalf("got %v, want a permanent ErrAuthFailed", err)
					}
					if msg := err.Error(); strings.Contains(msg, tc.password) || strings.Contains(msg, testMasterPW) {
						t.Fatalf("error holds a password: %s", msg)
					}
					if !strings.Contains(be.Hint, testMasterUser) || be.Op != "master login" {
						t.Fatalf("error does not say which master login failed: %v", err)
					}
				})
			}
		}
	})

	t.Run("master unusable user names", func(t *testing.T) {
		for _, tc := range []struct{ style, user string }{
			{config.MasterStyleSeparator, "anna@pec.example*" + testMasterUser},
			{config.MasterStyleSeparator, "x*other"},
			{config.MasterStyleSASL, "anna@pec.example\x00"},
			{config.MasterStyleSASL, "anna@pec.example\r\nA1 LOGOUT"},
			{config.MasterStyleSASL, ""},
		} {
			p := dovecotProvider(t, s, masterConfig(t, tc.style, testMasterPW))
			if _, err := p.LoginUser(ctx, tc.user, "", nil, nil); !IsAuthFailure(err) {
				t.Errorf("%s %q: got %v, want ErrAuthFailed", tc.style, tc.user, err)
			}
			if _, err := p.LoginUserSMTP(ctx, "localhost", tc.user, "", nil); !IsAuthFailure(err) {
				t.Errorf("smtp %s %q: got %v, want ErrAuthFailed", tc.style, tc.user, err)
			}
		}
	})

	t.Run("master trace masked", func(t *testing.T) {
		for _, style := range []string{config.MasterStyleSASL, config.MasterStyleSeparator} {
			t.Run(style, func(t *testing.T) {
				p := dovecotProvider(t, s, masterConfig(t, style, testMasterPW))
				var trace bytes.Buffer
				var mu sync.Mutex
				c, err := p.LoginUser(ctx, "anna@pec.example", "", nil, &imapclient.Options{DebugWriter: lockedWriter{&mu, &trace}})
				if err != nil {
					t.Fatal(err)
				}
				inboxOf(t, c, "anna@pec.example", 1)
				c.Logout()
				mu.Lock()
				defer mu.Unlock()
				got := trace.String()
				plain := base64.StdEncoding.EncodeToString([]byte("anna@pec.example\x00" + testMasterUser + "\x00" + testMasterPW))
				if strings.Contains(got, testMasterPW) || strings.Contains(got, plain) || strings.Contains(got, plain[:16]) {
					t.Fatalf("trace holds the master password:\n%s", got)
				}
				for _, want := range []string{"SELECT INBOX", " ***\r\n"} {
					if !strings.Contains(got, want) {
						t.Fatalf("trace lacks %q:\n%s", want, got)
					}
				}
			})
		}
	})

	t.Run("vault", func(t *testing.T) {
		p := dovecotProvider(t, s, config.Provider{Auth: config.AuthVault})
		// The provider's username need not be the address the client uses.
		secrets := fakeSecrets{
			"test/anna@pec.example":  {"anna@pec.example", s.Password("anna@pec.example")},
			"test/alias@pec.example": {"bruno@pec.example", s.Password("bruno@pec.example")},
			"test/stale@pec.example": {"anna@pec.example", "an old password"},
			"other/x@pec.example":    {"bruno@pec.example", s.Password("bruno@pec.example")},
		}
		for user, want := range map[string]string{"Anna@pec.example": "anna@pec.example", "alias@pec.example": "bruno@pec.example"} {
			c, err := p.LoginUser(ctx, user, "the client's password is not sent", secrets, nil)
			if err != nil {
				t.Fatalf("%s: %v", user, err)
			}
			inboxOf(t, c, want, map[string]uint32{"anna@pec.example": 1, "bruno@pec.example": 2}[want])
			c.Logout()
		}
		_, err := p.LoginUser(ctx, "stale@pec.example", "", secrets, nil)
		var be *Error
		if !IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent || !strings.Contains(be.Hint, "vault import") {
			t.Fatalf("stale credentials: got %v, want a permanent ErrAuthFailed with a hint", err)
		}
		if strings.Contains(err.Error(), "an old password") {
			t.Fatalf("error holds the password: %v", err)
		}
		// Credentials of another provider are never used.
		_, err = p.LoginUser(ctx, "x@pec.example", "", secrets, nil)
		if !errors.Is(err, ErrNoCredential) || IsAuthFailure(err) {
			t.Fatalf("no credentials: got %v, want ErrNoCredential and not ErrAuthFailed", err)
		}
		if _, err := p.LoginUser(ctx, "anna@pec.example", "", nil, nil); err == nil || IsAuthFailure(err) {
			t.Fatalf("no vault: got %v", err)
		}
		_, err = p.LoginUser(ctx, "anna@pec.example", "", brokenSecrets{}, nil)
		if err == nil || IsAuthFailure(err) || errors.Is(err, ErrNoCredential) || !errors.As(err, &be) || be.Permanent {
			t.Fatalf("unreadable vault: got %v, want a temporary error", err)
		}
	})

	t.Run("passthrough", func(t *testing.T) {
		p := dovecotProvider(t, s, config.Provider{Auth: config.AuthPassthrough})
		c, err := p.LoginUser(ctx, "bruno@pec.example", s.Password("bruno@pec.example"), fakeSecrets{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		inboxOf(t, c, "bruno@pec.example", 2)
		c.Logout()
		_, err = p.LoginUser(ctx, "bruno@pec.example", "wrong", nil, nil)
		if !IsAuthFailure(err) {
			t.Fatalf("wrong password: got %v", err)
		}
	})
}

func TestLoginUserSMTPDovecot(t *testing.T) {
	s := startDovecot(t)
	ctx := context.Background()
	send := func(t *testing.T, c *smtp.Client, from string) {
		t.Helper()
		defer c.Close()
		body := "Subject: via " + from + "\r\n\r\nhi\r\n"
		if err := c.SendMail(from, []string{"anna@pec.example"}, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		c.Quit()
	}
	t.Run("vault", func(t *testing.T) {
		p := dovecotProvider(t, s, config.Provider{Auth: config.AuthVault})
		secrets := fakeSecrets{
			"test/alias@pec.example": {"bruno@pec.example", s.Password("bruno@pec.example")},
			"test/stale@pec.example": {"bruno@pec.example", "old"},
		}
		c, err := p.LoginUserSMTP(ctx, "gw.test", "alias@pec.example", "client pw", secrets)
		if err != nil {
			t.Fatal(err)
		}
		send(t, c, "bruno@pec.example")
		subs := s.Submissions()
		if len(subs) != 1 || subs[0].AuthUsername != "bruno@pec.example" {
			t.Fatalf("submissions: %+v", subs)
		}
		_, err = p.LoginUserSMTP(ctx, "gw.test", "stale@pec.example", "", secrets)
		var be *Error
		if !IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent || be.Op != "vault smtp auth" {
			t.Fatalf("stale: got %v", err)
		}
		if _, err := p.LoginUserSMTP(ctx, "gw.test", "nobody@pec.example", "", secrets); !errors.Is(err, ErrNoCredential) {
			t.Fatalf("no credentials: got %v", err)
		}
	})
	t.Run("passthrough", func(t *testing.T) {
		p := dovecotProvider(t, s, config.Provider{})
		c, err := p.LoginUserSMTP(ctx, "gw.test", "anna@pec.example", s.Password("anna@pec.example"), nil)
		if err != nil {
			t.Fatal(err)
		}
		send(t, c, "anna@pec.example")
		if subs := s.Submissions(); len(subs) != 2 || subs[1].AuthUsername != "anna@pec.example" {
			t.Fatalf("submissions: %+v", subs)
		}
		if _, err := p.LoginUserSMTP(ctx, "gw.test", "anna@pec.example", "wrong", nil); !IsAuthFailure(err) {
			t.Fatalf("wrong password: got %v", err)
		}
	})
	for _, style := range []string{config.MasterStyleSASL, config.MasterStyleSeparator} {
		t.Run("master "+style, func(t *testing.T) {
			p := dovecotProvider(t, s, masterConfig(t, style, testMasterPW))
			c, err := p.LoginUserSMTP(ctx, "gw.test", "Bruno@pec.example", "not the password", nil)
			if err != nil {
				t.Fatal(err)
			}
			n := len(s.Submissions())
			send(t, c, "bruno@pec.example")
			if subs := s.Submissions(); len(subs) != n+1 || subs[n].AuthUsername != "Bruno@pec.example" {
				t.Fatalf("submissions: %+v", subs)
			}
			p = dovecotProvider(t, s, masterConfig(t, style, "Wr0ng-pw-xyz"))
			_, err = p.LoginUserSMTP(ctx, "gw.test", "bruno@pec.example", testMasterPW, nil)
			var be *Error
			if !IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent || be.Op != "master smtp auth" {
				t.Fatalf("wrong master password: got %v", err)
			}
			if strings.Contains(err.Error(), "Wr0ng-pw-xyz") || strings.Contains(err.Error(), testMasterPW) {
				t.Fatalf("error holds a password: %v", err)
			}
		})
	}
}

// masterSMTP is a submission server that knows one master user and
// records every AUTH PLAIN it sees, to check the exact identities sent and
// a server without PLAIN.
type masterSMTP struct {
	addr, caFile string
	mu           sync.Mutex
	auths        [][3]string // identity, username, password
}

func startMasterSMTP(t *testing.T, mechs ...string) *masterSMTP {
	t.Helper()
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteFiles(dir, "smtp", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	m := &masterSMTP{caFile: filepath.Join(dir, "ca.pem")}
	os.WriteFile(m.caFile, ca.CertPEM(), 0o600)
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &masterSession{m: m, mechs: mechs}, nil
	}))
	srv.Domain = "localhost"
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	m.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return m
}

type masterSession struct {
	m     *masterSMTP
	mechs []string
	user  string
}

func (s *masterSession) AuthMechanisms() []string { return s.mechs }

func (s *masterSession) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		s.m.mu.Lock()
		s.m.auths = append(s.m.auths, [3]string{identity, username, password})
		s.m.mu.Unlock()
		switch {
		case password != testMasterPW:
		case identity != "" && username == testMasterUser:
			s.user = identity
			return nil
		case identity == "" && strings.HasSuffix(username, "*"+testMasterUser):
			s.user = strings.TrimSuffix(username, "*"+testMasterUser)
			return nil
		}
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "authentication failed"}
	}), nil
}

func (s *masterSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *masterSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *masterSession) Data(io.Reader) error                 { return nil }
func (s *masterSession) Reset()                               {}
func (s *masterSession) Logout() error                        { return nil }

func TestLoginUserSMTPMaster(t *testing.T) {
	ctx := context.Background()
	m := startMasterSMTP(t, sasl.Plain)
	mk := func(t *testing.T, style, pw, smtpAddr, ca string) *Provider {
		pc := masterConfig(t, style, pw)
		pc.IMAP = "imaps://127.0.0.1:1"
		pc.SMTP = "smtps://" + smtpAddr
		pc.CA = ca
		return provider(t, pc)
	}
	for _, tc := range []struct {
		style string
		want  [3]string
	}{
		{config.MasterStyleSASL, [3]string{"anna@pec.example", testMasterUser, testMasterPW}},
		{config.MasterStyleSeparator, [3]string{"", "anna@pec.example*" + testMasterUser, testMasterPW}},
	} {
		t.Run(tc.style, func(t *testing.T) {
			p := mk(t, tc.style, testMasterPW, m.addr, m.caFile)
			c, err := p.LoginUserSMTP(ctx, "gw.test", "anna@pec.example", "client pw", nil)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			m.mu.Lock()
			got := m.auths[len(m.auths)-1]
			m.mu.Unlock()
			if got != tc.want {
				t.Fatalf("AUTH PLAIN %q, want %q", got, tc.want)
			}

			p = mk(t, tc.style, "Wr0ng-pw-xyz", m.addr, m.caFile)
			_, err = p.LoginUserSMTP(ctx, "gw.test", "anna@pec.example", testMasterPW, nil)
			var be *Error
			if !IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent || be.Op != "master smtp auth" {
				t.Fatalf("wrong master password: got %v", err)
			}
			if strings.Contains(err.Error(), "Wr0ng-pw-xyz") || strings.Contains(err.Error(), testMasterPW) {
				t.Fatalf("error holds the password: %v", err)
			}
		})
	}
	t.Run("sasl without PLAIN", func(t *testing.T) {
		m := startMasterSMTP(t, sasl.Login)
		p := mk(t, config.MasterStyleSASL, testMasterPW, m.addr, m.caFile)
		_, err := p.LoginUserSMTP(ctx, "gw.test", "anna@pec.example", "", nil)
		var be *Error
		if err == nil || IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent || !strings.Contains(err.Error(), "separator") {
			t.Fatalf("got %v, want a permanent error suggesting separator", err)
		}
	})
}

func TestMasterPasswordFile(t *testing.T) {
	dir := t.TempDir()
	base := config.Provider{IMAP: "imaps://127.0.0.1:1", Auth: config.AuthMaster, MasterUser: "m"}
	for _, tc := range []struct {
		name, content string
		missing       bool
		ok            bool
	}{
		{"with newline", "s3cret pw\n", false, true},
		{"with CRLF", "s3cret pw\r\n", false, true},
		{"without newline", "s3cret pw", false, true},
		{"missing", "", true, false},
		{"empty", "\n", false, false},
		{"two lines", "s3cret pw\nsecond\n", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := base
			pc.MasterPasswordFile = filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if !tc.missing {
				os.WriteFile(pc.MasterPasswordFile, []byte(tc.content), 0o600)
			}
			p, err := NewProvider("test", &pc, nil)
			if !tc.ok {
				if err == nil {
					t.Fatal("accepted")
				}
				if !strings.Contains(err.Error(), pc.MasterPasswordFile) || strings.Contains(err.Error(), "s3cret") {
					t.Fatalf("error must name the file and not quote it: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.masterPassword != "s3cret pw" {
				t.Fatalf("master password %q", p.masterPassword)
			}
		})
	}
	// New reports it under the provider's key; passthrough providers read
	// no file.
	cfg := &config.Config{Providers: map[string]*config.Provider{
		"m": {IMAP: "imaps://127.0.0.1:1", Auth: config.AuthMaster, MasterUser: "m", MasterPasswordFile: filepath.Join(dir, "nope")},
		"p": {IMAP: "imaps://127.0.0.1:1", MasterPasswordFile: filepath.Join(dir, "nope")},
	}}
	_, err := New(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "providers.m: master_password_file: ") || strings.Contains(err.Error(), "providers.p") {
		t.Fatalf("got %v", err)
	}
}

func TestAuthMask(t *testing.T) {
	var out bytes.Buffer
	m := &authMask{w: &out}
	m.Write([]byte("T1 CAPABILITY\r\n"))
	m.set(true)
	for _, chunk := range []string{"T2 LOG", "IN anna \"pw\"\r\n", "+ \r\n", "AGFubmEAcHc=\r\n", "T2 OK [CAPABILITY IMAP4rev1] Logged in\r\nT3 LOGIN {4}\r\n", "pass"} {
		m.Write([]byte(chunk))
	}
	m.set(false)
	m.Write([]byte("T4 SELECT INBOX\r\n"))
	want := "T1 CAPABILITY\r\nT2 LOGIN ***\r\n***\r\n***\r\nT2 OK ***\r\nT3 LOGIN ***\r\n***\r\nT4 SELECT INBOX\r\n"
	if out.String() != want {
		t.Fatalf("got %q\nwant %q", out.String(), want)
	}
	var nilMask *authMask
	nilMask.set(true) // no DebugWriter: nothing to do
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
