package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync"
)

// migration is a gateway in front of two real Dovecots, old and new, with
// the new side logged into with new's master user, a bbolt store and a
// router whose states the test flips.
type migration struct {
	old, new *dovetest.Server
	gw       *testGateway
	router   *store.Router
	st       store.Store
	maps     *store.MapCache
	domain   string
	opts     Options
	ca       *certs.TestCA
}

func startMigration(t *testing.T, users ...string) *migration {
	t.Helper()
	dovetest.Require(t)
	old, nw := dovetest.StartPair(t, users...)
	return migrationOn(t, old, nw, users[0])
}

// migrationOn puts a gateway in front of given old and new servers.
func migrationOn(t *testing.T, old, nw *dovetest.Server, firstUser string) *migration {
	t.Helper()
	users := []string{firstUser}
	dir := t.TempDir()
	masterFile := filepath.Join(dir, "new.master")
	if err := os.WriteFile(masterFile, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	domain := users[0][strings.IndexByte(users[0], '@')+1:]
	cfg := &config.Config{
		Server: config.Server{Hostname: "localhost"},
		Providers: map[string]*config.Provider{
			"old": {IMAP: "imaps://" + old.IMAPSAddr, SMTP: "smtps://" + old.SubmissionAddr, Auth: config.AuthPassthrough, CA: old.CAFile},
			"new": {IMAP: "imaps://" + nw.IMAPSAddr, SMTP: "smtps://" + nw.SubmissionAddr, Auth: config.AuthMaster, CA: nw.CAFile,
				MasterUser: nw.MasterUser, MasterPasswordFile: masterFile, MasterStyle: config.MasterStyleSASL},
		},
		Domains: map[string]*config.Domain{domain: {Old: "old", New: "new", State: config.StateOld}},
	}
	for name, p := range cfg.Providers {
		p.Name = name
	}
	for name, d := range cfg.Domains {
		d.Name = name
	}
	st, err := bolt.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	router, err := store.NewRouter(context.Background(), cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	maps := store.NewMapCache(st, 100)
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	var opts Options
	gw := startGatewayOpts(t, ca, cfg, func(o *Options) {
		o.Router, o.Maps, o.Copier = router, maps, sync.Copier{}
		opts = *o
	})
	return &migration{old: old, new: nw, gw: gw, router: router, st: st, maps: maps, domain: domain, opts: opts, ca: ca}
}

// startGatewayOpts is startTestGateway with options of the migration.
func startGatewayOpts(t *testing.T, ca *certs.TestCA, cfg *config.Config, more func(*Options)) *testGateway {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Config: cfg, Backends: bs, Log: testLogger(t), TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}}
	more(&opts)
	srv := NewIMAP(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln)
	t.Cleanup(func() { srv.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	return &testGateway{imapsAddr: ln.Addr().String(), pool: pool}
}

type seen struct {
	uid   imap.UID
	hash  [32]byte
	flags []imap.Flag
}

// snapshot is what a client holds of INBOX: UIDVALIDITY and, per UID, the
// SHA-256 of the bytes and the flags.
func snapshot(t *testing.T, c *imapclient.Client, mailbox string) (uint32, []seen) {
	t.Helper()
	sel, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages == 0 {
		return sel.UIDValidity, nil
	}
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != int(sel.NumMessages) {
		t.Fatalf("FETCH 1:* answered %d messages, SELECT said %d", len(msgs), sel.NumMessages)
	}
	// The answers may come in any order (each side answers for its
	// messages); each sequence number must come exactly once.
	slices.SortFunc(msgs, func(a, b *imapclient.FetchMessageBuffer) int { return int(a.SeqNum) - int(b.SeqNum) })
	var out []seen
	for i, m := range msgs {
		if m.SeqNum != uint32(i+1) {
			t.Fatalf("FETCH 1:* of %d messages answered sequence %d at rank %d", sel.NumMessages, m.SeqNum, i+1)
		}
		out = append(out, seen{uid: m.UID, hash: sha256.Sum256(m.FindBodySection(body)), flags: m.Flags})
	}
	slices.SortFunc(out, func(a, b seen) int { return int(a.uid) - int(b.uid) })
	return sel.UIDValidity, out
}

// maildirFiles hashes every message file of a Maildir (names carry the
// flags): what "old is never written" means on disk.
func maildirFiles(t *testing.T, root string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		dir := filepath.Base(filepath.Dir(path))
		if dir != "cur" && dir != "new" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, path)
		out[rel] = sha256.Sum256(b)
		return nil
	})
	return out
}

func TestMigrationCutoverWithClientAttached(t *testing.T) {
	m := startMigration(t, testUser)
	fixtures := dovetest.LoadFixtures(t)
	var seeds []dovetest.SeedMessage
	for i, f := range fixtures[:6] {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: f.Body, Flags: []string{`\Seen`}[:i%2],
			InternalDate: time.Date(2024, 1, 1+i, 9, 0, 0, 0, time.UTC)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	oldPass := m.old.Password(testUser)

	// 1. In state old, the client syncs through the gateway.
	c := m.gw.login(t, testUser, oldPass, nil)
	uv0, before := snapshot(t, c, "INBOX")
	if len(before) != 6 {
		t.Fatalf("client sees %d messages in state old, want 6", len(before))
	}
	oldFiles := maildirFiles(t, m.old.MaildirPath(testUser))

	// 2. Flip to migrating with the client attached and idle between
	// commands; mail arrives at new (after the MX switch) and, late, at old.
	if _, err := m.router.SetDomain(context.Background(), m.domain, config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	m.new.Deliver(t, testUser, "INBOX", msgN(100, 3000))
	m.old.Deliver(t, testUser, "INBOX", msgN(101, 3000))
	oldFiles = maildirFiles(t, m.old.MaildirPath(testUser)) // the late delivery is the provider's doing

	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	uv1, during := snapshot(t, c, "INBOX")
	if uv1 != uv0 {
		t.Fatalf("UIDVALIDITY changed at the flip: %d -> %d", uv0, uv1)
	}
	if len(during) != 8 {
		t.Fatalf("client sees %d messages in migrating, want 6 old + 2 new arrivals", len(during))
	}
	for i, b := range before {
		if during[i].uid != b.uid || during[i].hash != b.hash {
			t.Fatalf("message %d changed identity: %d/%x -> %d/%x", i, b.uid, b.hash[:4], during[i].uid, during[i].hash[:4])
		}
	}
	maxOld := before[len(before)-1].uid
	if during[6].uid <= maxOld || during[7].uid <= during[6].uid {
		t.Fatalf("new arrivals got UIDs %d, %d; want above %d", during[6].uid, during[7].uid, maxOld)
	}

	// 3. The user's changes during migrating. Reading a message (BODY[],
	// not PEEK) marks it \Seen, in new: old is never written.
	if slices.Contains(before[4].flags, imap.FlagSeen) {
		t.Fatal("fixture 5 should start unseen")
	}
	if _, err := c.Fetch(imap.UIDSetNum(before[4].uid), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Store(imap.UIDSetNum(before[0].uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Collect(); err != nil {
		t.Fatalf("STORE on a not yet copied message: %v", err)
	}
	if _, err := c.Store(imap.UIDSetNum(before[1].uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UIDExpunge(imap.UIDSetNum(before[1].uid)).Collect(); err != nil {
		t.Fatal(err)
	}
	if err := c.Create("Pratiche", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Move(imap.UIDSetNum(before[2].uid), "Pratiche").Wait(); err != nil {
		t.Fatalf("MOVE: %v", err)
	}
	appended := msgN(102, 1000)
	ap := c.Append("INBOX", int64(len(appended)), nil)
	ap.Write(appended)
	ap.Close()
	apData, err := ap.Wait()
	if err != nil || apData.UIDValidity != uv0 || apData.UID <= during[7].uid {
		t.Fatalf("APPEND during migrating: %v %+v", err, apData)
	}
	if err := c.Create("Archivio", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Rename("Archivio", "Archivio 2024", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	_, after := snapshot(t, c, "INBOX")
	var want []imap.UID
	for _, s := range during {
		if s.uid != before[1].uid && s.uid != before[2].uid {
			want = append(want, s.uid)
		}
	}
	want = append(want, apData.UID)
	var got []imap.UID
	for _, s := range after {
		got = append(got, s.uid)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("INBOX after changes: UIDs %v, want %v", got, want)
	}
	if !slices.Contains(after[0].flags, imap.FlagFlagged) {
		t.Errorf("flag set during migrating not shown: %v", after[0].flags)
	}
	if i := slices.IndexFunc(after, func(s seen) bool { return s.uid == before[4].uid }); i < 0 || !slices.Contains(after[i].flags, imap.FlagSeen) {
		t.Errorf("message read during migrating is not \\Seen")
	}

	// 4. Copy whatever is left (the back-fill's job), flip to new, stop old.
	copyAll(t, m, "INBOX")
	if _, err := m.router.SetDomain(context.Background(), m.domain, config.StateNew, true); err != nil {
		t.Fatal(err)
	}
	if got := maildirFiles(t, m.old.MaildirPath(testUser)); !mapsEqual(got, oldFiles) {
		t.Errorf("old's Maildir changed during migrating")
	}
	m.old.Stop()
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	uv2, final := snapshot(t, c, "INBOX")
	if uv2 != uv0 || len(final) != len(after) {
		t.Fatalf("after the flip to new: UIDVALIDITY %d (want %d), %d messages (want %d)", uv2, uv0, len(final), len(after))
	}
	for i := range after {
		if final[i].uid != after[i].uid || final[i].hash != after[i].hash {
			t.Fatalf("message %d differs after the flip to new", after[i].uid)
		}
	}
	// Everything is in new, byte-identical, and the user's changes are there.
	direct := m.new.Dial(t, testUser)
	_, inNew := snapshot(t, direct, "INBOX")
	if len(inNew) != len(final) {
		t.Fatalf("new holds %d messages in INBOX, the client sees %d", len(inNew), len(final))
	}
	hashes := func(l []seen) [][32]byte {
		var h [][32]byte
		for _, s := range l {
			h = append(h, s.hash)
		}
		slices.SortFunc(h, func(a, b [32]byte) int { return strings.Compare(string(a[:]), string(b[:])) })
		return h
	}
	if !slices.Equal(hashes(inNew), hashes(final)) {
		t.Fatal("new's INBOX bytes differ from what the client sees")
	}
	list, err := direct.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range list {
		names = append(names, l.Mailbox)
	}
	for _, want := range []string{"Pratiche", "Archivio 2024"} {
		if !slices.Contains(names, want) {
			t.Errorf("folder %q made during migrating is not in new: %v", want, names)
		}
	}
	if slices.Contains(names, "Archivio") {
		t.Errorf("renamed folder still in new under its old name")
	}
	// A message arriving at new now gets a UID above all others.
	m.new.Deliver(t, testUser, "INBOX", msgN(103, 500))
	_, last := snapshot(t, c, "INBOX")
	if len(last) != len(final)+1 || last[len(last)-1].uid <= apData.UID {
		t.Fatalf("new arrival after the flip: %d messages, last UID %d", len(last), last[len(last)-1].uid)
	}
	// A new session in state new logs in with the password the member
	// always had (old's), checked against the pinned verifier.
	m.gw.login(t, testUser, oldPass, nil)
	c2 := m.gw.dial(t, nil)
	if err := c2.Login(testUser, "not-the-password").Wait(); err == nil {
		t.Fatal("state new: a wrong password was accepted")
	}
}

func mapsEqual(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// copyAll copies every old-only message of mailbox to new with the
// synchronous copier, as the back-fill will.
func copyAll(t *testing.T, m *migration, mailbox string) {
	t.Helper()
	ctx := context.Background()
	oldC := m.old.Dial(t, testUser)
	if _, err := oldC.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	res, err := oldC.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	entry, err := m.maps.Get(ctx, testUser, mailbox)
	if err != nil || entry.M == nil {
		t.Fatalf("no map for %s: %v", mailbox, err)
	}
	bs, err := backend.NewProvider("new", &config.Provider{IMAP: "imaps://" + m.new.IMAPSAddr, CA: m.new.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	newC, err := bs.LoginIMAP(ctx, testUser, m.new.Password(testUser), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer newC.Close()
	oldUp := &backend.IMAPConn{Client: oldC}
	for _, o := range res.AllUIDs() {
		entry.Lock()
		v, ok := entry.M.ByOld(store.UID(o))
		if !ok && store.UID(o) >= entry.M.Frozen {
			v = entry.M.AddOld(store.UID(o))
			ok = true
		}
		_, n, _ := entry.M.Lookup(v)
		gone := entry.M.IsGone(v)
		entry.Unlock()
		if !ok || gone || n != 0 {
			continue
		}
		if _, err := (sync.Copier{}).CopyToNew(ctx, oldUp, newC, entry, m.maps, mailbox, v, store.UID(o)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigrationSMTPFollowsState: submission goes to the provider the
// state names: old's in state old (the client's own password), new's in
// migrating and new (new's master credentials, the client checked against
// the verifier pinned at its last old login).
func TestMigrationSMTPFollowsState(t *testing.T) {
	const rcpt = "mario.rossi@pec.ordine.example"
	m := startMigration(t, testUser, rcpt)
	smtpSrv := NewSMTP(m.opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go smtpSrv.ServeTLS(ln)
	t.Cleanup(func() { smtpSrv.Close() })
	pass := m.old.Password(testUser)
	// A first IMAP login in state old pins the verifier.
	m.gw.login(t, testUser, pass, nil)

	send := func(body []byte) error {
		c, err := gosmtp.DialTLS(ln.Addr().String(), &tls.Config{RootCAs: m.gw.pool, ServerName: "localhost"})
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", testUser, pass)); err != nil {
			return err
		}
		return c.SendMail(testUser, []string{rcpt}, bytes.NewReader(body))
	}
	count := func(s *dovetest.Server) uint32 {
		c := s.Dial(t, rcpt)
		st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		return *st.NumMessages
	}
	if err := send(msgN(1, 800)); err != nil {
		t.Fatalf("submission in state old: %v", err)
	}
	if count(m.old) != 1 || count(m.new) != 0 {
		t.Fatalf("state old: old has %d, new has %d; want 1, 0", count(m.old), count(m.new))
	}
	if _, err := m.router.SetDomain(context.Background(), m.domain, config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	if err := send(msgN(2, 800)); err != nil {
		t.Fatalf("submission in state migrating: %v", err)
	}
	if count(m.old) != 1 || count(m.new) != 1 {
		t.Fatalf("state migrating: old has %d, new has %d; want 1, 1", count(m.old), count(m.new))
	}
	subs := m.new.Submissions()
	if len(subs) != 1 || !bytes.Equal(subs[0].Data, msgN(2, 800)) {
		t.Fatalf("new's submission endpoint got %d messages (or other bytes)", len(subs))
	}
}

// TestMigrationFolderMap: the client keeps old's folder names, delimiter
// and roles; \Sent on old ("Posta inviata", '.') is \Sent on new ("Sent",
// '/'), and other folders map by name with the delimiter converted.
func TestMigrationFolderMap(t *testing.T) {
	dovetest.Require(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: testUser, Password: "old-pw"}},
		Delimiter: ".", SpecialUse: map[string]string{`\Sent`: "Posta inviata", `\Trash`: "Cestino"}})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: testUser, Password: "new-pw"}},
		Delimiter: "/", SpecialUse: map[string]string{`\Sent`: "Sent", `\Trash`: "Trash"}})
	old.SeedMaildir(t, testUser, []dovetest.SeedMessage{
		{Mailbox: "INBOX", Body: msgN(1, 300)},
		{Mailbox: "Posta inviata", Body: msgN(2, 300), Flags: []string{`\Seen`}},
		{Mailbox: "Posta inviata", Body: msgN(3, 300), Flags: []string{`\Seen`}},
		{Mailbox: "Pratiche.Città", Body: msgN(4, 300)},
	})
	m := migrationOn(t, old, nw, testUser)
	if _, err := m.router.SetDomain(context.Background(), m.domain, config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	c := m.gw.login(t, testUser, "old-pw", nil)
	names := func() map[string]rune {
		list, err := c.List("", "*", nil).Collect()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]rune{}
		for _, l := range list {
			out[l.Mailbox] = l.Delim
		}
		return out
	}
	got := names()
	for _, want := range []string{"INBOX", "Posta inviata", "Pratiche.Città", "Cestino"} {
		if d, ok := got[want]; !ok || d != '.' {
			t.Errorf("LIST in migrating: %q with delimiter %q missing (%v)", want, d, got)
		}
	}
	for _, unwanted := range []string{"Sent", "Trash", "Pratiche/Città"} {
		if _, ok := got[unwanted]; ok {
			t.Errorf("LIST in migrating shows new's own name %q", unwanted)
		}
	}
	sent := []byte("From: giulia\r\nSubject: inviata\r\n\r\nciao\r\n")
	ap := c.Append("Posta inviata", int64(len(sent)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	ap.Write(sent)
	ap.Close()
	if _, err := ap.Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select("Posta inviata", nil).Wait()
	if err != nil || sel.NumMessages != 3 {
		t.Fatalf("Posta inviata in migrating: %v %+v", err, sel)
	}
	sel, err = c.Select("Pratiche.Città", nil).Wait()
	if err != nil || sel.NumMessages != 1 {
		t.Fatalf("Pratiche.Città in migrating: %v %+v", err, sel)
	}
	direct := nw.Dial(t, testUser)
	st, err := direct.Status("Sent", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 1 {
		t.Fatalf("new's Sent should hold the appended message: %v %+v", err, st)
	}
	if _, err := direct.Status("Pratiche/Città", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
		t.Fatalf("Pratiche/Città not made in new: %v", err)
	}
}

// TestMigrationCopyOnRead: a member opening a message that is still only
// in old reads it from old at once, and the message is copied right away,
// ahead of the back-fill; a bulk read is left to the back-fill.
func TestMigrationCopyOnRead(t *testing.T) {
	m := startMigration(t, testUser)
	var seeds []dovetest.SeedMessage
	for i := range 20 {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: msgN(200+i, 2000)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	if _, err := m.router.SetDomain(context.Background(), m.domain, config.StateMigrating, false); err != nil {
		t.Fatal(err)
	}
	c := m.gw.login(t, testUser, m.old.Password(testUser), nil)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	inNew := func() uint32 {
		d := m.new.Dial(t, testUser)
		st, err := d.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		return *st.NumMessages
	}
	body := &imap.FetchItemBodySection{Peek: true}
	// A bulk read (a client's first sync): nothing is copied by it.
	if _, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect(); err != nil {
		t.Fatal(err)
	}
	if n := inNew(); n != 0 {
		t.Fatalf("a bulk read of 20 messages copied %d of them", n)
	}
	// Opening one message: read from old, copied at once, bytes identical.
	got, err := c.Fetch(imap.UIDSetNum(7), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].FindBodySection(body), msgN(206, 2000)) {
		t.Fatalf("opening UID 7: %v, %d answers", err, len(got))
	}
	if n := inNew(); n != 1 {
		t.Fatalf("after opening one message, new holds %d messages, want 1", n)
	}
	_, final := snapshot(t, m.new.Dial(t, testUser), "INBOX")
	if final[0].hash != sha256.Sum256(msgN(206, 2000)) {
		t.Fatal("the copy in new differs from the message in old")
	}
	// The client still sees UID 7 with the same bytes (now served by new).
	got, err = c.Fetch(imap.UIDSetNum(7), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].FindBodySection(body), msgN(206, 2000)) {
		t.Fatalf("UID 7 after its copy: %v, %d answers", err, len(got))
	}
}
