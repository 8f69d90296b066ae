package main

// End-to-end crash test of the virtual mailbox (state migrating): the real
// binary in front of two real Dovecots, killed with SIGKILL while it copies
// messages to the new provider, then restarted on the same store
// (DESIGN.md invariants 1, 3 and 6).

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// Shape of TestServeKill9DuringMigrating.
const (
	killInbox     = 150 // messages seeded in old's INBOX
	killPratiche  = 50  // messages seeded in old's second folder
	killNewOnly   = 3   // messages delivered to new's INBOX only
	killFlagged   = 20  // INBOX messages flagged per round (copy-first)
	killFolderFlg = 3   // second-folder messages flagged per round
	killRounds    = 3   // kill -9 / restart cycles
	// killPollTimeout bounds the wait for the bulk STORE to reach a kill
	// point.
	killPollTimeout = 60 * time.Second
)

const killFolder = "Pratiche"

// Kill modes. The gateway's copy of one message is: FETCH from old, APPEND
// to new, then the mapping committed to the store. To kill it at a chosen
// point of that, the test stops it (SIGSTOP) whenever a new copy shows in
// new, compares a copy of the store file with new's UIDs, and either kills
// it there (SIGKILL) or lets it go on (SIGCONT) to the next copy.
const (
	// killRecorded: every copy in new is recorded in the store.
	killRecorded = iota
	// killUnrecorded: new holds a copy the store does not record yet (its
	// APPEND is done, its mapping not committed).
	killUnrecorded
	// killBlind: not stopped, killed as soon as the copies are seen.
	killBlind
)

// killPoints are the kill points of the rounds: the mode and how many
// copies of the bulk STORE must have reached new's INBOX first.
var killPoints = [killRounds]struct {
	mode  int
	after uint32
	what  string
}{
	{killRecorded, 3, "with every copy in new recorded in the store"},
	{killUnrecorded, 5, "between a copy's APPEND to new and its record in the store"},
	{killBlind, 25, "at once, without stopping it first"},
}

// killMaxProbes bounds the SIGSTOP/inspect/SIGCONT cycles of one round.
const killMaxProbes = 100

// migratingSetup writes a serve configuration for domain example.org in
// state migrating: old passthrough, new logged into with Dovecot's master
// user (SASL PLAIN with an authorization identity), every client listener
// on a free loopback port, admin disabled, the store in the returned
// setup's dir/store.
func migratingSetup(t *testing.T, old, nw *dovetest.Server) *e2eSetup {
	t.Helper()
	s, certFile, keyFile := newE2ESetup(t)
	dir := s.dir
	masterFile := filepath.Join(dir, "new.master")
	if err := os.WriteFile(masterFile, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`[server]
hostname = "localhost"
imaps = %q
imap = %q
smtps = %q
submission = %q
admin = ""

[tls]
cert = %q
key = %q

[store]
path = %q

[providers.old]
imap = "imaps://%s"
smtp = "smtps://%s"
auth = "passthrough"
ca = %q

[providers.new]
imap = "imaps://%s"
smtp = "smtps://%s"
auth = "master"
master_user = %q
master_password_file = %q
master_style = "sasl"
ca = %q

[domains."example.org"]
old = "old"
new = "new"
state = "migrating"
`, s.addrs["imaps"], s.addrs["imap"], s.addrs["smtps"], s.addrs["submission"],
		certFile, keyFile, filepath.Join(dir, "store"),
		old.IMAPSAddr, old.SubmissionAddr, old.CAFile,
		nw.IMAPSAddr, nw.SubmissionAddr, nw.MasterUser, masterFile, nw.CAFile)
	if err := os.WriteFile(s.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// kill9 sends SIGKILL and waits, bounded, until the process is reaped.
func (p *e2eProcess) kill9(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	timer := time.NewTimer(e2eExitTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		t.Fatalf("pecgate serve still running %v after SIGKILL", e2eExitTimeout)
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("pecgate serve ended with %v, not by SIGKILL", p.cmd.ProcessState)
	}
}

// mboxMsg is what a client holds of one message.
type mboxMsg struct {
	hash  [32]byte
	flags []imap.Flag
}

// mboxView is one mailbox as a client sees it after SELECT and
// UID FETCH 1:* (UID FLAGS BODY.PEEK[]).
type mboxView struct {
	uidValidity uint32
	exists      uint32
	msgs        map[imap.UID]mboxMsg
	// problems the FETCH answer itself showed: a UID answered twice, a
	// response without UID or body.
	problems []string
}

func (v *mboxView) has(uid imap.UID) bool {
	_, ok := v.msgs[uid]
	return ok
}

// readMailbox SELECTs (or EXAMINEs) mailbox on c and reads every message:
// UID, flags and the SHA-256 of BODY.PEEK[], each literal streamed into the
// hash.
func readMailbox(c *imapclient.Client, mailbox string, readOnly bool) (*mboxView, error) {
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: readOnly}).Wait()
	if err != nil {
		return nil, fmt.Errorf("select %s: %w", mailbox, err)
	}
	v := &mboxView{uidValidity: sel.UIDValidity, exists: sel.NumMessages, msgs: map[imap.UID]mboxMsg{}}
	if sel.NumMessages == 0 {
		return v, nil
	}
	body := &imap.FetchItemBodySection{Peek: true}
	cmd := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{body}})
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		var uid imap.UID
		var m mboxMsg
		gotBody := false
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = item.UID
			case imapclient.FetchItemDataFlags:
				m.flags = item.Flags
			case imapclient.FetchItemDataBodySection:
				h := sha256.New()
				if _, err := io.Copy(h, item.Literal); err != nil {
					cmd.Close()
					return nil, fmt.Errorf("%s: read literal of seq %d: %w", mailbox, msg.SeqNum, err)
				}
				h.Sum(m.hash[:0])
				gotBody = true
			}
		}
		switch {
		case uid == 0 || !gotBody:
			v.problems = append(v.problems, fmt.Sprintf("seq %d answered without UID or body", msg.SeqNum))
		case v.has(uid):
			v.problems = append(v.problems, fmt.Sprintf("UID %d answered twice", uid))
		default:
			v.msgs[uid] = m
		}
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("%s: UID FETCH 1:*: %w", mailbox, err)
	}
	return v, nil
}

// shortHash is the first bytes of a digest, for messages.
func shortHash(h [32]byte) string { return fmt.Sprintf("%x", h[:6]) }

// killMessage is a small unique message for APPEND or delivery.
func killMessage(kind string, n int) []byte {
	return []byte(fmt.Sprintf("From: Mittente <mittente@example.org>\r\nTo: %s\r\n"+
		"Subject: %s %d\r\nMessage-ID: <%s.%d@example.org>\r\nDate: Mon, 02 Jun 2025 10:00:00 +0200\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"+
		"Messaggio %s numero %d.\r\n", e2eUser, kind, n, kind, n, kind, n))
}

// TestServeKill9DuringMigrating drives `pecgate serve` in state migrating
// (old passthrough, new via Dovecot's master user) and kills it with
// SIGKILL three times, each time while a client's bulk UID STORE over the
// whole INBOX is copying old-only messages to new (copy-first writes), at a
// different point of that copy (killPoints): once with every copy
// recorded, once between a copy's APPEND and the commit of its mapping,
// once wherever it is. After each restart on the same store a
// client must see the same UIDVALIDITY, every UID it ever saw naming the
// same bytes (SHA-256), acknowledged flag changes and APPENDs kept, no
// message twice, EXISTS and SEARCH agreeing; and new's mailboxes, read
// directly, must hold no message twice (invariants 1, 3, 6).
func TestServeKill9DuringMigrating(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	fixtures := dovetest.LoadFixtures(t)
	old, nw := dovetest.StartPair(t, e2eUser)
	oldPass := old.Password(e2eUser)

	// Seed old: INBOX first (dovetest creates the Maildir root for it),
	// then the second folder; every body a distinct fixture variant, the
	// 3 MB fixture left out to keep the copies quick.
	var small []dovetest.Fixture
	for _, f := range fixtures {
		if f.Size < 1<<20 {
			small = append(small, f)
		}
	}
	var seeds []dovetest.SeedMessage
	for i := range killInbox + killPratiche {
		f := small[i%len(small)]
		m := f.SeedMessage(old, f.Variant(i))
		m.Mailbox = "INBOX"
		if i >= killInbox {
			m.Mailbox = killFolder
		}
		m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		seeds = append(seeds, m)
	}
	old.SeedMaildir(t, e2eUser, seeds)
	for i := range killNewOnly {
		nw.Deliver(t, e2eUser, "INBOX", killMessage("arrivato-su-nuovo", i))
	}
	mailboxes := []string{"INBOX", killFolder}

	// What the old provider serves, by UID: the virtual UIDs must be
	// these (invariant 1).
	oldDirect := old.Dial(t, e2eUser)
	oldViews := map[string]*mboxView{}
	for _, mb := range mailboxes {
		v, err := readMailbox(oldDirect, mb, true)
		if err != nil {
			t.Fatal(err)
		}
		oldViews[mb] = v
	}
	oldDirect.Logout().Wait()

	s := migratingSetup(t, old, nw)
	p := startServe(t, bin, s)
	login := func() *imapclient.Client {
		t.Helper()
		c, err := imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Login(e2eUser, oldPass).Wait(); err != nil {
			t.Fatalf("login through the gateway with old's password: %v", err)
		}
		return c
	}

	// seen is everything a client was shown or told (APPENDUID), per
	// mailbox: UID -> bytes. It only grows: nobody expunges.
	seen := map[string]map[imap.UID][32]byte{}
	uidValidity := map[string]uint32{}
	flagged := map[string][]imap.UID{} // acknowledged +FLAGS \Flagged

	c := login()
	for _, mb := range mailboxes {
		v, err := readMailbox(c, mb, false)
		if err != nil {
			t.Fatal(err)
		}
		if len(v.problems) > 0 {
			t.Errorf("%s, first SELECT in migrating: %s", mb, strings.Join(v.problems, "; "))
		}
		want := len(oldViews[mb].msgs)
		if mb == "INBOX" {
			want += killNewOnly
		}
		if int(v.exists) != want || len(v.msgs) != want {
			t.Fatalf("%s, first SELECT in migrating: EXISTS %d, %d messages fetched; want %d (old + new-only)", mb, v.exists, len(v.msgs), want)
		}
		if v.uidValidity != oldViews[mb].uidValidity {
			t.Errorf("%s: virtual UIDVALIDITY %d, old's is %d", mb, v.uidValidity, oldViews[mb].uidValidity)
		}
		for uid, om := range oldViews[mb].msgs {
			if v.msgs[uid].hash != om.hash {
				t.Errorf("%s: virtual UID %d is not old UID %d (sha256 %s, old has %s)", mb, uid, uid, shortHash(v.msgs[uid].hash), shortHash(om.hash))
			}
		}
		uidValidity[mb] = v.uidValidity
		seen[mb] = map[imap.UID][32]byte{}
		for uid, m := range v.msgs {
			seen[mb][uid] = m.hash
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	// Old's UIDs in ascending order, per mailbox: the flags go on the
	// highest ones not yet flagged, which no bulk STORE has reached (it
	// copies in old UID order), so each STORE must copy first.
	oldUIDs := map[string][]imap.UID{}
	for _, mb := range mailboxes {
		for uid := range oldViews[mb].msgs {
			oldUIDs[mb] = append(oldUIDs[mb], uid)
		}
		slices.Sort(oldUIDs[mb])
	}

	newDirect := nw.Dial(t, e2eUser)
	newCount := func() uint32 {
		t.Helper()
		st, err := newDirect.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil || st.NumMessages == nil {
			t.Fatalf("STATUS INBOX on new: %v", err)
		}
		return *st.NumMessages
	}

	for round := range killRounds {
		// 1. Changes that force copies, acknowledged before the kill.
		for _, step := range []struct {
			mailbox string
			n       int
		}{{killFolder, killFolderFlg}, {"INBOX", killFlagged}} {
			if _, err := c.Select(step.mailbox, nil).Wait(); err != nil {
				t.Fatalf("round %d: select %s: %v", round, step.mailbox, err)
			}
			ou := oldUIDs[step.mailbox]
			hi := len(ou) - round*step.n
			var set imap.UIDSet
			for _, uid := range ou[hi-step.n : hi] {
				set.AddNum(uid)
				flagged[step.mailbox] = append(flagged[step.mailbox], uid)
			}
			if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
				t.Fatalf("round %d: UID STORE %v +FLAGS.SILENT (\\Flagged) in %s: %v", round, set, step.mailbox, err)
			}
		}
		body := killMessage("aggiunto", round)
		app := c.Append("INBOX", int64(len(body)), nil)
		app.Write(body)
		app.Close()
		ad, err := app.Wait()
		if err != nil {
			t.Fatalf("round %d: APPEND: %v", round, err)
		}
		if ad.UID == 0 || ad.UIDValidity != uidValidity["INBOX"] {
			t.Fatalf("round %d: APPEND answered UID %d UIDVALIDITY %d; want APPENDUID under %d", round, ad.UID, ad.UIDValidity, uidValidity["INBOX"])
		}
		if _, dup := seen["INBOX"][ad.UID]; dup {
			t.Fatalf("round %d: APPEND got UID %d, which already names another message", round, ad.UID)
		}
		seen["INBOX"][ad.UID] = sha256.Sum256(body)

		// 2. A second client's bulk UID STORE over the whole INBOX: every
		// old-only message is copied to new first, one by one. Kill the
		// gateway during it, at this round's kill point.
		kp := killPoints[round]
		c2 := login()
		if _, err := c2.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("round %d: second client: select INBOX: %v", round, err)
		}
		base := newCount()
		bulkDone := make(chan error, 1)
		go func() {
			bulkDone <- c2.Store(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}},
				&imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close()
		}()
		deadline := time.Now().Add(killPollTimeout)
		// waitCopies polls new until it holds more than n messages; false
		// when the bulk STORE ended first.
		var bulkErr error
		bulkEnded := false
		waitCopies := func(n uint32) (uint32, bool) {
			for {
				if got := newCount(); got > n {
					return got, true
				}
				select {
				case bulkErr = <-bulkDone:
					bulkEnded = true
					return 0, false
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("round %d: the bulk UID STORE copied too little to new in %v", round, killPollTimeout)
				}
			}
		}
		got, ok := waitCopies(base + kp.after - 1)
		probes := 0
		for ok && kp.mode != killBlind {
			p.signal(t, syscall.SIGSTOP)
			probes++
			_, unrecorded := storeVsNew(t, s, newDirect, "INBOX")
			if kp.mode == killRecorded && len(unrecorded) == 0 {
				// An APPEND the gateway sent before it stopped may still
				// complete in new: look again (the look takes a few ms).
				_, unrecorded = storeVsNew(t, s, newDirect, "INBOX")
			}
			if (len(unrecorded) > 0) == (kp.mode == killUnrecorded) {
				break // stopped at the wanted point: killed below
			}
			if probes == killMaxProbes {
				t.Logf("round %d: %d stops missed the point %q; killing where it is", round, probes, kp.what)
				break
			}
			p.signal(t, syscall.SIGCONT)
			got, ok = waitCopies(got)
		}
		if bulkEnded {
			// The gateway's own back-fill engine copies in the background
			// too, so the client's bulk STORE may find nothing left to copy
			// and end first; the kill still lands amid the engine's copies,
			// and the checks below are what matter.
			t.Logf("round %d: the bulk UID STORE ended (%v) before the kill point %q; the kill interrupts the back-fill instead", round, bulkErr, kp.what)
		}
		p.kill9(t)
		if !bulkEnded {
			timer := time.NewTimer(e2eIOTimeout)
			select {
			case bulkErr = <-bulkDone:
			case <-timer.C:
				t.Fatalf("round %d: the bulk UID STORE did not end %v after the gateway died", round, e2eIOTimeout)
			}
			timer.Stop()
		}
		t.Logf("round %d: SIGKILL %s, after %d copies had reached new's INBOX (%d stops to get there); the bulk STORE got: %v",
			round, kp.what, got-base, probes, bulkErr)
		for _, mb := range mailboxes {
			m, unrecorded := storeVsNew(t, s, newDirect, mb)
			copied := 0
			for _, r := range m.Runs {
				if r.New != 0 && r.Old != 0 {
					copied += int(r.N)
				}
			}
			t.Logf("round %d: the store the killed gateway left, %s: %d runs, %d old messages recorded as copied, next virtual UID %d; new UIDs it does not record: %v",
				round, mb, len(m.Runs), copied, m.Next, unrecorded)
		}

		// 3. Restart on the same store; a client checks what it knew.
		p = startServe(t, bin, s)
		c = login()
		for _, mb := range mailboxes {
			checkAfterRestart(t, round, c, nw, newDirect, mb, uidValidity[mb], seen[mb], flagged[mb])
		}
	}
}

// checkAfterRestart compares mailbox, as the client c and as new read
// directly see it, with what the client saw before the kill.
func checkAfterRestart(t *testing.T, round int, c *imapclient.Client, nw *dovetest.Server, newDirect *imapclient.Client, mailbox string, uidValidity uint32, seen map[imap.UID][32]byte, flagged []imap.UID) {
	t.Helper()
	where := fmt.Sprintf("after kill -9 #%d and restart, %s", round+1, mailbox)
	v, err := readMailbox(c, mailbox, false)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	for _, p := range v.problems {
		t.Errorf("%s: FETCH: %s", where, p)
	}
	if v.uidValidity != uidValidity {
		t.Errorf("%s: UIDVALIDITY %d, was %d", where, v.uidValidity, uidValidity)
	}
	// Every UID seen still names the same bytes.
	byHash := map[[32]byte][]imap.UID{}
	for uid, h := range seen {
		byHash[h] = append(byHash[h], uid)
		m, ok := v.msgs[uid]
		switch {
		case !ok:
			t.Errorf("%s: UID %d (sha256 %s) is gone; nobody expunged it", where, uid, shortHash(h))
		case m.hash != h:
			t.Errorf("%s: UID %d now names other bytes: sha256 %s, was %s", where, uid, shortHash(m.hash), shortHash(h))
		}
	}
	for _, uid := range flagged {
		if m, ok := v.msgs[uid]; ok && !slices.Contains(m.flags, imap.FlagFlagged) {
			t.Errorf("%s: UID %d lost the \\Flagged set (and acknowledged) before the kill: flags %v", where, uid, m.flags)
		}
	}
	// Nothing else: no message twice under a second UID.
	var extra []imap.UID
	for uid := range v.msgs {
		if _, ok := seen[uid]; !ok {
			extra = append(extra, uid)
		}
	}
	slices.Sort(extra)
	for _, uid := range extra {
		h := v.msgs[uid].hash
		if prev := byHash[h]; len(prev) > 0 {
			t.Errorf("%s: message shown twice: UID %d has the bytes of UID %v (sha256 %s)", where, uid, prev, shortHash(h))
		} else {
			t.Errorf("%s: unexpected message UID %d (sha256 %s)", where, uid, shortHash(h))
		}
	}
	if int(v.exists) != len(seen) || len(v.msgs) != len(seen) {
		t.Errorf("%s: EXISTS %d, %d messages fetched; the client expects %d", where, v.exists, len(v.msgs), len(seen))
	}
	res, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatalf("%s: UID SEARCH ALL: %v", where, err)
	}
	if n := len(res.AllUIDs()); n != int(v.exists) {
		t.Errorf("%s: UID SEARCH ALL finds %d messages, EXISTS says %d", where, n, v.exists)
	}

	// New, read directly: each message at most once, nothing unknown.
	nv, err := readMailbox(newDirect, nw.MailboxName(mailbox), true)
	if err != nil {
		t.Fatalf("%s: on new: %v", where, err)
	}
	inNew := map[[32]byte][]imap.UID{}
	for uid, m := range nv.msgs {
		inNew[m.hash] = append(inNew[m.hash], uid)
	}
	dups := 0
	for h, uids := range inNew {
		slices.Sort(uids)
		if len(uids) > 1 {
			dups += len(uids) - 1
			t.Errorf("%s: new holds the same message %d times: new UIDs %v (sha256 %s, client UIDs %v)", where, len(uids), uids, shortHash(h), byHash[h])
		}
		if len(byHash[h]) == 0 {
			t.Errorf("%s: new holds a message the client never saw: new UIDs %v (sha256 %s)", where, uids, shortHash(h))
		}
	}
	t.Logf("%s: client sees %d messages (%d expected), new holds %d (%d distinct, %d duplicate copies)",
		where, len(v.msgs), len(seen), len(nv.msgs), len(inNew), dups)
	newDirect.Unselect().Wait()
}

// storeVsNew reads the UID map of mailbox from a copy of the gateway's
// store file (the gateway may be running or stopped: its lock stays on the
// original) and returns it with the UIDs of new's mailbox that it does not
// record. Those are copies whose APPEND completed and whose mapping was
// not committed (yet).
func storeVsNew(t *testing.T, s *e2eSetup, newDirect *imapclient.Client, mailbox string) (*store.Map, []imap.UID) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.dir, "store", bolt.FileName))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, bolt.FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(dir)
	if err != nil {
		t.Fatalf("open a copy of the gateway's store: %v", err)
	}
	defer st.Close()
	var m *store.Map
	err = st.View(context.Background(), func(tx store.Tx) error {
		var err error
		m, err = store.GetMap(tx, e2eUser, mailbox)
		return err
	})
	if err != nil {
		t.Fatalf("the gateway's store has no usable map of %s: %v", mailbox, err)
	}
	if _, err := newDirect.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("examine %s on new: %v", mailbox, err)
	}
	res, err := newDirect.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatalf("UID SEARCH ALL in %s on new: %v", mailbox, err)
	}
	if err := newDirect.Unselect().Wait(); err != nil {
		t.Fatal(err)
	}
	var unrecorded []imap.UID
	for _, n := range res.AllUIDs() {
		if _, ok := m.ByNew(store.UID(n)); !ok {
			unrecorded = append(unrecorded, n)
		}
	}
	return m, unrecorded
}
