package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/mutf7"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// fakeGateway stands in for cmd's startGateway: it binds the configured
// listeners (so port choices are real) and serves nothing.
type fakeGateway struct {
	calls   []*config.Config
	certPEM []byte
	failIf  func(cfg *config.Config) error // nil: never fails
}

func (f *fakeGateway) start(_ context.Context, cfg *config.Config) (*Gateway, error) {
	f.calls = append(f.calls, cfg)
	if f.failIf != nil {
		if err := f.failIf(cfg); err != nil {
			return nil, err
		}
	}
	gw := &Gateway{Addrs: map[string]string{}, CertPEM: f.certPEM}
	var lns []net.Listener
	for name, addr := range map[string]*string{"imaps": cfg.Server.IMAPS, "imap": cfg.Server.IMAP, "smtps": cfg.Server.SMTPS, "submission": cfg.Server.Submission, "admin": cfg.Server.Admin} {
		ln, err := net.Listen("tcp", config.Addr(addr))
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return nil, fmt.Errorf("server.%s: %w", name, err)
		}
		lns = append(lns, ln)
		gw.Addrs[name] = ln.Addr().String()
	}
	gw.Stop = func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	return gw, nil
}

func startDemo(t *testing.T, opts Options) *Demo {
	t.Helper()
	d, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// TestStart checks what Start builds: providers reachable through the
// configuration it hands to the gateway (endpoint, CA file, each provider's
// own passwords), old seeded and new empty, the files, and what it prints.
//
// Measured on 2 cores: Start (with this fake gateway) takes 30-40 ms, or
// 170-480 ms under -race (two providers, keys, checking and seeding three
// copies of the 3.5 MB of fixtures). The real `pecgate demo` prints "ready in"
// 57-147 ms, and its first line appears 70-360 ms after exec.
func TestStart(t *testing.T) {
	ca := newTestCA(t)
	fake := &fakeGateway{certPEM: ca.CertPEM()}
	d := startDemo(t, Options{RandomPorts: true, StartGateway: fake.start, NoPhones: true})
	t.Logf("Start took %s", d.Took)

	if len(fake.calls) != 1 {
		t.Fatalf("StartGateway called %d times", len(fake.calls))
	}
	cfg := fake.calls[0]
	for _, a := range []*string{cfg.Server.IMAPS, cfg.Server.IMAP, cfg.Server.SMTPS, cfg.Server.Submission, cfg.Server.Admin} {
		if config.Addr(a) != "127.0.0.1:0" {
			t.Errorf("listener %q with RandomPorts, want 127.0.0.1:0", config.Addr(a))
		}
	}
	if !cfg.TLS.SelfSigned || cfg.Server.Hostname != "localhost" || cfg.Admin.TokenFile != d.TokenFile {
		t.Errorf("server %+v, tls %+v", cfg.Server, cfg.TLS)
	}
	dom := cfg.Domains[Domain]
	if dom == nil || dom.Name != Domain || dom.Old != OldProvider || dom.New != NewProvider || dom.State != config.StateOld {
		t.Fatalf("domains: %+v", cfg.Domains)
	}
	if got := cfg.LookupDomain(Users[0].Address); got != dom {
		t.Errorf("LookupDomain(%s) = %+v", Users[0].Address, got)
	}

	t.Run("providers through the config", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			seeded bool
		}{{OldProvider, true}, {NewProvider, false}} {
			pc := cfg.Providers[tc.name]
			auth := config.AuthPassthrough
			if tc.name == NewProvider {
				auth = config.AuthVault
			}
			if pc == nil || pc.Name != tc.name || pc.Auth != auth {
				t.Fatalf("provider %s: %+v", tc.name, pc)
			}
			ep, err := pc.IMAPEndpoint()
			if err != nil || !ep.ImplicitTLS {
				t.Fatalf("provider %s imap %q: %+v %v", tc.name, pc.IMAP, ep, err)
			}
			if ep, err := pc.SMTPEndpoint(); err != nil || !ep.ImplicitTLS {
				t.Fatalf("provider %s smtp %q: %+v %v", tc.name, pc.SMTP, ep, err)
			}
			for _, u := range Users {
				own, other := u.OldPassword, u.NewPassword
				if tc.name == NewProvider {
					own, other = other, own
				}
				c, err := imapclient.DialTLS(ep.Addr(), &imapclient.Options{TLSConfig: tlsConfigFor(t, pc.CA)})
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Login(u.Address, other).Wait(); err == nil {
					t.Errorf("%s accepted %s with the other provider's password", tc.name, u.Address)
				}
				if err := c.Login(u.Address, own).Wait(); err != nil {
					t.Fatalf("%s refused %s: %v", tc.name, u.Address, err)
				}
				want := d.Fixtures
				if !tc.seeded {
					want = nil
				}
				checkSeeded(t, c, want)
				c.Close()
			}
		}
	})

	t.Run("files", func(t *testing.T) {
		if got, err := os.ReadFile(d.CertFile); err != nil || string(got) != string(ca.CertPEM()) {
			t.Errorf("%s: %v, want the gateway's CertPEM", d.CertFile, err)
		}
		sample, err := os.ReadFile(d.SampleFile)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(sample), "\r\nTo: Mario Rossi <"+Users[1].Address+">\r\n") || strings.Contains(strings.ReplaceAll(string(sample), "\r\n", ""), "\n") {
			t.Errorf("sample message:\n%s", sample)
		}
	})

	t.Run("story files", func(t *testing.T) {
		// The configuration file is what `pecgate route -config` reads:
		// it must load, and name the addresses the gateway bound.
		fileCfg, err := config.Load(d.ConfigFile)
		if err != nil {
			t.Fatal(err)
		}
		if config.Addr(fileCfg.Server.Admin) != d.Addrs["admin"] || config.Addr(fileCfg.Server.IMAPS) != d.Addrs["imaps"] {
			t.Errorf("%s: admin %s imaps %s, want the bound %s and %s", d.ConfigFile, config.Addr(fileCfg.Server.Admin), config.Addr(fileCfg.Server.IMAPS), d.Addrs["admin"], d.Addrs["imaps"])
		}
		for _, f := range []string{d.TokenFile, fileCfg.Vault.KeyFile, d.ConfigFile} {
			if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %v, mode %v; want 0600", f, err, fi.Mode())
			}
		}
		if tok, _ := os.ReadFile(d.TokenFile); strings.TrimSpace(string(tok)) != d.Token || len(d.Token) != 64 {
			t.Errorf("token file holds %q, want %q (64 hex digits)", tok, d.Token)
		}
		// The vault holds the new provider's credentials of every member
		// but the NoVault ones (the fake gateway did not open the store).
		v, err := store.OpenVault(fileCfg.Vault.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		st, err := bolt.Open(fileCfg.Store.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.View(context.Background(), func(tx store.Tx) error {
			for _, u := range Users {
				user, pass, err := v.Get(tx, NewProvider, u.Address)
				switch {
				case u.NoVault && !errors.Is(err, store.ErrNotFound):
					t.Errorf("vault has %s: %q %v, want none", u.Address, user, err)
				case !u.NoVault && (err != nil || user != u.Address || pass != u.NewPassword):
					t.Errorf("vault for %s: %q %q %v", u.Address, user, pass, err)
				}
			}
			return nil
		})
	})

	t.Run("info", func(t *testing.T) {
		var b strings.Builder
		if err := d.WriteInfo(&b); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		want := []string{d.CertFile, d.SampleFile, d.Old.IMAPAddr, d.New.SMTPAddr, "14 PEC messages per user (INBOX 10, Pratiche/Città 3, Posta inviata 1)"}
		for _, name := range listenerNames {
			want = append(want, "localhost:"+port(d.Addrs[name]))
		}
		for _, u := range Users {
			want = append(want, u.Address+" ", u.OldPassword)
		}
		imaps := "imaps://localhost:" + port(d.Addrs["imaps"])
		want = append(want,
			"http://localhost:"+port(d.Addrs["admin"])+"/me",
			d.Token,
			"pecgate route -config "+d.ConfigFile+" -y "+Domain+" migrating",
			"pecgate route -config "+d.ConfigFile+" -y "+Domain+" new",
			"--user "+Users[0].Address+":"+Users[0].OldPassword+" "+imaps+"/\n",
			"'"+imaps+"/Pratiche/Citt&AOA-/;UID=3' | sha256sum\n")
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	})

	dir := d.Dir
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %s not removed: %v", dir, err)
	}
}

func TestStartKeepsGivenDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	fake := &fakeGateway{certPEM: []byte("cert")}
	d, err := Start(context.Background(), Options{Dir: dir, RandomPorts: true, StartGateway: fake.start})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{GatewayCertFile, SampleMessageFile, "old-ca.pem", "new-ca.pem"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

// TestStartRetriesOnBusyPort: when a development port is taken between the
// probe and the gateway's bind, Start starts again on random ports.
func TestStartRetriesOnBusyPort(t *testing.T) {
	fake := &fakeGateway{certPEM: []byte("cert")}
	fake.failIf = func(cfg *config.Config) error {
		if config.Addr(cfg.Server.IMAPS) != "127.0.0.1:0" {
			return fmt.Errorf("server.imaps: %w", &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)})
		}
		return nil
	}
	d := startDemo(t, Options{StartGateway: fake.start, NoPhones: true})
	if len(fake.calls) != 2 {
		t.Fatalf("StartGateway called %d times, want 2", len(fake.calls))
	}
	if d.Config != fake.calls[1] || config.Addr(d.Config.Server.Submission) != "127.0.0.1:0" {
		t.Errorf("second configuration not all random: %+v", d.Config.Server)
	}
}

// TestStartFailureCleansUp: a gateway that does not start leaves no
// provider running and no temporary directory.
func TestStartFailureCleansUp(t *testing.T) {
	boom := errors.New("boom")
	fake := &fakeGateway{failIf: func(*config.Config) error { return boom }}
	d, err := Start(context.Background(), Options{RandomPorts: true, StartGateway: fake.start})
	if !errors.Is(err, boom) || d != nil {
		t.Fatalf("Start = %v, %v; want nil, boom", d, err)
	}
	cfg := fake.calls[0]
	if _, err := os.Stat(filepath.Dir(cfg.Store.Path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory left behind: %v", err)
	}
	ep, _ := cfg.Providers[OldProvider].IMAPEndpoint()
	if c, err := net.Dial("tcp", ep.Addr()); err == nil {
		c.Close()
		t.Errorf("provider old still listening on %s", ep.Addr())
	}
	if _, err := Start(context.Background(), Options{}); err == nil {
		t.Error("Start without StartGateway succeeded")
	}
}

func TestListenAddrs(t *testing.T) {
	// Hold the IMAPS development port (or find it already taken).
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(DevPorts["imaps"]))
	if err == nil {
		defer ln.Close()
	}
	got := listenAddrs(false)
	if got["imaps"] != "127.0.0.1:0" {
		t.Errorf("imaps: %q with its port taken, want 127.0.0.1:0", got["imaps"])
	}
	for _, name := range listenerNames {
		if a := got[name]; a != "127.0.0.1:0" && a != "127.0.0.1:"+strconv.Itoa(DevPorts[name]) {
			t.Errorf("%s: %q", name, a)
		}
	}
	for name, a := range listenAddrs(true) {
		if a != "127.0.0.1:0" {
			t.Errorf("random %s: %q", name, a)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/pecgate-demo-1/gateway-ca.pem": "/tmp/pecgate-demo-1/gateway-ca.pem",
		"a@b.example:pw":                     "a@b.example:pw",
		"/tmp/my dir/x.pem":                  "'/tmp/my dir/x.pem'",
		"it's":                               `'it'\''s'`,
		"":                                   "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestMailboxURLPath(t *testing.T) {
	for in, want := range map[string]string{
		"INBOX":          "INBOX",
		"Posta inviata":  "Posta%20inviata",
		"Pratiche/Città": "Pratiche/Citt&AOA-",
		"A&B":            "A&-B",
		"台北/日本語":         "&U%2CBTFw-/&ZeVnLIqe-",
		"~peter":         "~peter",
	} {
		if got := mailboxURLPath(in); got != want {
			t.Errorf("mailboxURLPath(%q) = %q, want %q", in, got, want)
		}
	}
	// RFC 3501 section 5.1.3's example.
	if got := mutf7.Encode("~peter/mail/台北/日本語"); got != "~peter/mail/&U,BTFw-/&ZeVnLIqe-" {
		t.Errorf("mutf7.Encode = %q", got)
	}
}
