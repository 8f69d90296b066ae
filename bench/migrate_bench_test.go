package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/proxy"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync"
)

// Shape of BenchmarkMigratingVsDirect.
const (
	migOldMessages = 50_000 // INBOX on old
	migNewOnly     = 300    // INBOX messages that exist only on new
	migMessageSize = 2048   // bytes per seeded message, about
	migRounds      = 6      // rounds of one pass per client, after the first
)

// BenchmarkMigratingVsDirect measures what a client does when it opens a
// large mailbox: SELECT INBOX, UID SEARCH ALL, UID FETCH 1:* (FLAGS),
// directly on the old Dovecot and through the gateway in state migrating
// (the virtual mailbox: old's 50,000 messages plus 300 that exist only in
// new, one UID space from the UID map). A third client does the same
// through the gateway in state old (a plain proxy in front of old), which
// tells the proxy's own cost from the virtual mailbox's.
//
// The first SELECT through the gateway creates the mailbox's UID map (and
// gives the 300 new-only messages their virtual UIDs); it is reported on
// its own. Then migRounds rounds of one pass per client give the median
// of each command (column gw-old is the state-old gateway, gw-migr the
// migrating one); the ratio migrating/direct of the whole sequence has a
// goal of <= 1.5. The size of the stored UID map (store.GetMap,
// MarshalBinary) is reported after the run.
//
// Seeding 50,000 files is fast on tmpfs (see dovetest.SeedMaildir): when
// TMPDIR is unset and /dev/shm exists, the Dovecots live there. The
// gateway's bbolt store stays in the usual temporary directory, on disk:
// its fsyncs are part of what a first SELECT costs.
//
// The gateway runs in this process, wired as `pecgate serve` wires it for
// a domain in state migrating: bbolt store, store.Router, store.MapCache,
// sync.Copier, old logged into with the client's password, new with
// Dovecot's master user. Every client uses TLS.
func BenchmarkMigratingVsDirect(b *testing.B) {
	dovetest.Require(b)
	storeParent := os.TempDir() // before TMPDIR may move to tmpfs
	if os.Getenv("TMPDIR") == "" {
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			b.Setenv("TMPDIR", "/dev/shm")
		}
	}
	old, nw := dovetest.StartPair(b, benchUser)
	seedStart := time.Now()
	old.SeedMaildir(b, benchUser, migMessages("vecchio", migOldMessages, true))
	nw.SeedMaildir(b, benchUser, migMessages("nuovo", migNewOnly, false))
	seeded := time.Since(seedStart)

	// A real 50,000-message INBOX was not written seconds ago. Dovecot
	// rescans a Maildir whose directories changed in the last seconds at
	// every SELECT (measured: 30-150 ms right after seeding, under 1 ms
	// once the mtimes are old), so the directories are dated back an hour.
	// Then a throw-away session SELECTs INBOX read-write: it syncs once
	// and takes the \Recent flags of the seeded messages, so that no
	// measured client owns them.
	past := time.Now().Add(-time.Hour)
	for _, s := range []*dovetest.Server{old, nw} {
		for _, d := range []string{"", "cur", "new", "tmp"} {
			if err := os.Chtimes(filepath.Join(s.MaildirPath(benchUser), d), past, past); err != nil {
				b.Fatal(err)
			}
		}
		c := s.Dial(b, benchUser)
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			b.Fatalf("%s: SELECT INBOX: %v", s.Name, err)
		}
		if err := c.Logout().Wait(); err != nil {
			b.Fatalf("%s: LOGOUT: %v", s.Name, err)
		}
	}

	gw := startMigratingGateway(b, old, nw, storeParent)
	direct := old.Dial(b, benchUser)
	through := gw.dial(b, benchUser, old.Password(benchUser))
	// The same gateway code in state old (a plain proxy in front of old),
	// to tell the proxy's own cost from the virtual mailbox's.
	plain := startGateway(b, old).dial(b, benchUser, old.Password(benchUser))

	// Warm-up, untimed: Dovecot reads its indexes; the reference flags.
	ref := listPass(b, direct)
	if ref.exists != migOldMessages || len(ref.flags) != migOldMessages {
		b.Fatalf("old serves %d messages (%d fetched), seeded %d", ref.exists, len(ref.flags), migOldMessages)
	}
	// The first SELECT in migrating creates the UID map.
	first := listPass(b, through)
	checkMigratingPass(b, first, ref)

	var r migResult
	for b.Loop() {
		r = migResult{first: first}
		// Each round runs the three clients in another of the 6 orders:
		// every client follows every other equally often.
		for round := range migRounds {
			for _, k := range migOrders[round%len(migOrders)] {
				switch k {
				case 0:
					r.direct = append(r.direct, listPass(b, direct))
				case 1:
					p := listPass(b, plain)
					if p.exists != ref.exists || p.searched != len(ref.flags) || len(p.flags) != len(ref.flags) {
						b.Fatalf("gateway in state old: EXISTS %d, UID SEARCH ALL %d, UID FETCH 1:* %d; old has %d", p.exists, p.searched, len(p.flags), ref.exists)
					}
					r.plain = append(r.plain, p)
				case 2:
					p := listPass(b, through)
					checkMigratingPass(b, p, ref)
					r.gateway = append(r.gateway, p)
				}
			}
		}
		// A client's new session (a phone reconnecting): its first SELECT,
		// directly and through the gateway, whose map and old's UID list
		// other sessions have in the map cache already.
		for range migRounds {
			r.newDirect = append(r.newDirect, newSessionSelect(b, func() *imapclient.Client { return old.Dial(b, benchUser) }))
			r.newGateway = append(r.newGateway, newSessionSelect(b, func() *imapclient.Client { return gw.dial(b, benchUser, old.Password(benchUser)) }))
		}
	}

	// The stored UID map of INBOX.
	err := gw.st.View(context.Background(), func(tx store.Tx) error {
		m, err := store.GetMap(tx, benchUser, "INBOX")
		if err != nil {
			return err
		}
		enc, err := m.MarshalBinary()
		if err != nil {
			return err
		}
		r.mapBytes, r.mapRuns, r.mapFrozen, r.mapNext = len(enc), len(m.Runs), m.Frozen, m.Next
		return nil
	})
	if err != nil {
		b.Fatalf("UID map of INBOX: %v", err)
	}
	r.seeded = seeded
	r.report(b)
}

// migMessages returns n distinct messages of about migMessageSize bytes
// for INBOX; with flags, most are \Seen, some \Flagged or with a keyword.
// Deterministic.
func migMessages(side string, n int, flags bool) []dovetest.SeedMessage {
	base := time.Date(2020, 1, 1, 8, 0, 0, 0, time.UTC)
	const line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
	msgs := make([]dovetest.SeedMessage, n)
	for i := range n {
		var m strings.Builder
		date := base.Add(time.Duration(i) * time.Minute)
		fmt.Fprintf(&m, "From: Studio Legale <studio%d@pec.esempio.test>\r\nTo: %s\r\n", i%97, benchUser)
		fmt.Fprintf(&m, "Subject: Pratica %s n. %d\r\nMessage-ID: <%s.%d@pec.esempio.test>\r\n", side, i, side, i)
		fmt.Fprintf(&m, "Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", date.Format(time.RFC1123Z))
		fmt.Fprintf(&m, "Messaggio %s %d.\r\n", side, i)
		for m.Len()+len(line) <= migMessageSize {
			m.WriteString(line)
		}
		msg := dovetest.SeedMessage{Mailbox: "INBOX", Body: []byte(m.String()), InternalDate: date}
		if flags {
			if i%10 != 0 {
				msg.Flags = append(msg.Flags, `\Seen`)
			}
			if i%37 == 0 {
				msg.Flags = append(msg.Flags, `\Flagged`)
			}
			if i%53 == 0 {
				msg.Flags = append(msg.Flags, "$label1")
			}
		}
		msgs[i] = msg
	}
	return msgs
}

// migOrders are the orders of the three clients (0 direct, 1 gateway in
// state old, 2 gateway in state migrating), one per round.
var migOrders = [][3]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}, {2, 0, 1}, {0, 2, 1}, {1, 2, 0}}

// migGateway is the in-process gateway in state migrating and its store.
type migGateway struct {
	*gateway
	st store.Store
}

// startMigratingGateway wires the gateway as proxy's startMigration test
// helper and `pecgate serve` do, for benchDomain in state migrating. The
// store lives in a new directory under storeParent. Everything is closed
// when the benchmark ends.
func startMigratingGateway(b *testing.B, old, nw *dovetest.Server, storeParent string) *migGateway {
	b.Helper()
	mw := newMigratingWiring(b, old, nw, storeParent, "pecgate-bench-store-")
	cfg, backends, st, router := mw.cfg, mw.backends, mw.st, mw.router
	dir := b.TempDir()
	ca, err := certs.NewTestCA()
	if err != nil {
		b.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteFiles(dir, "gw", "localhost", "127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		b.Fatal(err)
	}
	srv := proxy.NewIMAP(proxy.Options{
		Config:   cfg,
		Backends: backends,
		TLS:      &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		Router:   router,
		Maps:     store.NewMapCache(st, 0),
		Copier:   sync.Copier{},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		// Labelled for -cpuprofile: every goroutine of this gateway (its
		// sessions, their upstream readers) inherits the label, so
		// `go tool pprof -tagfocus=pecgate=gw-migr` shows its work alone.
		pprof.Do(context.Background(), pprof.Labels("pecgate", "gw-migr"), func(context.Context) {
			srv.ServeTLS(ln)
		})
	}()
	b.Cleanup(func() {
		srv.Close()
		<-served
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	return &migGateway{gateway: &gateway{addr: ln.Addr().String(), pool: pool}, st: st}
}

// listPassResult is one SELECT INBOX + UID SEARCH ALL + UID FETCH 1:*
// (FLAGS), each command timed on the client.
type listPassResult struct {
	sel, search, fetch time.Duration
	exists             uint32
	uidValidity        uint32
	searched           int
	flags              map[imap.UID][]imap.Flag
}

func (p listPassResult) total() time.Duration { return p.sel + p.search + p.fetch }

func listPass(b *testing.B, c *imapclient.Client) listPassResult {
	b.Helper()
	var p listPassResult
	start := time.Now()
	sel, err := c.Select("INBOX", nil).Wait()
	p.sel = time.Since(start)
	if err != nil {
		b.Fatalf("SELECT INBOX: %v", err)
	}
	p.exists, p.uidValidity = sel.NumMessages, sel.UIDValidity

	start = time.Now()
	res, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	p.search = time.Since(start)
	if err != nil {
		b.Fatalf("UID SEARCH ALL: %v", err)
	}
	p.searched = len(res.AllUIDs())

	p.flags = make(map[imap.UID][]imap.Flag, sel.NumMessages)
	start = time.Now()
	cmd := c.Fetch(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.FetchOptions{UID: true, Flags: true})
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		var uid imap.UID
		var flags []imap.Flag
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = item.UID
			case imapclient.FetchItemDataFlags:
				flags = item.Flags
			}
		}
		if uid == 0 {
			b.Fatalf("UID FETCH 1:* (FLAGS): seq %d came without UID", msg.SeqNum)
		}
		if _, dup := p.flags[uid]; dup {
			b.Fatalf("UID FETCH 1:* (FLAGS): UID %d answered twice", uid)
		}
		p.flags[uid] = flags
	}
	err = cmd.Close()
	p.fetch = time.Since(start)
	if err != nil {
		b.Fatalf("UID FETCH 1:* (FLAGS): %v", err)
	}
	return p
}

// newSessionSelect logs in with dial, times one SELECT INBOX and logs out.
func newSessionSelect(b *testing.B, dial func() *imapclient.Client) time.Duration {
	b.Helper()
	c := dial()
	start := time.Now()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatalf("SELECT INBOX in a new session: %v", err)
	}
	d := time.Since(start)
	if err := c.Logout().Wait(); err != nil {
		b.Fatalf("LOGOUT: %v", err)
	}
	return d
}

// checkMigratingPass checks a gateway pass against old's: old's UIDs and
// flags, plus the new-only messages above them, once each; EXISTS, SEARCH
// and FETCH agreeing.
func checkMigratingPass(b *testing.B, p, ref listPassResult) {
	b.Helper()
	want := migOldMessages + migNewOnly
	if int(p.exists) != want || p.searched != want || len(p.flags) != want {
		b.Fatalf("gateway: EXISTS %d, UID SEARCH ALL %d, UID FETCH 1:* %d; want %d (old + new-only)", p.exists, p.searched, len(p.flags), want)
	}
	if p.uidValidity != ref.uidValidity {
		b.Fatalf("gateway: UIDVALIDITY %d, old's is %d", p.uidValidity, ref.uidValidity)
	}
	norm := func(fs []imap.Flag) string {
		s := make([]string, 0, len(fs))
		for _, f := range fs {
			if !strings.EqualFold(string(f), `\Recent`) {
				s = append(s, strings.ToLower(string(f)))
			}
		}
		slices.Sort(s)
		return strings.Join(s, " ")
	}
	var maxOld imap.UID
	for uid, f := range ref.flags {
		g, ok := p.flags[uid]
		if !ok || norm(g) != norm(f) {
			b.Fatalf("gateway: UID %d: flags %v (present %v); old has %v", uid, g, ok, f)
		}
		maxOld = max(maxOld, uid)
	}
	for uid := range p.flags {
		if _, inOld := ref.flags[uid]; !inOld && uid <= maxOld {
			b.Fatalf("gateway: new-only message got UID %d, not above old's %d", uid, maxOld)
		}
	}
}

// migResult holds every pass of one run.
type migResult struct {
	first                  listPassResult
	direct, plain, gateway []listPassResult
	newDirect, newGateway  []time.Duration // SELECT in a new session
	mapBytes               int
	mapRuns                int
	mapFrozen              store.UID
	mapNext                store.UID
	seeded                 time.Duration
}

func medianOf(ps []listPassResult, f func(listPassResult) time.Duration) time.Duration {
	d := make([]time.Duration, len(ps))
	for i, p := range ps {
		d[i] = f(p)
	}
	slices.Sort(d)
	if len(d)%2 == 1 {
		return d[len(d)/2]
	}
	return (d[len(d)/2-1] + d[len(d)/2]) / 2
}

func medianDur(d []time.Duration) time.Duration {
	p := make([]listPassResult, len(d))
	for i := range d {
		p[i].sel = d[i]
	}
	return medianOf(p, func(p listPassResult) time.Duration { return p.sel })
}

func (r migResult) report(b *testing.B) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	sel := func(p listPassResult) time.Duration { return p.sel }
	search := func(p listPassResult) time.Duration { return p.search }
	fetch := func(p listPassResult) time.Duration { return p.fetch }
	total := listPassResult.total
	dTot, gTot := medianOf(r.direct, total), medianOf(r.gateway, total)

	b.ReportMetric(0, "ns/op") // one op is a whole measurement: meaningless
	b.ReportMetric(ms(dTot), "direct-ms")
	b.ReportMetric(ms(gTot), "gateway-ms")
	b.ReportMetric(ms(gTot)/ms(dTot), "ratio")
	b.ReportMetric(ms(r.first.sel), "first-select-ms")
	b.ReportMetric(ms(medianOf(r.gateway, sel)), "warm-select-ms")
	b.ReportMetric(ms(medianOf(r.direct, sel)), "direct-select-ms")
	b.ReportMetric(ms(medianOf(r.plain, total)), "stateold-ms")
	b.ReportMetric(float64(r.mapBytes), "uidmap-bytes")
	b.ReportMetric(ms(medianDur(r.newGateway)), "newsession-select-ms")

	var t strings.Builder
	fmt.Fprintf(&t, "migrating vs direct: INBOX of %d old + %d new-only messages (~%d B each; seeded in %v); %d CPUs, %s\n",
		migOldMessages, migNewOnly, migMessageSize, r.seeded.Round(time.Millisecond), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&t, "  %-34s %8s %8s %8s %9s %9s\n", fmt.Sprintf("ms, median of %d passes", migRounds), "direct", "gw-old", "gw-migr", "migr/dir", "migr/old")
	for _, row := range []struct {
		name string
		f    func(listPassResult) time.Duration
	}{{"SELECT INBOX (warm map)", sel}, {"UID SEARCH ALL", search}, {"UID FETCH 1:* (FLAGS)", fetch}, {"all three (goal <= 1.5x direct)", total}} {
		d, o, g := medianOf(r.direct, row.f), medianOf(r.plain, row.f), medianOf(r.gateway, row.f)
		fmt.Fprintf(&t, "  %-34s %8.1f %8.1f %8.1f %9.2f %9.2f\n", row.name, ms(d), ms(o), ms(g), ms(g)/ms(d), ms(g)/ms(o))
	}
	nd, ng := medianDur(r.newDirect), medianDur(r.newGateway)
	fmt.Fprintf(&t, "  SELECT INBOX in a new session (median of %d): direct %.1f ms, gw-migr %.1f ms (%.2fx)\n", len(r.newGateway), ms(nd), ms(ng), ms(ng)/ms(nd))
	fmt.Fprintf(&t, "  first pass in migrating (creates the UID map): SELECT %.1f ms (%.2fx direct's), all three %.1f ms (%.2fx)\n",
		ms(r.first.sel), ms(r.first.sel)/ms(medianOf(r.direct, sel)), ms(r.first.total()), ms(r.first.total())/ms(dTot))
	fmt.Fprintf(&t, "  stored UID map of INBOX: %d bytes, %d runs, frozen %d, next %d\n", r.mapBytes, r.mapRuns, r.mapFrozen, r.mapNext)
	// testing keeps only the first 10 lines a benchmark logs.
	b.Log("\n" + strings.TrimSuffix(t.String(), "\n"))
}

// migratingWiring is what `pecgate serve` builds for benchDomain in state
// migrating (old passthrough, new through its master user), shared by the
// benchmarks: the parsed config, the providers, an open bbolt store in a
// new directory under storeParent, and the router. Closed at the end.
type migratingWiring struct {
	cfg      *config.Config
	backends *backend.Set
	st       store.Store
	router   *store.Router
}

func newMigratingWiring(b *testing.B, old, nw *dovetest.Server, storeParent, prefix string) *migratingWiring {
	b.Helper()
	dir := b.TempDir()
	storeDir, err := os.MkdirTemp(storeParent, prefix)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(storeDir) })
	masterFile := filepath.Join(dir, "new.master")
	if err := os.WriteFile(masterFile, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	file := fmt.Sprintf(`[server]
hostname = "localhost"
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = ""

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

[domains.%q]
old = "old"
new = "new"
state = "migrating"
`, storeDir, old.IMAPSAddr, old.SubmissionAddr, old.CAFile,
		nw.IMAPSAddr, nw.SubmissionAddr, nw.MasterUser, masterFile, nw.CAFile, benchDomain)
	cfg, err := config.Parse([]byte(file), "bench.toml")
	if err != nil {
		b.Fatalf("gateway config: %v", err)
	}
	backends, err := backend.New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	st, err := bolt.Open(cfg.Store.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	router, err := store.NewRouter(context.Background(), cfg, st)
	if err != nil {
		b.Fatal(err)
	}
	return &migratingWiring{cfg: cfg, backends: backends, st: st, router: router}
}
