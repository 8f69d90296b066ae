package bench

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/sync"
)

// Shape of BenchmarkBackfill's account.
const (
	bfMessages = 5000
	bfBigEvery = 125 // every 125th message is 1-3 MB: 40 of them
	// bfProfileEnv names a directory: when set, the back-fill run (a) is
	// profiled there (backfill-cpu.pprof, backfill-trace.out; see the
	// benchmark's doc).
	bfProfileEnv = "PECGATE_BACKFILL_PROFILE"
	// bfRawQueue is how many messages the raw copy holds read from old and
	// not yet written to new.
	bfRawQueue = 16
	bfTimeout  = 20 * time.Minute // per copy
)

// BenchmarkBackfill copies one 5,000-message PEC account (5 folders, one
// nested with a non-ASCII name; mostly 2-100 KB, 40 messages of 1-3 MB;
// system flags and keywords) from an "old" Dovecot three ways, each into a
// fresh "new" Dovecot of its own so that every copy starts empty:
//
//	(a) pecgate's back-fill: sync.Engine.CopyUser for the user, whose
//	    domain is in state migrating, wired as `pecgate serve` wires it
//	    (bbolt store, store.Router, store.MapCache, backend.Set; old logged
//	    into with the member's password given to Engine.Remember, as
//	    passthrough providers are; new with Dovecot's master user);
//	(b) mbsync (Debian's isync 1.4) IMAP to IMAP: one IMAPStore each side,
//	    Channel with Patterns *, Create Near, Sync Pull, CopyArrivalDate;
//	(c) a raw copy: per folder UID FETCH 1:* (FLAGS INTERNALDATE
//	    BODY.PEEK[]) on old, each message APPENDed to new with its flags
//	    and INTERNALDATE as soon as it is read. APPENDs are pipelined as far
//	    as imapclient allows: the next APPEND goes out without waiting for
//	    the previous one's tagged OK; but imapclient sends every literal
//	    over 4 KiB synchronising (it waits for the server's "+" even though
//	    Dovecot offers LITERAL+) and has no MULTIAPPEND, so each message of
//	    more than 4 KiB still waits a round trip for its "+".
//
// It reports each copy's wall time, messages/s and MB/s, and the ratios
// pecgate/mbsync (goal >= 3) and pecgate/raw (goal >= 0.8). It asserts no
// time. It does check every copy: new must end with old's SHA-256 multiset
// in each folder, and, for (a) and (c), with each message's flags and
// INTERNALDATE too. mbsync is no byte-for-byte copier: isync 1.4 adds an
// "X-TUID:" header line to every message it copies, even to a server with
// UIDPLUS, and keeps only the system flags and $Forwarded. So for (b) the
// SHA-256 multiset is compared with that line removed (the report says how
// many messages had it), and the lost keywords are counted, not failed.
//
// Each copy uses one connection to old and one to new (pecgate's pass does;
// mbsync does; the raw copy does). Old is read once, untimed, before the
// copies: that warms its caches and gives the reference. The Dovecots live
// on tmpfs (TMPDIR=/dev/shm when TMPDIR is unset and /dev/shm exists) and
// do not fsync (dovetest); pecgate's bbolt store stays in the usual
// temporary directory, on disk, and fsyncs every commit as in production.
//
// With PECGATE_BACKFILL_PROFILE=DIR, run (a) alone writes a CPU profile
// (DIR/backfill-cpu.pprof; not with go test -cpuprofile, which holds the
// profiler) and an execution trace (DIR/backfill-trace.out: `go tool trace
// -pprof=syscall` and `-pprof=net` show where the pass waits).
//
// Dovecot or mbsync missing: skipped, or failed when CI=true.
func BenchmarkBackfill(b *testing.B) {
	dovetest.Require(b)
	mbsync, err := exec.LookPath("mbsync")
	if err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatalf("mbsync not found (%v); CI=true, so it must be installed: apt-get install isync", err)
		}
		b.Skip("mbsync not installed: apt-get install isync")
	}
	fixtures := dovetest.LoadFixtures(b)
	storeParent := os.TempDir() // before TMPDIR may move to tmpfs
	if os.Getenv("TMPDIR") == "" {
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			b.Setenv("TMPDIR", "/dev/shm")
		}
	}
	old := dovetest.Start(b, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: benchUser}}})
	msgs := backfillAccount(old, fixtures)
	seedStart := time.Now()
	old.SeedMaildir(b, benchUser, msgs)
	seeded := time.Since(seedStart)
	ageMaildir(b, old.MaildirPath(benchUser))

	// Untimed: warms old's caches; the reference every copy must match.
	ref := readAccount(b, old, false)
	var seededBytes int64
	for _, m := range msgs {
		seededBytes += int64(len(m.Body))
	}
	if len(ref.msgs) != len(msgs) || ref.bytes != seededBytes {
		b.Fatalf("old serves %d messages, %d bytes; seeded %d, %d", len(ref.msgs), ref.bytes, len(msgs), seededBytes)
	}

	var res bfResult
	for b.Loop() {
		res = bfResult{ref: ref, seeded: seeded, loadBefore: loadAvg()}
		// Fresh targets, started before any copy so that no copy pays for
		// another's start.
		start := func(name string) *dovetest.Server {
			return dovetest.Start(b, dovetest.Options{Name: name, Users: []dovetest.User{{Address: benchUser}}})
		}
		newA, newB, newC := start("new-pecgate"), start("new-mbsync"), start("new-raw")

		res.pecgate = backfillPecgate(b, old, newA, storeParent)
		res.pecgate.check(b, ref, readAccount(b, newA, false), true)
		res.mbsync = backfillMbsync(b, mbsync, old, newB)
		res.mbsync.check(b, ref, readAccount(b, newB, true), false)
		res.raw = backfillRaw(b, old, newC)
		res.raw.check(b, ref, readAccount(b, newC, false), true)
		res.loadAfter = loadAvg()
	}
	res.report(b)
}

// backfillAccount builds the account: the small PEC fixtures in turn, each
// copy made distinct by Fixture.Variant, in their suggested folders (INBOX,
// "Pratiche/Città", "Posta inviata"); 30% of the messages forwards the
// member wrote (a 5-90 KiB attachment and a fixture attached, 12-135 KB)
// in Sent and "Archivio/2024"; every 125th message large: alternately the
// 3 MB fixture and a forward with a 1-2 MiB attachment (1.4-2.8 MB).
// Flags cycle through system flags and keywords. Deterministic.
func backfillAccount(s *dovetest.Server, fixtures []dovetest.Fixture) []dovetest.SeedMessage {
	var small, big []dovetest.Fixture
	for _, f := range fixtures {
		if f.Size >= 1<<20 {
			big = append(big, f)
		} else {
			small = append(small, f)
		}
	}
	flagSets := [][]string{
		nil, {`\Seen`}, {`\Seen`, `\Answered`}, {`\Seen`, `\Flagged`}, {`\Seen`, `$label1`},
		{`\Seen`, `$Forwarded`}, {`NonJunk`}, {`\Draft`}, {`\Seen`, `\Answered`, `\Flagged`, `$label1`, `NonJunk`},
	}
	rng := rand.New(rand.NewPCG(2025, 9))
	msgs := make([]dovetest.SeedMessage, 0, bfMessages)
	for i := range bfMessages {
		f := small[i%len(small)]
		m := f.SeedMessage(s, f.Variant(i))
		m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		switch {
		case i%bfBigEvery == bfBigEvery-1 && (i/bfBigEvery)%2 == 0 && len(big) > 0:
			g := big[(i/bfBigEvery/2)%len(big)]
			m = g.SeedMessage(s, g.Variant(i))
			m.InternalDate = g.InternalDate.Add(time.Duration(i) * time.Minute)
		case i%bfBigEvery == bfBigEvery-1:
			m.Mailbox, m.Flags = "Sent", []string{`\Seen`}
			m.Body = forward(i, f.Variant(i), rng, 1<<20+rng.IntN(1<<20))
		case i%10 == 3 || i%10 == 7:
			m.Mailbox, m.Flags = "Sent", flagSets[(i/10)%len(flagSets)]
			m.Body = forward(i, f.Variant(i), rng, (5+rng.IntN(86))<<10)
		case i%10 == 5:
			m.Mailbox, m.Flags = s.MailboxName("Archivio/2024"), flagSets[(i/10+3)%len(flagSets)]
			m.Body = forward(i, f.Variant(i), rng, (5+rng.IntN(86))<<10)
		case i%10 == 9:
			m.Flags = flagSets[(i/10)%len(flagSets)]
		}
		msgs = append(msgs, m)
	}
	// dovetest.SeedMaildir creates the Maildir root only for an INBOX
	// message (see benchAccount).
	if !strings.EqualFold(msgs[0].Mailbox, "INBOX") {
		panic("bench: the first seeded message must be in INBOX")
	}
	return msgs
}

// ageMaildir dates every directory of the Maildir an hour back: Dovecot
// rescans a Maildir directory changed in the last seconds at every SELECT
// (see BenchmarkMigratingVsDirect), which a real account never was.
func ageMaildir(b *testing.B, root string) {
	b.Helper()
	past := time.Now().Add(-time.Hour)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return os.Chtimes(path, past, past)
	})
	if err != nil {
		b.Fatal(err)
	}
}

// bfMsg is one message as read back.
type bfMsg struct {
	mailbox string
	sum     [32]byte
	flags   string // lower case, sorted, without \Recent
	date    int64  // INTERNALDATE, Unix seconds
	size    int64
}

// bfAccount is every message of an account.
type bfAccount struct {
	msgs    []bfMsg
	bytes   int64
	folders []string // selectable mailboxes holding messages
	tuids   int      // messages with an X-TUID line (readAccount withoutTUID)
}

// stripTUID removes the "X-TUID: <12 characters>" line that isync 1.4
// puts at the end of the header of every message it copies (its own
// tracking ID, random per message; it adds it even though Dovecot offers
// UIDPLUS), and reports whether there was one.
func stripTUID(body []byte) ([]byte, bool) {
	end := bytes.Index(body, []byte("\r\n\r\n"))
	if end < 0 {
		return body, false
	}
	i := bytes.Index(body[:end+2], []byte("\r\nX-TUID: "))
	if i < 0 {
		return body, false
	}
	j := bytes.IndexByte(body[i+2:], '\n')
	return append(body[:i+2:i+2], body[i+2+j+1:]...), true
}

// readAccount reads every message of benchUser on s: UID FETCH 1:* (UID
// FLAGS INTERNALDATE BODY.PEEK[]) per mailbox, each body streamed into
// SHA-256; with withoutTUID, hashed without the X-TUID header line isync
// adds (see stripTUID), and acct.tuids counts the messages that had one.
func readAccount(b *testing.B, s *dovetest.Server, withoutTUID bool) bfAccount {
	b.Helper()
	c := s.Dial(b, benchUser)
	defer c.Close()
	var acct bfAccount
	bs := &imap.FetchItemBodySection{Peek: true}
	opts := &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{bs}}
	for _, mbox := range listMailboxes(b, c) {
		sel, err := c.Select(mbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			b.Fatalf("%s: EXAMINE %s: %v", s.Name, mbox, err)
		}
		if sel.NumMessages == 0 {
			continue
		}
		acct.folders = append(acct.folders, mbox)
		cmd := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, opts)
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			m := bfMsg{mailbox: mbox, size: -1}
			for item := msg.Next(); item != nil; item = msg.Next() {
				switch item := item.(type) {
				case imapclient.FetchItemDataFlags:
					m.flags = bfFlagString(item.Flags)
				case imapclient.FetchItemDataInternalDate:
					m.date = item.Time.Unix()
				case imapclient.FetchItemDataBodySection:
					if withoutTUID {
						body, err := io.ReadAll(item.Literal)
						if err != nil {
							b.Fatalf("%s: %s: reading a body: %v", s.Name, mbox, err)
						}
						m.size = int64(len(body))
						if stripped, ok := stripTUID(body); ok {
							body = stripped
							acct.tuids++
						}
						m.sum = sha256.Sum256(body)
						continue
					}
					h := sha256.New()
					if m.size, err = io.Copy(h, item.Literal); err != nil {
						b.Fatalf("%s: %s: reading a body: %v", s.Name, mbox, err)
					}
					h.Sum(m.sum[:0])
				}
			}
			if m.size < 0 {
				b.Fatalf("%s: %s: seq %d came without a body", s.Name, mbox, msg.SeqNum)
			}
			acct.msgs = append(acct.msgs, m)
			acct.bytes += m.size
		}
		if err := cmd.Close(); err != nil {
			b.Fatalf("%s: %s: UID FETCH 1:*: %v", s.Name, mbox, err)
		}
	}
	return acct
}

func bfSettable(fs []imap.Flag) []imap.Flag {
	out := make([]imap.Flag, 0, len(fs))
	for _, f := range fs {
		if !strings.EqualFold(string(f), `\Recent`) {
			out = append(out, f)
		}
	}
	return out
}

func bfFlagString(fs []imap.Flag) string {
	var s []string
	for _, f := range bfSettable(fs) {
		s = append(s, strings.ToLower(string(f)))
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

// bfRun is one copy's measurement.
type bfRun struct {
	name     string
	elapsed  time.Duration
	cpu      time.Duration // the copying client's CPU: this process for (a) and (c), mbsync for (b)
	busy     float64       // share of the machine's CPUs busy during the copy (every process)
	verified string        // what check found
}

// check compares what new holds with old's reference: the multiset of
// (mailbox, SHA-256) must be equal; with strict, that of (mailbox,
// SHA-256, flags, INTERNALDATE) too, else flag and date differences are
// counted in r.verified (with the X-TUID lines readAccount removed).
func (r *bfRun) check(b *testing.B, ref, got bfAccount, strict bool) {
	b.Helper()
	content := func(m bfMsg) string { return fmt.Sprintf("%s %x", m.mailbox, m.sum) }
	full := func(m bfMsg) string { return fmt.Sprintf("%s %x [%s] @%d", m.mailbox, m.sum, m.flags, m.date) }
	if d := multisetDiff(ref.msgs, got.msgs, content); d != "" {
		b.Fatalf("%s: new does not hold old's messages (%d messages, %d bytes in new; old has %d, %d): %s",
			r.name, len(got.msgs), got.bytes, len(ref.msgs), ref.bytes, d)
	}
	if strict {
		if d := multisetDiff(ref.msgs, got.msgs, full); d != "" {
			b.Fatalf("%s: flags or INTERNALDATE differ between old and new: %s", r.name, d)
		}
		r.verified = "SHA-256, flags, INTERNALDATE: all equal"
		return
	}
	// Same content multiset per folder: compare flags and dates within each
	// group of identical messages.
	type group struct{ want, got []bfMsg }
	groups := map[string]*group{}
	for _, m := range ref.msgs {
		g := groups[content(m)]
		if g == nil {
			g = &group{}
			groups[content(m)] = g
		}
		g.want = append(g.want, m)
	}
	for _, m := range got.msgs {
		g := groups[content(m)]
		g.got = append(g.got, m)
	}
	var flagDiff, keywordsOnly, dateDiff int
	for _, g := range groups {
		byDate := func(a, b bfMsg) int { return cmp.Compare(a.date, b.date) }
		slices.SortFunc(g.want, byDate)
		slices.SortFunc(g.got, byDate)
		for i := range g.want {
			w, n := g.want[i], g.got[i]
			if w.date != n.date {
				dateDiff++
			}
			if w.flags != n.flags {
				flagDiff++
				if systemFlags(w.flags) == systemFlags(n.flags) {
					keywordsOnly++
				}
			}
		}
	}
	r.verified = "SHA-256 equal"
	if got.tuids > 0 || got.bytes != ref.bytes {
		r.verified = fmt.Sprintf("NOT byte-identical: X-TUID line added to %d messages (%+d bytes); without it SHA-256 equal", got.tuids, got.bytes-ref.bytes)
	}
	r.verified += fmt.Sprintf("; INTERNALDATE differs on %d; flags differ on %d (%d of them keywords only)", dateDiff, flagDiff, keywordsOnly)
}

// systemFlags keeps the system flags and $forwarded of a flagString.
func systemFlags(s string) string {
	var out []string
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, `\`) || f == "$forwarded" {
			out = append(out, f)
		}
	}
	return strings.Join(out, " ")
}

// multisetDiff says how the multisets of key over want and got differ, ""
// when they are equal.
func multisetDiff(want, got []bfMsg, key func(bfMsg) string) string {
	n := map[string]int{}
	for _, m := range want {
		n[key(m)]++
	}
	for _, m := range got {
		n[key(m)]--
	}
	var missing, extra []string
	for k, c := range n {
		switch {
		case c > 0:
			missing = append(missing, k)
		case c < 0:
			extra = append(extra, k)
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	slices.Sort(missing)
	slices.Sort(extra)
	return fmt.Sprintf("%d keys missing from new (e.g. %q), %d only in new (e.g. %q)",
		len(missing), missing[:min(len(missing), 3)], len(extra), extra[:min(len(extra), 3)])
}

// phase measures one copy: wall time, this process's CPU, the machine's.
type phase struct {
	start time.Time
	cpu   time.Duration
	stat  cpuStat
}

func beginPhase(b *testing.B) phase {
	return phase{start: time.Now(), cpu: processCPU(b), stat: readCPUStat()}
}

func (p phase) end(b *testing.B, name string) bfRun {
	elapsed := time.Since(p.start)
	return bfRun{name: name, elapsed: elapsed, cpu: processCPU(b) - p.cpu, busy: readCPUStat().busySince(p.stat)}
}

// cpuStat is the first line of /proc/stat: jiffies busy and in total.
type cpuStat struct{ busy, total uint64 }

func readCPUStat() cpuStat {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return cpuStat{}
	}
	var s cpuStat
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		s.total += n
		if i != 3 && i != 4 { // idle, iowait
			s.busy += n
		}
	}
	return s
}

// busySince returns the share of CPU time busy since s0, -1 if unknown.
func (s cpuStat) busySince(s0 cpuStat) float64 {
	if s.total <= s0.total {
		return -1
	}
	return float64(s.busy-s0.busy) / float64(s.total-s0.total)
}

// loadAvg returns /proc/loadavg's three averages, "?" if unknown.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// logBuffer keeps an engine's log lines for a failure message.
type logBuffer struct {
	mu gosync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// backfillPecgate runs (a): one Engine.CopyUser pass over benchUser, old
// -> nw, with a new bbolt store under storeParent.
func backfillPecgate(b *testing.B, old, nw *dovetest.Server, storeParent string) bfRun {
	b.Helper()
	mw := newMigratingWiring(b, old, nw, storeParent, "pecgate-bench-backfill-")
	cfg, backends, st, router := mw.cfg, mw.backends, mw.st, mw.router
	logs := &logBuffer{}
	eng := sync.NewEngine(sync.Options{
		Config: cfg, Store: st, Maps: store.NewMapCache(st, 0), Router: router, Backends: backends,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	// A passthrough provider: the password of the member's last login.
	eng.Remember(benchUser, old.Password(benchUser))

	stopProfile := startProfile(b)
	ctx, cancel := context.WithTimeout(context.Background(), bfTimeout)
	defer cancel()
	p := beginPhase(b)
	prog, err := eng.CopyUser(ctx, benchUser)
	r := p.end(b, "pecgate")
	stopProfile()
	if err != nil {
		b.Fatalf("pecgate: CopyUser: %v\nengine log:\n%s", err, logs)
	}
	if prog.State != sync.StateDone || len(prog.Errors) > 0 || prog.MessagesDone != bfMessages {
		b.Fatalf("pecgate: CopyUser ended %q, %d of %d messages, errors %v\nengine log:\n%s",
			prog.State, prog.MessagesDone, prog.MessagesTotal, prog.Errors, logs)
	}
	return r
}

// startProfile starts the CPU profile and the execution trace of run (a)
// when PECGATE_BACKFILL_PROFILE names a directory; the function returned
// stops them.
func startProfile(b *testing.B) func() {
	dir := os.Getenv(bfProfileEnv)
	if dir == "" {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	var stops []func()
	cpu, err := os.Create(filepath.Join(dir, "backfill-cpu.pprof"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		b.Logf("no CPU profile of the back-fill: %v", err)
		cpu.Close()
	} else {
		stops = append(stops, func() { pprof.StopCPUProfile(); cpu.Close() })
	}
	tf, err := os.Create(filepath.Join(dir, "backfill-trace.out"))
	if err != nil {
		b.Fatal(err)
	}
	if err := trace.Start(tf); err != nil {
		b.Logf("no execution trace of the back-fill: %v", err)
		tf.Close()
	} else {
		stops = append(stops, func() { trace.Stop(); tf.Close() })
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

// backfillMbsync runs (b): mbsync copying benchUser's every folder from old
// to nw, IMAP to IMAP, each side logged into with the member's password
// there.
func backfillMbsync(b *testing.B, mbsync string, old, nw *dovetest.Server) bfRun {
	b.Helper()
	base := b.TempDir()
	if err := os.Mkdir(filepath.Join(base, "state"), 0o700); err != nil {
		b.Fatal(err)
	}
	// isync 1.4 (Debian 12) syntax; Host "localhost" because isync 1.4
	// checks the host name against the certificate's DNS names only (see
	// proxy's clientsMbsync). SyncState in a directory of its own: neither
	// store is a Maildir.
	account := func(name string, s *dovetest.Server) string {
		_, port, _ := strings.Cut(s.IMAPSAddr, ":")
		return fmt.Sprintf(`IMAPAccount %s
Host localhost
Port %s
User %s
Pass %s
SSLType IMAPS
SSLVersions TLSv1.2 TLSv1.3
SystemCertificates no
CertificateFile %s

IMAPStore %s
Account %s

`, name+"-acct", port, benchUser, s.Password(benchUser), s.CAFile, name, name+"-acct")
	}
	rc := account("old", old) + account("new", nw) + fmt.Sprintf(`Channel copy
Far :old:
Near :new:
Patterns *
Create Near
Sync Pull
Expunge None
CopyArrivalDate yes
SyncState %s/state/
`, base)
	rcFile := filepath.Join(base, "mbsyncrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bfTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, mbsync, "-c", rcFile, "copy")
	cmd.Env = append(os.Environ(), "HOME="+base)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	p := beginPhase(b)
	err := cmd.Run()
	r := p.end(b, "mbsync")
	if err != nil {
		b.Fatalf("mbsync: %v\n%s", err, out.Bytes()[max(out.Len()-8000, 0):])
	}
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return r
}

// bfRawMsg is one message read from old, on its way to new.
type bfRawMsg struct {
	mailbox string
	flags   []imap.Flag
	date    time.Time
	body    []byte
}

// backfillRaw runs (c): for each folder of old, UID FETCH 1:* (FLAGS
// INTERNALDATE BODY.PEEK[]) on one connection, and on another each message
// APPENDed to new as soon as it is read (up to bfRawQueue read ahead),
// without waiting for the previous APPEND's tagged response.
func backfillRaw(b *testing.B, old, nw *dovetest.Server) bfRun {
	b.Helper()
	p := beginPhase(b)
	oc, nc := old.Dial(b, benchUser), nw.Dial(b, benchUser)
	mailboxes := listMailboxes(b, oc)
	have := map[string]bool{}
	for _, m := range listMailboxes(b, nc) {
		have[m] = true
	}
	for _, m := range mailboxes {
		if !have[m] {
			if err := nc.Create(m, nil).Wait(); err != nil {
				b.Fatalf("raw: CREATE %s on new: %v", m, err)
			}
		}
	}

	queue := make(chan bfRawMsg, bfRawQueue)
	fetchErr := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(queue)
		fetchErr <- rawFetch(oc, mailboxes, queue, stop)
	}()
	pending := make(chan *imapclient.AppendCommand, 1024)
	var appendErr error
	var appended int
	var wg gosync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for cmd := range pending {
			data, err := cmd.Wait()
			if err == nil && data.UID == 0 {
				err = errors.New("no APPENDUID")
			}
			if err != nil && appendErr == nil {
				appendErr = err
			}
			appended++
		}
	}()
	var writeErr error
	for m := range queue {
		if writeErr != nil {
			continue // drain, so that the fetch ends
		}
		cmd := nc.Append(m.mailbox, int64(len(m.body)), &imap.AppendOptions{Flags: m.flags, Time: m.date})
		if _, err := cmd.Write(m.body); err != nil {
			writeErr = fmt.Errorf("APPEND to %s: %w", m.mailbox, err)
			cmd.Close()
			close(stop)
			continue
		}
		if err := cmd.Close(); err != nil {
			writeErr = fmt.Errorf("APPEND to %s: %w", m.mailbox, err)
			close(stop)
			continue
		}
		pending <- cmd
	}
	close(pending)
	wg.Wait()
	r := p.end(b, "raw")
	if err := errors.Join(<-fetchErr, writeErr, appendErr); err != nil {
		b.Fatalf("raw: %v", err)
	}
	if appended != bfMessages {
		b.Fatalf("raw: appended %d messages, want %d", appended, bfMessages)
	}
	oc.Logout().Wait()
	nc.Logout().Wait()
	return r
}

// rawFetch reads every message of mailboxes on c into queue, in order.
func rawFetch(c *imapclient.Client, mailboxes []string, queue chan<- bfRawMsg, stop <-chan struct{}) error {
	bs := &imap.FetchItemBodySection{Peek: true}
	opts := &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{bs}}
	for _, mbox := range mailboxes {
		sel, err := c.Select(mbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			return fmt.Errorf("EXAMINE %s on old: %w", mbox, err)
		}
		if sel.NumMessages == 0 {
			continue
		}
		cmd := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, opts)
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			m := bfRawMsg{mailbox: mbox}
			for item := msg.Next(); item != nil; item = msg.Next() {
				switch item := item.(type) {
				case imapclient.FetchItemDataFlags:
					m.flags = bfSettable(item.Flags)
				case imapclient.FetchItemDataInternalDate:
					m.date = item.Time
				case imapclient.FetchItemDataBodySection:
					m.body = make([]byte, item.Literal.Size())
					if _, err := io.ReadFull(item.Literal, m.body); err != nil {
						cmd.Close()
						return fmt.Errorf("FETCH in %s on old: %w", mbox, err)
					}
				}
			}
			if m.body == nil {
				cmd.Close()
				return fmt.Errorf("FETCH in %s on old: seq %d came without a body", mbox, msg.SeqNum)
			}
			select {
			case queue <- m:
			case <-stop:
				cmd.Close()
				return nil
			}
		}
		if err := cmd.Close(); err != nil {
			return fmt.Errorf("FETCH in %s on old: %w", mbox, err)
		}
	}
	return nil
}

// bfResult is one run of the three copies.
type bfResult struct {
	ref                   bfAccount
	seeded                time.Duration
	pecgate, mbsync, raw  bfRun
	loadBefore, loadAfter string
}

func (r bfResult) report(b *testing.B) {
	n, bytes := float64(len(r.ref.msgs)), float64(r.ref.bytes)
	rate := func(x bfRun) (msgs, mbps float64) {
		s := x.elapsed.Seconds()
		return n / s, bytes / mb / s
	}
	pm, pb := rate(r.pecgate)
	mm, mbb := rate(r.mbsync)
	rm, rb := rate(r.raw)

	b.ReportMetric(0, "ns/op") // one op is three whole copies: meaningless
	b.ReportMetric(pm, "pecgate-msg/s")
	b.ReportMetric(pb, "pecgate-MB/s")
	b.ReportMetric(mm, "mbsync-msg/s")
	b.ReportMetric(mbb, "mbsync-MB/s")
	b.ReportMetric(rm, "raw-msg/s")
	b.ReportMetric(rb, "raw-MB/s")
	b.ReportMetric(pm/mm, "pecgate/mbsync")
	b.ReportMetric(pm/rm, "pecgate/raw")

	var big int
	for _, m := range r.ref.msgs {
		if m.size >= 1<<20 {
			big++
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "back-fill of %d messages in %d folders, %.1f MB (%d of 1-3 MB), each copy into a fresh Dovecot (seeded in %v); %d CPUs, %s; load average %s before, %s after\n",
		len(r.ref.msgs), len(r.ref.folders), bytes/mb, big, r.seeded.Round(time.Millisecond), runtime.NumCPU(), runtime.Version(), r.loadBefore, r.loadAfter)
	fmt.Fprintf(&t, "  %-34s %8s %8s %7s %11s %11s\n", "", "wall s", "msg/s", "MB/s", "client CPU", "machine busy")
	for _, x := range []struct {
		label string
		run   bfRun
	}{{"(a) pecgate Engine.CopyUser", r.pecgate}, {"(b) mbsync IMAP -> IMAP", r.mbsync}, {"(c) raw FETCH, pipelined APPEND", r.raw}} {
		m, mbps := rate(x.run)
		busy := "?"
		if x.run.busy >= 0 {
			busy = fmt.Sprintf("%.0f%%", 100*x.run.busy)
		}
		fmt.Fprintf(&t, "  %-34s %8.2f %8.1f %7.2f %10.2fs %11s\n", x.label, x.run.elapsed.Seconds(), m, mbps, x.run.cpu.Seconds(), busy)
	}
	fmt.Fprintf(&t, "  pecgate/mbsync %.2f (goal >= 3), pecgate/raw %.2f (goal >= 0.8)\n", pm/mm, pm/rm)
	for _, x := range []bfRun{r.pecgate, r.mbsync, r.raw} {
		fmt.Fprintf(&t, "  verified %s: %s\n", x.name, x.verified)
	}
	// testing keeps only the first 10 lines a benchmark logs.
	b.Log("\n" + strings.TrimSuffix(t.String(), "\n"))
}
