package proxy

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
)

// memUpstream is go-imap's in-memory server behind implicit TLS: a fast
// stand-in provider for unit tests (the Dovecot tests are the proof).
type memUpstream struct {
	addr   string
	caFile string
	user   *imapmemserver.User
	mem    *imapmemserver.Server // AddUser for more accounts
}

func startMemUpstream(t *testing.T, ca *certs.TestCA, user, pass string) *memUpstream {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteFiles(dir, "up", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	mem := imapmemserver.New()
	u := imapmemserver.NewUser(user, pass)
	if err := u.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(u)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:      imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}},
	})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &memUpstream{addr: ln.Addr().String(), caFile: caFile, user: u, mem: mem}
}

// testGateway is the proxy's IMAP server on a loopback port with a
// certificate from ca.
type testGateway struct {
	imapsAddr string
	imapAddr  string
	pool      *x509.CertPool
}

func startTestGateway(t *testing.T, ca *certs.TestCA, cfg *config.Config) *testGateway {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range cfg.Providers {
		p.Name = name
	}
	for name, d := range cfg.Domains {
		d.Name = name
	}
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewIMAP(Options{Config: cfg, Backends: bs, Log: testLogger(t), TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}})
	lnTLS, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(lnTLS)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	return &testGateway{imapsAddr: lnTLS.Addr().String(), imapAddr: ln.Addr().String(), pool: pool}
}

func (g *testGateway) dial(t testing.TB, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = &tls.Config{RootCAs: g.pool, ServerName: "localhost"}
	c, err := imapclient.DialTLS(g.imapsAddr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func oneProviderConfig(imapURL, caFile, domain string) *config.Config {
	return &config.Config{
		Server:    config.Server{Hostname: "localhost"},
		Providers: map[string]*config.Provider{"old": {IMAP: imapURL, Auth: config.AuthPassthrough, CA: caFile}},
		Domains:   map[string]*config.Domain{domain: {Old: "old", State: config.StateOld}},
	}
}

func TestIMAPProxyMem(t *testing.T) {
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	const user, pass = "giulia.verdi@pec.ordine.example", "s3cret"
	up := startMemUpstream(t, ca, user, pass)
	gw := startTestGateway(t, ca, oneProviderConfig("imaps://"+up.addr, up.caFile, "pec.ordine.example"))

	t.Run("unknown domain", func(t *testing.T) {
		c := gw.dial(t, nil)
		err := c.Login("someone@elsewhere.example", pass).Wait()
		var imapErr *imap.Error
		if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
			t.Fatalf("login of unknown domain: got %v, want NO [AUTHENTICATIONFAILED]", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		c := gw.dial(t, nil)
		err := c.Login(user, "wrong").Wait()
		var imapErr *imap.Error
		if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
			t.Fatalf("got %v, want NO [AUTHENTICATIONFAILED]", err)
		}
	})
	t.Run("domain matched case-insensitively", func(t *testing.T) {
		// The configured domain is lower case; this login reaches the
		// provider (which knows it spelled so) only if the gateway matched
		// its domain ignoring case. An unknown domain would be refused
		// without dialling.
		const mixed = "anna.bianchi@PEC.Ordine.Example"
		up.mem.AddUser(imapmemserver.NewUser(mixed, "anna-pw"))
		c := gw.dial(t, nil)
		if err := c.Login(mixed, "anna-pw").Wait(); err != nil {
			t.Fatalf("login with the domain in mixed case: %v", err)
		}
	})
	t.Run("append select fetch", func(t *testing.T) {
		c := gw.dial(t, nil)
		if err := c.Login(user, pass).Wait(); err != nil {
			t.Fatal(err)
		}
		msg := bytes.Repeat([]byte("Subject: prova\r\n\r\nciao \xe8 8bit\r\n"), 1000)
		date := time.Date(2024, 3, 5, 10, 11, 12, 0, time.FixedZone("", 3600))
		ap := c.Append("INBOX", int64(len(msg)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen, "$label1"}, Time: date})
		ap.Write(msg)
		ap.Close()
		if _, err := ap.Wait(); err != nil {
			t.Fatal(err)
		}
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil || sel.NumMessages != 1 {
			t.Fatalf("select: %v %+v", err, sel)
		}
		bs := &imap.FetchItemBodySection{Peek: true}
		got, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{bs}}).Collect()
		if err != nil || len(got) != 1 {
			t.Fatalf("fetch: %v %d", err, len(got))
		}
		if sha256.Sum256(got[0].FindBodySection(bs)) != sha256.Sum256(msg) {
			t.Error("body differs")
		}
		if !got[0].InternalDate.Equal(date) || got[0].RFC822Size != int64(len(msg)) {
			t.Errorf("internaldate %v size %d", got[0].InternalDate, got[0].RFC822Size)
		}
	})
}

// testLogger sends the gateway's logs to the test log, shown when a test
// fails or with -v. Sessions may end after the test: their lines are
// dropped then (testing panics on a Log after the test completed).
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	mu   gosync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
