// Package demo runs pecgate in front of two in-process mail providers on
// localhost, so that anyone can try the gateway with curl or a mail client
// without a real PEC provider: `pecgate demo`. The providers (Provider) are
// also fast fake upstreams for tests.
//
// The demo serves the domain pec.ordine.example in state old: two providers,
// "old" and "new", know the same five members with different passwords;
// every member's mailbox on old holds the shared PEC fixtures (Fixtures) and
// a folder of generated receipts (story.go), new is empty. The gateway
// serves IMAP, submission, the admin API with the status page and the
// member page; the new provider uses vault credentials, imported before
// the gateway starts; simulated phones log some members in (story.go). The
// gateway itself is started by a function the caller passes in
// (Options.StartGateway), so this package does not depend on cmd.
//
// Invariants:
//
//   - Messages are stored byte for byte: a seeded fixture has the SHA-256 of
//     manifest.tsv, its folder, flags and INTERNALDATE; a message submitted
//     over SMTP reaches each local recipient's INBOX with the bytes of DATA.
//   - Every listener is on 127.0.0.1 only. The gateway takes the ports 1993,
//     1143, 1465 and 1587 when they are free, random ones otherwise.
//   - Start either returns a running demo or leaves nothing running; Close
//     stops everything it started and waits for it, and removes the directory
//     when Start created it.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/mutf7"
)

// Domain is the mail domain the demo gateway serves.
const Domain = "pec.ordine.example"

// Provider names in the demo's configuration.
const (
	OldProvider = "old"
	NewProvider = "new"
)

// GatewayCertFile is the name, in Demo.Dir, of the PEM file holding the
// gateway's self-signed certificate, which clients must trust.
const GatewayCertFile = "gateway-ca.pem"

// SampleMessageFile is the name, in Demo.Dir, of a short message from the
// first user to the second, for trying submission with curl.
const SampleMessageFile = "hello.eml"

// Listener names, as in the [server] section and Gateway.Addrs.
var listenerNames = []string{"imaps", "imap", "smtps", "submission", "admin"}

// DevPorts are the ports the gateway's listeners take when they are free:
// the standard ports plus 1000, usable without privileges, and 8080 plus
// 10000 for the admin listener.
var DevPorts = map[string]int{"imaps": 1993, "imap": 1143, "smtps": 1465, "submission": 1587, "admin": 18080}

// User is a demo member: the same address on both providers, with a
// different password on each.
type User struct {
	Address     string
	OldPassword string
	NewPassword string
	// Phone: a simulated mail client logs the member in (story.go).
	Phone bool
	// NoVault: the new provider's credentials are not imported; the member
	// sets them on the member page.
	NoVault bool
}

// Users are the demo's members, the first one the sender of
// SampleMessageFile, the second its recipient.
var Users = []User{
	{Address: "giulia.verdi@" + Domain, OldPassword: "demo-old-giulia", NewPassword: "demo-new-giulia", Phone: true},
	{Address: "mario.rossi@" + Domain, OldPassword: "demo-old-mario", NewPassword: "demo-new-mario", Phone: true},
	{Address: "anna.bianchi@" + Domain, OldPassword: "demo-old-anna", NewPassword: "demo-new-anna", Phone: true, NoVault: true},
	{Address: "luca.neri@" + Domain, OldPassword: "demo-old-luca", NewPassword: "demo-new-luca", Phone: true},
	{Address: "sara.russo@" + Domain, OldPassword: "demo-old-sara", NewPassword: "demo-new-sara"},
}

// Gateway is a running gateway, as Options.StartGateway returns it.
type Gateway struct {
	// Addrs maps each enabled listener ("imaps", "imap", "smtps",
	// "submission") to its bound address.
	Addrs map[string]string
	// CertPEM is the certificate (chain) the gateway serves, in PEM.
	CertPEM []byte
	// Stop shuts the gateway down and returns when it has stopped.
	Stop func()
	// Failed delivers an error if a listener stops serving; nil means it
	// never does.
	Failed <-chan error
}

// Options configure Start and Run.
type Options struct {
	// Dir is where the demo writes its files (the CA of the providers, the
	// gateway's certificate, SampleMessageFile). It is created if missing
	// and kept. "" means a new temporary directory, removed by Close.
	Dir string
	// RandomPorts puts every gateway listener on a random port instead of
	// trying DevPorts first.
	RandomPorts bool
	// StartGateway starts the gateway for cfg and returns it running; ctx
	// ends when the demo stops. Required.
	StartGateway func(ctx context.Context, cfg *config.Config) (*Gateway, error)
	// LogFormat is the gateway's log format, "text" or "json"; "" means text.
	// It goes into the configuration; StartGateway makes the logger.
	LogFormat string
	// Log receives the providers' own errors (broken connections and the
	// like). nil discards them.
	Log *slog.Logger
	// CopyRate is the old provider's copy_messages_per_second: how fast the
	// back-fill copies. Zero means DefaultCopyRate; negative, unlimited.
	CopyRate float64
	// NoPhones starts no simulated mail clients (story.go).
	NoPhones bool
}

// Demo is a running demo: two providers and the gateway in front of them.
type Demo struct {
	// Dir holds the demo's files.
	Dir string
	// Old and New are the two providers.
	Old, New *Provider
	// Config is the gateway's configuration.
	Config *config.Config
	// Addrs maps each gateway listener name to its bound address.
	Addrs map[string]string
	// CertFile is the PEM file of the gateway's certificate.
	CertFile string
	// SampleFile is the message file for trying submission.
	SampleFile string
	// FixturesFrom says where the seeded messages came from: a directory,
	// or "embedded".
	FixturesFrom string
	// Fixtures are the messages every user has on Old.
	Fixtures []Fixture
	// Took is how long Start took.
	Took time.Duration
	// ConfigFile is the gateway's configuration as TOML, for the commands
	// that reach it (`pecgate route -config ConfigFile ...`).
	ConfigFile string
	// Token and TokenFile are the admin API's bearer token and its file.
	Token, TokenFile string

	vaultKeyFile string
	phones       gosync.WaitGroup
	stopPhones   context.CancelFunc
	gw           *Gateway
	cancel       context.CancelFunc
	removeDir    bool
	closeOnce    gosync.Once
	closeErr     error
}

// Start starts the providers, seeds old, writes the files and starts the
// gateway. On error everything already started is stopped again.
func Start(ctx context.Context, opts Options) (d *Demo, err error) {
	start := time.Now()
	if opts.StartGateway == nil {
		return nil, errors.New("demo: Options.StartGateway is nil")
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d = &Demo{Dir: opts.Dir}
	defer func() {
		if err != nil {
			d.Close()
			d = nil
		}
	}()
	if d.Dir == "" {
		if d.Dir, err = os.MkdirTemp("", "pecgate-demo-"); err != nil {
			return d, err
		}
		d.removeDir = true
	} else {
		if d.Dir, err = filepath.Abs(d.Dir); err != nil {
			return d, err
		}
		if err := os.MkdirAll(d.Dir, 0o755); err != nil {
			return d, err
		}
	}

	fsys, where := FixturesSource()
	if d.Fixtures, err = LoadFixtures(fsys); err != nil {
		return d, fmt.Errorf("fixtures (%s): %w", where, err)
	}
	d.FixturesFrom = where

	ca, err := certs.NewTestCA()
	if err != nil {
		return d, err
	}
	oldUsers, newUsers := map[string]string{}, map[string]string{}
	for _, u := range Users {
		oldUsers[u.Address] = u.OldPassword
		newUsers[u.Address] = u.NewPassword
	}
	if d.Old, err = startProvider(OldProvider, ca, d.Dir, oldUsers, log); err != nil {
		return d, err
	}
	if d.New, err = startProvider(NewProvider, ca, d.Dir, newUsers, log); err != nil {
		return d, err
	}
	for _, u := range Users {
		if err := d.Old.SeedWith(u.Address, d.Fixtures); err != nil {
			return d, err
		}
		if err := d.Old.SeedWith(u.Address, archive(u.Address)); err != nil {
			return d, err
		}
	}
	if err := d.writeSecrets(); err != nil {
		return d, err
	}
	copyRate := opts.CopyRate
	switch {
	case copyRate == 0:
		copyRate = DefaultCopyRate
	case copyRate < 0:
		copyRate = 0
	}
	d.SampleFile = filepath.Join(d.Dir, SampleMessageFile)
	if err := os.WriteFile(d.SampleFile, SampleMessage(time.Now()), 0o644); err != nil {
		return d, err
	}

	gctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	if d.Config, err = d.config(listenAddrs(opts.RandomPorts), opts.LogFormat, copyRate); err != nil {
		return d, err
	}
	if err := d.importVault(ctx); err != nil {
		return d, fmt.Errorf("import the new provider's credentials: %w", err)
	}
	d.gw, err = opts.StartGateway(gctx, d.Config)
	if err != nil && !opts.RandomPorts && errors.Is(err, syscall.EADDRINUSE) {
		// A development port was taken between the probe and the bind.
		if d.Config, err = d.config(listenAddrs(true), opts.LogFormat, copyRate); err != nil {
			return d, err
		}
		d.gw, err = opts.StartGateway(gctx, d.Config)
	}
	if err != nil {
		return d, fmt.Errorf("start gateway: %w", err)
	}
	d.Addrs = d.gw.Addrs
	d.CertFile = filepath.Join(d.Dir, GatewayCertFile)
	if err := os.WriteFile(d.CertFile, d.gw.CertPEM, 0o644); err != nil {
		return d, err
	}
	if err := d.writeConfig(); err != nil {
		return d, err
	}
	if !opts.NoPhones {
		var pctx context.Context
		pctx, d.stopPhones = context.WithCancel(gctx)
		d.startPhones(pctx, log)
	}
	d.Took = time.Since(start)
	return d, nil
}

// config builds the gateway's configuration and returns it as config.Parse
// returns the equivalent file: every default filled, validated.
func (d *Demo) config(listen map[string]string, logFormat string, copyRate float64) (*config.Config, error) {
	if logFormat == "" {
		logFormat = "text"
	}
	str := func(s string) *string { return &s }
	c := &config.Config{
		Server: config.Server{
			Hostname:       "localhost",
			IMAPS:          str(listen["imaps"]),
			IMAP:           str(listen["imap"]),
			SMTPS:          str(listen["smtps"]),
			Submission:     str(listen["submission"]),
			Admin:          str(listen["admin"]),
			ShutdownGrace:  config.Duration(5 * time.Second),
			MaxMessageSize: config.DefaultMaxMessageSize,
		},
		TLS:       config.TLS{SelfSigned: true},
		Store:     config.Store{Path: filepath.Join(d.Dir, "store")},
		Providers: d.providerConfigs(copyRate),
		Domains: map[string]*config.Domain{
			Domain: {Name: Domain, Old: OldProvider, New: NewProvider, State: config.StateOld},
		},
		Admin: config.Admin{TokenFile: d.TokenFile},
		Vault: config.Vault{KeyFile: d.vaultKeyFile},
		Log:   config.Log{Format: logFormat, Level: config.DefaultLogLevel},
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return nil, fmt.Errorf("demo configuration: %w", err)
	}
	parsed, err := config.Parse(buf.Bytes(), "demo")
	if err != nil {
		return nil, fmt.Errorf("demo configuration: %w", err)
	}
	return parsed, nil
}

// listenAddrs returns the gateway's listen addresses on 127.0.0.1: each
// listener's development port if it is free (tried by binding it), a random
// port when it is not or when random is set.
func listenAddrs(random bool) map[string]string {
	addrs := make(map[string]string, len(listenerNames))
	for _, name := range listenerNames {
		addrs[name] = "127.0.0.1:0"
		if random {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(DevPorts[name]))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			addrs[name] = addr
		}
	}
	return addrs
}

// Close stops the gateway, then the providers, and removes Dir if Start
// created it. It is safe to call on a partly started Demo, and more than
// once (later calls return the first result).
func (d *Demo) Close() error {
	d.closeOnce.Do(func() {
		if d.stopPhones != nil {
			d.stopPhones()
		}
		d.phones.Wait()
		if d.gw != nil && d.gw.Stop != nil {
			d.gw.Stop()
		}
		if d.cancel != nil {
			d.cancel()
		}
		var errs []error
		for _, p := range []*Provider{d.Old, d.New} {
			if p != nil {
				errs = append(errs, p.Close())
			}
		}
		if d.removeDir {
			errs = append(errs, os.RemoveAll(d.Dir))
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// Failed delivers an error if a gateway listener stops serving.
func (d *Demo) Failed() <-chan error { return d.gw.Failed }

// Run starts the demo, prints how to use it to out, and serves until ctx
// ends or a gateway listener fails; then it stops everything.
func Run(ctx context.Context, opts Options, out io.Writer) (err error) {
	d, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.Close(); err == nil {
			err = cerr
		}
	}()
	if err := d.WriteInfo(out); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-d.Failed():
		return err
	}
}

// hostPort returns the address clients should use for a gateway listener:
// "localhost:PORT", the name its certificate carries.
func (d *Demo) hostPort(listener string) string {
	_, port, err := net.SplitHostPort(d.Addrs[listener])
	if err != nil {
		return d.Addrs[listener]
	}
	return net.JoinHostPort("localhost", port)
}

// WriteInfo prints the gateway's addresses, the users and their passwords,
// the files and commands to try.
func (d *Demo) WriteInfo(out io.Writer) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	stop := "Ctrl-C stops it."
	if d.removeDir {
		stop = "Ctrl-C stops it and deletes " + d.Dir + "."
	}
	p("pecgate demo: ready in %s. %s", d.Took.Round(time.Millisecond), stop)
	p("")
	p("Gateway (host name localhost; clients must trust its certificate %s):", d.CertFile)
	what := map[string]string{
		"imaps":      "IMAP, implicit TLS",
		"imap":       "IMAP, STARTTLS",
		"smtps":      "submission, implicit TLS",
		"submission": "submission, STARTTLS",
		"admin":      "status page, member page (/me) and admin API, plain HTTP on loopback",
	}
	for _, name := range listenerNames {
		if d.Addrs[name] != "" {
			p("  %-11s %-16s %s", name, d.hostPort(name), what[name])
		}
	}
	p("")
	p("Domain %s is in state %q: provider %q serves it, %q is the next one.", Domain, config.StateOld, OldProvider, NewProvider)
	p("Log in with the address and the password of the %q provider:", OldProvider)
	for _, u := range Users {
		p("  %-34s %s", u.Address, u.OldPassword)
	}
	p("")
	p("Providers (in-process go-imap and go-smtp servers; their CA is %s):", d.Old.CAFile)
	from := "from " + d.FixturesFrom
	if d.FixturesFrom == "embedded" {
		from = "built-in copy of the fixtures"
	}
	p("  %-4s imaps://%s  smtps://%s  %d PEC messages per user (%s), %s; and %d receipts in %q",
		OldProvider, d.Old.IMAPAddr, d.Old.SMTPAddr, len(d.Fixtures), folderCounts(d.Fixtures), from, ArchiveSize, ArchiveFolder)
	var newPasswords, noVault []string
	for _, u := range Users {
		newPasswords = append(newPasswords, u.NewPassword)
		if u.NoVault {
			noVault = append(noVault, u.Address)
		}
	}
	p("  %-4s imaps://%s  smtps://%s  empty; passwords %s",
		NewProvider, d.New.IMAPAddr, d.New.SMTPAddr, strings.Join(newPasswords, ", "))
	p("       The gateway logs in to %q with vault credentials, imported for every member but %s.", NewProvider, strings.Join(noVault, ", "))
	p("")
	d.writeStory(p)

	first, second := Users[0], Users[1]
	curl := "curl --cacert " + shellQuote(d.CertFile) + " --user " + shellQuote(first.Address+":"+first.OldPassword)
	imaps := "imaps://" + d.hostPort("imaps")
	p("Try:")
	if d.Addrs["imaps"] != "" {
		p("  # list the folders")
		p("  %s %s/", curl, imaps)
		p("  # flags, dates and sizes of the messages in INBOX")
		p("  %s -X 'FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)' %s/INBOX", curl, imaps)
		p("  # read the message with UID 1 of INBOX")
		p("  %s '%s/INBOX/;UID=1'", curl, imaps)
		if f, folder, uid := largestFixture(d.Fixtures); f != nil {
			p("  # the %.1f MB %s in %s, byte for byte: SHA-256 %s", float64(len(f.Body))/1e6, f.File, folder, f.SHA256)
			p("  %s '%s/%s/;UID=%d' | sha256sum", curl, imaps, mailboxURLPath(folder), uid)
		}
	}
	if d.Addrs["smtps"] != "" && d.Addrs["imaps"] != "" {
		inbox := 0
		for _, f := range d.Fixtures {
			if f.Folder == MailboxInbox {
				inbox++
			}
		}
		p("  # send %s to %s, then read it as %s (UID %d of INBOX)", SampleMessageFile, second.Address, second.Address, inbox+1)
		p("  %s --mail-from %s --mail-rcpt %s --upload-file %s smtps://%s",
			curl, first.Address, second.Address, shellQuote(d.SampleFile), d.hostPort("smtps"))
		p("  curl --cacert %s --user %s '%s/INBOX/;UID=%d'",
			shellQuote(d.CertFile), shellQuote(second.Address+":"+second.OldPassword), imaps, inbox+1)
	}
	if d.Addrs["imaps"] != "" {
		p("  # speak IMAP yourself (a1 LOGIN %s %s)", first.Address, first.OldPassword)
		p("  openssl s_client -quiet -CAfile %s -connect %s", shellQuote(d.CertFile), d.hostPort("imaps"))
	}
	p("")
	p("Mail clients: server localhost; IMAP port %s with SSL/TLS (or %s with STARTTLS); SMTP port %s with SSL/TLS (or %s with STARTTLS);",
		port(d.Addrs["imaps"]), port(d.Addrs["imap"]), port(d.Addrs["smtps"]), port(d.Addrs["submission"]))
	p("normal password; user name = the address; accept or import the certificate %s.", d.CertFile)
	_, err := io.WriteString(out, b.String())
	return err
}

// largestFixture returns the biggest fixture, its folder and its UID there
// (its place among the folder's fixtures, counting from 1), or nil.
func largestFixture(fx []Fixture) (f *Fixture, folder string, uid int) {
	n := map[string]int{}
	for i := range fx {
		n[fx[i].Folder]++
		if f == nil || len(fx[i].Body) > len(f.Body) {
			f, folder, uid = &fx[i], fx[i].Folder, n[fx[i].Folder]
		}
	}
	return f, folder, uid
}

// mailboxURLPath writes a mailbox name as an IMAP URL path (RFC 5092): each
// level in modified UTF-7 (RFC 3501 section 5.1.3), then percent-encoded.
func mailboxURLPath(name string) string {
	levels := strings.Split(name, "/")
	for i, l := range levels {
		levels[i] = url.PathEscape(mutf7.Encode(l))
	}
	return strings.Join(levels, "/")
}

// folderCounts says how many fixtures go to each folder, in order of first
// appearance: "INBOX 10, Pratiche/Città 3, Posta inviata 1".
func folderCounts(fx []Fixture) string {
	var order []string
	n := map[string]int{}
	for _, f := range fx {
		if n[f.Folder] == 0 {
			order = append(order, f.Folder)
		}
		n[f.Folder]++
	}
	parts := make([]string, len(order))
	for i, f := range order {
		parts[i] = fmt.Sprintf("%s %d", f, n[f])
	}
	return strings.Join(parts, ", ")
}

func port(addr string) string {
	if addr == "" {
		return "-"
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return p
}

// shellQuote quotes s for a POSIX shell when it holds anything but safe
// characters.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// SampleMessage returns a short plain-text message from the first user to
// the second, dated now, with CRLF line ends.
func SampleMessage(now time.Time) []byte {
	lines := []string{
		"From: Giulia Verdi <" + Users[0].Address + ">",
		"To: Mario Rossi <" + Users[1].Address + ">",
		"Subject: Prova pecgate demo",
		"Date: " + now.Format(time.RFC1123Z),
		"Message-ID: <demo." + strconv.FormatInt(now.UnixNano(), 36) + "@" + Domain + ">",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=utf-8",
		"Content-Transfer-Encoding: 8bit",
		"",
		"Ciao Mario,",
		"questo messaggio è passato per pecgate.",
		"",
		"Giulia",
	}
	return []byte(strings.Join(lines, "\r\n") + "\r\n")
}
