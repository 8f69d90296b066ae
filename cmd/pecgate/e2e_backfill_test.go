package main

// End-to-end tests of the back-fill engine (issue 4, "How it is checked";
// DESIGN.md "Copying (sync)", invariants 2, 5 and 6): the real binary
// `pecgate serve` in state migrating, old logged into with the member's own
// password (passthrough, so the engine can copy only after the member has
// logged in once), new with Dovecot's master user, both real Dovecots.
// Whatever the gateway says is checked against what the Dovecots hold, read
// directly.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/admin"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/internal/mutf7"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

// Bounds of the back-fill tests: each keeps a stuck engine from hanging
// the test; none is a performance assertion.
const (
	bfCopyTimeout   = 10 * time.Minute // the 5,000-message back-fill
	bfFinishTimeout = 5 * time.Minute  // the kill loop's back-fill, after the loop
	bfQuotaTimeout  = 2 * time.Minute  // the engine giving up for lack of room
	bfDoneTimeout   = time.Minute      // progress saying done once new holds everything
	bfVerifyTimeout = 5 * time.Minute  // pecgate verify
	bfPollEvery     = 100 * time.Millisecond
)

// Old's folders. "Pratiche.Città" is a child of a \Noselect "Pratiche"
// (Maildir++ has no directory for the parent), as after a client's CREATE.
const (
	bfInbox    = "INBOX"
	bfSent     = "Posta inviata"
	bfPratiche = "Pratiche.Città"
	bfArchive  = "Archivio"
)

// bfMsg is one message as read directly from a Dovecot.
type bfMsg struct {
	uid   imap.UID
	hash  [32]byte
	size  int64
	flags string // sorted, lower case, space separated, without \Recent
	date  time.Time
}

// bfFlags is the comparable form of a flag list: IMAP flags and keywords
// are case-insensitive (RFC 3501 section 2.3.2); \Recent is the server's.
func bfFlags[T ~string](flags []T) string {
	var out []string
	for _, f := range flags {
		l := strings.ToLower(string(f))
		if l != `\recent` {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return strings.Join(slices.Compact(out), " ")
}

// bfReadFolder EXAMINEs mailbox on c and reads every message (UID FLAGS
// INTERNALDATE RFC822.SIZE BODY.PEEK[]), each literal streamed into
// SHA-256, in ascending UID order.
func bfReadFolder(c *imapclient.Client, mailbox string) ([]bfMsg, error) {
	sel, err := c.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, fmt.Errorf("examine %q: %w", mailbox, err)
	}
	var out []bfMsg
	if sel.NumMessages > 0 {
		body := &imap.FetchItemBodySection{Peek: true}
		cmd := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{
			UID: true, Flags: true, InternalDate: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{body}})
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			var m bfMsg
			gotBody := false
			for item := msg.Next(); item != nil; item = msg.Next() {
				switch item := item.(type) {
				case imapclient.FetchItemDataUID:
					m.uid = item.UID
				case imapclient.FetchItemDataFlags:
					m.flags = bfFlags(item.Flags)
				case imapclient.FetchItemDataInternalDate:
					m.date = item.Time
				case imapclient.FetchItemDataRFC822Size:
					m.size = item.Size
				case imapclient.FetchItemDataBodySection:
					h := sha256.New()
					if _, err := io.Copy(h, item.Literal); err != nil {
						cmd.Close()
						return nil, fmt.Errorf("%q: read literal of seq %d: %w", mailbox, msg.SeqNum, err)
					}
					h.Sum(m.hash[:0])
					gotBody = true
				}
			}
			if m.uid == 0 || !gotBody || m.date.IsZero() {
				cmd.Close()
				return nil, fmt.Errorf("%q: seq %d answered without UID, body or INTERNALDATE", mailbox, msg.SeqNum)
			}
			out = append(out, m)
		}
		if err := cmd.Close(); err != nil {
			return nil, fmt.Errorf("%q: UID FETCH 1:*: %w", mailbox, err)
		}
	}
	if err := c.Unselect().Wait(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b bfMsg) int { return int(a.uid) - int(b.uid) })
	return out, nil
}

// bfReadAll reads each of mailboxes on c.
func bfReadAll(t *testing.T, c *imapclient.Client, mailboxes []string) map[string][]bfMsg {
	t.Helper()
	out := map[string][]bfMsg{}
	for _, mb := range mailboxes {
		msgs, err := bfReadFolder(c, mb)
		if err != nil {
			t.Fatal(err)
		}
		out[mb] = msgs
	}
	return out
}

// bfCount sums STATUS MESSAGES over mailboxes on c; a mailbox that does
// not exist (yet) counts 0.
func bfCount(c *imapclient.Client, mailboxes []string) (int, error) {
	n := 0
	for _, mb := range mailboxes {
		st, err := c.Status(mb, &imap.StatusOptions{NumMessages: true}).Wait()
		if err != nil {
			var ie *imap.Error
			// Dovecot: STATUS of a missing mailbox is a plain
			// "NO Mailbox doesn't exist", without a response code.
			if errors.As(err, &ie) && (ie.Code == imap.ResponseCodeNonExistent || ie.Code == imap.ResponseCodeTryCreate || strings.Contains(ie.Text, "doesn't exist")) {
				continue
			}
			return 0, fmt.Errorf("STATUS %q: %w", mb, err)
		}
		if st.NumMessages == nil {
			return 0, fmt.Errorf("STATUS %q: no MESSAGES", mb)
		}
		n += int(*st.NumMessages)
	}
	return n, nil
}

// bfSetup is a serve configuration in state migrating (migratingSetup)
// with the admin API on a loopback port.
type bfSetup struct {
	*e2eSetup
	adminAddr, token string
}

// newBFSetup writes migratingSetup's configuration, then enables the admin
// listener with a token file and adds newExtra (TOML lines) to
// [providers.new].
func newBFSetup(t *testing.T, old, nw *dovetest.Server, newExtra string) *bfSetup {
	t.Helper()
	s := &bfSetup{e2eSetup: migratingSetup(t, old, nw), adminAddr: freeAddrs(t, 1)[0]}
	tok := make([]byte, 24)
	rand.Read(tok)
	s.token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(s.dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte(s.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(s.configPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(data)
	replace := func(old, new string) {
		if n := strings.Count(cfg, old); n != 1 {
			t.Fatalf("migratingSetup's configuration has %q %d times, want once: update newBFSetup\n%s", old, n, cfg)
		}
		cfg = strings.Replace(cfg, old, new, 1)
	}
	replace("admin = \"\"\n", fmt.Sprintf("admin = %q\n", s.adminAddr))
	if newExtra != "" {
		replace("master_style = \"sasl\"\n", "master_style = \"sasl\"\n"+newExtra)
	}
	cfg += fmt.Sprintf("\n[admin]\ntoken_file = %q\n", tokenFile)
	if err := os.WriteFile(s.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// login logs in through the gateway's IMAPS listener; the client is closed
// when the test ends.
func (s *bfSetup) login(t *testing.T, user, password string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("login through the gateway with old's password: %v", err)
	}
	return c
}

// adminProgress asks GET /api/v1/users/{user} for the user's copy
// progress; nil, nil when the gateway does not show it (the field absent,
// or the admin listener not up yet).
func (s *bfSetup) adminProgress(user string) (*store.Progress, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+s.adminAddr+"/api/v1/users/"+url.PathEscape(user), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	ctx, cancel := context.WithTimeout(context.Background(), e2eIOTimeout)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return nil, nil // not listening yet
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("GET /api/v1/users/%s: %s: %s", user, resp.Status, body)
	}
	var u admin.User
	if err := json.Unmarshal(body, &u); err != nil {
		return nil, fmt.Errorf("GET /api/v1/users/%s: %w", user, err)
	}
	if len(u.Progress) == 0 || string(u.Progress) == "null" {
		return nil, nil
	}
	p := new(store.Progress)
	if err := json.Unmarshal(u.Progress, p); err != nil {
		return nil, fmt.Errorf("GET /api/v1/users/%s: progress: %w", user, err)
	}
	return p, nil
}

// bfStoreState is what the gateway's store holds of one user.
type bfStoreState struct {
	prog    *store.Progress // nil: none
	folders *store.FolderMap
	maps    map[string]*store.Map // by mailbox as the store keys it
}

// readStore reads user's progress, folder map and UID maps from the
// gateway's store. While serve runs (its bbolt lock held) it reads a copy
// of the file, which a concurrent write may have torn: the error then says
// so and the caller polls again.
func (s *bfSetup) readStore(user string) (*bfStoreState, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, "store", bolt.FileName))
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, "store-copy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, bolt.FileName), data, 0o600); err != nil {
		return nil, err
	}
	st, err := bolt.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open a copy of the gateway's store: %w", err)
	}
	defer st.Close()
	out := &bfStoreState{maps: map[string]*store.Map{}}
	err = st.View(context.Background(), func(tx store.Tx) error {
		p, err := store.GetProgress(tx, user)
		switch {
		case err == nil:
			out.prog = p
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		fm, err := store.GetFolderMap(tx, user)
		switch {
		case err == nil:
			out.folders = fm
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		names, err := store.ListMaps(tx, user)
		if err != nil {
			return err
		}
		for _, mb := range names {
			if out.maps[mb], err = store.GetMap(tx, user, mb); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// progress returns the user's progress: from the admin API when it shows
// it, else from a copy of the store.
func (s *bfSetup) progress(user string) (p *store.Progress, from string, err error) {
	if p, err := s.adminProgress(user); err != nil || p != nil {
		return p, "admin API", err
	}
	st, err := s.readStore(user)
	if err != nil {
		return nil, "store", err
	}
	return st.prog, "store", nil
}

// newName is the name new gives old folder mb, as the store's folder map
// records it; the test expects the same name (both Dovecots use "." and
// none of the folders has a special-use role).
func (st *bfStoreState) newName(t *testing.T, mb string) string {
	t.Helper()
	if strings.EqualFold(mb, "INBOX") {
		return "INBOX"
	}
	if st.folders == nil {
		t.Fatalf("the store has no folder map")
	}
	for _, f := range st.folders.Folders {
		if f.Old == mb || f.Old == mutf7.Encode(mb) {
			if f.New != mb && f.New != mutf7.Encode(mb) {
				t.Errorf("folder map: old %q -> new %q, want the same name on new", mb, f.New)
			}
			return mb
		}
	}
	t.Errorf("folder map has no entry for old folder %q: %+v", mb, st.folders.Folders)
	return mb
}

// mapOf returns the UID map of old folder mb.
func (st *bfStoreState) mapOf(t *testing.T, mb string) *store.Map {
	t.Helper()
	if m := st.maps[store.CanonicalMailbox(mb)]; m != nil {
		return m
	}
	if m := st.maps[mutf7.Encode(mb)]; m != nil {
		return m
	}
	t.Fatalf("the store has no UID map of %q (it has %q)", mb, slices.Sorted(maps.Keys(st.maps)))
	return nil
}

// bfVerifyResult is the outcome of `pecgate verify`.
type bfVerifyResult struct {
	code                                    int
	stdout, stderr                          string
	ok, missing, dups, mismatches, problems int
}

var bfVerifyCounts = regexp.MustCompile(`ok (\d+), missing (\d+), duplicates (\d+), mismatches (\d+), errors (\d+)`)

// runVerify runs `pecgate verify -config CFG -out DIR -passwords FILE
// USER` (old is passthrough: verify needs the member's password) on the
// stopped gateway's store.
func (s *bfSetup) runVerify(t *testing.T, bin, user, password string) bfVerifyResult {
	t.Helper()
	pwFile := filepath.Join(s.dir, "passwords.csv")
	if err := os.WriteFile(pwFile, []byte("address,password\n"+user+","+password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "verify", "-config", s.configPath, "-out", filepath.Join(s.dir, "audit"), "-passwords", pwFile, user)
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := e2eWait(cmd, bfVerifyTimeout)
	r := bfVerifyResult{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	default:
		t.Fatalf("pecgate verify: %v\nstdout:\n%s\nstderr:\n%s", err, r.stdout, r.stderr)
	}
	m := bfVerifyCounts.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("pecgate verify (exit %d) printed no counts line:\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for i, p := range []*int{&r.ok, &r.missing, &r.dups, &r.mismatches, &r.problems} {
		*p, _ = strconv.Atoi(m[i+1])
	}
	t.Logf("pecgate verify: exit %d in %v: %s", r.code, time.Since(start).Round(time.Millisecond), m[0])
	return r
}

// check asserts that verify proved the migration of want messages
// complete.
func (r bfVerifyResult) check(t *testing.T, want int) {
	t.Helper()
	if r.code != 0 || r.missing != 0 || r.dups != 0 || r.mismatches != 0 || r.problems != 0 || r.ok != want {
		t.Errorf("pecgate verify: exit %d, ok %d (want %d), missing %d, duplicates %d, mismatches %d, errors %d; want exit 0 and all zero\nstdout:\n%s\nstderr:\n%s",
			r.code, r.ok, want, r.missing, r.dups, r.mismatches, r.problems, r.stdout, r.stderr)
	}
}

// bfCompare checks, folder by folder, that new holds every old message
// exactly once (SHA-256), with old's flags (keywords included) and
// INTERNALDATE, at the new UID the store's UID map gives it, and nothing
// else (invariant 2).
func bfCompare(t *testing.T, olds, news map[string][]bfMsg, st *bfStoreState) {
	t.Helper()
	const maxReports = 20
	reports := 0
	report := func(format string, args ...any) {
		t.Helper()
		if reports++; reports <= maxReports {
			t.Errorf(format, args...)
		}
	}
	total := 0
	for mb, om := range olds {
		m := st.mapOf(t, mb)
		byHash := map[[32]byte][]bfMsg{}
		byUID := map[imap.UID]bfMsg{}
		for _, n := range news[mb] {
			byHash[n.hash] = append(byHash[n.hash], n)
			byUID[n.uid] = n
		}
		wanted := map[[32]byte]int{}
		for _, o := range om {
			wanted[o.hash]++
			total++
			copies := byHash[o.hash]
			if len(copies) == 0 {
				report("%s: old UID %d (%d bytes, sha256 %s) is not in new", mb, o.uid, o.size, shortHash(o.hash))
				continue
			}
			n := copies[0]
			if n.flags != o.flags {
				report("%s: old UID %d, new UID %d: flags %q in new, %q in old", mb, o.uid, n.uid, n.flags, o.flags)
			}
			if !n.date.Equal(o.date) {
				report("%s: old UID %d, new UID %d: INTERNALDATE %v in new, %v in old", mb, o.uid, n.uid, n.date, o.date)
			}
			v, ok := m.ByOld(store.UID(o.uid))
			if !ok {
				report("%s: old UID %d has no virtual UID in the store's map", mb, o.uid)
				continue
			}
			_, nu, _ := m.Lookup(v)
			switch mapped, ok := byUID[imap.UID(nu)]; {
			case nu == 0:
				report("%s: old UID %d (virtual %d): the map places it in no new UID, new has it as UID %d", mb, o.uid, v, n.uid)
			case !ok || mapped.hash != o.hash:
				report("%s: old UID %d (virtual %d): the map says new UID %d, which holds other bytes (%s) than old (%s)", mb, o.uid, v, nu, shortHash(mapped.hash), shortHash(o.hash))
			}
		}
		for h, copies := range byHash {
			if len(copies) > wanted[h] {
				var uids []imap.UID
				for _, c := range copies {
					uids = append(uids, c.uid)
				}
				report("%s: new holds sha256 %s %d times (UIDs %v), old %d times", mb, shortHash(h), len(copies), uids, wanted[h])
			}
		}
		t.Logf("%s: old %d messages, new %d", mb, len(om), len(news[mb]))
	}
	if reports > maxReports {
		t.Errorf("... and %d more differences", reports-maxReports)
	}
	t.Logf("compared %d old messages with new: SHA-256, flags, INTERNALDATE, UID map", total)
}

// bfWaitCount polls new (STATUS of mailboxes on c) until it holds want
// messages, logging the progress the gateway shows now and then; it
// returns the time new reached want.
func bfWaitCount(t *testing.T, s *bfSetup, c *imapclient.Client, mailboxes []string, want int, timeout time.Duration, seen *atomic.Int64) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(bfPollEvery)
	defer tick.Stop()
	lastLog := time.Now()
	for {
		n, err := bfCount(c, mailboxes)
		if err != nil {
			t.Fatalf("count new: %v", err)
		}
		if seen != nil {
			seen.Store(int64(n))
		}
		if n >= want {
			return time.Now()
		}
		if time.Since(lastLog) > 10*time.Second {
			lastLog = time.Now()
			p, from, err := s.progress(e2eUser)
			switch {
			case err != nil:
				t.Logf("new holds %d of %d; progress not readable now: %v", n, want, err)
			case p != nil:
				t.Logf("new holds %d of %d; progress (%s): %s %d/%d messages, %d errors", n, want, from, p.State, p.MessagesDone, p.MessagesTotal, len(p.Errors))
			default:
				t.Logf("new holds %d of %d; no progress recorded yet", n, want)
			}
		}
		if time.Now().After(deadline) {
			p, from, err := s.progress(e2eUser)
			t.Fatalf("new holds %d of %d messages after %v; progress (%s): %+v %v", n, want, timeout, from, p, err)
		}
		<-tick.C
	}
}

// bfWaitProgress polls the gateway's progress of user until ok accepts it.
func bfWaitProgress(t *testing.T, s *bfSetup, user string, timeout time.Duration, what string, ok func(*store.Progress) bool) *store.Progress {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(bfPollEvery)
	defer tick.Stop()
	var last *store.Progress
	var lastErr error
	for {
		p, _, err := s.progress(user)
		if err == nil && p != nil {
			last = p
			if ok(p) {
				return p
			}
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("the progress of %s never showed %s in %v; last %+v (%v)", user, what, timeout, last, lastErr)
		}
		<-tick.C
	}
}

// bfStopServe sends SIGTERM and waits for exit 0: the store is single
// process, so verify and the checks below read it only after this.
func bfStopServe(t *testing.T, p *e2eProcess) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, e2eExitTimeout); code != 0 {
		t.Errorf("pecgate serve exited %d after SIGTERM", code)
	}
}

// bfFixtures returns the fixtures under 1 MiB and the larger ones.
func bfFixtures(t *testing.T) (small, large []dovetest.Fixture) {
	t.Helper()
	for _, f := range dovetest.LoadFixtures(t) {
		if f.Size < 1<<20 {
			small = append(small, f)
		} else {
			large = append(large, f)
		}
	}
	if len(small) == 0 || len(large) == 0 {
		t.Fatalf("fixtures: %d small, %d large; want both", len(small), len(large))
	}
	return small, large
}

// bfExtraFlags adds flags and keywords to message i's, so that the account
// mixes them (at most 6 keywords per folder, Maildir holds 26).
func bfExtraFlags(base []string, i int) []string {
	flags := slices.Clone(base)
	for _, x := range []struct {
		every int
		flag  string
	}{
		{3, `\Seen`}, {7, `\Flagged`}, {11, `\Answered`}, {13, "$Forwarded"}, {17, "$label2"},
		{19, "Lavorato"}, {23, `\Draft`}, {29, "$MDNSent"}, {31, "NonJunk"}, {97, `\Deleted`},
	} {
		if i%x.every == 0 {
			flags = append(flags, x.flag)
		}
	}
	return flags
}

// bfReader is a member's client reading through the gateway during a
// back-fill: 16 batches of UID FETCH BODY.PEEK[] of 25 random messages
// (plus, once per folder, every message of at least big bytes), batch b
// when new holds b/16 of the account, each body checked against old's
// SHA-256, and EXISTS and UID SEARCH ALL against old's count.
type bfReader struct {
	name    string
	c       *imapclient.Client
	folders []string
	// reselect: SELECT the batch's folder before each batch (the folders
	// in turn); otherwise SELECT folders[0] once and stay, with a NOOP
	// before each batch.
	reselect bool

	done     chan struct{} // closed when run returns
	bodies   int
	batches  int
	bytes    int64
	problems []string
}

func (r *bfReader) fail(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

func (r *bfReader) run(olds map[string][]bfMsg, total int, big int64, inNew *atomic.Int64, stop <-chan struct{}, seed uint64) {
	defer close(r.done)
	rnd := mrand.New(mrand.NewPCG(5000, seed))
	const batches, perBatch = 16, 25
	tick := time.NewTicker(bfPollEvery)
	defer tick.Stop()
	bigRead := map[string]bool{}
	for b := range batches {
		for inNew.Load() < int64(b*total/batches) {
			select {
			case <-stop:
				r.fail("stopped before batch %d: the back-fill did not get far enough", b)
				return
			case <-tick.C:
			}
		}
		mb := r.folders[b%len(r.folders)]
		ref := olds[mb]
		where := fmt.Sprintf("batch %d (new held %d), %q", b, inNew.Load(), mb)
		switch {
		case r.reselect || b == 0:
			sel, err := r.c.Select(mb, nil).Wait()
			if err != nil {
				r.fail("%s: SELECT: %v", where, err)
				return
			}
			if int(sel.NumMessages) != len(ref) {
				r.fail("%s: SELECT: EXISTS %d, old holds %d", where, sel.NumMessages, len(ref))
			}
		default:
			if err := r.c.Noop().Wait(); err != nil {
				r.fail("%s: NOOP: %v", where, err)
				return
			}
			if mbox := r.c.Mailbox(); mbox == nil || int(mbox.NumMessages) != len(ref) {
				r.fail("%s: after NOOP the client counts %+v messages, old holds %d (a message moving from old to new is no EXISTS or EXPUNGE)", where, mbox, len(ref))
			}
		}
		if res, err := r.c.UIDSearch(&imap.SearchCriteria{}, nil).Wait(); err != nil {
			r.fail("%s: UID SEARCH ALL: %v", where, err)
		} else if got := len(res.AllUIDs()); got != len(ref) {
			r.fail("%s: UID SEARCH ALL finds %d, old holds %d", where, got, len(ref))
		}
		want := map[imap.UID][32]byte{}
		for len(want) < perBatch {
			m := ref[rnd.IntN(len(ref))]
			want[m.uid] = m.hash
		}
		if !bigRead[mb] {
			bigRead[mb] = true
			for _, m := range ref {
				if m.size >= big {
					want[m.uid] = m.hash
				}
			}
		}
		var set imap.UIDSet
		for uid := range want {
			set.AddNum(uid)
		}
		sums, sizes, err := fetchBodiesSHA256(r.c, set)
		if err != nil {
			r.fail("%s: UID FETCH %v BODY.PEEK[]: %v", where, set, err)
			return
		}
		for uid, h := range want {
			switch got, ok := sums[uid]; {
			case !ok:
				r.fail("%s: UID %d: not in the FETCH answer", where, uid)
			case got != h:
				r.fail("%s: UID %d: sha256 %s through the gateway, old has %s", where, uid, shortHash(got), shortHash(h))
			}
			r.bytes += sizes[uid]
		}
		for uid := range sums {
			if _, ok := want[uid]; !ok {
				r.fail("%s: UID %d answered but not asked for", where, uid)
			}
		}
		r.bodies += len(sums)
		r.batches++
	}
}

// TestBackfill5000 back-fills a 5,000-message account (four folders, two
// with non-ASCII or spaced names, mixed flags and keywords, PEC fixture
// variants, three 3 MB PEC envelopes and five 10 MiB messages, 109 MB in
// all) while two clients read through the gateway, then checks the result
// with `pecgate verify` and, independently, message by message against
// old: SHA-256, flags and keywords, INTERNALDATE, the UID map,
// subscriptions.
func TestBackfill5000(t *testing.T) {
	dovetest.Require(t)
	if testing.Short() {
		t.Skip("-short: back-fills 5,000 messages (109 MB)")
	}
	bin := buildPecgate(t)
	small, large := bfFixtures(t)
	old, nw := dovetest.StartPair(t, e2eUser)
	oldPass := old.Password(e2eUser)

	const total = 5000
	folders := []string{bfInbox, bfSent, bfPratiche, bfArchive}
	folderOf := func(i int) string {
		switch {
		case i%10 < 5:
			return bfInbox
		case i%10 < 7:
			return bfSent
		case i%10 < 9:
			return bfPratiche
		}
		return bfArchive
	}
	const bigSize = 10 << 20
	var seeds []dovetest.SeedMessage
	var bytes int64
	for i := range total {
		var m dovetest.SeedMessage
		switch {
		case i%1000 == 500: // five 10 MiB messages, one per thousand
			body, err := io.ReadAll(newGenReader(uint64(i), bigSize))
			if err != nil {
				t.Fatal(err)
			}
			m = dovetest.SeedMessage{Body: body, Flags: bfExtraFlags(nil, i), InternalDate: time.Date(2025, 6, 2, 10, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute)}
		case i%1000 == 250 && i < 3000: // three 3 MB PEC envelopes
			f := large[i%len(large)]
			m = f.SeedMessage(old, f.Variant(i))
			m.Flags = bfExtraFlags(f.Flags, i)
			m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		default:
			f := small[i%len(small)]
			m = f.SeedMessage(old, f.Variant(i))
			m.Flags = bfExtraFlags(f.Flags, i)
			m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		}
		m.Mailbox = folderOf(i)
		bytes += int64(len(m.Body))
		seeds = append(seeds, m)
	}
	seeded := map[[32]byte]bool{}
	for _, m := range seeds {
		seeded[sha256.Sum256(m.Body)] = true
	}
	if len(seeded) != total {
		t.Fatalf("%d distinct bodies among %d seeded messages", len(seeded), total)
	}
	start := time.Now()
	old.SeedMaildir(t, e2eUser, seeds)
	t.Logf("seeded old: %d messages, %.1f MB, in %v", total, float64(bytes)/1e6, time.Since(start).Round(time.Millisecond))
	seeds = nil

	// Old, read directly: the reference for everything below.
	oldDirect := old.Dial(t, e2eUser)
	olds := bfReadAll(t, oldDirect, folders)
	oldDirect.Logout().Wait()
	n := 0
	for _, mb := range folders {
		for _, m := range olds[mb] {
			if !seeded[m.hash] {
				t.Fatalf("old %s UID %d: bytes that were not seeded (sha256 %s)", mb, m.uid, shortHash(m.hash))
			}
			n++
		}
	}
	if n != total {
		t.Fatalf("old holds %d messages, %d were seeded", n, total)
	}

	s := newBFSetup(t, old, nw, "")
	p := startServe(t, bin, s.e2eSetup)
	newDirect := nw.Dial(t, e2eUser)

	// The member logs in once (the engine gets the password) and keeps
	// reading, from two clients: one SELECTs folder after folder, the other
	// keeps INBOX (copied first) selected throughout, as a mail client
	// does, while the back-fill moves its messages from old to new under
	// it. Batch b of each waits until new holds b/16 of the account, so
	// the reads fall all along the back-fill.
	var inNew atomic.Int64
	stop := make(chan struct{})
	reads := []*bfReader{
		{name: "client re-selecting each folder", folders: folders, reselect: true},
		{name: "client staying in INBOX", folders: []string{bfInbox}},
	}
	t0 := time.Now()
	for _, r := range reads {
		r.c = s.login(t, e2eUser, oldPass)
	}
	for i, r := range reads {
		r.done = make(chan struct{})
		go r.run(olds, total, bigSize/2, &inNew, stop, uint64(i))
	}

	end := bfWaitCount(t, s, newDirect, folders, total, bfCopyTimeout, &inNew)
	wall := end.Sub(t0)
	t.Logf("back-fill: new holds all %d messages (%.1f MB) %v after the login: %.0f msgs/s, %.1f MB/s (2 shared cores, TMPDIR=%s)",
		total, float64(bytes)/1e6, wall.Round(time.Millisecond), float64(total)/wall.Seconds(), float64(bytes)/1e6/wall.Seconds(), os.TempDir())
	prog := bfWaitProgress(t, s, e2eUser, bfDoneTimeout, "state done", func(p *store.Progress) bool { return p.State == "done" })
	t.Logf("progress: %s, %d/%d messages, %d/%d bytes, %d errors", prog.State, prog.MessagesDone, prog.MessagesTotal, prog.BytesDone, prog.BytesTotal, len(prog.Errors))
	if prog.MessagesDone != total || prog.MessagesTotal != total || prog.BytesDone != prog.BytesTotal || len(prog.Errors) > 0 {
		t.Errorf("progress at the end: %+v; want %d/%d messages, all bytes, no errors", prog, total, total)
	}

	timer := time.NewTimer(bfDoneTimeout)
	for _, r := range reads {
		select {
		case <-r.done:
		case <-timer.C:
			close(stop)
			<-r.done
		}
	}
	timer.Stop()
	for _, r := range reads {
		for _, pr := range r.problems {
			t.Errorf("%s, during the back-fill: %s", r.name, pr)
		}
		t.Logf("%s read %d bodies (%.1f MB) in %d batches through the gateway during the back-fill, each SHA-256 checked", r.name, r.bodies, float64(r.bytes)/1e6, r.batches)
		r.c.Logout().Wait()
	}

	bfStopServe(t, p)
	st, err := s.readStore(e2eUser)
	if err != nil {
		t.Fatal(err)
	}
	news := map[string][]bfMsg{}
	for _, mb := range folders {
		msgs, err := bfReadFolder(newDirect, st.newName(t, mb))
		if err != nil {
			t.Fatalf("new: %v", err)
		}
		news[mb] = msgs
	}
	bfCompare(t, olds, news, st)

	// Subscriptions carry over (invariant 2).
	subscribed := func(c *imapclient.Client) map[string]bool {
		t.Helper()
		list, err := c.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
		if err != nil {
			t.Fatalf("LIST (SUBSCRIBED): %v", err)
		}
		out := map[string]bool{}
		for _, l := range list {
			if !slices.Contains(l.Attrs, imap.MailboxAttrNonExistent) {
				out[l.Mailbox] = true
			}
		}
		return out
	}
	oldDirect = old.Dial(t, e2eUser)
	oldSubs, newSubs := subscribed(oldDirect), subscribed(newDirect)
	for mb := range oldSubs {
		if !newSubs[mb] {
			t.Errorf("%q is subscribed on old, not on new (new: %v)", mb, slices.Sorted(maps.Keys(newSubs)))
		}
	}
	t.Logf("subscribed on old: %v; on new: %v", slices.Sorted(maps.Keys(oldSubs)), slices.Sorted(maps.Keys(newSubs)))

	s.runVerify(t, bin, e2eUser, oldPass).check(t, total)
	// The name-free evidence list is the SHA-256 of every old message.
	var want []string
	for _, msgs := range olds {
		for _, m := range msgs {
			want = append(want, hex.EncodeToString(m.hash[:]))
		}
	}
	slices.Sort(want)
	lists, _ := filepath.Glob(filepath.Join(s.dir, "audit", "verify-*.sha256"))
	if len(lists) != 1 {
		t.Fatalf("pecgate verify wrote %d .sha256 lists (%v), want 1", len(lists), lists)
	}
	data, err := os.ReadFile(lists[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(data)); !slices.Equal(got, want) {
		t.Errorf("%s: %d lines, want the %d SHA-256 of old's messages, sorted", lists[0], len(got), len(want))
	}
}

// TestBackfillKill9Loop kills the gateway with SIGKILL at 20 random points
// of a back-fill of a 600-message account, restarting it each time on the
// same store (invariant 6): at the end new holds each old message exactly
// once, in its folder, and `pecgate verify` proves it.
func TestBackfillKill9Loop(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	small, _ := bfFixtures(t)
	old, nw := dovetest.StartPair(t, e2eUser)
	oldPass := old.Password(e2eUser)

	const total, rounds = 600, 20
	folders := []string{bfInbox, bfPratiche, bfSent}
	var seeds []dovetest.SeedMessage
	for i := range total {
		f := small[i%len(small)]
		m := f.SeedMessage(old, f.Variant(i))
		m.Mailbox = folders[min(i*len(folders)/total, len(folders)-1)]
		m.Flags = bfExtraFlags(f.Flags, i)
		m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		seeds = append(seeds, m)
	}
	old.SeedMaildir(t, e2eUser, seeds)
	oldDirect := old.Dial(t, e2eUser)
	olds := bfReadAll(t, oldDirect, folders)
	oldDirect.Logout().Wait()

	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("PECGATE_BACKFILL_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("PECGATE_BACKFILL_SEED: %v", err)
		}
	}
	t.Logf("kill points from seed %d (PECGATE_BACKFILL_SEED=%d replays them)", seed, seed)
	rnd := mrand.New(mrand.NewPCG(seed, 9))

	// Unthrottled, the engine copies these 600 messages in 3-4 s here, so
	// that the last half of the kills would find the copy done. At 35
	// messages/s (the engine starts each restart with a burst of 35) it
	// stretches over about 20 rounds, and the kills fall while counting,
	// while copying and between copies alike.
	s := newBFSetup(t, old, nw, "copy_messages_per_second = 35\n")
	newDirect := nw.Dial(t, e2eUser)
	oldHashes := map[string]map[[32]byte]imap.UID{}
	for mb, msgs := range olds {
		oldHashes[mb] = map[[32]byte]imap.UID{}
		for _, m := range msgs {
			oldHashes[mb][m.hash] = m.uid
		}
	}
	// recorded is every copy the store recorded after some kill, per
	// folder: old UID -> new UID. None may be lost or changed later.
	recorded := map[string]map[imap.UID]imap.UID{}
	// afterKill checks the state a kill left: no message twice in new,
	// nothing in new that old does not hold in that folder, no recorded
	// copy lost. It returns how many messages new holds and how many of
	// them the store does not map (copies in flight, adopted at the next
	// pass).
	afterKill := func(round int) (inNew, unmapped int) {
		t.Helper()
		st, err := s.readStore(e2eUser)
		if err != nil {
			t.Fatalf("round %d: read the store the killed gateway left: %v", round, err)
		}
		for _, mb := range folders {
			msgs, err := bfReadFolder(newDirect, mb)
			if err != nil && strings.Contains(err.Error(), "doesn't exist") {
				continue // not created in new yet
			}
			if err != nil {
				t.Fatalf("round %d: new: %v", round, err)
			}
			m := st.maps[store.CanonicalMailbox(mb)]
			byHash := map[[32]byte]imap.UID{}
			byNew := map[imap.UID][32]byte{}
			for _, n := range msgs {
				inNew++
				byNew[n.uid] = n.hash
				if u, dup := byHash[n.hash]; dup {
					t.Errorf("round %d: %s: new UIDs %d and %d hold the same message (sha256 %s)", round, mb, u, n.uid, shortHash(n.hash))
				}
				byHash[n.hash] = n.uid
				if _, ok := oldHashes[mb][n.hash]; !ok {
					t.Errorf("round %d: %s: new UID %d holds bytes old does not have in this folder (sha256 %s)", round, mb, n.uid, shortHash(n.hash))
				}
				if m == nil {
					unmapped++
				} else if _, ok := m.ByNew(store.UID(n.uid)); !ok {
					unmapped++
				}
			}
			if recorded[mb] == nil {
				recorded[mb] = map[imap.UID]imap.UID{}
			}
			for ou, nu := range recorded[mb] {
				var v store.UID
				var ok bool
				if m != nil {
					v, ok = m.ByOld(store.UID(ou))
				}
				_, got, _ := m.Lookup(v)
				if !ok || imap.UID(got) != nu {
					t.Errorf("round %d: %s: the copy of old UID %d as new UID %d was recorded after an earlier kill; now the map says new UID %d", round, mb, ou, nu, got)
				}
			}
			for _, o := range olds[mb] {
				if m == nil {
					break
				}
				v, ok := m.ByOld(store.UID(o.uid))
				if !ok {
					continue
				}
				if _, nu, _ := m.Lookup(v); nu != 0 {
					if byNew[imap.UID(nu)] != o.hash {
						t.Errorf("round %d: %s: the map says old UID %d is new UID %d, which holds other bytes (%s, old %s)", round, mb, o.uid, nu, shortHash(byNew[imap.UID(nu)]), shortHash(o.hash))
					}
					recorded[mb][o.uid] = imap.UID(nu)
				}
			}
		}
		return inNew, unmapped
	}
	p := startServe(t, bin, s.e2eSetup)
	c := s.login(t, e2eUser, oldPass)
	midCopy, prev := 0, 0
	for round := 1; round <= rounds; round++ {
		// Choosing the kill point, not waiting for anything.
		d := 50*time.Millisecond + time.Duration(rnd.Int64N(int64(750*time.Millisecond)+1))
		timer := time.NewTimer(d)
		<-timer.C
		p.kill9(t)
		c.Close()
		n, unmapped := afterKill(round)
		if n > prev && n < total {
			midCopy++
		}
		t.Logf("round %d: SIGKILL %v after the login; new holds %d of %d, %d of them not (yet) in the UID map", round, d.Round(time.Millisecond), n, total, unmapped)
		prev = n
		p = startServe(t, bin, s.e2eSetup)
		c = s.login(t, e2eUser, oldPass)
	}
	t.Logf("%d of %d kills fell while the copy was under way (new had grown and was not complete)", midCopy, rounds)
	if midCopy == 0 {
		t.Errorf("no kill fell during the copy: the loop tested nothing")
	}
	bfWaitCount(t, s, newDirect, folders, total, bfFinishTimeout, nil)
	prog := bfWaitProgress(t, s, e2eUser, bfDoneTimeout, "state done", func(p *store.Progress) bool { return p.State == "done" })
	if prog.MessagesDone != total || prog.MessagesTotal != total {
		t.Errorf("progress at the end: %+v; want %d/%d", prog, total, total)
	}
	c.Logout().Wait()
	bfStopServe(t, p)

	st, err := s.readStore(e2eUser)
	if err != nil {
		t.Fatal(err)
	}
	news := map[string][]bfMsg{}
	for _, mb := range folders {
		msgs, err := bfReadFolder(newDirect, st.newName(t, mb))
		if err != nil {
			t.Fatalf("new: %v", err)
		}
		news[mb] = msgs
	}
	bfCompare(t, olds, news, st)
	s.runVerify(t, bin, e2eUser, oldPass).check(t, total)
}

// TestBackfillQuota gives new too little room: the engine must stop with
// a quota error in the user's progress rather than overfill new, and
// whatever was copied must be mapped.
func TestBackfillQuota(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	small, large := bfFixtures(t)

	// quotaOf reads new's STORAGE quota root of the user (RFC 9208: units
	// of 1024 octets) and the sum of its messages' sizes.
	quotaOf := func(t *testing.T, c *imapclient.Client, news map[string][]bfMsg) (usage, limit, sum int64) {
		t.Helper()
		roots, err := c.GetQuotaRoot("INBOX").Wait()
		if err != nil {
			t.Fatalf("GETQUOTAROOT INBOX on new: %v", err)
		}
		for _, r := range roots {
			if res, ok := r.Resources[imap.QuotaResourceStorage]; ok {
				usage, limit = res.Usage*1024, res.Limit*1024
			}
		}
		if limit == 0 {
			t.Fatalf("new announces no STORAGE quota: %+v", roots)
		}
		for _, msgs := range news {
			for _, m := range msgs {
				sum += m.size
			}
		}
		return usage, limit, sum
	}

	// mappedAll checks that every message in new's folders is in the
	// store's UID map of its folder, as the copy of the old message with
	// the same bytes; those in skip (pre-seeded in new) are left out.
	// A copy has old's flags, plus \Seen when seen is set (the member read
	// it through the gateway).
	mappedAll := func(t *testing.T, olds, news map[string][]bfMsg, st *bfStoreState, skip map[[32]byte]bool, seen bool) (copied int) {
		t.Helper()
		for mb, msgs := range news {
			m := st.mapOf(t, mb)
			oldByUID := map[imap.UID]bfMsg{}
			for _, o := range olds[mb] {
				oldByUID[o.uid] = o
			}
			byHash := map[[32]byte]imap.UID{}
			for _, n := range msgs {
				if skip[n.hash] {
					continue
				}
				copied++
				if u, dup := byHash[n.hash]; dup {
					t.Errorf("%s: new UIDs %d and %d hold the same bytes (%s)", mb, u, n.uid, shortHash(n.hash))
				}
				byHash[n.hash] = n.uid
				v, ok := m.ByNew(store.UID(n.uid))
				if !ok {
					t.Errorf("%s: new UID %d (%d bytes, sha256 %s) is in no UID map entry: copied and not mapped", mb, n.uid, n.size, shortHash(n.hash))
					continue
				}
				o, _, _ := m.Lookup(v)
				if om, ok := oldByUID[imap.UID(o)]; !ok || om.hash != n.hash {
					t.Errorf("%s: new UID %d is mapped to virtual %d, old UID %d, which holds other bytes (%s, new has %s)", mb, n.uid, v, o, shortHash(om.hash), shortHash(n.hash))
				}
				om := oldByUID[imap.UID(o)]
				want := om.flags
				if seen {
					want = bfFlags(append(strings.Fields(om.flags), `\seen`))
				}
				if n.flags != want || !om.date.Equal(n.date) {
					t.Errorf("%s: new UID %d: flags %q INTERNALDATE %v; old UID %d has %q %v", mb, n.uid, n.flags, n.date, om.uid, want, om.date)
				}
			}
		}
		return copied
	}

	quotaErr := func(p *store.Progress) bool {
		return slices.ContainsFunc(p.Errors, func(e store.ProgressError) bool { return e.Kind == "quota" })
	}

	t.Run("too small for the account", func(t *testing.T) {
		// About 1.1 MB of mail in two folders plus a 3 MB PEC envelope;
		// new gives 1 MiB. The engine must see it will not fit and copy
		// nothing; the member reads three messages (FETCH BODY[], which
		// sets \Seen), which the gateway copies on the spot: those must be
		// mapped.
		old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})
		const quota = 1 << 20
		nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: e2eUser}}, QuotaBytes: quota})
		oldPass := old.Password(e2eUser)
		folders := []string{bfInbox, bfPratiche}
		var seeds []dovetest.SeedMessage
		for i := range 100 {
			f := small[i%len(small)]
			m := f.SeedMessage(old, f.Variant(i))
			m.Mailbox = folders[i%2]
			m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
			seeds = append(seeds, m)
		}
		big := large[0].SeedMessage(old, large[0].Variant(100))
		big.Mailbox = bfPratiche
		seeds = append(seeds, big)
		old.SeedMaildir(t, e2eUser, seeds)
		oldDirect := old.Dial(t, e2eUser)
		olds := bfReadAll(t, oldDirect, folders)
		oldDirect.Logout().Wait()

		s := newBFSetup(t, old, nw, "")
		p := startServe(t, bin, s.e2eSetup)
		c := s.login(t, e2eUser, oldPass)
		prog := bfWaitProgress(t, s, e2eUser, bfQuotaTimeout, "a quota error", quotaErr)
		t.Logf("progress: %s, %d/%d messages; errors %+v", prog.State, prog.MessagesDone, prog.MessagesTotal, prog.Errors)

		if _, err := c.Select(bfInbox, nil).Wait(); err != nil {
			t.Fatal(err)
		}
		want := map[imap.UID][32]byte{}
		var set imap.UIDSet
		for _, m := range olds[bfInbox][:3] {
			want[m.uid] = m.hash
			set.AddNum(m.uid)
		}
		body := &imap.FetchItemBodySection{} // not PEEK: sets \Seen, so the gateway copies first
		msgs, err := c.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}}).Collect()
		if err != nil {
			t.Fatalf("UID FETCH %v BODY[] through the gateway: %v", set, err)
		}
		for _, m := range msgs {
			if b := m.FindBodySection(body); sha256.Sum256(b) != want[m.UID] {
				t.Errorf("INBOX UID %d through the gateway: sha256 %s, old has %s", m.UID, shortHash(sha256.Sum256(b)), shortHash(want[m.UID]))
			}
		}
		c.Logout().Wait()
		bfStopServe(t, p)

		st, err := s.readStore(e2eUser)
		if err != nil {
			t.Fatal(err)
		}
		if st.prog == nil || st.prog.State != "quota" || !quotaErr(st.prog) {
			t.Errorf("stored progress %+v; want state quota with a quota error", st.prog)
		}
		newDirect := nw.Dial(t, e2eUser)
		news := map[string][]bfMsg{}
		for _, mb := range folders {
			msgs, err := bfReadFolder(newDirect, st.newName(t, mb))
			if err != nil {
				t.Fatalf("new: %v", err)
			}
			news[mb] = msgs
		}
		copied := mappedAll(t, olds, news, st, nil, true)
		usage, limit, sum := quotaOf(t, newDirect, news)
		t.Logf("new: %d messages copied (%d bytes), quota usage %d of %d bytes", copied, sum, usage, limit)
		if usage > limit || sum > quota {
			t.Errorf("new overfilled: usage %d bytes (messages %d), quota %d", usage, sum, limit)
		}
		if copied != len(want) {
			t.Errorf("new holds %d copies; want only the %d the member read (the engine must copy nothing that cannot all fit)", copied, len(want))
		}
	})

	t.Run("new already partly full", func(t *testing.T) {
		// New already holds 50 messages from "another tool" that look like
		// copies of 50 old ones (same size and INTERNALDATE) but are not
		// (other bytes). The quota would fit the account, not the account
		// and those: once the engine finds they are not copies it copies,
		// and new runs out of room mid-way. It must stop at the refusal,
		// say why, and have mapped every copy it made.
		const n, decoys = 100, 50
		f := small[1] // one fixture, variants 100..199: all the same size
		size := int64(len(f.Variant(100)))
		quota := int64(float64(n*size) * 1.2)
		old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})
		nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: e2eUser}}, QuotaBytes: quota})
		oldPass := old.Password(e2eUser)
		var seeds, pre []dovetest.SeedMessage
		skip := map[[32]byte]bool{}
		for i := range n {
			m := f.SeedMessage(old, f.Variant(100+i))
			m.Mailbox = bfInbox
			m.Flags = bfExtraFlags(f.Flags, i)
			m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
			seeds = append(seeds, m)
			if i < decoys {
				d := m
				d.Body = f.Variant(600 + i)
				if int64(len(d.Body)) != size {
					t.Fatalf("decoy %d: %d bytes, want %d", i, len(d.Body), size)
				}
				skip[sha256.Sum256(d.Body)] = true
				pre = append(pre, d)
			}
		}
		old.SeedMaildir(t, e2eUser, seeds)
		nw.SeedMaildir(t, e2eUser, pre)
		oldDirect := old.Dial(t, e2eUser)
		olds := bfReadAll(t, oldDirect, []string{bfInbox})
		oldDirect.Logout().Wait()

		s := newBFSetup(t, old, nw, "")
		p := startServe(t, bin, s.e2eSetup)
		c := s.login(t, e2eUser, oldPass)
		prog := bfWaitProgress(t, s, e2eUser, bfQuotaTimeout, "a quota error", quotaErr)
		t.Logf("progress: %s, %d/%d messages; errors %+v", prog.State, prog.MessagesDone, prog.MessagesTotal, prog.Errors)
		c.Logout().Wait()
		bfStopServe(t, p)

		st, err := s.readStore(e2eUser)
		if err != nil {
			t.Fatal(err)
		}
		if st.prog == nil || st.prog.State != "quota" || !quotaErr(st.prog) {
			t.Errorf("stored progress %+v; want state quota with a quota error", st.prog)
		}
		newDirect := nw.Dial(t, e2eUser)
		news := map[string][]bfMsg{bfInbox: nil}
		news[bfInbox], err = bfReadFolder(newDirect, bfInbox)
		if err != nil {
			t.Fatal(err)
		}
		copied := mappedAll(t, olds, news, st, skip, false)
		usage, limit, sum := quotaOf(t, newDirect, news)
		t.Logf("new: %d pre-seeded + %d copied messages (%d bytes), quota usage %d of %d bytes; stored progress %d/%d",
			decoys, copied, sum, usage, limit, st.prog.MessagesDone, st.prog.MessagesTotal)
		if copied == 0 || copied >= n {
			t.Errorf("%d messages copied; want some but not all %d (the quota fits about %d)", copied, n, (quota-decoys*size)/size)
		}
		if st.prog != nil && st.prog.MessagesDone != int64(copied) {
			t.Errorf("progress says %d messages done, new holds %d copies", st.prog.MessagesDone, copied)
		}
		if usage > limit || sum > quota {
			t.Errorf("new overfilled: usage %d bytes (messages %d), quota %d", usage, sum, limit)
		}
	})
}
