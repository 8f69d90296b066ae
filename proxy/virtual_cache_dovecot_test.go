package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
)

// vcView is what one SELECT INBOX + UID SEARCH ALL + UID FETCH 1:*
// (BODY.PEEK[HEADER]) through the gateway shows: virtual UID -> SHA-256
// of the header (each test message has its own Message-ID). Not the whole
// message: a FETCH of a few whole messages copies them to new (copy on
// read), after which old's expunges no longer concern them.
func vcView(t *testing.T, c *imapclient.Client, when string) map[imap.UID][32]byte {
	t.Helper()
	return vcViewOf(t, c, "INBOX", when)
}

// vcViewOf is vcView of any mailbox.
func vcViewOf(t *testing.T, c *imapclient.Client, mailbox, when string) map[imap.UID][32]byte {
	t.Helper()
	sel, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		t.Fatalf("%s: SELECT %s: %v", when, mailbox, err)
	}
	res, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatalf("%s: UID SEARCH ALL: %v", when, err)
	}
	body := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true}
	msgs, err := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatalf("%s: UID FETCH 1:*: %v", when, err)
	}
	out := map[imap.UID][32]byte{}
	for _, m := range msgs {
		out[m.UID] = sha256.Sum256(m.FindBodySection(body))
	}
	searched := res.AllUIDs()
	if int(sel.NumMessages) != len(out) || len(searched) != len(out) || len(msgs) != len(out) {
		t.Fatalf("%s: EXISTS %d, UID SEARCH ALL %d UIDs, UID FETCH %d answers for %d UIDs: they must agree (invariant 3)",
			when, sel.NumMessages, len(searched), len(msgs), len(out))
	}
	for _, u := range searched {
		if _, ok := out[u]; !ok {
			t.Fatalf("%s: UID SEARCH ALL names UID %d, UID FETCH 1:* does not", when, u)
		}
	}
	return out
}

// vcHeader is the SHA-256 of msgN(n, 700)'s header, blank line included.
func vcHeader(n int) [32]byte {
	b := msgN(n, 700)
	return sha256.Sum256(b[:bytes.Index(b, []byte("\r\n\r\n"))+4])
}

// vcHashes is the sorted multiset of a view's SHA-256s.
func vcHashes(v map[imap.UID][32]byte) [][32]byte {
	var out [][32]byte
	for _, h := range v {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b [32]byte) int { return slices.Compare(a[:], b[:]) })
	return out
}

// TestVirtualReselectSeesEveryChange checks the session's cached UID list
// of old (vcache): a client re-SELECTing INBOX in state migrating, in the
// same session, sees exactly the union of old and new after every kind of
// change on either side (a delivery to old, an expunge in old by another
// client, an expunge plus a delivery that leave the count equal, a change
// while no mailbox is selected, a delivery to new, a STATUS or another
// folder's SELECT in between), and a UID keeps naming the same bytes.
func TestVirtualReselectSeesEveryChange(t *testing.T) {
	m := startMigration(t, testUser)
	var seeds []dovetest.SeedMessage
	for i := range 5 {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: msgN(i+1, 700), InternalDate: time.Date(2024, 5, 1, 9, i, 0, 0, time.UTC)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	m.new.Deliver(t, testUser, "INBOX", msgN(100, 700)) // exists only in new
	m.old.CreateMailbox(t, testUser, "Archivio")
	m.old.Deliver(t, testUser, "Archivio", msgN(200, 700))
	mcFlip(t, m, config.StateMigrating, false)

	pass := m.old.Password(testUser)
	c := m.gw.login(t, testUser, pass, nil)
	// Another client of old, as the member's phone still pointed at the
	// old provider would be: it expunges there.
	direct := m.old.Dial(t, testUser)
	if _, err := direct.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	want := map[[32]byte]bool{} // the bytes the union must hold
	for i := range seeds {
		want[vcHeader(i+1)] = true
	}
	want[vcHeader(100)] = true
	named := map[imap.UID][32]byte{} // every UID the client was shown
	check := func(when string) {
		t.Helper()
		v := vcView(t, c, when)
		var wantHashes [][32]byte
		for h := range want {
			wantHashes = append(wantHashes, h)
		}
		slices.SortFunc(wantHashes, func(a, b [32]byte) int { return slices.Compare(a[:], b[:]) })
		if got := vcHashes(v); !slices.EqualFunc(got, wantHashes, func(a, b [32]byte) bool { return a == b }) {
			t.Fatalf("%s: the gateway shows %d messages, the union of old and new is %d (or other bytes)", when, len(got), len(wantHashes))
		}
		for u, h := range v {
			if old, ok := named[u]; ok && old != h {
				t.Fatalf("%s: UID %d now names other bytes (invariant 1)", when, u)
			}
			named[u] = h
		}
	}
	deliverOld := func(n int) {
		t.Helper()
		m.old.Deliver(t, testUser, "INBOX", msgN(n, 700))
		want[vcHeader(n)] = true
	}
	expungeOld := func(n int) {
		t.Helper()
		// The direct client finds message n by its bytes' Message-ID.
		res, err := direct.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: msgID(n)}}}, nil).Wait()
		if err != nil || len(res.AllUIDs()) != 1 {
			t.Fatalf("old: find message %d: %v (%v)", n, err, res)
		}
		set := imap.UIDSetNum(res.AllUIDs()...)
		if err := direct.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if err := direct.UIDExpunge(set).Close(); err != nil {
			t.Fatal(err)
		}
		delete(want, vcHeader(n))
	}

	check("first SELECT")
	check("SELECT again, nothing changed")

	deliverOld(6)
	check("after a delivery to old")

	expungeOld(2)
	check("after another client expunged a message in old")

	expungeOld(3)
	deliverOld(7)
	check("after an expunge and a delivery in old (same count)")

	if err := c.Unselect().Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Noop().Wait(); err != nil { // the gateway polls old meanwhile
		t.Fatal(err)
	}
	deliverOld(8)
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	expungeOld(4)
	check("after changes in old while no mailbox was selected")

	m.new.Deliver(t, testUser, "INBOX", msgN(101, 700))
	want[vcHeader(101)] = true
	check("after a delivery to new")

	if _, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	deliverOld(9)
	check("after STATUS INBOX and a delivery to old")

	if _, err := c.Select("Archivio", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	expungeOld(1)
	check("after SELECT of another folder and an expunge in old")
}

// msgID is the Message-ID header value of msgN(n, ...).
func msgID(n int) string { return "<" + strconv.Itoa(n) + "@test>" }

// vcExpunge expunges message msgN(n, ...) from mailbox through c, a
// direct client of old, as another of the member's clients would.
func vcExpunge(t *testing.T, c *imapclient.Client, mailbox string, n int) {
	t.Helper()
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	res, err := c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: msgID(n)}}}, nil).Wait()
	if err != nil || len(res.AllUIDs()) != 1 {
		t.Fatalf("old: find message %d in %s: %v (%v)", n, mailbox, err, res)
	}
	set := imap.UIDSetNum(res.AllUIDs()...)
	if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(set).Close(); err != nil {
		t.Fatal(err)
	}
}

// TestVirtualSharedOldList checks the list of old's UIDs that sessions
// share through the map cache (store.OldList): each new session sees
// exactly the union of old and new after a delivery to old, an expunge in
// old, an expunge plus a delivery that leave the count equal, and a folder
// deleted and made again in old with the same UIDNEXT and EXISTS but
// another UIDVALIDITY.
func TestVirtualSharedOldList(t *testing.T) {
	m := startMigration(t, testUser)
	var seeds []dovetest.SeedMessage
	for i := range 6 {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: msgN(i+1, 700), InternalDate: time.Date(2024, 5, 1, 9, i, 0, 0, time.UTC)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	m.old.CreateMailbox(t, testUser, "Archivio")
	for n := 201; n <= 203; n++ {
		m.old.Deliver(t, testUser, "Archivio", msgN(n, 700))
	}
	direct := m.old.Dial(t, testUser)
	vcExpunge(t, direct, "Archivio", 202) // Archivio: UIDs 1 and 3, UIDNEXT 4
	mcFlip(t, m, config.StateMigrating, false)
	pass := m.old.Password(testUser)

	want := map[string]map[[32]byte]bool{"INBOX": {}, "Archivio": {vcHeader(201): true, vcHeader(203): true}}
	for i := range seeds {
		want["INBOX"][vcHeader(i+1)] = true
	}
	named := map[string]map[imap.UID][32]byte{"INBOX": {}, "Archivio": {}}
	fresh := func(mailbox, when string) {
		t.Helper()
		c := m.gw.login(t, testUser, pass, nil)
		v := vcViewOf(t, c, mailbox, when)
		if err := c.Logout().Wait(); err != nil {
			t.Fatal(err)
		}
		var wantHashes [][32]byte
		for h := range want[mailbox] {
			wantHashes = append(wantHashes, h)
		}
		slices.SortFunc(wantHashes, func(a, b [32]byte) int { return slices.Compare(a[:], b[:]) })
		if got := vcHashes(v); !slices.EqualFunc(got, wantHashes, func(a, b [32]byte) bool { return a == b }) {
			t.Fatalf("%s: a new session shows %d messages in %s, the union of old and new is %d (or other bytes)", when, len(got), mailbox, len(wantHashes))
		}
		if mailbox != "INBOX" {
			return // old changed its UIDVALIDITY under Archivio: its UIDs name other messages
		}
		for u, h := range v {
			if old, ok := named[mailbox][u]; ok && old != h {
				t.Fatalf("%s: UID %d now names other bytes (invariant 1)", when, u)
			}
			named[mailbox][u] = h
		}
	}
	shared := func(mailbox string) bool {
		e, err := m.maps.Get(context.Background(), testUser, mailbox)
		if err != nil {
			t.Fatal(err)
		}
		e.Lock()
		defer e.Unlock()
		return e.Old != nil
	}
	deliver := func(n int) {
		t.Helper()
		m.old.Deliver(t, testUser, "INBOX", msgN(n, 700))
		want["INBOX"][vcHeader(n)] = true
	}
	expunge := func(n int) {
		t.Helper()
		vcExpunge(t, direct, "INBOX", n)
		delete(want["INBOX"], vcHeader(n))
	}

	fresh("INBOX", "first session")
	if !shared("INBOX") {
		t.Fatal("after a SELECT of INBOX, the map cache holds no list of old's UIDs for other sessions")
	}
	fresh("INBOX", "second session, nothing changed")

	deliver(7)
	fresh("INBOX", "after a delivery to old")
	expunge(2)
	fresh("INBOX", "after an expunge in old")
	expunge(3)
	deliver(8)
	fresh("INBOX", "after an expunge and a delivery in old (same count)")
	fresh("INBOX", "nothing changed since")

	fresh("Archivio", "Archivio, first session")
	if !shared("Archivio") {
		t.Fatal("after a SELECT of Archivio, the map cache holds no list of old's UIDs for other sessions")
	}
	st, err := direct.Status("Archivio", &imap.StatusOptions{UIDValidity: true, UIDNext: true, NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Unselect().Wait(); err != nil {
		t.Fatal(err)
	}
	m.old.Doveadm(t, "mailbox", "delete", "-u", testUser, "Archivio")
	m.old.CreateMailbox(t, testUser, "Archivio")
	for n := 211; n <= 213; n++ {
		m.old.Deliver(t, testUser, "Archivio", msgN(n, 700))
	}
	vcExpunge(t, direct, "Archivio", 211) // UIDs 2 and 3, UIDNEXT 4 again
	want["Archivio"] = map[[32]byte]bool{vcHeader(212): true, vcHeader(213): true}
	st2, err := direct.Status("Archivio", &imap.StatusOptions{UIDValidity: true, UIDNext: true, NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st2.UIDValidity == st.UIDValidity || st2.UIDNext != st.UIDNext || *st2.NumMessages != *st.NumMessages {
		t.Fatalf("premise: Archivio made again in old should keep UIDNEXT %d and EXISTS %d under another UIDVALIDITY than %d; it has UIDVALIDITY %d, UIDNEXT %d, EXISTS %d",
			st.UIDNext, *st.NumMessages, st.UIDValidity, st2.UIDValidity, st2.UIDNext, *st2.NumMessages)
	}
	fresh("Archivio", "after Archivio was made again in old (other UIDVALIDITY, same UIDNEXT and EXISTS)")
}

// TestVirtualRolesWithoutList checks that the special-use pairs, made
// when first needed rather than at login, serve a session that never
// LISTs: it SELECTs INBOX, then APPENDs to and SELECTs old's "Posta
// inviata", which must land in new's "Sent", not in a folder of that name.
func TestVirtualRolesWithoutList(t *testing.T) {
	dovetest.Require(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: testUser, Password: "old-pw"}},
		Delimiter: ".", SpecialUse: map[string]string{`\Sent`: "Posta inviata", `\Trash`: "Cestino"}})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: testUser, Password: "new-pw"}},
		Delimiter: "/", SpecialUse: map[string]string{`\Sent`: "Sent", `\Trash`: "Trash"}})
	old.SeedMaildir(t, testUser, []dovetest.SeedMessage{
		{Mailbox: "INBOX", Body: msgN(1, 300)},
		{Mailbox: "Posta inviata", Body: msgN(2, 300), Flags: []string{`\Seen`}},
	})
	m := migrationOn(t, old, nw, testUser)
	mcFlip(t, m, config.StateMigrating, false)
	c := m.gw.login(t, testUser, "old-pw", nil)
	if sel, err := c.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 1 {
		t.Fatalf("SELECT INBOX in migrating: %v %+v", err, sel)
	}
	sent := []byte("From: giulia\r\nSubject: inviata\r\n\r\nciao\r\n")
	ap := c.Append("Posta inviata", int64(len(sent)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	if _, err := ap.Write(sent); err != nil {
		t.Fatal(err)
	}
	if err := ap.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ap.Wait(); err != nil {
		t.Fatalf("APPEND to Posta inviata: %v", err)
	}
	if sel, err := c.Select("Posta inviata", nil).Wait(); err != nil || sel.NumMessages != 2 {
		t.Fatalf("Posta inviata in migrating should show old's message and the appended one: %v %+v", err, sel)
	}
	direct := nw.Dial(t, testUser)
	st, err := direct.Status("Sent", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 1 {
		t.Fatalf("new's Sent should hold the appended message: %v %+v", err, st)
	}
	list, err := direct.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list {
		if l.Mailbox == "Posta inviata" {
			t.Fatal(`new has a folder "Posta inviata": the gateway did not map old's \Sent to new's`)
		}
	}
}
