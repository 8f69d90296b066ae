package dovetest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/internal/mutf7"
)

func TestEncodeMUTF7(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"INBOX", "INBOX"},
		{"Città", "Citt&AOA-"},
		{"Posta inviata", "Posta inviata"},
		{"A&B", "A&-B"},
		{"日本語", "&ZeVnLIqe-"}, // RFC 3501 section 5.1.3
		{"台北", "&U,BTFw-"},    // ditto: ',' stands for '/'
		{"€uro", "&IKw-uro"},
		{"😀", "&2D3eAA-"}, // a surrogate pair
	} {
		if got := mutf7.Encode(tc.in); got != tc.want {
			t.Errorf("mutf7.Encode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// recordingTB stops like testing.T on Skip and Fatal and records which.
type recordingTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Skip(args ...any) {
	r.skipped, r.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.failed, r.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestRequire(t *testing.T) {
	real := binaries
	t.Cleanup(func() { binaries = real })
	binaries = func() ([2]string, error) { return [2]string{}, errors.New("dovecot not found") }
	for _, tc := range []struct {
		ci            string
		skip, fail    bool
		msgContaining string
	}{
		{"", true, false, "apt-get install dovecot-imapd dovecot-lmtpd"},
		{"false", true, false, "apt-get install"},
		{"true", false, true, "CI=true"},
	} {
		t.Setenv("CI", tc.ci)
		r := &recordingTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			Require(r)
		}()
		<-done
		if r.skipped != tc.skip || r.failed != tc.fail || !strings.Contains(r.msg, tc.msgContaining) {
			t.Errorf("CI=%q: skipped %v failed %v %q; want skipped %v failed %v, message with %q",
				tc.ci, r.skipped, r.failed, r.msg, tc.skip, tc.fail, tc.msgContaining)
		}
	}
}

func TestLoadFixtures(t *testing.T) {
	fs := LoadFixtures(t)
	if len(fs) != 14 {
		t.Fatalf("%d fixtures, want 14", len(fs))
	}
	f := fs[0]
	v := f.Variant(7)
	hdrEnd := bytes.Index(f.Body, []byte("\r\n\r\n"))
	vEnd := bytes.Index(v, []byte("\r\n\r\n"))
	if !bytes.Equal(f.Body[hdrEnd:], v[vEnd:]) {
		t.Error("Variant changed bytes after the outer header block")
	}
	if !bytes.HasPrefix(v, []byte("X-Fixture-Seq: 7\r\n")) {
		t.Errorf("Variant does not start with X-Fixture-Seq: %q", v[:40])
	}
	wantID := "Message-ID: <v7." + strings.TrimPrefix(f.MessageID, "<")
	if !bytes.Contains(v[:vEnd], []byte(wantID)) {
		t.Errorf("Variant head lacks %q", wantID)
	}
	if bytes.Equal(v, f.Variant(8)) {
		t.Error("Variant(7) == Variant(8)")
	}
	if f.InternalDate.IsZero() || f.Folder == "" {
		t.Errorf("manifest fields not parsed: %+v", f)
	}
}

// TestPair runs the checks that need no Dovecot of their own against one
// old/new pair; each subtest uses its own user so that none sees another's
// mail.
func TestPair(t *testing.T) {
	t0 := time.Now()
	old, new := StartPair(t, "alice@pec.vecchio.test", "bob@pec.vecchio.test",
		"carol@pec.vecchio.test", "erin@pec.vecchio.test")
	t.Logf("StartPair took %v", time.Since(t0))

	if old.Password("alice@pec.vecchio.test") == new.Password("alice@pec.vecchio.test") {
		t.Fatal("old and new have the same password for alice")
	}
	if old.CAFile == new.CAFile || old.IMAPSAddr == new.IMAPSAddr {
		t.Fatal("old and new share a CA file or an address")
	}

	t.Run("login", func(t *testing.T) { testLogin(t, old, new) })
	t.Run("master", func(t *testing.T) { testMaster(t, old) })
	t.Run("special-use", func(t *testing.T) { testSpecialUse(t, new) })
	t.Run("deliver", func(t *testing.T) { testDeliver(t, old) })
	t.Run("lmtp", func(t *testing.T) { testLMTP(t, new) })
	t.Run("submission", func(t *testing.T) { testSubmission(t, old, new) })
}

// TestStartRetriesTakenPort hands Start a port someone else holds: the
// master exits with "Address already in use" and Start tries new ports.
func TestStartRetriesTakenPort(t *testing.T) {
	held, err := net.Listen("tcp", imapsHost+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldPort := held.Addr().(*net.TCPAddr).Port
	real := freePorts
	t.Cleanup(func() { freePorts = real })
	calls := 0
	freePorts = func(hosts ...string) ([]int, error) {
		calls++
		ports, err := real(hosts...)
		if calls == 1 && err == nil {
			ports[1] = heldPort // the IMAPS port
		}
		return ports, err
	}
	s := Start(t, Options{Name: "retry", Users: []User{{Address: "ivo@pec.vecchio.test"}}})
	if calls < 2 {
		t.Fatalf("freePorts called %d times, want a retry", calls)
	}
	if s.IMAPSAddr == held.Addr().String() {
		t.Fatalf("IMAPSAddr %s is the held port", s.IMAPSAddr)
	}
	if !strings.Contains(tailFile(filepath.Join(s.Dir, "dovecot.out"), 20), "Address already in use") {
		t.Error("dovecot.out does not show the failed bind")
	}
	s.Dial(t, "ivo@pec.vecchio.test")
}

func testLogin(t *testing.T, old, new *Server) {
	const user = "alice@pec.vecchio.test"
	dial := map[string]func(s *Server) (*imapclient.Client, error){
		"imaps": func(s *Server) (*imapclient.Client, error) {
			return imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
		},
		"starttls": func(s *Server) (*imapclient.Client, error) {
			return imapclient.DialStartTLS(s.IMAPAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
		},
	}
	servers := []*Server{old, new}
	for _, mode := range []string{"imaps", "starttls"} {
		for i, s := range servers {
			other := servers[1-i]
			for _, tc := range []struct {
				name, password string
				ok             bool
			}{
				{"own password", s.Password(user), true},
				{"other side's password", other.Password(user), false},
			} {
				t.Run(mode+"/"+s.Name+"/"+tc.name, func(t *testing.T) {
					t.Parallel() // a failed login costs 0.5 s (see Server.config)
					c, err := dial[mode](s)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					err = c.Login(user, tc.password).Wait()
					if tc.ok && err != nil {
						t.Fatalf("login: %v", err)
					}
					if !tc.ok {
						var ierr *imap.Error
						if !errors.As(err, &ierr) || ierr.Code != imap.ResponseCodeAuthenticationFailed {
							t.Fatalf("login with the wrong password: %v, want NO [AUTHENTICATIONFAILED]", err)
						}
					}
				})
			}
		}
	}

	t.Run("no login before STARTTLS", func(t *testing.T) {
		c, err := imapclient.DialInsecure(old.IMAPAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		caps := c.Caps()
		if !caps.Has(imap.CapStartTLS) || !caps.Has(imap.CapLoginDisabled) {
			t.Errorf("plain-text capabilities %v lack STARTTLS or LOGINDISABLED", caps)
		}
		if err := c.Login(user, old.Password(user)).Wait(); err == nil {
			t.Error("LOGIN over plain text succeeded")
		}
	})

	t.Run("capabilities", func(t *testing.T) {
		c := old.Dial(t, user)
		caps := c.Caps()
		for _, want := range []imap.Cap{imap.CapUIDPlus, imap.CapMove, imap.CapIdle, imap.CapSpecialUse, imap.CapLiteralPlus, imap.CapBinary, imap.CapCondStore} {
			if !caps.Has(want) {
				t.Errorf("capability %s missing from %v", want, caps)
			}
		}
	})

	// Without the anvil penalty and with auth_failure_delay off, a failure
	// costs 0.5 s (Dovecot 2.3.19's failure flush timer); measured with the
	// penalty on, three took 9.5 s, with auth_failure_delay = 2s 5.5 s.
	t.Run("failures are not delayed", func(t *testing.T) {
		t.Parallel()
		t0 := time.Now()
		for range 3 {
			c, err := imapclient.DialTLS(old.IMAPSAddr, &imapclient.Options{TLSConfig: old.TLSConfig()})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Login(user, "wrong").Wait(); err == nil {
				t.Fatal("login with a wrong password succeeded")
			}
			c.Close()
		}
		if d := time.Since(t0); d > 4*time.Second {
			t.Errorf("3 failed logins took %v: auth penalty or failure delay active", d)
		}
	})
}

func testMaster(t *testing.T, s *Server) {
	const bob, alice = "bob@pec.vecchio.test", "alice@pec.vecchio.test"
	msg := []byte("Subject: for bob\r\nMessage-ID: <master@test>\r\n\r\nonly bob has this\r\n")
	s.Deliver(t, bob, "Junk", msg)
	junkCount := func(login string, password string) (uint32, error) {
		c, err := imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
		if err != nil {
			return 0, err
		}
		defer c.Close()
		if err := c.Login(login, password).Wait(); err != nil {
			return 0, err
		}
		st, err := c.Status("Junk", &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			return 0, err
		}
		return *st.NumMessages, nil
	}
	if n, err := junkCount(bob+"*"+s.MasterUser, s.MasterPassword); err != nil || n != 1 {
		t.Errorf("master login as bob: Junk has %d messages (err %v), want 1", n, err)
	}
	if n, err := junkCount(alice+"*"+s.MasterUser, s.MasterPassword); err != nil || n != 0 {
		t.Errorf("master login as alice: Junk has %d messages (err %v), want 0", n, err)
	}
	if _, err := junkCount(bob+"*"+s.MasterUser, "wrong"); err == nil {
		t.Error("master login with a wrong master password succeeded")
	}
	if _, err := junkCount("nobody@pec.vecchio.test*"+s.MasterUser, s.MasterPassword); err == nil {
		t.Error("master login as a user that does not exist succeeded")
	}
}

func testSpecialUse(t *testing.T, s *Server) {
	c := s.Dial(t, "alice@pec.vecchio.test")
	list, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]imap.MailboxAttr{}
	for _, l := range list {
		for _, a := range l.Attrs {
			if slices.Contains([]imap.MailboxAttr{imap.MailboxAttrSent, imap.MailboxAttrDrafts, imap.MailboxAttrTrash, imap.MailboxAttrJunk}, a) {
				got[l.Mailbox] = a
			}
		}
	}
	want := map[string]imap.MailboxAttr{"Sent": imap.MailboxAttrSent, "Drafts": imap.MailboxAttrDrafts, "Trash": imap.MailboxAttrTrash, "Junk": imap.MailboxAttrJunk}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("special-use mailboxes %v, want %v", got, want)
	}
	sub, err := c.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range sub {
		names = append(names, l.Mailbox)
	}
	for name := range want {
		if !slices.Contains(names, name) {
			t.Errorf("%s not subscribed (subscribed: %v)", name, names)
		}
	}
}

// fetched is one message as read back over IMAP.
type fetched struct {
	uid   imap.UID
	flags []string // sorted, without \Recent
	date  time.Time
	sum   [32]byte
	size  int
}

// fetchAll reads every message of mailbox in UID order.
func fetchAll(t *testing.T, c *imapclient.Client, mailbox string) []fetched {
	t.Helper()
	if _, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("select %q: %v", mailbox, err)
	}
	msgs, err := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID: true, Flags: true, InternalDate: true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch %q: %v", mailbox, err)
	}
	out := make([]fetched, 0, len(msgs))
	for _, m := range msgs {
		if len(m.BodySection) != 1 {
			t.Fatalf("fetch %q: UID %d has %d body sections", mailbox, m.UID, len(m.BodySection))
		}
		body := m.BodySection[0].Bytes
		out = append(out, fetched{uid: m.UID, flags: flagStrings(m.Flags), date: m.InternalDate, sum: sha256.Sum256(body), size: len(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].uid < out[j].uid })
	return out
}

func flagStrings[F ~string](flags []F) []string {
	var out []string
	for _, f := range flags {
		if !strings.EqualFold(string(f), `\Recent`) {
			out = append(out, string(f))
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func testDeliver(t *testing.T, s *Server) {
	const carol = "carol@pec.vecchio.test"
	fs := LoadFixtures(t)
	for _, f := range fs {
		s.Deliver(t, carol, "INBOX", f.Body)
	}
	c := s.Dial(t, carol)
	got := fetchAll(t, c, "INBOX")
	if len(got) != len(fs) {
		t.Fatalf("INBOX has %d messages, want %d", len(got), len(fs))
	}
	for i, f := range fs {
		if fmt.Sprintf("%x", got[i].sum) != f.SHA256 {
			t.Errorf("UID %d (%s): BODY[] sha256 %x, want %s", got[i].uid, f.File, got[i].sum, f.SHA256)
		}
		if len(got[i].flags) != 0 {
			t.Errorf("UID %d: flags %v, want none", got[i].uid, got[i].flags)
		}
	}
	// The files themselves are the exact bytes (mail_save_crlf = yes).
	files, _ := filepath.Glob(filepath.Join(s.MaildirPath(carol), "new", "*"))
	cur, _ := filepath.Glob(filepath.Join(s.MaildirPath(carol), "cur", "*"))
	files = append(files, cur...)
	sums := map[string]bool{}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sums[fmt.Sprintf("%x", sha256.Sum256(b))] = true
	}
	for _, f := range fs {
		if !sums[f.SHA256] {
			t.Errorf("no file in %s holds the bytes of %s", s.MaildirPath(carol), f.File)
		}
	}
}

// testLMTP delivers through Dovecot's LMTP socket, as an MTA would.
func testLMTP(t *testing.T, s *Server) {
	const bob = "bob@pec.vecchio.test"
	conn, err := net.Dial("unix", s.LMTPSocket)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	msg := []byte("Subject: via LMTP\r\nMessage-ID: <lmtp@test>\r\n\r\nhello\r\n")
	if err := c.SendMail("sender@elsewhere.test", []string{bob}, bytes.NewReader(msg)); err != nil {
		t.Fatalf("LMTP: %v", err)
	}
	c.Quit()
	cl := s.Dial(t, bob)
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	got, err := cl.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(got) != 1 {
		t.Fatalf("fetch: %v, %d messages", err, len(got))
	}
	body := got[0].BodySection[0].Bytes
	if !bytes.HasSuffix(body, msg) {
		t.Fatalf("LMTP-delivered message does not end with the bytes sent:\n%s", body)
	}
	// Dovecot: LMTP prepends Return-Path, Delivered-To and Received, so it
	// is not byte-identical; Deliver and the submission endpoint use
	// doveadm save.
	t.Logf("LMTP added %q", body[:len(body)-len(msg)])
}

// TestSeedMaildir seeds ~2,000 PEC messages into INBOX, "Posta inviata"
// and "Pratiche.Città" with flags, keywords and internal dates, and reads
// all of them back over IMAP.
func TestSeedMaildir(t *testing.T) {
	const dave = "dave@pec.vecchio.test"
	s := Start(t, Options{Name: "seed", Users: []User{{Address: dave}}})
	fs := LoadFixtures(t)
	small, big := fs[:13], fs[13]
	if big.Size < 3<<20-200<<10 {
		t.Fatalf("fixture 14 is %d bytes, expected the 3 MB one", big.Size)
	}

	var msgs []SeedMessage
	for i := range 2000 {
		f := small[i%len(small)]
		m := f.SeedMessage(s, f.Variant(i))
		m.Flags = slices.Clone(f.Flags)
		if i%5 == 0 {
			m.Flags = append(m.Flags, `\Draft`)
		}
		if i%11 == 0 {
			m.Flags = append(m.Flags, `\Deleted`, "$label2")
		}
		m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		msgs = append(msgs, m)
	}
	msgs = append(msgs, big.SeedMessage(s, big.Body))

	t0 := time.Now()
	s.SeedMaildir(t, dave, msgs)
	t.Logf("SeedMaildir of %d messages (%d folders) took %v", len(msgs), 3, time.Since(t0))

	if _, err := os.Stat(filepath.Join(s.MaildirPath(dave), ".Pratiche.Citt&AOA-", "cur")); err != nil {
		t.Errorf("Maildir++ folder in modified UTF-7 missing: %v", err)
	}

	c := s.Dial(t, dave)
	checkSeeded(t, c, msgs)

	list, err := c.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var subscribed []string
	for _, l := range list {
		subscribed = append(subscribed, l.Mailbox)
	}
	for _, want := range []string{"Pratiche.Città", "Posta inviata"} {
		if !slices.Contains(subscribed, want) {
			t.Errorf("%q not subscribed; subscribed: %v", want, subscribed)
		}
	}
	// The parent exists only as a hierarchy level, as after IMAP CREATE.
	list, err = c.List("", "Pratiche", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || !slices.Contains(list[0].Attrs, imap.MailboxAttrNoSelect) {
		t.Errorf("LIST Pratiche: %+v, want one \\Noselect mailbox", list)
	}

	// A second call appends after what is there and keeps the keyword
	// letters already in use.
	more := []SeedMessage{
		{Body: small[0].Variant(5000), Flags: []string{"NonJunk", "$label3"}, InternalDate: time.Date(2025, 7, 1, 10, 0, 0, 0, time.UTC)},
		{Body: small[1].Variant(5001), Flags: []string{"$label2", `\Seen`}, InternalDate: time.Date(2025, 7, 2, 10, 0, 0, 0, time.UTC)},
	}
	s.SeedMaildir(t, dave, more)
	c.Close()
	c = s.Dial(t, dave)
	checkSeeded(t, c, append(msgs, more...))
}

// checkSeeded compares every mailbox's messages, in UID order, with the
// seeded ones in slice order.
func checkSeeded(t *testing.T, c *imapclient.Client, msgs []SeedMessage) {
	t.Helper()
	byBox := map[string][]SeedMessage{}
	for _, m := range msgs {
		box := m.Mailbox
		if box == "" {
			box = "INBOX"
		}
		byBox[box] = append(byBox[box], m)
	}
	if len(byBox) != 3 {
		t.Fatalf("seeded into %d mailboxes, want 3", len(byBox))
	}
	for box, want := range byBox {
		got := fetchAll(t, c, box)
		if len(got) != len(want) {
			t.Errorf("%s: %d messages, want %d", box, len(got), len(want))
			continue
		}
		bad := 0
		for i, w := range want {
			g := got[i]
			var errs []string
			if g.sum != sha256.Sum256(w.Body) {
				errs = append(errs, fmt.Sprintf("BODY[] differs (%d bytes, want %d)", g.size, len(w.Body)))
			}
			if wf := flagStrings(w.Flags); !slices.Equal(g.flags, wf) {
				errs = append(errs, fmt.Sprintf("flags %v, want %v", g.flags, wf))
			}
			if !g.date.Equal(w.InternalDate) {
				errs = append(errs, fmt.Sprintf("INTERNALDATE %v, want %v", g.date, w.InternalDate))
			}
			if errs != nil {
				t.Errorf("%s: message %d (UID %d): %s", box, i, g.uid, strings.Join(errs, "; "))
				if bad++; bad == 5 {
					t.Errorf("%s: giving up after %d bad messages", box, bad)
					break
				}
			}
		}
	}
}

// TestOptions covers a provider laid out differently: "/" as delimiter and
// its own special-use names.
func TestOptions(t *testing.T) {
	const frank = "frank@pec.nuovo.test"
	s := Start(t, Options{
		Name:       "slash",
		Users:      []User{{Address: frank, Password: "fixed-password"}},
		Delimiter:  "/",
		SpecialUse: map[string]string{`\Sent`: "Posta inviata", `\Trash`: "Cestino"},
		MasterUser: "admin",

		MaxUserIPConnections: 2,
	})
	if s.Password(frank) != "fixed-password" {
		t.Errorf("password %q, want the one given", s.Password(frank))
	}
	fs := LoadFixtures(t)
	var msgs []SeedMessage
	for _, f := range fs[:13] {
		msgs = append(msgs, f.SeedMessage(s, f.Body))
	}
	s.SeedMaildir(t, frank, msgs)
	if _, err := os.Stat(filepath.Join(s.MaildirPath(frank), ".Pratiche.Citt&AOA-")); err != nil {
		t.Errorf("on disk the separator stays '.': %v", err)
	}

	c := s.Dial(t, frank)
	checkSeeded(t, c, msgs)
	list, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	attrs := map[string][]imap.MailboxAttr{}
	for _, l := range list {
		if l.Delim != '/' {
			t.Errorf("%s: delimiter %q, want '/'", l.Mailbox, l.Delim)
		}
		attrs[l.Mailbox] = l.Attrs
	}
	if !slices.Contains(attrs["Posta inviata"], imap.MailboxAttrSent) || !slices.Contains(attrs["Cestino"], imap.MailboxAttrTrash) {
		t.Errorf("special use not as configured: %v", attrs)
	}
	if _, ok := attrs["Pratiche/Città"]; !ok {
		t.Errorf("no Pratiche/Città in %v", attrs)
	}
	if _, ok := attrs["Sent"]; ok {
		t.Error("default Sent exists although SpecialUse replaced the defaults")
	}

	if err := s.seedMaildir(frank, []SeedMessage{{Mailbox: "a.b", Body: fs[0].Body}}); err == nil {
		t.Error("seeding a '.' in a level with '/' as delimiter succeeded")
	}
	if err := s.seedMaildir(frank, []SeedMessage{{Body: fs[0].Body, Flags: []string{`\Recent`}}}); err == nil {
		t.Error(`seeding \Recent succeeded`)
	}

	// The master user's name is configurable.
	mc, err := imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	if err := mc.Login(frank+"*admin", s.MasterPassword).Wait(); err != nil {
		t.Errorf("master login as frank*admin: %v", err)
	}

	// With c and mc (a master login counts for its target user), a third
	// session of frank from 127.0.0.1 exceeds the limit of 2.
	third, err := imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	err = third.Login(frank, s.Password(frank)).Wait()
	var ierr *imap.Error
	if !errors.As(err, &ierr) || ierr.Code != imap.ResponseCodeLimit || !strings.Contains(ierr.Text, "mail_max_userip_connections=2") {
		t.Errorf("third session: %v, want NO [LIMIT] naming mail_max_userip_connections=2", err)
	}
}

// smtpConv is a raw SMTP conversation for the cases go-smtp's client
// cannot produce.
type smtpConv struct {
	t    *testing.T
	conn net.Conn
	tp   *textproto.Conn
}

func dialSMTPS(t *testing.T, s *Server) *smtpConv {
	t.Helper()
	conn, err := tls.Dial("tcp", s.SubmissionAddr, s.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	cv := &smtpConv{t: t, conn: conn, tp: textproto.NewConn(conn)}
	cv.expect(220)
	cv.cmd(250, "EHLO client.test")
	return cv
}

// cmd sends a line and returns the reply text, failing unless the code is
// want.
func (cv *smtpConv) cmd(want int, format string, args ...any) string {
	cv.t.Helper()
	if err := cv.tp.PrintfLine(format, args...); err != nil {
		cv.t.Fatal(err)
	}
	return cv.expect(want)
}

func (cv *smtpConv) expect(want int) string {
	cv.t.Helper()
	code, msg, err := cv.tp.ReadResponse(want)
	if err != nil {
		cv.t.Fatalf("want %d, got %d %s (%v)", want, code, msg, err)
	}
	return msg
}

func plainIR(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
}

func testSubmission(t *testing.T, old, new *Server) {
	const erin = "erin@pec.vecchio.test"
	fs := LoadFixtures(t)
	inboxCount := func(t *testing.T) uint32 {
		c := old.Dial(t, erin)
		st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		return *st.NumMessages
	}

	// A message whose 8-bit header and a line starting with "." must
	// survive DATA's dot-stuffing unchanged.
	dotted := append(slices.Clone(fs[10].Variant(1)), []byte(".hidden line\r\n..two dots\r\n")...)
	cases := []struct {
		name string
		dial func() (*smtp.Client, error)
		auth sasl.Client
		body []byte
	}{
		{"smtps/PLAIN", func() (*smtp.Client, error) { return smtp.DialTLS(old.SubmissionAddr, old.TLSConfig()) },
			sasl.NewPlainClient("", erin, old.Password(erin)), fs[0].Body},
		{"starttls/LOGIN", func() (*smtp.Client, error) { return smtp.DialStartTLS(old.SubmissionStartTLSAddr, old.TLSConfig()) },
			sasl.NewLoginClient(erin, old.Password(erin)), dotted},
		{"smtps/3MB", func() (*smtp.Client, error) { return smtp.DialTLS(old.SubmissionAddr, old.TLSConfig()) },
			sasl.NewPlainClient(erin, erin, old.Password(erin)), fs[13].Body},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if size, ok := c.MaxMessageSize(); !ok || int64(size) != old.SubmissionMaxSize {
				t.Errorf("SIZE %d (advertised %v), want %d", size, ok, old.SubmissionMaxSize)
			}
			if err := c.Auth(tc.auth); err != nil {
				t.Fatalf("AUTH: %v", err)
			}
			to := []string{erin, "someone@elsewhere.test"}
			if err := c.SendMail(erin, to, bytes.NewReader(tc.body)); err != nil {
				t.Fatalf("send: %v", err)
			}
			subs := old.Submissions()
			if len(subs) != i+1 {
				t.Fatalf("%d submissions recorded, want %d", len(subs), i+1)
			}
			got := subs[i]
			if got.From != erin || !slices.Equal(got.To, to) || got.AuthUsername != erin || !bytes.Equal(got.Data, tc.body) {
				t.Errorf("recorded From %q To %v user %q %d bytes (equal %v)", got.From, got.To, got.AuthUsername, len(got.Data), bytes.Equal(got.Data, tc.body))
			}
			// Delivered before the 250: the newest INBOX message is it.
			msgs := fetchAll(t, old.Dial(t, erin), "INBOX")
			if len(msgs) != i+1 || msgs[i].sum != sha256.Sum256(tc.body) {
				t.Errorf("INBOX has %d messages; last one not byte-identical", len(msgs))
			}
		})
	}

	t.Run("other side's password: 535", func(t *testing.T) {
		c, err := smtp.DialTLS(new.SubmissionAddr, new.TLSConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Auth(sasl.NewPlainClient("", erin, old.Password(erin)))
		var serr *smtp.SMTPError
		if !errors.As(err, &serr) || serr.Code != 535 || serr.EnhancedCode != (smtp.EnhancedCode{5, 7, 8}) {
			t.Fatalf("AUTH with old's password on new: %v, want 535 5.7.8", err)
		}
		if err := c.Auth(sasl.NewPlainClient("", erin, new.Password(erin))); err != nil {
			t.Fatalf("AUTH with new's own password: %v", err)
		}
	})

	t.Run("MAIL before AUTH: 530", func(t *testing.T) {
		cv := dialSMTPS(t, old)
		msg := cv.cmd(530, "MAIL FROM:<%s>", erin)
		if !strings.HasPrefix(msg, "5.7.0 ") {
			t.Errorf("reply text %q, want 5.7.0", msg)
		}
	})

	t.Run("no AUTH before STARTTLS", func(t *testing.T) {
		c, err := smtp.Dial(old.SubmissionStartTLSAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Hello("client.test"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := c.Extension("STARTTLS"); !ok {
			t.Error("STARTTLS not offered")
		}
		if ok, _ := c.Extension("AUTH"); ok {
			t.Error("AUTH offered before STARTTLS")
		}
	})

	t.Run("reject- recipient: 550", func(t *testing.T) {
		cv := dialSMTPS(t, old)
		cv.cmd(235, "AUTH PLAIN %s", plainIR(erin, old.Password(erin)))
		cv.cmd(250, "MAIL FROM:<%s>", erin)
		msg := cv.cmd(550, "RCPT TO:<reject-me@elsewhere.test>")
		if want := "5.1.1 <reject-me@elsewhere.test>: Recipient address rejected: test"; msg != want {
			t.Errorf("reply %q, want %q", msg, want)
		}
		cv.cmd(250, "RCPT TO:<%s>", erin) // the transaction goes on
	})

	t.Run("LOGIN without initial response", func(t *testing.T) {
		cv := dialSMTPS(t, old)
		b64 := base64.StdEncoding.EncodeToString
		if got := cv.cmd(334, "AUTH LOGIN"); got != b64([]byte("Username:")) {
			t.Errorf("challenge %q", got)
		}
		if got := cv.cmd(334, "%s", b64([]byte(erin))); got != b64([]byte("Password:")) {
			t.Errorf("challenge %q", got)
		}
		cv.cmd(535, "%s", b64([]byte("wrong")))
		cv.cmd(334, "AUTH LOGIN %s", b64([]byte(erin)))
		cv.cmd(235, "%s", b64([]byte(old.Password(erin))))
	})

	t.Run("aborted DATA delivers nothing", func(t *testing.T) {
		before, aborted, subs := inboxCount(t), old.AbortedData(), len(old.Submissions())
		cv := dialSMTPS(t, old)
		cv.cmd(235, "AUTH PLAIN %s", plainIR(erin, old.Password(erin)))
		cv.cmd(250, "MAIL FROM:<%s>", erin)
		cv.cmd(250, "RCPT TO:<%s>", erin)
		cv.cmd(354, "DATA")
		w := bufio.NewWriter(cv.conn)
		w.Write(fs[0].Body[:4000]) // no final dot
		w.Flush()
		cv.conn.Close()
		old.WaitAbortedData(t, aborted+1)
		if n := len(old.Submissions()); n != subs {
			t.Errorf("%d submissions recorded, want %d", n, subs)
		}
		if n := inboxCount(t); n != before {
			t.Errorf("INBOX has %d messages, had %d", n, before)
		}
	})
}

// TestKillRestartStop checks that Kill drops established sessions and
// closes the ports, that Restart brings the same server back with its
// mail, and that Stop ends sessions too.
func TestKillRestartStop(t *testing.T) {
	const gina = "gina@pec.vecchio.test"
	s := Start(t, Options{Name: "kill", Users: []User{{Address: gina}}})
	s.Deliver(t, gina, "INBOX", []byte("Subject: survives\r\n\r\nrestart\r\n"))
	c := s.Dial(t, gina)

	s.Kill()
	if err := c.Noop().Wait(); err == nil {
		t.Error("NOOP on a session of a killed server succeeded")
	}
	for _, addr := range []string{s.IMAPSAddr, s.IMAPAddr, s.SubmissionAddr, s.SubmissionStartTLSAddr} {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			t.Errorf("%s accepts connections after Kill", addr)
		}
	}
	s.Kill() // idempotent
	s.Stop()

	s.Restart(t)
	c = s.Dial(t, gina)
	st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 1 {
		t.Fatalf("after Restart: STATUS %v, %v; want 1 message", st, err)
	}
	sc, err := smtp.DialTLS(s.SubmissionAddr, s.TLSConfig())
	if err != nil {
		t.Fatalf("submission after Restart: %v", err)
	}
	sc.Close()

	// A graceful stop ends established sessions too.
	conn, err := tls.Dial("tcp", s.IMAPSAddr, s.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	fmt.Fprintf(conn, "a LOGIN %s %s\r\n", gina, s.Password(gina))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "a ") {
			if !strings.HasPrefix(line, "a OK") {
				t.Fatalf("login: %q", line)
			}
			break
		}
	}
	t0 := time.Now()
	s.Stop()
	t.Logf("graceful Stop took %v", time.Since(t0))
	fmt.Fprintf(conn, "b NOOP\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			var nerr net.Error
			if errors.As(err, &nerr) && nerr.Timeout() {
				t.Errorf("session still open 20 s after Stop")
			}
			break
		}
		if strings.HasPrefix(line, "b ") {
			t.Errorf("NOOP answered after Stop: %q", line)
			break
		}
	}
	s.Stop() // idempotent
}

// TestKillRightAfterStart guards against a stop racing the submission
// endpoint's Serve goroutines, which once made Kill hang.
func TestKillRightAfterStart(t *testing.T) {
	for range 5 {
		s := Start(t, Options{Name: "quick"})
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.Kill()
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("Kill right after Start did not return within 20 s")
		}
	}
}

func TestQuota(t *testing.T) {
	const hugo = "hugo@pec.vecchio.test"
	s := Start(t, Options{Name: "quota", Users: []User{{Address: hugo}}, QuotaBytes: 100 << 10})
	c := s.Dial(t, hugo)
	if !c.Caps().Has(imap.CapQuota) {
		t.Fatalf("no QUOTA capability: %v", c.Caps())
	}
	roots, err := c.GetQuotaRoot("INBOX").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 1 || roots[0].Resources[imap.QuotaResourceStorage].Limit != 100 {
		t.Fatalf("quota roots %+v, want STORAGE limit 100 (KiB)", roots)
	}
	fs := LoadFixtures(t)
	s.Deliver(t, hugo, "INBOX", fs[0].Body) // 12 KiB fits
	if err := s.save(hugo, "INBOX", fs[13].Body); err == nil {
		t.Error("a 3 MB delivery into a 100 KiB quota succeeded")
	}
	ac := c.Append("INBOX", int64(len(fs[13].Body)), nil)
	ac.Write(fs[13].Body) // may fail: Dovecot can refuse before the literal
	ac.Close()
	_, err = ac.Wait()
	var ierr *imap.Error
	if !errors.As(err, &ierr) || ierr.Code != imap.ResponseCodeOverQuota {
		t.Errorf("APPEND over quota: %v, want NO [OVERQUOTA]", err)
	}
}

// BenchmarkSeedMaildir5000 measures SeedMaildir with 5,000 fixture variants
// in 3 folders per iteration, each into a fresh user.
func BenchmarkSeedMaildir5000(b *testing.B) {
	users := make([]User, b.N)
	for i := range users {
		users[i] = User{Address: fmt.Sprintf("bench%d@pec.vecchio.test", i)}
	}
	s := Start(b, Options{Name: "bench", Users: users})
	fs := LoadFixtures(b)[:13]
	msgs := make([]SeedMessage, 5000)
	for i := range msgs {
		f := fs[i%len(fs)]
		msgs[i] = f.SeedMessage(s, f.Variant(i))
	}
	b.ResetTimer()
	for i := range b.N {
		s.SeedMaildir(b, users[i].Address, msgs)
	}
}
