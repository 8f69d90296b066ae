package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/internal/dovetest"
)

const testUser = "giulia.verdi@pec.ordine.example"

// dovecotGateway starts an "old" Dovecot with testUser and the gateway in
// front of it, domain in state old.
func dovecotGateway(t *testing.T) (*dovetest.Server, *testGateway) {
	t.Helper()
	dovetest.Require(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: testUser, Password: "old-pass-1"}, {Address: "mario.rossi@pec.ordine.example", Password: "old-pass-2"}}})
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	gw := startTestGateway(t, ca, oneProviderConfig("imaps://"+old.IMAPSAddr, old.CAFile, "pec.ordine.example"))
	return old, gw
}

func (g *testGateway) login(t testing.TB, user, pass string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	c := g.dial(t, opts)
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("login %s through the gateway: %v", user, err)
	}
	return c
}

func wantCode(t *testing.T, err error, code imap.ResponseCode) {
	t.Helper()
	var imapErr *imap.Error
	if !errors.As(err, &imapErr) || imapErr.Code != code {
		t.Fatalf("got %v, want NO [%s]", err, code)
	}
}

func msgN(n int, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: a@pec.ordine.example\r\nTo: b@pec.ordine.example\r\nSubject: messaggio %d \xe0 8bit\r\nMessage-ID: <%d@test>\r\nDate: Tue, 05 Mar 2024 10:00:00 +0100\r\n\r\n", n, n)
	for b.Len() < size {
		fmt.Fprintf(&b, "riga %d del messaggio %d\r\n", b.Len(), n)
	}
	return b.Bytes()
}

func TestIMAPDovecotCommands(t *testing.T) {
	old, gw := dovecotGateway(t)
	pass := old.Password(testUser)
	c := gw.login(t, testUser, pass, nil)

	// LIST with special-use attributes, as Dovecot names them.
	list, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var sent bool
	for _, l := range list {
		if slices.Contains(l.Attrs, imap.MailboxAttrSent) {
			sent = true
		}
	}
	if !sent {
		t.Errorf("LIST through the gateway shows no \\Sent mailbox: %+v", list)
	}

	// Non-ASCII folder names round-trip (modified UTF-7 on the wire).
	city := "Pratiche" + string(list[0].Delim) + "Città"
	if err := c.Create(city, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(city).Wait(); err != nil {
		t.Fatal(err)
	}
	lsub, err := c.List("", "Pratiche*", &imap.ListOptions{SelectSubscribed: true}).Collect()
	if err != nil || !slices.ContainsFunc(lsub, func(d *imap.ListData) bool { return d.Mailbox == city }) {
		t.Fatalf("subscribed list: %v %+v", err, lsub)
	}
	direct := old.Dial(t, testUser)
	dl, err := direct.List("", "Pratiche*", nil).Collect()
	if err != nil || !slices.ContainsFunc(dl, func(d *imap.ListData) bool { return d.Mailbox == city }) {
		t.Fatalf("Dovecot does not have %q: %v %+v", city, err, dl)
	}

	// APPEND with flags and date, then every FETCH item.
	msg := []byte("From: Giulia <giulia.verdi@pec.ordine.example>\r\nTo: mario.rossi@pec.ordine.example\r\nSubject: =?ISO-8859-1?Q?Citt=E0?=\r\nDate: Tue, 05 Mar 2024 10:00:00 +0100\r\nMessage-ID: <abc@test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nciao città\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
	date := time.Date(2024, 3, 5, 10, 0, 0, 0, time.FixedZone("", 3600))
	ap := c.Append(city, int64(len(msg)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagFlagged, "$label1"}, Time: date})
	ap.Write(msg)
	ap.Close()
	apData, err := ap.Wait()
	if err != nil || apData.UID == 0 {
		t.Fatalf("append: %v %+v (want APPENDUID)", err, apData)
	}
	st, err := c.Status(city, &imap.StatusOptions{NumMessages: true, UIDNext: true, UIDValidity: true, NumUnseen: true}).Wait()
	if err != nil || *st.NumMessages != 1 || *st.NumUnseen != 1 || st.UIDValidity != apData.UIDValidity {
		t.Fatalf("status: %v %+v", err, st)
	}
	sel, err := c.Select(city, nil).Wait()
	if err != nil || sel.NumMessages != 1 || sel.UIDValidity != apData.UIDValidity {
		t.Fatalf("select: %v %+v", err, sel)
	}
	whole := &imap.FetchItemBodySection{Peek: true}
	part1 := &imap.FetchItemBodySection{Part: []int{1}, Peek: true}
	subj := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Subject"}, Peek: true}
	partial := &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: 6, Size: 6}}
	bin := &imap.FetchItemBinarySection{Part: []int{2}, Peek: true}
	got, err := c.Fetch(imap.UIDSetNum(apData.UID), &imap.FetchOptions{
		UID: true, Flags: true, InternalDate: true, RFC822Size: true, Envelope: true,
		BodyStructure: &imap.FetchItemBodyStructure{Extended: true},
		BodySection:   []*imap.FetchItemBodySection{whole, part1, subj, partial},
		BinarySection: []*imap.FetchItemBinarySection{bin},
	}).Collect()
	if err != nil || len(got) != 1 {
		t.Fatalf("fetch: %v %d", err, len(got))
	}
	m := got[0]
	if sha256.Sum256(m.FindBodySection(whole)) != sha256.Sum256(msg) {
		t.Error("BODY[] differs from the appended bytes")
	}
	if string(m.FindBodySection(part1)) != "ciao città" {
		t.Errorf("BODY[1] = %q", m.FindBodySection(part1))
	}
	if !strings.HasPrefix(string(m.FindBodySection(subj)), "Subject: =?ISO-8859-1?Q?Citt=E0?=") {
		t.Errorf("BODY[HEADER.FIELDS (SUBJECT)] = %q", m.FindBodySection(subj))
	}
	if string(m.FindBodySection(partial)) != string(msg[6:12]) {
		t.Errorf("BODY[]<6.6> = %q", m.FindBodySection(partial))
	}
	if string(m.FindBinarySection(bin)) != "%PDF-1.4\n" {
		t.Errorf("BINARY[2] = %q", m.FindBinarySection(bin))
	}
	if m.Envelope == nil || m.Envelope.Subject != "Città" || m.Envelope.MessageID != "abc@test" {
		t.Errorf("envelope %+v", m.Envelope)
	}
	if mp, ok := m.BodyStructure.(*imap.BodyStructureMultiPart); !ok || len(mp.Children) != 2 {
		t.Errorf("bodystructure %#v", m.BodyStructure)
	}
	if !m.InternalDate.Equal(date) || m.RFC822Size != int64(len(msg)) || !slices.Contains(m.Flags, "$label1") {
		t.Errorf("date %v size %d flags %v", m.InternalDate, m.RFC822Size, m.Flags)
	}

	// SEARCH, plain and ESEARCH.
	res, err := c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: "abc@test"}}}, nil).Wait()
	if err != nil || !slices.Equal(res.AllUIDs(), []imap.UID{apData.UID}) {
		t.Fatalf("uid search: %v %+v", err, res)
	}
	es, err := c.Search(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagFlagged}}, &imap.SearchOptions{ReturnCount: true, ReturnMin: true}).Wait()
	if err != nil || es.Count != 1 || es.Min != 1 {
		t.Fatalf("esearch: %v %+v", err, es)
	}

	// STORE, COPY, MOVE, EXPUNGE.
	fl, err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Collect()
	if err != nil || len(fl) != 1 || !slices.Contains(fl[0].Flags, imap.FlagSeen) {
		t.Fatalf("store: %v %+v", err, fl)
	}
	cp, err := c.Copy(imap.SeqSetNum(1), "INBOX").Wait()
	if err != nil || cp.DestUIDs == nil {
		t.Fatalf("copy: %v %+v", err, cp)
	}
	mv, err := c.Move(imap.SeqSetNum(1), "INBOX").Wait()
	if err != nil || mv.DestUIDs == nil {
		t.Fatalf("move: %v %+v", err, mv)
	}
	if n := c.Mailbox().NumMessages; n != 0 {
		t.Errorf("after MOVE the client believes %d messages remain", n)
	}
	sel, err = c.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 2 {
		t.Fatalf("INBOX after copy+move: %v %+v", err, sel)
	}
	if _, err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	exp, err := c.Expunge().Collect()
	if err != nil || !slices.Equal(exp, []uint32{1}) {
		t.Fatalf("expunge: %v %v", err, exp)
	}

	// EXAMINE is read-only even though imapserver would let writes through.
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	_, err = c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect()
	if err == nil {
		t.Error("STORE on an EXAMINEd mailbox succeeded")
	}
	if err := c.Unselect().Wait(); err != nil {
		t.Fatal(err)
	}

	ns, err := c.Namespace().Wait()
	if err != nil || len(ns.Personal) != 1 {
		t.Fatalf("namespace: %v %+v", err, ns)
	}
	renamed := "Pratiche" + string(list[0].Delim) + "Città chiuse"
	if err := c.Rename(city, renamed, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(renamed).Wait(); err != nil {
		t.Fatal(err)
	}
	// An upstream error reaches the client as the provider said it.
	err = c.Delete("Inesistente").Wait()
	wantCode(t, err, imap.ResponseCodeNonExistent)
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestIMAPDovecotIdle(t *testing.T) {
	old, gw := dovecotGateway(t)
	exists := make(chan uint32, 16)
	c := gw.login(t, testUser, old.Password(testUser), &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			},
		},
	})
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	old.Deliver(t, testUser, "INBOX", msgN(1, 2000))
	select {
	case n := <-exists:
		if n != 1 {
			t.Errorf("EXISTS %d, want 1", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no EXISTS reached the IDLE client within 20s of delivery")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
	// A polling client (NOOP, no IDLE) sees new mail too.
	old.Deliver(t, testUser, "INBOX", msgN(2, 2000))
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-exists:
		if n != 2 {
			t.Errorf("EXISTS %d after NOOP, want 2", n)
		}
	default:
		t.Error("NOOP did not report the new message")
	}
}

// rawIMAP is a line-level IMAP client for malformed input.
type rawIMAP struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (g *testGateway) raw(t *testing.T, implicitTLS bool) *rawIMAP {
	t.Helper()
	var c net.Conn
	var err error
	if implicitTLS {
		c, err = tls.Dial("tcp", g.imapsAddr, &tls.Config{RootCAs: g.pool, ServerName: "localhost"})
	} else {
		c, err = net.Dial("tcp", g.imapAddr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := &rawIMAP{t: t, c: c, br: bufio.NewReader(c)}
	r.line() // greeting
	return r
}

func (r *rawIMAP) line() string {
	r.t.Helper()
	l, err := r.br.ReadString('\n')
	if err != nil {
		r.t.Fatalf("read: %v (got %q)", err, l)
	}
	return l
}

// cmd sends a command and returns every line up to the tagged reply.
func (r *rawIMAP) cmd(tag, text string) []string {
	r.t.Helper()
	if _, err := io.WriteString(r.c, tag+" "+text+"\r\n"); err != nil {
		r.t.Fatal(err)
	}
	return r.until(tag)
}

func (r *rawIMAP) until(tag string) []string {
	r.t.Helper()
	var lines []string
	for {
		l := r.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			return lines
		}
	}
}

func last(lines []string) string { return lines[len(lines)-1] }

func TestIMAPDovecotBadInput(t *testing.T) {
	old, gw := dovecotGateway(t)
	pass := old.Password(testUser)
	direct := old.Dial(t, testUser)
	before, err := direct.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("login before STARTTLS", func(t *testing.T) {
		r := gw.raw(t, false)
		caps := last(r.cmd("a", "CAPABILITY"))
		if !strings.HasPrefix(caps, "a OK") {
			t.Fatal(caps)
		}
		if l := last(r.cmd("b", "LOGIN "+testUser+" "+pass)); strings.HasPrefix(l, "b OK") {
			t.Fatalf("plaintext LOGIN accepted: %q", l)
		}
		if l := last(r.cmd("c", "AUTHENTICATE PLAIN")); strings.HasPrefix(l, "c OK") {
			t.Fatalf("plaintext AUTHENTICATE accepted: %q", l)
		}
	})
	t.Run("starttls then login", func(t *testing.T) {
		c, err := imapclient.DialStartTLS(gw.imapAddr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: gw.pool, ServerName: "localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(testUser, pass).Wait(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unknown domain and wrong password", func(t *testing.T) {
		c := gw.dial(t, nil)
		wantCode(t, c.Login("giulia@sconosciuto.example", pass).Wait(), imap.ResponseCodeAuthenticationFailed)
		wantCode(t, c.Login(testUser, "wrong").Wait(), imap.ResponseCodeAuthenticationFailed)
		wantCode(t, c.Login("not-an-address", pass).Wait(), imap.ResponseCodeAuthenticationFailed)
	})
	t.Run("malformed commands", func(t *testing.T) {
		r := gw.raw(t, true)
		if l := last(r.cmd("a", "LOGIN "+testUser+" "+pass)); !strings.HasPrefix(l, "a OK") {
			t.Fatal(l)
		}
		for _, bad := range []string{"FETCH", "SELECT", "UID FETCH x:y (FLAGS)", "STORE 1 +FLAGS (", "SEARCH CHARSET KOI8 TEXT x", "LIST"} {
			l := last(r.cmd("m", bad))
			if !strings.HasPrefix(l, "m BAD") && !strings.HasPrefix(l, "m NO") {
				t.Errorf("%q answered %q, want BAD or NO", bad, l)
			}
		}
		if l := last(r.cmd("z", "NOOP")); !strings.HasPrefix(l, "z OK") {
			t.Errorf("session broken after malformed commands: %q", l)
		}
	})
	t.Run("60 MB APPEND abandoned halfway", func(t *testing.T) {
		r := gw.raw(t, true)
		if l := last(r.cmd("a", "LOGIN "+testUser+" "+pass)); !strings.HasPrefix(l, "a OK") {
			t.Fatal(l)
		}
		const size = 60 << 20
		io.WriteString(r.c, fmt.Sprintf("b APPEND INBOX {%d}\r\n", size))
		if l := r.line(); !strings.HasPrefix(l, "+") {
			t.Fatalf("no continuation: %q", l)
		}
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		chunk[len(chunk)-2], chunk[len(chunk)-1] = '\r', '\n'
		for i := 0; i < 30; i++ {
			if _, err := r.c.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		r.c.Close()
		// Another client is served, and the abandoned message is not in
		// the mailbox: wait for the gateway to have dropped its upstream
		// (Dovecot then aborts the APPEND) by polling the mailbox state.
		c := gw.login(t, testUser, pass, nil)
		for deadline := time.Now().Add(10 * time.Second); ; {
			st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
			if err != nil {
				t.Fatal(err)
			}
			if *st.NumMessages != *before.NumMessages {
				t.Fatalf("INBOX has %d messages after an abandoned APPEND, want %d", *st.NumMessages, *before.NumMessages)
			}
			if time.Now().After(deadline) {
				break
			}
			if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond) // observing that nothing arrives; not synchronisation
		}
	})
	t.Run("APPEND over the limit", func(t *testing.T) {
		r := gw.raw(t, true)
		if l := last(r.cmd("a", "LOGIN "+testUser+" "+pass)); !strings.HasPrefix(l, "a OK") {
			t.Fatal(l)
		}
		l := last(r.cmd("b", fmt.Sprintf("APPEND INBOX {%d}", 200<<20)))
		if !strings.HasPrefix(l, "b NO") {
			t.Fatalf("a 200 MB APPEND answered %q, want NO [TOOBIG]", l)
		}
		if l := last(r.cmd("c", "NOOP")); !strings.HasPrefix(l, "c OK") {
			t.Errorf("session broken after refused APPEND: %q", l)
		}
	})
	after, err := direct.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *after.NumMessages != *before.NumMessages {
		t.Fatalf("INBOX count changed: %v %d -> %d", err, *before.NumMessages, *after.NumMessages)
	}
}

func TestIMAPDovecotUpstreamDies(t *testing.T) {
	old, gw := dovecotGateway(t)
	pass := old.Password(testUser)
	old.Deliver(t, testUser, "INBOX", msgN(1, 500))
	c := gw.login(t, testUser, pass, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idler := gw.login(t, testUser, pass, nil)
	if _, err := idler.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := idler.Idle()
	if err != nil {
		t.Fatal(err)
	}
	old.Kill()

	// The IDLE client is told, not left hanging: its IDLE ends with an error
	// or the connection closes.
	select {
	case <-idler.Closed():
	case <-waitErr(idle.Wait):
	case <-time.After(60 * time.Second):
		t.Fatal("IDLE client still hanging 60s after the provider died")
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Flags: true}).Collect()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("FETCH succeeded with the provider down")
		}
		t.Logf("client got: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("FETCH still hanging 90s after the provider died")
	}
	// New logins get a clear temporary failure.
	c2 := gw.dial(t, nil)
	wantCode(t, c2.Login(testUser, pass).Wait(), imap.ResponseCodeUnavailable)
}

func waitErr(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func TestIMAPDovecotReconnect(t *testing.T) {
	old, gw := dovecotGateway(t)
	pass := old.Password(testUser)
	old.Deliver(t, testUser, "INBOX", msgN(1, 500))
	old.Deliver(t, testUser, "INBOX", msgN(2, 500))
	c := gw.login(t, testUser, pass, nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	fetchAll := func() ([]*imapclient.FetchMessageBuffer, error) {
		return c.Fetch(imap.SeqSetNum(1, 2), &imap.FetchOptions{UID: true}).Collect()
	}
	// The provider restarts: the connection is reset under the session.
	// Nothing changed in the mailbox, so the session reconnects, selects
	// INBOX again and the client notices nothing.
	old.Restart(t)
	msgs, err := fetchAll()
	if err != nil || len(msgs) != 2 {
		t.Fatalf("after a provider restart: %v, %d messages", err, len(msgs))
	}
	// Restart again and let mail arrive meanwhile: the client's message
	// numbers could now lie, so it must be told to reconnect rather than
	// act on the wrong messages.
	old.Restart(t)
	old.Deliver(t, testUser, "INBOX", msgN(3, 500))
	if _, err := fetchAll(); err == nil {
		t.Fatal("FETCH went on after the mailbox changed behind a lost connection")
	}
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("client not disconnected after the mailbox changed behind a lost connection")
	}
	// A fresh session sees the new message.
	c2 := gw.login(t, testUser, pass, nil)
	sel, err := c2.Select("INBOX", nil).Wait()
	if err != nil || sel.NumMessages != 3 {
		t.Fatalf("new session: %v %+v", err, sel)
	}
}
