// Package dovetest starts real Dovecot 2.3 servers on loopback as the "old"
// and "new" mail providers of pecgate's integration tests (STYLE rule 12),
// each with its own generated config, passwd-file, Maildirs, test CA, master
// user and a Go SMTP submission endpoint that delivers into that Dovecot.
//
// A Server is a provider as a client sees it: IMAPS (implicit TLS) and IMAP
// with STARTTLS (plaintext auth disabled) on loopback, SMTP submission with
// implicit TLS and with STARTTLS, the INBOX namespace with special-use
// mailboxes, and passwords of its own: StartPair gives the same addresses
// different passwords on old and new, as a real migration has.
//
// Invariants and implementation notes:
//   - Every instance lives in one os.MkdirTemp directory (never t.TempDir,
//     which is always deleted): config, passwd-files, TLS files, base_dir
//     (run/), state_dir (state/), Maildirs (mail/ADDR/Maildir), dovecot.log,
//     dovecot.out (the master's stdout/stderr) and submission.log. It is
//     removed when the test passes and kept, its path and log tails printed,
//     when it fails.
//   - Mail is Maildir++ (mail_location = maildir:~/Maildir): folders are
//     directories .A.B directly under the Maildir, named in modified UTF-7
//     (RFC 3501 section 5.1.3), which is what Dovecot 2.3 writes for
//     maildir without the :UTF-8 option. The IMAP hierarchy delimiter is
//     Options.Delimiter ("." by default, like Dovecot's maildir default; "/"
//     also works, and on disk the separator stays ".").
//   - Dovecot runs in the foreground (dovecot -F) as our child, in a
//     process group of its own, so the test owns every process it starts and
//     Kill can end them all at once.
//   - Bytes are stored exactly. Dovecot: with its default mail_save_crlf =
//     no, a saved "a\r\nb\r\n" is "a\nb\n" on disk (CRs added back when
//     serving); mail_save_crlf = yes keeps CRLF messages byte for byte and
//     stores a bare LF as CRLF, which is what IMAP serves anyway.
//   - Facts found by running Dovecot 2.3.19 are written as comments where
//     they are used, each starting "Dovecot:".
//
// If the test binary dies (a go test -timeout panic), its Dovecots live on:
// their process titles start with "dovecot-pecgate-" and their directories
// stay in TMPDIR. Nothing here is for production: passwords are {PLAIN},
// files are world readable, fsync is off.
package dovetest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// User is one mailbox account. Its login is the full address.
type User struct {
	Address  string
	Password string
	// Extra are passdb extra fields for this user, space-separated
	// (Dovecot's passwd-file 8th field), e.g. "nologin reason=..." to
	// refuse the login with that text whatever the password. Empty means
	// none. It must not hold ':' or line breaks.
	Extra string
}

// Options configure one Dovecot instance. The zero value is a usable "test"
// provider with no users.
type Options struct {
	// Name is the provider's name, e.g. "old" or "new". It prefixes the
	// directory and becomes part of Dovecot's instance_name and greeting.
	// Empty means "test".
	Name string
	// Users are the accounts. An empty Password is replaced by a random one.
	// Addresses must not contain ':', '*', '/' or white space.
	Users []User
	// MasterUser logs in as any user with LOGIN "user*master" and
	// MasterPassword. Empty means "master"; an empty MasterPassword means a
	// random one.
	MasterUser, MasterPassword string
	// QuotaBytes is each user's storage quota in bytes, enforced by Dovecot's
	// quota plugin (maildir backend) and visible through the QUOTA
	// capability (imap_quota). Zero or negative means no quota plugin.
	QuotaBytes int64
	// MaxUserIPConnections is mail_max_userip_connections: how many IMAP
	// sessions one user may have from one IP. Zero or negative means 100
	// (Dovecot's own default, 10, is too low for parallel tests).
	MaxUserIPConnections int
	// Delimiter is the IMAP hierarchy delimiter: "." or "/". Empty means
	// ".". On disk the Maildir++ separator is "." either way, so with "/"
	// a mailbox name may not contain ".".
	Delimiter string
	// SpecialUse maps a special-use attribute (RFC 6154, e.g. `\Sent`) to
	// the mailbox that carries it; each is auto-created and subscribed. Nil
	// means DefaultSpecialUse. An empty non-nil map means none.
	SpecialUse map[string]string
	// Layout is the Maildir folder layout: "" for Maildir++ (folders are
	// .A.B directories; "." is the separator on disk, so with Delimiter "/"
	// a name may not hold ".") or LayoutFS (folders are nested A/B
	// directories, names may hold "."; Delimiter must be "/"). SeedMaildir
	// supports only Maildir++; use CreateMailbox and Deliver with LayoutFS.
	Layout string
}

// LayoutFS is Options.Layout for Dovecot's LAYOUT=fs: one directory per
// hierarchy level, so a folder name may contain "." (as on providers whose
// names carry dates like "Fatture 2023.01").
const LayoutFS = "fs"

// DefaultSpecialUse is the special-use mailboxes a server gets when
// Options.SpecialUse is nil.
var DefaultSpecialUse = map[string]string{
	`\Sent`:   "Sent",
	`\Drafts`: "Drafts",
	`\Trash`:  "Trash",
	`\Junk`:   "Junk",
}

// DefaultSubmissionMaxSize is the SIZE the submission endpoint advertises and
// enforces: 100 MiB.
const DefaultSubmissionMaxSize int64 = 100 << 20

// Server is one running Dovecot instance and its submission endpoint. Its
// exported fields are set by Start and must not be changed.
type Server struct {
	// Name is Options.Name ("test" if that was empty).
	Name string
	// Dir holds everything of this instance (see the package doc).
	Dir string
	// IMAPSAddr is 127.0.0.1:port with implicit TLS.
	IMAPSAddr string
	// IMAPAddr is 127.0.0.2:port with STARTTLS; LOGIN and AUTHENTICATE are
	// refused before STARTTLS (LOGINDISABLED).
	//
	// Dovecot: 2.3 treats a connection whose remote IP equals its local IP
	// as secured, so from 127.0.0.1 to 127.0.0.1 it allows plaintext LOGIN
	// despite disable_plaintext_auth and ssl = required. A client connecting
	// to 127.0.0.2 gets 127.0.0.1 as its source address on Linux, which
	// makes Dovecot enforce STARTTLS.
	IMAPAddr string
	// SubmissionAddr is 127.0.0.1:port of SMTP submission with implicit TLS.
	SubmissionAddr string
	// SubmissionStartTLSAddr is 127.0.0.1:port of SMTP submission with
	// STARTTLS; AUTH is offered only after STARTTLS.
	SubmissionStartTLSAddr string
	// SubmissionMaxSize is the advertised and enforced SIZE in bytes.
	SubmissionMaxSize int64
	// CAFile is the PEM file of this server's own test CA, which signed the
	// certificate of every listener above (SANs 127.0.0.1, 127.0.0.2, ::1,
	// localhost).
	CAFile string
	// Users are the accounts as given, with their passwords filled in.
	Users []User
	// MasterUser and MasterPassword log in as any user: "user*MasterUser".
	MasterUser, MasterPassword string
	// Delimiter is the IMAP hierarchy delimiter, "." or "/".
	Delimiter string
	// SpecialUse is the special-use attribute to mailbox name map in effect.
	SpecialUse map[string]string
	// QuotaBytes is the per-user quota, 0 if none.
	QuotaBytes int64
	// Layout is Options.Layout: "" (Maildir++) or LayoutFS.
	Layout string
	// Greeting is the text of the IMAP greeting, unique to this instance.
	Greeting string
	// ConfigPath, LogPath and LMTPSocket locate Dovecot's config, its log
	// and its LMTP unix socket (for go-smtp's NewClientLMTP).
	//
	// Dovecot: LMTP delivery prepends Return-Path, Delivered-To and a
	// Received header, so it is not byte-identical; Deliver and the
	// submission endpoint use doveadm save, which is.
	ConfigPath, LogPath, LMTPSocket string

	pki                    *testPKI
	dovecotBin, doveadmBin string
	mail                   mailOwner
	passwords              map[string]string // lower-cased address -> password
	imapPort, imapsPort    int
	maxConns               int
	subLog                 *os.File

	mu   sync.Mutex // guards proc and sub: Start/Stop/Kill/Restart
	proc *process
	sub  *submission

	subsMu   sync.Mutex
	subs     []Submission
	aborted  int
	subsCond chan struct{} // closed and replaced whenever subs or aborted change
}

// Timeouts. readyTimeout bounds how long a Dovecot start may take to answer
// with its greeting (a cold start answers in well under a second here; CI
// machines are slower), stopTimeout how long a graceful stop may take before
// the process group is killed.
const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
	startTries   = 5
)

// Require skips the test when Dovecot is not installed, saying how to
// install it, or fails it when the environment variable CI is "true": CI
// must not silently skip the integration tests (DESIGN.md, Testing).
func Require(t testing.TB) {
	t.Helper()
	if _, err := binaries(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("dovetest: %v; CI=true, so Dovecot must be installed (apt-get install dovecot-imapd dovecot-lmtpd)", err)
		}
		t.Skip("dovecot not installed: apt-get install dovecot-imapd dovecot-lmtpd")
	}
}

// binaries finds dovecot and doveadm. Debian installs dovecot in /usr/sbin,
// which is not on every non-root PATH.
var binaries = sync.OnceValues(func() (bins [2]string, err error) {
	for i, name := range []string{"dovecot", "doveadm"} {
		p, lerr := exec.LookPath(name)
		if lerr != nil {
			for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/bin"} {
				if st, serr := os.Stat(filepath.Join(dir, name)); serr == nil && st.Mode()&0o111 != 0 {
					p, lerr = filepath.Join(dir, name), nil
					break
				}
			}
		}
		if lerr != nil {
			return bins, fmt.Errorf("%s not found in PATH, /usr/sbin or /usr/local/sbin", name)
		}
		bins[i] = p
	}
	return bins, nil
})

// StartPair starts the "old" and "new" providers with the same addresses
// and different random passwords on each side.
func StartPair(t testing.TB, users ...string) (old, new *Server) {
	t.Helper()
	mk := func() []User {
		us := make([]User, len(users))
		for i, a := range users {
			us[i] = User{Address: a} // Start fills in a fresh random password
		}
		return us
	}
	old = Start(t, Options{Name: "old", Users: mk()})
	new = Start(t, Options{Name: "new", Users: mk()})
	return old, new
}

// Start starts a Dovecot instance and its submission endpoint and registers
// a cleanup that stops them, then deletes Dir if the test passed or keeps it
// and logs the tails of its logs if the test failed. It calls Require first.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	Require(t)
	bins, _ := binaries()

	s := &Server{
		Name:              opts.Name,
		MasterUser:        opts.MasterUser,
		MasterPassword:    opts.MasterPassword,
		Delimiter:         opts.Delimiter,
		SpecialUse:        opts.SpecialUse,
		QuotaBytes:        max(opts.QuotaBytes, 0),
		Layout:            opts.Layout,
		SubmissionMaxSize: DefaultSubmissionMaxSize,
		dovecotBin:        bins[0],
		doveadmBin:        bins[1],
		passwords:         map[string]string{},
		subsCond:          make(chan struct{}),
	}
	if s.Name == "" {
		s.Name = "test"
	}
	if s.MasterUser == "" {
		s.MasterUser = "master"
	}
	if s.MasterPassword == "" {
		s.MasterPassword = randomPassword()
	}
	if s.Delimiter == "" {
		s.Delimiter = "."
	}
	if s.SpecialUse == nil {
		s.SpecialUse = DefaultSpecialUse
	}
	s.SpecialUse = maps.Clone(s.SpecialUse)
	maxConns := opts.MaxUserIPConnections
	if maxConns <= 0 {
		maxConns = 100
	}
	if err := s.checkOptions(opts); err != nil {
		t.Fatalf("dovetest: %s: %v", s.Name, err)
	}
	for _, u := range opts.Users {
		if u.Password == "" {
			u.Password = randomPassword()
		}
		s.Users = append(s.Users, u)
		s.passwords[strings.ToLower(u.Address)] = u.Password
	}

	dir, err := os.MkdirTemp("", "pecgate-"+s.Name+"-")
	if err != nil {
		t.Fatalf("dovetest: %v", err)
	}
	s.Dir = dir
	t.Cleanup(func() { s.cleanup(t) })
	if err := s.setup(maxConns); err != nil {
		t.Fatalf("dovetest: %s: %v", s.Name, err)
	}
	if err := s.start(true); err != nil {
		t.Fatalf("dovetest: %s: %v", s.Name, err)
	}
	return s
}

func (s *Server) checkOptions(opts Options) error {
	if s.Delimiter != "." && s.Delimiter != "/" {
		return fmt.Errorf("delimiter %q: want \".\" or \"/\"", s.Delimiter)
	}
	switch {
	case s.Layout != "" && s.Layout != LayoutFS:
		return fmt.Errorf("layout %q: want \"\" (Maildir++) or %q", s.Layout, LayoutFS)
	case s.Layout == LayoutFS && s.Delimiter != "/":
		// Dovecot: LAYOUT=fs keeps the levels as directories, and the
		// separator on disk is "/": a "." delimiter would be a second one.
		return fmt.Errorf("layout %q needs delimiter \"/\"", LayoutFS)
	}
	if strings.ContainsAny(s.Name, " \t\r\n/\"'\\") {
		return fmt.Errorf("name %q: no white space, quotes, slashes", s.Name)
	}
	if strings.ContainsAny(s.MasterUser, ": \t\r\n*") || strings.ContainsAny(s.MasterPassword, ": \t\r\n") {
		return fmt.Errorf("master user or password contains ':', '*' or white space")
	}
	seen := map[string]bool{}
	for _, u := range opts.Users {
		a := strings.ToLower(u.Address)
		if a == "" || strings.ContainsAny(a, ": \t\r\n*/\"\\") || a[0] == '.' {
			return fmt.Errorf("user %q: address must be non-empty, without ':', '*', '/', quotes or white space", u.Address)
		}
		if strings.ContainsAny(u.Password, ":\r\n") {
			return fmt.Errorf("user %q: password must not contain ':' or line breaks", u.Address)
		}
		if strings.ContainsAny(u.Extra, ":\r\n") {
			return fmt.Errorf("user %q: extra fields must not contain ':' or line breaks", u.Address)
		}
		if seen[a] {
			return fmt.Errorf("user %q listed twice", u.Address)
		}
		seen[a] = true
	}
	for attr, name := range s.SpecialUse {
		if !strings.HasPrefix(attr, `\`) || name == "" || strings.ContainsAny(name, "\"\\\r\n") {
			return fmt.Errorf("special use %q = %q: want `\\Attr` = name without quotes or backslashes", attr, name)
		}
	}
	return nil
}

// setup writes everything Dovecot needs except the config, which depends
// on the ports.
func (s *Server) setup(maxConns int) error {
	// Dovecot's auth process reads the passwd-files as the dovecot user and
	// the imap processes run as the mail user: both need to traverse Dir,
	// which os.MkdirTemp creates 0700.
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return err
	}
	if strings.ContainsAny(s.Dir, " \t\"'\\#") {
		return fmt.Errorf("temporary directory %q: Dovecot config values cannot hold white space, quotes or '#' here; set TMPDIR", s.Dir)
	}
	var err error
	if s.mail, err = lookupMailOwner(); err != nil {
		return err
	}
	if s.pki, err = newTestPKI(s.Name); err != nil {
		return err
	}
	s.CAFile = filepath.Join(s.Dir, "tls", "ca.pem")
	s.ConfigPath = filepath.Join(s.Dir, "dovecot.conf")
	s.LogPath = filepath.Join(s.Dir, "dovecot.log")
	s.LMTPSocket = filepath.Join(s.Dir, "run", "lmtp")
	s.Greeting = "pecgate dovetest " + filepath.Base(s.Dir) + " ready"

	var users, masters strings.Builder
	for _, u := range s.Users {
		// passwd-file fields: user:password:uid:gid:gecos:home:shell:extra.
		// Dovecot: auth_username_format defaults to %Lu, so logins are
		// lower-cased before the lookup: the file holds lower case.
		fmt.Fprintf(&users, "%s:{PLAIN}%s:%d:%d::%s::%s\n", strings.ToLower(u.Address), u.Password, s.mail.uid, s.mail.gid, s.home(u.Address), u.Extra)
	}
	fmt.Fprintf(&masters, "%s:{PLAIN}%s\n", s.MasterUser, s.MasterPassword)

	for _, d := range []string{"tls", "run", "state"} {
		if err := os.Mkdir(filepath.Join(s.Dir, d), 0o755); err != nil {
			return err
		}
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"tls/ca.pem", s.pki.caPEM, 0o644},
		{"tls/server.pem", s.pki.certPEM, 0o644},
		{"tls/server.key", s.pki.keyPEM, 0o600}, // read by the config process, which runs as root or as us
		{"passwd", []byte(users.String()), 0o644},
		{"master-users", []byte(masters.String()), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	if err := os.Mkdir(filepath.Join(s.Dir, "mail"), 0o755); err != nil {
		return err
	}
	if err := s.mail.chown(filepath.Join(s.Dir, "mail")); err != nil {
		return err
	}
	s.maxConns = maxConns
	s.subLog, err = os.OpenFile(filepath.Join(s.Dir, "submission.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	return err
}

// start starts Dovecot and the submission endpoint. The first start picks
// the ports (retrying when another process took one in between); later
// starts (Restart) reuse them.
func (s *Server) start(first bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lastErr error
	for try := 0; try < startTries; try++ {
		if first {
			ports, err := freePorts(imapHost, imapsHost)
			if err != nil {
				return err
			}
			s.imapPort, s.imapsPort = ports[0], ports[1]
			s.IMAPAddr = net.JoinHostPort(imapHost, strconv.Itoa(s.imapPort))
			s.IMAPSAddr = net.JoinHostPort(imapsHost, strconv.Itoa(s.imapsPort))
			if err := os.WriteFile(s.ConfigPath, []byte(s.config()), 0o644); err != nil {
				return err
			}
		}
		// Dovecot: after a SIGKILL the master leaves run/master.pid behind;
		// a new master refuses to start only if that pid is alive, which a
		// recycled pid could be. Nothing else needs cleaning up.
		os.Remove(filepath.Join(s.Dir, "run", "master.pid"))

		logStart := fileSize(s.LogPath)
		outStart := fileSize(filepath.Join(s.Dir, "dovecot.out"))
		p, err := s.startDovecot()
		if err != nil {
			return err
		}
		if err = s.waitReady(p, outStart); err == nil {
			s.proc = p
			break
		}
		p.kill() // it failed to start: nothing to shut down gracefully
		lastErr = err
		// Dovecot: a taken port makes the master write "Error:
		// service(imap-login): listen(127.0.0.1, PORT) failed: Address
		// already in use" and "Fatal: Failed to start listeners" to stderr
		// and its log, then take ~2 s to exit (waitReady does not wait).
		news := readFrom(s.LogPath, logStart) + readFrom(filepath.Join(s.Dir, "dovecot.out"), outStart)
		if !first || !strings.Contains(news, "Address already in use") {
			return err
		}
	}
	if s.proc == nil {
		return fmt.Errorf("%d tries, ports always taken: %w", startTries, lastErr)
	}
	if err := s.startSubmission(); err != nil {
		return err
	}
	return nil
}

// config renders dovecot.conf in Dovecot 2.3 syntax (Debian 12 ships 2.3.19;
// 2.4 changed many setting names).
func (s *Server) config() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	d := s.Dir
	w("# Generated by internal/dovetest for the %q test provider. Dovecot 2.3 syntax.", s.Name)
	// Dovecot: several instances coexist on one machine with their own
	// base_dir (sockets, master.pid), state_dir (instance registry) and
	// instance_name (shown in process titles: dovecot-NAME/imap).
	w("instance_name = %s", filepath.Base(d))
	w("base_dir = %s/run", d)
	w("state_dir = %s/state", d)
	w("log_path = %s", s.LogPath)
	// Dovecot: lmtp needs the dovecot-lmtpd package; the service listens on
	// base_dir/lmtp.
	w("protocols = imap lmtp")
	w("listen = 127.0.0.1")
	w("login_greeting = %s", s.Greeting)
	w("ssl = required")
	w("ssl_cert = <%s/tls/server.pem", d)
	w("ssl_key = <%s/tls/server.key", d)
	w("disable_plaintext_auth = yes")
	w("auth_mechanisms = plain login")
	// Dovecot: a failed login is delayed by auth_failure_delay (2 s) and by
	// anvil's auth penalty (2 s, doubling per failure from one IP, up to
	// 15 s); both are off here (the penalty below), or failure tests crawl.
	// 2.3.19 still answers a failure at the next tick of a 500 ms timer
	// (auth_failure_delay = 0 skips the delay, not the timer; later releases
	// answer at once): each failed login costs up to 0.5 s.
	w("auth_failure_delay = 0")
	w("auth_verbose = yes")
	w("auth_master_user_separator = *")
	if s.Layout == LayoutFS {
		w("mail_location = maildir:~/Maildir:LAYOUT=fs")
	} else {
		w("mail_location = maildir:~/Maildir")
	}
	w("mail_uid = %d", s.mail.uid)
	w("mail_gid = %d", s.mail.gid)
	w("first_valid_uid = %d", s.mail.uid)
	w("first_valid_gid = %d", s.mail.gid)
	w("mail_save_crlf = yes")
	// Durability is no concern in a test, and fsync dominates save time.
	w("mail_fsync = never")
	if !s.mail.root {
		// Dovecot: as non-root it cannot switch users or chroot: run every
		// service as the current user, without chroot (checked as an
		// unprivileged user: the whole test suite passes).
		w("default_internal_user = %s", s.mail.user)
		w("default_internal_group = %s", s.mail.group)
		w("default_login_user = %s", s.mail.user)
	}
	if s.QuotaBytes > 0 {
		w("mail_plugins = $mail_plugins quota")
		w("plugin {")
		w("  quota = maildir:User quota")
		// Dovecot: storage= takes a unit suffix; "B" is bytes.
		w("  quota_rule = *:storage=%dB", s.QuotaBytes)
		w("}")
	}
	w("protocol imap {")
	w("  mail_max_userip_connections = %d", s.maxConns)
	if s.QuotaBytes > 0 {
		w("  mail_plugins = $mail_plugins imap_quota")
	}
	w("}")
	// Dovecot: the master passdb comes first; "pass = yes" then checks that
	// the target user exists in the next passdb (without its password).
	w("passdb {")
	w("  driver = passwd-file")
	w("  args = scheme=PLAIN username_format=%%n %s/master-users", d)
	w("  master = yes")
	w("  pass = yes")
	w("}")
	w("passdb {")
	w("  driver = passwd-file")
	w("  args = scheme=PLAIN username_format=%%u %s/passwd", d)
	w("}")
	w("userdb {")
	w("  driver = passwd-file")
	w("  args = username_format=%%u %s/passwd", d)
	w("}")
	w("namespace inbox {")
	w("  inbox = yes")
	w("  prefix =")
	w("  separator = %s", s.Delimiter)
	for _, attr := range sortedKeys(s.SpecialUse) {
		// Dovecot: auto = subscribe creates the mailbox at first access and
		// subscribes it; LIST then shows the attribute.
		w("  mailbox \"%s\" {", s.SpecialUse[attr])
		w("    special_use = %s", attr)
		w("    auto = subscribe")
		w("  }")
	}
	w("}")
	w("service imap-login {")
	w("  inet_listener imap {")
	w("    address = %s", imapHost)
	w("    port = %d", s.imapPort)
	w("  }")
	w("  inet_listener imaps {")
	w("    address = %s", imapsHost)
	w("    port = %d", s.imapsPort)
	w("    ssl = yes")
	w("  }")
	if !s.mail.root {
		w("  chroot =")
	}
	w("}")
	w("service anvil {")
	// Dovecot: login processes ask anvil for the auth penalty over this
	// socket; mode 0 makes it unusable, which disables the penalty.
	w("  unix_listener anvil-auth-penalty {")
	w("    mode = 0")
	w("  }")
	if !s.mail.root {
		w("  chroot =")
	}
	w("}")
	if !s.mail.root {
		w("service ipc {")
		w("  chroot =")
		w("}")
	}
	return b.String()
}

func (s *Server) home(addr string) string {
	return filepath.Join(s.Dir, "mail", strings.ToLower(addr))
}

// MaildirPath is the Maildir of addr: INBOX's cur/new/tmp and the .Folder
// directories. It may not exist before the first delivery or login.
func (s *Server) MaildirPath(addr string) string {
	return filepath.Join(s.home(addr), "Maildir")
}

// Password is addr's password on this server, or "" if addr is no user here.
func (s *Server) Password(addr string) string {
	return s.passwords[strings.ToLower(addr)]
}

// MailboxName turns a "/"-separated folder path, as in the fixtures'
// manifest, into this server's mailbox name.
func (s *Server) MailboxName(folder string) string {
	return strings.ReplaceAll(folder, "/", s.Delimiter)
}

// TLSConfig returns a new client config that trusts only this server's CA.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.pki.pool, MinVersion: tls.VersionTLS12}
}

// Dial returns an imapclient logged in as addr over IMAPS, for test
// assertions. It is closed when the test ends.
func (s *Server) Dial(t testing.TB, addr string) *imapclient.Client {
	t.Helper()
	pw := s.Password(addr)
	if pw == "" {
		t.Fatalf("dovetest: %s: %q is not a user here", s.Name, addr)
	}
	c, err := imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
	if err != nil {
		t.Fatalf("dovetest: %s: dial %s: %v", s.Name, s.IMAPSAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(addr, pw).Wait(); err != nil {
		t.Fatalf("dovetest: %s: login %s: %v", s.Name, addr, err)
	}
	return c
}

// Doveadm runs `doveadm -c CONFIG args...` and returns its stdout; the test
// fails if doveadm does. Most commands need the server running.
func (s *Server) Doveadm(t testing.TB, args ...string) []byte {
	t.Helper()
	out, err := s.doveadm(nil, args...)
	if err != nil {
		t.Fatalf("dovetest: %s: %v", s.Name, err)
	}
	return out
}

func (s *Server) doveadm(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command(s.doveadmBin, append([]string{"-c", s.ConfigPath}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("doveadm %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// Deliver stores msg in addr's mailbox as a provider's delivery agent
// would, with `doveadm save -u ADDR -m MAILBOX`: a new message with no
// flags (\Recent), INTERNALDATE now, bytes as given (CRLF kept; see the
// package doc). The mailbox must exist.
func (s *Server) Deliver(t testing.TB, addr, mailbox string, msg []byte) {
	t.Helper()
	if err := s.save(addr, mailbox, msg); err != nil {
		t.Fatalf("dovetest: %s: %v", s.Name, err)
	}
}

// CreateMailbox creates mailbox for addr with `doveadm mailbox create`, as
// the user's client would with CREATE: Dovecot applies the same name rules
// (the mailbox name uses this server's Delimiter). It works with every
// Layout.
func (s *Server) CreateMailbox(t testing.TB, addr, mailbox string) {
	t.Helper()
	if _, err := s.doveadm(nil, "mailbox", "create", "-u", addr, mailbox); err != nil {
		t.Fatalf("dovetest: %s: %v", s.Name, err)
	}
}

func (s *Server) save(addr, mailbox string, msg []byte) error {
	// Dovecot: doveadm save exits 67 for an unknown user ("User doesn't
	// exist") and 68 for a missing mailbox ("Mailbox doesn't exist").
	_, err := s.doveadm(msg, "save", "-u", addr, "-m", mailbox)
	return err
}

// Stop stops Dovecot gracefully and closes the submission endpoint: SIGTERM
// to the master, which shuts down cleanly and exits after about a second
// (see cleanup), then SIGKILL to whatever it left. It is idempotent and
// safe after Kill; Restart starts the server again.
//
// Dovecot: the imap processes and the imap-login processes proxying their
// TLS outlive the master and go on serving established sessions, although
// shutdown_clients = yes (seen with 2.3.19: a session stayed usable after
// the master had exited). So sessions end when Stop kills those: the
// connection is reset, with no BYE.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopSubmission()
	if s.proc != nil {
		s.proc.stop()
		s.proc = nil
	}
}

// Kill makes the provider die as a crashed one would: SIGKILL to the
// Dovecot master and every process it started (its process group), and an
// abrupt close of the submission listeners and connections. Established
// IMAP connections are reset.
//
// Dovecot: killing only the master is not enough: the imap processes keep
// serving their sessions and the imap-login processes keep the listening
// sockets, so clients would notice nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopSubmission()
	if s.proc != nil {
		s.proc.kill()
		s.proc = nil
	}
}

// Restart starts the server again after Stop or Kill (stopping it first if
// it runs) on the same addresses, with the same users and mail.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(false); err != nil {
		t.Fatalf("dovetest: %s: restart: %v", s.Name, err)
	}
}

func (s *Server) cleanup(t testing.TB) {
	// Dovecot: a graceful stop takes a second whatever the load: the master
	// SIGQUITs its log process and then sleeps one second before exiting
	// (seen with strace). A passed test's directory is deleted anyway, so
	// it is killed; a failed test's is stopped gracefully so its log ends
	// complete.
	if t.Failed() {
		s.Stop()
	} else {
		s.Kill()
	}
	if s.subLog != nil {
		s.subLog.Close()
	}
	if t.Failed() {
		t.Logf("dovetest: %s: test failed, kept %s", s.Name, s.Dir)
		for _, f := range []string{s.LogPath, filepath.Join(s.Dir, "dovecot.out"), filepath.Join(s.Dir, "submission.log")} {
			if tail := tailFile(f, 40); tail != "" {
				t.Logf("dovetest: %s: tail of %s:\n%s", s.Name, f, tail)
			}
		}
		return
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		t.Logf("dovetest: %s: remove %s: %v", s.Name, s.Dir, err)
	}
}

// process is one Dovecot master running in the foreground (-F) as the
// leader of its own process group.
type process struct {
	cmd    *exec.Cmd
	pid    int
	exited chan struct{} // closed once the master is reaped
	err    error         // cmd.Wait's result, set before exited closes

	mu     sync.Mutex // orders signals against reaping
	reaped bool
}

func (s *Server) startDovecot() (*process, error) {
	out, err := os.OpenFile(filepath.Join(s.Dir, "dovecot.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(s.dovecotBin, "-F", "-c", s.ConfigPath)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = s.Dir
	// Dovecot: with -F the master neither forks nor calls setsid, so it and
	// all its children stay in the process group we give it here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.dovecotBin, err)
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go p.wait()
	return p, nil
}

func (p *process) signal(sig syscall.Signal, group bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return
	}
	pid := p.pid
	if group {
		pid = -pid
	}
	syscall.Kill(pid, sig)
}

// stop asks the master to shut down and kills the group if it takes longer
// than stopTimeout.
func (p *process) stop() {
	p.signal(syscall.SIGTERM, false)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		p.kill()
	}
}

func (p *process) kill() {
	p.signal(syscall.SIGKILL, true)
	<-p.exited
}

// waitReady polls the IMAPS port until it greets with this instance's
// greeting, the master exits or writes a Fatal line to dovecot.out past
// outStart, or readyTimeout passes.
func (s *Server) waitReady(p *process, outStart int64) error {
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	// A probe can hang on a port someone else holds (a taken port is what
	// makes Dovecot fail), so its timeout starts short and doubles.
	timeout := 200 * time.Millisecond
	for {
		probeDeadline := time.Now().Add(timeout)
		if probeDeadline.After(deadline) {
			probeDeadline = deadline
		}
		err := s.probe(probeDeadline)
		if err == nil {
			return nil
		}
		timeout = min(2*timeout, 5*time.Second)
		if time.Now().After(deadline) {
			return fmt.Errorf("no greeting on %s within %v: %w", s.IMAPSAddr, readyTimeout, err)
		}
		if out := readFrom(filepath.Join(s.Dir, "dovecot.out"), outStart); strings.Contains(out, "Fatal: ") {
			return fmt.Errorf("dovecot failed to start: %s", strings.TrimSpace(out))
		}
		select {
		case <-p.exited:
			return fmt.Errorf("dovecot exited during start (%v); see %s and dovecot.out", p.err, s.LogPath)
		case <-tick.C:
		}
	}
}

// probe connects to IMAPS and reads until the greeting.
//
// Dovecot: right after start the first connection may get
// "* OK Waiting for authentication process to respond.." before the real
// greeting, so the probe waits for the configured login_greeting. That also
// proves the port is this instance's and that auth is up.
func (s *Server) probe(deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	conn, err := tls.DialWithDialer(&d, "tcp", s.IMAPSAddr, s.TLSConfig())
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "* OK ") && strings.Contains(line, s.Greeting) {
			fmt.Fprintf(conn, "p LOGOUT\r\n")
			return nil
		}
	}
}

// Listener hosts; see IMAPAddr for why STARTTLS is on 127.0.0.2.
const (
	imapHost  = "127.0.0.2"
	imapsHost = "127.0.0.1"
)

// freePorts returns a port for each host, free at the time of the call.
// Dovecot cannot listen on port 0, so the ports are picked here and may be
// taken by someone else before Dovecot binds them: start retries then.
var freePorts = func(hosts ...string) ([]int, error) {
	var ports []int
	for _, h := range hosts {
		l, err := net.Listen("tcp", net.JoinHostPort(h, "0"))
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// mailOwner is the system user that owns the Maildirs and runs the imap
// processes.
type mailOwner struct {
	root        bool // we run as root; Dovecot drops privileges
	uid, gid    int
	user, group string
}

func (m mailOwner) chown(path string) error {
	if !m.root {
		return nil
	}
	return os.Lchown(path, m.uid, m.gid)
}

// lookupMailOwner returns the mail user: as root the system user "vmail",
// created with useradd if missing (Dovecot refuses to run mail processes as
// root: first_valid_uid); otherwise the current user.
var lookupMailOwner = sync.OnceValues(func() (mailOwner, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return mailOwner{}, err
		}
		g, err := user.LookupGroupId(u.Gid)
		if err != nil {
			return mailOwner{}, err
		}
		return ownerOf(u, g, false)
	}
	u, err := user.Lookup("vmail")
	if err != nil {
		// Another test binary may be creating it at the same moment: its
		// useradd fails (exit 9, "already exists") and the lookup decides.
		out, aerr := exec.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "vmail").CombinedOutput()
		if u, err = user.Lookup("vmail"); err != nil {
			return mailOwner{}, fmt.Errorf("running as root and no user vmail; useradd: %v: %s", aerr, out)
		}
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		return mailOwner{}, err
	}
	return ownerOf(u, g, true)
})

func ownerOf(u *user.User, g *user.Group, root bool) (mailOwner, error) {
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return mailOwner{}, err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return mailOwner{}, err
	}
	return mailOwner{root: root, uid: uid, gid: gid, user: u.Username, group: g.Name}, nil
}

func randomPassword() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func readFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || off > int64(len(b)) {
		return ""
	}
	return string(b[off:])
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}
