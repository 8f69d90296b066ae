package proxy

// Migration as clients live it: mbsync keeps a local copy of the account
// through old -> migrating -> new and must never download a message twice
// (invariant 1); a client idling across flips and a back-fill sees only
// real changes (invariants 3 and 8); a rollback to old and back to
// migrating loses nothing (invariant 4) and renames nothing (invariant
// 1). Two real Dovecots (old and new) sit behind the gateway, built by
// startMigration (migrate_dovecot_test.go); helpers here are prefixed mc.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/sync"
)

// mcUpdateTimeout bounds the wait for an update that a real change must
// produce (a delivery seen through IDLE).
const mcUpdateTimeout = 10 * time.Second

// mcGatewayCA writes the PEM of the CA that issued the gateway's
// certificate, for external clients (mbsync), and returns its path.
func mcGatewayCA(t *testing.T, m *migration) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gateway-ca.pem")
	if err := os.WriteFile(path, m.ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// mcFlip changes the domain's state as Order IT does, with the gateway
// running and clients attached.
func mcFlip(t *testing.T, m *migration, state string, force bool) {
	t.Helper()
	if _, err := m.router.SetDomain(context.Background(), m.domain, state, force); err != nil {
		t.Fatalf("flip %s to %s: %v", m.domain, state, err)
	}
}

// mcCopyAll is copyAll for any user and mailbox (the client's name, which
// is new's too: both Dovecots use the same delimiter): it copies every
// old-only message with the synchronous copier, as the back-fill will, and
// returns how many it copied.
func mcCopyAll(t *testing.T, m *migration, user, mailbox string) int {
	t.Helper()
	ctx := context.Background()
	oldC := m.old.Dial(t, user)
	if _, err := oldC.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatalf("examine %q on old: %v", mailbox, err)
	}
	res, err := oldC.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	entry, err := m.maps.Get(ctx, user, mailbox)
	if err != nil || entry.M == nil {
		t.Fatalf("no map for %s %q: %v", user, mailbox, err)
	}
	bs, err := backend.NewProvider("new", &config.Provider{IMAP: "imaps://" + m.new.IMAPSAddr, CA: m.new.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	newC, err := bs.LoginIMAP(ctx, user, m.new.Password(user), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer newC.Close()
	oldUp := &backend.IMAPConn{Client: oldC}
	copied := 0
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
			t.Fatalf("copy %q old UID %d (virtual %d): %v", mailbox, o, v, err)
		}
		copied++
	}
	return copied
}

// mcLF is a message as isync stores it in a Maildir: LF line ends.
func mcLF(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

func mcSum(b []byte) string { return clientsSum(b) }

// mcFile is one message file of mbsync's Maildir.
type mcFile struct {
	name  string // "cur/<unique>,U=<near UID>:2,<flags>"
	ino   uint64
	sum   string // SHA-256 of the file less X-TUID
	mtime int64
}

// mcSyncState is one folder's .mbsyncstate (isync 1.4): a header of
// "Key value" lines (FarUidValidity, NearUidValidity, MaxPulledUid, ...),
// an empty line, then one "farUID nearUID flags" line per message.
type mcSyncState struct {
	header  map[string]string
	entries map[uint32]string // far (virtual) UID -> "nearUID flags"
}

func (s mcSyncState) maxFar() uint32 {
	var m uint32
	for u := range s.entries {
		m = max(m, u)
	}
	return m
}

// mcLocal is what mbsync holds locally, per folder (path relative to the
// Maildir root): the message files by their unique name (the file name
// less the Maildir info ":2,<flags>", which a flag change renames), and
// the sync state.
type mcLocal struct {
	files map[string]map[string]mcFile
	state map[string]mcSyncState
}

func mcReadLocal(t *testing.T, root string) mcLocal {
	t.Helper()
	l := mcLocal{files: map[string]map[string]mcFile{}, state: map[string]mcSyncState{}}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || (d.Name() != "cur" && d.Name() != "new") {
			return nil
		}
		folder, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		if l.files[folder] == nil {
			l.files[folder] = map[string]mcFile{}
			l.state[folder] = mcParseState(t, filepath.Join(filepath.Dir(path), ".mbsyncstate"))
		}
		ents, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			p := filepath.Join(path, e.Name())
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, err := os.Stat(p)
			if err != nil {
				return err
			}
			var ino uint64
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				ino = uint64(st.Ino)
			}
			unique, _, _ := strings.Cut(e.Name(), ":2,")
			if _, dup := l.files[folder][unique]; dup {
				t.Fatalf("%s: two files named %s", folder, unique)
			}
			l.files[folder][unique] = mcFile{name: filepath.Join(d.Name(), e.Name()), ino: ino, sum: mcSum(clientsStripTUID(b)), mtime: info.ModTime().Unix()}
		}
		return fs.SkipDir
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mcParseState(t *testing.T, path string) mcSyncState {
	t.Helper()
	s := mcSyncState{header: map[string]string{}, entries: map[uint32]string{}}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return s
	}
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	inHeader := true
	for sc.Scan() {
		line := sc.Text()
		if inHeader {
			if line == "" {
				inHeader = false
				continue
			}
			k, v, _ := strings.Cut(line, " ")
			s.header[k] = v
			continue
		}
		far, rest, ok := strings.Cut(line, " ")
		u, err := strconv.ParseUint(far, 10, 32)
		if !ok || err != nil {
			t.Fatalf("%s: bad entry %q", path, line)
		}
		s.entries[uint32(u)] = rest
	}
	return s
}

// mcMbsync syncs the account through the gateway into the Maildir under
// dir (the same one every time: it keeps its sync state) with Sync Pull,
// and returns the Maildir root and mbsync's verbose output.
func mcMbsync(t *testing.T, mbsync, dir, addr, caFile, user, pass string) (string, []byte) {
	t.Helper()
	root := filepath.Join(dir, "mail")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := mbsyncRC(clientsPort(t, addr), user, pass, caFile, root)
	rcFile := filepath.Join(dir, "mbsyncrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	out := clientsRun(t, nil, []string{"HOME=" + dir}, mbsync, "-V", "-c", rcFile, "all")
	return root, out
}

// mcChanges is what one mbsync run changed locally, per folder.
type mcChanges struct {
	added     map[string][]mcFile // new files
	renamed   map[string][]string // "old name -> new name": flags changed, same inode and bytes
	addedUIDs map[string][]uint32 // new sync state entries (far UIDs)
	changed   map[string][]uint32 // sync state entries whose near UID or flags changed
}

func (c mcChanges) String() string {
	return fmt.Sprintf("added %v, renamed %q, new UIDs %v, changed UIDs %v", mcCountsOf(c.added), c.renamed, c.addedUIDs, c.changed)
}

// mcDiff compares two local copies. A file of before that is gone or
// rewritten (another inode, other bytes or mtime), a folder that came or
// went, or a sync state whose UIDVALIDITY changed or that lost an entry
// fails the test; what else changed is returned.
func mcDiff(t *testing.T, round string, before, after mcLocal) mcChanges {
	t.Helper()
	if got, want := slices.Sorted(maps.Keys(after.files)), slices.Sorted(maps.Keys(before.files)); !slices.Equal(got, want) {
		t.Errorf("%s: local folders %q, before %q", round, got, want)
	}
	c := mcChanges{added: map[string][]mcFile{}, renamed: map[string][]string{}, addedUIDs: map[string][]uint32{}, changed: map[string][]uint32{}}
	for folder, files := range before.files {
		for _, unique := range slices.Sorted(maps.Keys(files)) {
			f := files[unique]
			g, ok := after.files[folder][unique]
			switch {
			case !ok:
				t.Errorf("%s: %s/%s is gone (re-downloaded?)", round, folder, f.name)
			case g.ino != f.ino:
				t.Errorf("%s: %s/%s was rewritten (inode %d -> %d)", round, folder, f.name, f.ino, g.ino)
			case g.sum != f.sum || g.mtime != f.mtime:
				t.Errorf("%s: %s/%s changed: sha256 %s @%d -> %s @%d", round, folder, f.name, f.sum, f.mtime, g.sum, g.mtime)
			case g.name != f.name:
				c.renamed[folder] = append(c.renamed[folder], f.name+" -> "+g.name)
			}
		}
	}
	for folder, files := range after.files {
		for _, unique := range slices.Sorted(maps.Keys(files)) {
			if _, ok := before.files[folder][unique]; !ok {
				c.added[folder] = append(c.added[folder], files[unique])
			}
		}
	}
	for folder, st := range after.state {
		prev := before.state[folder]
		for _, k := range []string{"FarUidValidity", "NearUidValidity"} {
			if st.header[k] != prev.header[k] {
				t.Errorf("%s: %s: %s %q, before %q", round, folder, k, st.header[k], prev.header[k])
			}
		}
		for _, u := range slices.Sorted(maps.Keys(prev.entries)) {
			g, ok := st.entries[u]
			switch {
			case !ok:
				t.Errorf("%s: %s: UID %d (%q) is gone from the sync state", round, folder, u, prev.entries[u])
			case g != prev.entries[u]:
				c.changed[folder] = append(c.changed[folder], u)
			}
		}
		for _, u := range slices.Sorted(maps.Keys(st.entries)) {
			if _, ok := prev.entries[u]; !ok {
				c.addedUIDs[folder] = append(c.addedUIDs[folder], u)
			}
		}
	}
	return c
}

func mcSums(fs []mcFile) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.sum)
	}
	slices.Sort(out)
	return out
}

func mcTail(b []byte) string { return string(clientsTail(b, 6000)) }

// TestMigrationMbsyncCutover: mbsync syncs a 300-message account through
// the gateway in state old, then again after each flip. After old ->
// migrating it downloads exactly the mail that arrived (two messages at
// new, one late at old) and the flag the user set meanwhile (the message
// is renamed, not downloaded again); nothing else changes: every local
// file keeps its name, inode and bytes, and the sync state keeps
// UIDVALIDITY and every UID. After the copy and the flip to new, with old
// stopped, nothing changes; a message arriving at new then comes down
// alone, with a UID above all others.
func TestMigrationMbsyncCutover(t *testing.T) {
	mbsync := clientsRequireTool(t, "mbsync", "isync")
	fixtures := dovetest.LoadFixtures(t)
	var small []dovetest.Fixture
	for _, f := range fixtures {
		if f.Size < 1<<20 {
			small = append(small, f)
		}
	}
	m := startMigration(t, testUser)
	gwCA := mcGatewayCA(t, m)
	folders := []string{"INBOX", "Posta inviata", "Pratiche/Città"}
	var seeds []dovetest.SeedMessage
	for i := range 300 {
		f := small[i%len(small)]
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: m.old.MailboxName(folders[(i/5)%len(folders)]), Body: f.Variant(i),
			Flags: clientsFlagSets[i%len(clientsFlagSets)], InternalDate: f.InternalDate.Add(time.Duration(i) * time.Minute)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	pass := m.old.Password(testUser)
	dir := t.TempDir()
	const inbox = "INBOX"

	// 1. State old: the first, full sync.
	root, out := mcMbsync(t, mbsync, dir, m.gw.imapsAddr, gwCA, testUser, pass)
	l0 := mcReadLocal(t, root)
	total := 0
	for folder, files := range l0.files {
		total += len(files)
		if st := l0.state[folder]; len(st.entries) != len(files) || st.header["FarUidValidity"] == "" {
			t.Fatalf("state old: %s: %d files, sync state %v with %d entries", folder, len(files), st.header, len(st.entries))
		}
	}
	if total != len(seeds) {
		t.Fatalf("state old: mbsync fetched %d messages, the account has %d; mbsync said:\n%s", total, len(seeds), mcTail(out))
	}
	maxOld := l0.state[inbox].maxFar()

	// 2. old -> migrating; mail arrives at new (after the MX switch) and,
	// late, at old; the user flags a message not yet copied (from another
	// client, through the gateway: the message is copied to new first).
	mcFlip(t, m, config.StateMigrating, false)
	arrivals := [][]byte{msgN(9001, 2000), msgN(9002, 3000), msgN(9003, 1500)}
	m.new.Deliver(t, testUser, inbox, arrivals[0])
	m.new.Deliver(t, testUser, inbox, arrivals[1])
	other := m.gw.login(t, testUser, pass, nil)
	if _, err := other.Select(inbox, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	// INBOX's map is made (frozen at old's UIDNEXT): the late delivery
	// at old gets the next virtual UID, not its old one.
	m.old.Deliver(t, testUser, inbox, arrivals[2])
	unflagged, err := other.UIDSearch(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagFlagged}, Flag: []imap.Flag{imap.FlagSeen}}, nil).Wait()
	if err != nil || len(unflagged.AllUIDs()) == 0 {
		t.Fatalf("UID SEARCH SEEN UNFLAGGED: %v %v", err, unflagged)
	}
	flagUID := unflagged.AllUIDs()[0]
	if err := other.Store(imap.UIDSetNum(flagUID), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
		t.Fatalf("UID STORE %d +FLAGS (\\Flagged): %v", flagUID, err)
	}
	if err := other.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	_, out = mcMbsync(t, mbsync, dir, m.gw.imapsAddr, gwCA, testUser, pass)
	l1 := mcReadLocal(t, root)
	ch := mcDiff(t, "migrating", l0, l1)
	var want []string
	for _, a := range arrivals {
		want = append(want, mcSum(mcLF(a)))
	}
	slices.Sort(want)
	if got := mcSums(ch.added[inbox]); !slices.Equal(got, want) || len(ch.added) != 1 {
		t.Errorf("migrating: mbsync downloaded %v (INBOX sha256 %q), want exactly the 3 arrivals in INBOX %q", mcCountsOf(ch.added), got, want)
	}
	if len(ch.addedUIDs) != 1 || len(ch.addedUIDs[inbox]) != 3 || ch.addedUIDs[inbox][0] <= maxOld {
		t.Errorf("migrating: new sync state entries %v, want 3 in INBOX above %d", ch.addedUIDs, maxOld)
	}
	if r := ch.renamed[inbox]; len(ch.renamed) != 1 || len(r) != 1 || !mcGainedFlag(r[0], 'F') {
		t.Errorf("migrating: renamed %q, want one INBOX file gaining F (\\Flagged on UID %d)", ch.renamed, flagUID)
	}
	if !slices.Equal(ch.changed[inbox], []uint32{uint32(flagUID)}) || len(ch.changed) != 1 {
		t.Errorf("migrating: sync state entries changed %v, want INBOX UID %d (flagged)", ch.changed, flagUID)
	}
	t.Logf("migrating: %v", ch)
	if t.Failed() {
		t.Fatalf("migrating: %v; mbsync said:\n%s", ch, mcTail(out))
	}

	// 3. The back-fill copies everything; the flip to new is forced (this
	// gateway's router has no count of what is left); old goes away.
	copied := 0
	for _, f := range folders {
		copied += mcCopyAll(t, m, testUser, m.old.MailboxName(f))
	}
	// mbsync's download of the late arrival copied it on read (a read of a
	// few messages still only in old copies them at once).
	if want := len(seeds) + 1 - 1 - 1; copied != want {
		t.Errorf("back-fill copied %d messages, want %d (the seeded ones and the late arrival, less the one the flag copied and the one read)", copied, want)
	}
	mcFlip(t, m, config.StateNew, true)
	m.old.Stop()
	_, out = mcMbsync(t, mbsync, dir, m.gw.imapsAddr, gwCA, testUser, pass)
	l2 := mcReadLocal(t, root)
	if ch := mcDiff(t, "new", l1, l2); len(ch.added)+len(ch.renamed)+len(ch.addedUIDs)+len(ch.changed) != 0 || t.Failed() {
		t.Fatalf("new: %v, want no change; mbsync said:\n%s", ch, mcTail(out))
	}

	// 4. Mail arriving at new now comes down alone, above all others.
	last := msgN(9004, 2500)
	m.new.Deliver(t, testUser, inbox, last)
	_, out = mcMbsync(t, mbsync, dir, m.gw.imapsAddr, gwCA, testUser, pass)
	l3 := mcReadLocal(t, root)
	ch = mcDiff(t, "new arrival", l2, l3)
	if got := mcSums(ch.added[inbox]); !slices.Equal(got, []string{mcSum(mcLF(last))}) || len(ch.added) != 1 {
		t.Errorf("new arrival: mbsync downloaded %v (INBOX %q), want exactly the arrival", mcCountsOf(ch.added), got)
	}
	if len(ch.addedUIDs) != 1 || len(ch.addedUIDs[inbox]) != 1 || ch.addedUIDs[inbox][0] <= l2.state[inbox].maxFar() {
		t.Errorf("new arrival: new sync state entries %v, want one in INBOX above %d", ch.addedUIDs, l2.state[inbox].maxFar())
	}
	if len(ch.renamed)+len(ch.changed) != 0 {
		t.Errorf("new arrival: %v", ch)
	}
	if t.Failed() {
		t.Logf("mbsync said:\n%s", mcTail(out))
	}
}

// mcGainedFlag reports whether rename ("old -> new" file names) added
// the Maildir info letter f and changed nothing else.
func mcGainedFlag(rename string, f byte) bool {
	from, to, _ := strings.Cut(rename, " -> ")
	fromBase, fromInfo, _ := strings.Cut(from, ":2,")
	toBase, toInfo, _ := strings.Cut(to, ":2,")
	if strings.IndexByte(fromInfo, f) >= 0 {
		return false
	}
	want := []byte(fromInfo + string(f))
	slices.Sort(want)
	return filepath.Base(fromBase) == filepath.Base(toBase) && toInfo == string(want)
}

func mcCountsOf(m map[string][]mcFile) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

// mcUpdates records every unilateral update a client receives, in order.
type mcUpdates struct {
	mu   gosync.Mutex
	log  []string
	wake chan struct{}
}

func newMCUpdates() *mcUpdates { return &mcUpdates{wake: make(chan struct{}, 1)} }

func (r *mcUpdates) add(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *mcUpdates) handler() *imapclient.UnilateralDataHandler {
	return &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { r.add(fmt.Sprintf("EXPUNGE %d", seq)) },
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			switch {
			case d.NumMessages != nil:
				r.add(fmt.Sprintf("EXISTS %d", *d.NumMessages))
			case d.Flags != nil:
				r.add(fmt.Sprintf("FLAGS %v", d.Flags))
			case d.PermanentFlags != nil:
				r.add(fmt.Sprintf("PERMANENTFLAGS %v", d.PermanentFlags))
			default:
				r.add("MAILBOX ?")
			}
		},
		Fetch: func(msg *imapclient.FetchMessageData) {
			buf, err := msg.Collect()
			if err != nil {
				r.add(fmt.Sprintf("FETCH error %v", err))
				return
			}
			r.add(fmt.Sprintf("FETCH %d UID %d FLAGS %v", buf.SeqNum, buf.UID, buf.Flags))
		},
	}
}

func (r *mcUpdates) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

func (r *mcUpdates) reset() {
	r.mu.Lock()
	r.log = nil
	r.mu.Unlock()
}

// waitExists waits, at most mcUpdateTimeout, for an EXISTS update and
// returns every update received up to and including the first one.
func (r *mcUpdates) waitExists() ([]string, bool) {
	deadline := time.After(mcUpdateTimeout)
	for {
		log := r.snapshot()
		if i := slices.IndexFunc(log, func(s string) bool { return strings.HasPrefix(s, "EXISTS ") }); i >= 0 {
			return log[:i+1], true
		}
		select {
		case <-r.wake:
		case <-deadline:
			return log, false
		}
	}
}

// mcIdleUntilExists waits for the EXISTS that a real change (a delivery)
// must bring to an idling client and checks it is the only update, with
// count want.
func mcIdleUntilExists(t *testing.T, what string, r *mcUpdates, want uint32) {
	t.Helper()
	got, ok := r.waitExists()
	if !ok {
		t.Errorf("%s: no EXISTS within %v; updates received: %q", what, mcUpdateTimeout, got)
		return
	}
	if w := []string{fmt.Sprintf("EXISTS %d", want)}; !slices.Equal(got, w) {
		t.Errorf("%s: updates %q, want exactly %q", what, got, w)
	}
}

func mcAlive(t *testing.T, what string, c *imapclient.Client) {
	t.Helper()
	select {
	case <-c.Closed():
		t.Fatalf("%s: the gateway disconnected the client", what)
	default:
	}
}

func mcStopIdle(t *testing.T, what string, idle *imapclient.IdleCommand) {
	t.Helper()
	if err := idle.Close(); err != nil {
		t.Fatalf("%s: DONE: %v", what, err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("%s: IDLE ended with %v", what, err)
	}
}

// mcFetchBody returns the UID and bytes of the message at seq.
func mcFetchBody(t *testing.T, c *imapclient.Client, seq uint32) (imap.UID, []byte) {
	t.Helper()
	msgs, err := c.Fetch(imap.SeqSetNum(seq), &imap.FetchOptions{UID: true}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH %d (UID): %v, %d messages", seq, err, len(msgs))
	}
	uid := msgs[0].UID
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err = c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("UID FETCH %d BODY.PEEK[]: %v, %d messages", uid, err, len(msgs))
	}
	return uid, msgs[0].FindBodySection(body)
}

// TestMigrationFlipWhileIdle: a client idles on INBOX across old ->
// migrating and migrating -> new, with the back-fill copying the whole
// mailbox in between; from migrating on, a second client that logged in
// in migrating idles next to it. Neither is disconnected, and the only
// updates they get are those of real changes: each delivery (to new, or
// late to old) brings exactly one EXISTS, and nothing comes before it.
func TestMigrationFlipWhileIdle(t *testing.T) {
	m := startMigration(t, testUser)
	var seeds []dovetest.SeedMessage
	for i := range 200 {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: msgN(i+1, 800), Flags: clientsFlagSets[i%len(clientsFlagSets)],
			InternalDate: time.Date(2024, 3, 1, 9, 0, i, 0, time.UTC)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	rec := newMCUpdates()
	c := m.gw.login(t, testUser, m.old.Password(testUser), &imapclient.Options{UnilateralDataHandler: rec.handler()})
	uv0, before := snapshot(t, c, "INBOX")
	n := uint32(len(before))
	rec.reset()

	// State old. A delivery to old proves the session is idling upstream.
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	m.old.Deliver(t, testUser, "INBOX", msgN(5100, 900))
	n++
	mcIdleUntilExists(t, "state old, delivery to old", rec, n)
	rec.reset()

	// old -> migrating while idling; then mail arrives at new.
	mcFlip(t, m, config.StateMigrating, false)
	arrival := msgN(5101, 1200)
	m.new.Deliver(t, testUser, "INBOX", arrival)
	n++
	mcIdleUntilExists(t, "old -> migrating while idling, delivery to new", rec, n)
	mcAlive(t, "old -> migrating while idling", c)
	mcStopIdle(t, "migrating", idle)
	if got := rec.snapshot(); len(got) > 1 {
		t.Errorf("migrating: updates after the EXISTS until DONE: %q", got[1:])
	}
	rec.reset()
	uid, body := mcFetchBody(t, c, n)
	if !bytes.Equal(body, arrival) {
		t.Errorf("migrating: the arrival at new, UID %d, reads %d bytes (sha256 %s), want %d (%s)", uid, len(body), mcSum(body), len(arrival), mcSum(arrival))
	}
	uv1, during := snapshot(t, c, "INBOX")
	if uv1 != uv0 || len(during) != int(n) {
		t.Fatalf("migrating: UIDVALIDITY %d (was %d), %d messages (want %d)", uv1, uv0, len(during), n)
	}
	for i, b := range before {
		if during[i].uid != b.uid || during[i].hash != b.hash {
			t.Fatalf("migrating: message %d changed identity: %d/%x -> %d/%x", i+1, b.uid, b.hash[:4], during[i].uid, during[i].hash[:4])
		}
	}
	if uid != during[len(during)-1].uid || uid <= during[len(during)-2].uid {
		t.Errorf("migrating: the arrival at new has UID %d; UIDs %d, %d end the mailbox", uid, during[len(during)-2].uid, during[len(during)-1].uid)
	}
	rec.reset()

	// Idling in migrating, next to a client that logged in in migrating
	// (fresh: the control). A late delivery at old is a real change; then
	// the back-fill copies everything (no change a client may see), and
	// the domain flips to new; then mail arrives at new.
	rec2 := newMCUpdates()
	c2 := m.gw.login(t, testUser, m.old.Password(testUser), &imapclient.Options{UnilateralDataHandler: rec2.handler()})
	if sel, err := c2.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != n {
		t.Fatalf("fresh session in migrating: SELECT INBOX: %v, %v messages (want %d)", err, sel, n)
	}
	rec2.reset()
	idle2, err := c2.Idle()
	if err != nil {
		t.Fatal(err)
	}
	idle, err = c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	m.old.Deliver(t, testUser, "INBOX", msgN(5102, 700))
	n++
	mcIdleUntilExists(t, "fresh session in migrating, late delivery to old", rec2, n)
	mcIdleUntilExists(t, "session flipped live to migrating, late delivery to old", rec, n)
	rec.reset()
	rec2.reset()
	if copied := mcCopyAll(t, m, testUser, "INBOX"); copied != len(seeds)+2 {
		t.Errorf("back-fill copied %d messages, want %d", copied, len(seeds)+2)
	}
	mcFlip(t, m, config.StateNew, true)
	final := msgN(5103, 1000)
	m.new.Deliver(t, testUser, "INBOX", final)
	n++
	mcIdleUntilExists(t, "fresh session: back-fill and migrating -> new while idling, delivery to new", rec2, n)
	mcIdleUntilExists(t, "session flipped live: back-fill and migrating -> new while idling, delivery to new", rec, n)
	for _, cl := range []struct {
		name string
		c    *imapclient.Client
		idle *imapclient.IdleCommand
		rec  *mcUpdates
	}{{"session flipped live", c, idle, rec}, {"fresh session", c2, idle2, rec2}} {
		mcAlive(t, cl.name+": migrating -> new while idling", cl.c)
		mcStopIdle(t, cl.name+": new", cl.idle)
		if got := cl.rec.snapshot(); len(got) > 1 {
			t.Errorf("%s: new: %d updates after the EXISTS until DONE: %q", cl.name, len(got)-1, got[1:min(len(got), 13)])
		}
		uid2, body := mcFetchBody(t, cl.c, n)
		if !bytes.Equal(body, final) || uid2 <= uid {
			t.Errorf("%s: new: the arrival reads %d bytes under UID %d (want %d bytes, UID above %d)", cl.name, len(body), uid2, len(final), uid)
		}
		uv2, after := snapshot(t, cl.c, "INBOX")
		if uv2 != uv0 || len(after) != int(n) {
			t.Fatalf("%s: new: UIDVALIDITY %d (was %d), %d messages (want %d)", cl.name, uv2, uv0, len(after), n)
		}
		for i, d := range during {
			if after[i].uid != d.uid || after[i].hash != d.hash {
				t.Errorf("%s: new: message %d changed identity: %d/%x -> %d/%x", cl.name, i+1, d.uid, d.hash[:4], after[i].uid, after[i].hash[:4])
			}
		}
	}
}

// mcSeenByUID indexes a snapshot by UID.
func mcSeenByUID(l []seen) map[imap.UID]seen {
	out := map[imap.UID]seen{}
	for _, s := range l {
		out[s.uid] = s
	}
	return out
}

func mcUIDs(l []seen) []imap.UID {
	var out []imap.UID
	for _, s := range l {
		out = append(out, s.uid)
	}
	return out
}

// TestMigrationRollback: in migrating the user flags a message and
// appends one (both land in new); the domain goes back to old. A new
// session sees old as it is, untouched (rollback loses nothing: the
// changes stay in new); back in migrating, the flag and the appended
// message are there again, under the virtual UIDs the client knew.
func TestMigrationRollback(t *testing.T) {
	m := startMigration(t, testUser)
	var seeds []dovetest.SeedMessage
	for i := range 8 {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: msgN(i+1, 900), Flags: clientsFlagSets[i%len(clientsFlagSets)],
			InternalDate: time.Date(2024, 4, 1, 9, i, 0, 0, time.UTC)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	pass := m.old.Password(testUser)

	c := m.gw.login(t, testUser, pass, nil)
	uv0, inOld := snapshot(t, c, "INBOX")
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	oldFiles := maildirFiles(t, m.old.MaildirPath(testUser))

	// migrating: flag a message that is only in old (it is copied to new
	// first) and append one (to new).
	mcFlip(t, m, config.StateMigrating, false)
	c = m.gw.login(t, testUser, pass, nil)
	if uv, l := snapshot(t, c, "INBOX"); uv != uv0 || !slices.Equal(mcUIDs(l), mcUIDs(inOld)) {
		t.Fatalf("migrating: UIDVALIDITY %d, UIDs %v; in old %d, %v", uv, mcUIDs(l), uv0, mcUIDs(inOld))
	}
	flagged := inOld[1].uid
	if slices.Contains(inOld[1].flags, imap.FlagFlagged) {
		t.Fatalf("seed: message %d is already \\Flagged", flagged)
	}
	if err := c.Store(imap.UIDSetNum(flagged), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close(); err != nil {
		t.Fatalf("migrating: UID STORE %d +FLAGS (\\Flagged): %v", flagged, err)
	}
	appended := msgN(200, 1100)
	ap := c.Append("INBOX", int64(len(appended)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen}})
	if _, err := ap.Write(appended); err != nil {
		t.Fatal(err)
	}
	if err := ap.Close(); err != nil {
		t.Fatal(err)
	}
	apData, err := ap.Wait()
	if err != nil || apData.UIDValidity != uv0 || apData.UID <= inOld[len(inOld)-1].uid {
		t.Fatalf("migrating: APPEND: %v %+v (UIDVALIDITY %d, last UID %d)", err, apData, uv0, inOld[len(inOld)-1].uid)
	}
	_, during := snapshot(t, c, "INBOX")
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	if len(during) != len(inOld)+1 || during[len(during)-1].uid != apData.UID || during[len(during)-1].hash != sha256Of(appended) {
		t.Fatalf("migrating: INBOX %v, want the old messages and the appended one as UID %d", mcUIDs(during), apData.UID)
	}
	if !slices.Contains(mcSeenByUID(during)[flagged].flags, imap.FlagFlagged) {
		t.Fatalf("migrating: message %d does not show \\Flagged: %v", flagged, mcSeenByUID(during)[flagged].flags)
	}

	// Rollback: back to old. A new session sees old as it was.
	mcFlip(t, m, config.StateOld, false)
	c = m.gw.login(t, testUser, pass, nil)
	uv, back := snapshot(t, c, "INBOX")
	if uv != uv0 || len(back) != len(inOld) {
		t.Fatalf("rolled back to old: UIDVALIDITY %d (want %d), UIDs %v (want %v)", uv, uv0, mcUIDs(back), mcUIDs(inOld))
	}
	for i := range inOld {
		if back[i].uid != inOld[i].uid || back[i].hash != inOld[i].hash || !slices.Equal(clientsFlagSet(back[i].flags), clientsFlagSet(inOld[i].flags)) {
			t.Errorf("rolled back to old: UID %d %x %v, old had %d %x %v", back[i].uid, back[i].hash[:4], back[i].flags, inOld[i].uid, inOld[i].hash[:4], inOld[i].flags)
		}
	}
	if got := maildirFiles(t, m.old.MaildirPath(testUser)); !mapsEqual(got, oldFiles) {
		t.Errorf("old's Maildir changed during migrating")
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}

	// migrating again: the flag and the appended message are back, under
	// the same virtual UIDs.
	mcFlip(t, m, config.StateMigrating, false)
	c = m.gw.login(t, testUser, pass, nil)
	uv, again := snapshot(t, c, "INBOX")
	if uv != uv0 || !slices.Equal(mcUIDs(again), mcUIDs(during)) {
		t.Fatalf("migrating again: UIDVALIDITY %d (want %d), UIDs %v (want %v)", uv, uv0, mcUIDs(again), mcUIDs(during))
	}
	for i := range during {
		if again[i].hash != during[i].hash || !slices.Equal(clientsFlagSet(again[i].flags), clientsFlagSet(during[i].flags)) {
			t.Errorf("migrating again: UID %d %x %v, before the rollback %x %v", again[i].uid, again[i].hash[:4], again[i].flags, during[i].hash[:4], during[i].flags)
		}
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }

// TestMigrationRollbackLateDelivery: after a rollback the MX points at
// old again, so mail arrives there. A client in state old sees it under
// old's next UID; that UID must not be one the client already saw naming
// another message (invariant 1: same UIDVALIDITY, same UID, same bytes),
// such as the message it appended in migrating; back in migrating the
// late delivery is visible once, and what the client saw keeps its UID.
func TestMigrationRollbackLateDelivery(t *testing.T) {
	m := startMigration(t, testUser)
	var seeds []dovetest.SeedMessage
	for i := range 4 {
		seeds = append(seeds, dovetest.SeedMessage{Mailbox: "INBOX", Body: msgN(i+1, 900), Flags: []string{`\Seen`},
			InternalDate: time.Date(2024, 5, 1, 9, i, 0, 0, time.UTC)})
	}
	m.old.SeedMaildir(t, testUser, seeds)
	pass := m.old.Password(testUser)
	// named records every (UID -> SHA-256) the client was shown, under
	// the one UIDVALIDITY it sees throughout.
	named := map[imap.UID][32]byte{}
	var uv0 uint32
	look := func(when string) []seen {
		t.Helper()
		c := m.gw.login(t, testUser, pass, nil)
		uv, l := snapshot(t, c, "INBOX")
		if err := c.Logout().Wait(); err != nil {
			t.Fatal(err)
		}
		if uv0 == 0 {
			uv0 = uv
		}
		if uv != uv0 {
			t.Fatalf("%s: UIDVALIDITY %d, was %d", when, uv, uv0)
		}
		for _, s := range l {
			if h, ok := named[s.uid]; ok && h != s.hash {
				t.Errorf("%s: UID %d names %x, which the client saw as %x before (invariant 1)", when, s.uid, s.hash[:4], h[:4])
			}
			named[s.uid] = s.hash
		}
		return l
	}
	look("state old")

	mcFlip(t, m, config.StateMigrating, false)
	look("migrating") // the maps are made, frozen at old's UIDNEXT
	c := m.gw.login(t, testUser, pass, nil)
	appended := msgN(300, 1000)
	ap := c.Append("INBOX", int64(len(appended)), nil)
	if _, err := ap.Write(appended); err != nil {
		t.Fatal(err)
	}
	if err := ap.Close(); err != nil {
		t.Fatal(err)
	}
	apData, err := ap.Wait()
	if err != nil {
		t.Fatalf("migrating: APPEND: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	during := look("migrating, after APPEND")

	mcFlip(t, m, config.StateOld, false)
	late := msgN(301, 1000)
	m.old.Deliver(t, testUser, "INBOX", late)
	back := look("rolled back to old, after a delivery to old")
	if len(back) != len(seeds)+1 || back[len(back)-1].hash != sha256Of(late) {
		t.Fatalf("rolled back to old: %d messages, want the %d seeded and the late delivery", len(back), len(seeds))
	}
	t.Logf("APPEND in migrating got UID %d; the delivery to old after the rollback shows as UID %d", apData.UID, back[len(back)-1].uid)

	mcFlip(t, m, config.StateMigrating, false)
	again := look("migrating again")
	if len(again) != len(during)+1 {
		t.Errorf("migrating again: %d messages (UIDs %v), want %d: those before the rollback and the late delivery", len(again), mcUIDs(again), len(during)+1)
	}
	n := 0
	for _, s := range again {
		if s.hash == sha256Of(late) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("migrating again: the late delivery shows %d times", n)
	}
}
