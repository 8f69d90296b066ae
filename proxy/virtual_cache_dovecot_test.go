package proxy

import (
	"bytes"
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
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("%s: SELECT INBOX: %v", when, err)
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
