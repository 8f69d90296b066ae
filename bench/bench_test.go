// Package bench measures the gateway against direct Dovecot: the same
// client work once straight to an "old" Dovecot and once through pecgate's
// IMAP proxy (in-process, in front of that Dovecot), so every figure comes
// with its ratio to direct. Run it with `make bench`
// (`go test -run '^$' -bench . -benchtime 1x ./bench/...`).
//
// Benchmarks here print and report; they assert no timing. They do check
// that the gateway served the same bytes as Dovecot.
package bench

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/proxy"
)

// The account every benchmark reads: the fixtures' owner.
const (
	benchUser   = "giulia.verdi@pec.vecchio.test"
	benchDomain = "pec.vecchio.test"
)

// Shape of the seeded account and of the measurements.
const (
	accountSize = 2000 // messages
	bigEvery    = 100  // every bigEvery-th message is 1-3 MB
	fetchBatch  = 100  // UIDs per UID FETCH of bodies
	fetchRounds = 3    // alternating direct/gateway passes over the account
	flagsRounds = 3    // alternating passes of UID FETCH n (FLAGS) over INBOX
	mb          = 1e6  // figures are in MB of 10^6 bytes
)

// BenchmarkGatewayVsDovecot seeds a 2,000-message PEC account in Dovecot
// and measures, directly and through the gateway:
//
//   - FETCH throughput: UID FETCH lo:hi BODY.PEEK[] in batches of 100 UIDs
//     over every mailbox, each literal streamed into SHA-256, 3 passes each
//     way alternating; the median MB/s of each and their ratio
//     gateway/direct (goal >= 0.9);
//   - round-trip latency of UID FETCH n (FLAGS), one UID at a time over
//     INBOX, 3 passes each way alternating; p50 and p99 of each and their
//     ratios gateway/direct.
//
// The gateway runs in this process (proxy.NewIMAP over implicit TLS), in
// front of the same Dovecot; both clients use TLS, as a real one would.
func BenchmarkGatewayVsDovecot(b *testing.B) {
	dovetest.Require(b)
	fixtures := dovetest.LoadFixtures(b)
	old := dovetest.Start(b, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: benchUser}}})

	msgs, total := benchAccount(old, fixtures)
	old.SeedMaildir(b, benchUser, msgs)

	gw := startGateway(b, old)
	direct := old.Dial(b, benchUser)
	through := gw.dial(b, benchUser, old.Password(benchUser))

	mailboxes := listMailboxes(b, direct)
	// Warm-up, untimed: the first pass reads the Maildir from disk and
	// builds Dovecot's caches; it also gives the reference digests.
	ref := fetchAccount(b, direct, mailboxes)
	if ref.messages != len(msgs) || ref.bytes != total {
		b.Fatalf("Dovecot serves %d messages, %d bytes; seeded %d, %d", ref.messages, ref.bytes, len(msgs), total)
	}

	var res benchResult
	for b.Loop() {
		res = measure(b, direct, through, mailboxes, ref)
	}
	res.report(b, len(msgs), len(mailboxes), total)
}

// benchResult holds every sample of one measure.
type benchResult struct {
	directMBps, gatewayMBps []float64 // one per pass
	// CPU seconds this process spent per MB fetched, one per pass: the
	// client alone when direct, client and gateway through the gateway.
	// Their difference is the gateway's own cost, which background load
	// on the machine does not inflate the way it does wall-clock rates.
	directCPU, gatewayCPU []float64
	directRTT, gatewayRTT []time.Duration
	inbox                 int // messages in INBOX (round trips per pass)
}

// measure runs both measurements, alternating direct and gateway passes.
func measure(b *testing.B, direct, through *imapclient.Client, mailboxes []string, ref accountPass) benchResult {
	var r benchResult
	for range fetchRounds {
		for _, side := range []struct {
			name string
			c    *imapclient.Client
			rate *[]float64
			cpu  *[]float64
		}{{"direct", direct, &r.directMBps, &r.directCPU}, {"gateway", through, &r.gatewayMBps, &r.gatewayCPU}} {
			cpu0 := processCPU(b)
			p := fetchAccount(b, side.c, mailboxes)
			*side.cpu = append(*side.cpu, (processCPU(b)-cpu0).Seconds()/(float64(p.bytes)/mb))
			if !maps.Equal(p.sums, ref.sums) {
				b.Fatalf("%s pass: bodies differ from Dovecot's first pass (%d messages, %d bytes; want %d, %d)",
					side.name, p.messages, p.bytes, ref.messages, ref.bytes)
			}
			*side.rate = append(*side.rate, float64(p.bytes)/mb/p.elapsed.Seconds())
		}
	}
	uids := inboxUIDs(b, direct)
	r.inbox = len(uids)
	for range flagsRounds {
		r.directRTT = append(r.directRTT, flagsRoundTrips(b, direct, uids)...)
		r.gatewayRTT = append(r.gatewayRTT, flagsRoundTrips(b, through, uids)...)
	}
	return r
}

func (r benchResult) report(b *testing.B, messages, mailboxes int, total int64) {
	dm, gm := median(r.directMBps), median(r.gatewayMBps)
	d50, d99 := percentile(r.directRTT, 50), percentile(r.directRTT, 99)
	g50, g99 := percentile(r.gatewayRTT, 50), percentile(r.gatewayRTT, 99)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

	b.ReportMetric(0, "ns/op") // one op is a whole measurement: meaningless
	b.ReportMetric(dm, "direct-MB/s")
	b.ReportMetric(gm, "gateway-MB/s")
	b.ReportMetric(gm/dm, "fetch-ratio")
	b.ReportMetric((median(r.gatewayCPU)-median(r.directCPU))*1e3, "gateway-cpu-ms/MB")
	b.ReportMetric(us(d50), "direct-p50-us")
	b.ReportMetric(us(g50), "gateway-p50-us")
	b.ReportMetric(us(d99), "direct-p99-us")
	b.ReportMetric(us(g99), "gateway-p99-us")
	b.ReportMetric(us(g50)/us(d50), "p50-ratio")
	b.ReportMetric(us(g99)/us(d99), "p99-ratio")

	rates := func(v []float64) string {
		s := make([]string, len(v))
		for i, x := range v {
			s[i] = fmt.Sprintf("%.1f", x)
		}
		return strings.Join(s, " ")
	}
	var t strings.Builder
	fmt.Fprintf(&t, "gateway vs direct Dovecot: %d messages in %d mailboxes, %.1f MB; %d CPUs, %s\n",
		messages, mailboxes, float64(total)/mb, runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(&t, "  %-44s %14s %14s %16s\n", "", "direct", "gateway", "gateway/direct")
	fmt.Fprintf(&t, "  %-44s %14.1f %14.1f %16.3f   (goal >= 0.9)\n",
		fmt.Sprintf("FETCH BODY.PEEK[] MB/s, median of %d", fetchRounds), dm, gm, gm/dm)
	fmt.Fprintf(&t, "  %-44s %s\n", "  direct passes, in run order (MB/s)", rates(r.directMBps))
	fmt.Fprintf(&t, "  %-44s %s\n", "  gateway passes, each after a direct one", rates(r.gatewayMBps))
	dc, gc := median(r.directCPU), median(r.gatewayCPU)
	fmt.Fprintf(&t, "  %-44s %14.2f %14.2f %16s   (gateway's own: %.2f ms/MB)\n",
		"CPU of this process, ms per MB fetched", dc*1e3, gc*1e3, "", (gc-dc)*1e3)
	fmt.Fprintf(&t, "  %-44s %14.0f %14.0f %16.2f   (%+.0f us)\n",
		fmt.Sprintf("UID FETCH n (FLAGS) p50 us, %d round trips", len(r.directRTT)), us(d50), us(g50), us(g50)/us(d50), us(g50)-us(d50))
	fmt.Fprintf(&t, "  %-44s %14.0f %14.0f %16.2f   (%+.0f us)\n",
		"UID FETCH n (FLAGS) p99 us", us(d99), us(g99), us(g99)/us(d99), us(g99)-us(d99))
	// testing keeps only the first 10 lines a benchmark logs.
	b.Log("\n" + strings.TrimSuffix(t.String(), "\n"))
}

// processCPU returns the user and system CPU time this process has used,
// all threads together.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// median returns the median of v (v is not modified).
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the nearest-rank p-th percentile of d.
func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)]
}

// benchAccount builds the account: PEC fixtures in their suggested folders
// (each copy made unique by Fixture.Variant), 40% of messages forwards with
// a 5-90 KiB attachment and a fixture attached (about 12-135 KB), and every
// 100th message large: alternately the 3 MB fixture and a forward with a
// 1-2 MiB attachment. Deterministic.
func benchAccount(s *dovetest.Server, fixtures []dovetest.Fixture) ([]dovetest.SeedMessage, int64) {
	var small, big []dovetest.Fixture
	var sent string
	for _, f := range fixtures {
		if f.Size >= 1<<20 {
			big = append(big, f)
		} else {
			small = append(small, f)
		}
		if f.Kind == "non-pec" {
			sent = f.Folder // the Sent folder ("Posta inviata")
		}
	}
	if sent == "" {
		sent = "INBOX"
	}
	rng := rand.New(rand.NewPCG(2025, 6))
	var msgs []dovetest.SeedMessage
	var total int64
	for i := range accountSize {
		f := small[i%len(small)]
		m := f.SeedMessage(s, nil)
		m.InternalDate = f.InternalDate.Add(time.Duration(i) * time.Minute)
		switch {
		case i%bigEvery == bigEvery-1 && (i/bigEvery)%2 == 0 && len(big) > 0:
			m = big[(i/bigEvery/2)%len(big)].SeedMessage(s, nil)
			m.Body = big[(i/bigEvery/2)%len(big)].Variant(i)
		case i%bigEvery == bigEvery-1:
			m.Mailbox, m.Flags = s.MailboxName(sent), []string{`\Seen`}
			m.Body = forward(i, f.Variant(i), rng, 1<<20+rng.IntN(1<<20))
		case i%5 >= 3: // not 0: the first message goes to INBOX (see below)
			m.Mailbox, m.Flags = s.MailboxName(sent), []string{`\Seen`}
			m.Body = forward(i, f.Variant(i), rng, (5+rng.IntN(86))<<10)
		default:
			m.Body = f.Variant(i)
		}
		msgs = append(msgs, m)
		total += int64(len(m.Body))
	}
	// dovetest.SeedMaildir (as of this writing) creates the Maildir root
	// only for an INBOX message, and fails on a fresh user whose first
	// message goes to another folder.
	if !strings.EqualFold(msgs[0].Mailbox, "INBOX") {
		panic("bench: the first seeded message must be in INBOX")
	}
	return msgs, total
}

// forward is a message the member wrote: a short text, a PDF-like
// attachment of attach pseudo-random bytes in base64, and the PEC message
// inner attached as message/rfc822. CRLF line ends throughout.
func forward(seq int, inner []byte, rng *rand.Rand, attach int) []byte {
	raw := make([]byte, attach)
	for i := 0; i < len(raw); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(raw); j++ {
			raw[i+j] = byte(v >> (8 * j))
		}
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	boundary := fmt.Sprintf("----=_bench_%d", seq)
	var m strings.Builder
	m.Grow(len(enc) + len(enc)/38 + len(inner) + 1024)
	fmt.Fprintf(&m, "X-Bench-Seq: %d\r\n", seq)
	fmt.Fprintf(&m, "From: Giulia Verdi <%s>\r\nTo: archivio@pec.nuovo.test\r\n", benchUser)
	fmt.Fprintf(&m, "Subject: I: pratica %d, documentazione\r\n", seq)
	fmt.Fprintf(&m, "Date: %s\r\n", time.Date(2025, 3, 1, 9, 0, 0, 0, time.FixedZone("", 3600)).Add(time.Duration(seq)*time.Minute).Format(time.RFC1123Z))
	fmt.Fprintf(&m, "Message-ID: <bench.%d@pec.vecchio.test>\r\nMIME-Version: 1.0\r\n", seq)
	fmt.Fprintf(&m, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&m, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", boundary)
	fmt.Fprintf(&m, "In allegato la documentazione della pratica %d e la ricevuta.\r\n\r\n", seq)
	fmt.Fprintf(&m, "--%s\r\nContent-Type: application/pdf; name=\"pratica-%d.pdf\"\r\n", boundary, seq)
	fmt.Fprintf(&m, "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"pratica-%d.pdf\"\r\n\r\n", seq)
	for len(enc) > 76 {
		m.WriteString(enc[:76])
		m.WriteString("\r\n")
		enc = enc[76:]
	}
	m.WriteString(enc)
	fmt.Fprintf(&m, "\r\n--%s\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n", boundary)
	m.Write(inner)
	fmt.Fprintf(&m, "\r\n--%s--\r\n", boundary)
	return []byte(m.String())
}

// gateway is pecgate's IMAP proxy serving implicit TLS on a loopback port
// in this process.
type gateway struct {
	addr string
	pool *x509.CertPool
}

// startGateway configures the gateway as `pecgate serve` would for one
// provider, old (passthrough login), and one domain in state old; the
// client listeners in the file are disabled because the benchmark listens
// itself. It is closed when the benchmark ends.
func startGateway(b *testing.B, old *dovetest.Server) *gateway {
	b.Helper()
	dir := b.TempDir()
	ca, err := certs.NewTestCA()
	if err != nil {
		b.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteFiles(dir, "gw", "localhost", "127.0.0.1")
	if err != nil {
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

[domains.%q]
old = "old"
state = "old"
`, dir, old.IMAPSAddr, old.SubmissionAddr, old.CAFile, benchDomain)
	cfg, err := config.Parse([]byte(file), "bench.toml")
	if err != nil {
		b.Fatalf("gateway config: %v", err)
	}
	backends, err := backend.New(cfg, nil)
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
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.ServeTLS(ln)
	}()
	b.Cleanup(func() {
		srv.Close()
		<-served
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	return &gateway{addr: ln.Addr().String(), pool: pool}
}

// dial logs in through the gateway; the client is closed when the
// benchmark ends.
func (g *gateway) dial(b *testing.B, user, password string) *imapclient.Client {
	b.Helper()
	c, err := imapclient.DialTLS(g.addr, &imapclient.Options{
		TLSConfig: &tls.Config{RootCAs: g.pool, ServerName: "localhost", MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if err := c.Login(user, password).Wait(); err != nil {
		b.Fatalf("login through the gateway: %v", err)
	}
	return c
}

// listMailboxes returns every selectable mailbox, sorted.
func listMailboxes(b *testing.B, c *imapclient.Client) []string {
	b.Helper()
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		b.Fatal(err)
	}
	var names []string
	for _, l := range list {
		if !slices.Contains(l.Attrs, imap.MailboxAttrNoSelect) && !slices.Contains(l.Attrs, imap.MailboxAttrNonExistent) {
			names = append(names, l.Mailbox)
		}
	}
	slices.Sort(names)
	return names
}

type msgKey struct {
	mailbox string
	uid     imap.UID
}

// accountPass is one read of every message body of the account.
type accountPass struct {
	messages int
	bytes    int64
	elapsed  time.Duration
	sums     map[msgKey][32]byte
}

// fetchAccount EXAMINEs each mailbox and reads every body with UID FETCH
// lo:hi (UID BODY.PEEK[]) in batches of fetchBatch UIDs up to UIDNEXT,
// streaming each literal into SHA-256. elapsed covers the whole pass.
func fetchAccount(b *testing.B, c *imapclient.Client, mailboxes []string) accountPass {
	b.Helper()
	p := accountPass{sums: map[msgKey][32]byte{}}
	bs := &imap.FetchItemBodySection{Peek: true}
	opts := &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{bs}}
	start := time.Now()
	for _, mbox := range mailboxes {
		sel, err := c.Select(mbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			b.Fatalf("EXAMINE %s: %v", mbox, err)
		}
		if sel.NumMessages == 0 {
			continue
		}
		for lo := imap.UID(1); lo < sel.UIDNext; lo += fetchBatch {
			uids := imap.UIDSet{imap.UIDRange{Start: lo, Stop: min(lo+fetchBatch-1, sel.UIDNext-1)}}
			cmd := c.Fetch(uids, opts)
			for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
				var uid imap.UID
				var sum [32]byte
				n := int64(-1)
				for item := msg.Next(); item != nil; item = msg.Next() {
					switch item := item.(type) {
					case imapclient.FetchItemDataUID:
						uid = item.UID
					case imapclient.FetchItemDataBodySection:
						h := sha256.New()
						if n, err = io.Copy(h, item.Literal); err != nil {
							b.Fatalf("%s UID FETCH %v: reading a literal: %v", mbox, uids, err)
						}
						h.Sum(sum[:0])
					}
				}
				if uid == 0 || n < 0 {
					b.Fatalf("%s UID FETCH %v: seq %d came without UID or body", mbox, uids, msg.SeqNum)
				}
				p.sums[msgKey{mbox, uid}] = sum
				p.messages++
				p.bytes += n
			}
			if err := cmd.Close(); err != nil {
				b.Fatalf("%s UID FETCH %v: %v", mbox, uids, err)
			}
		}
	}
	p.elapsed = time.Since(start)
	return p
}

// inboxUIDs returns the UIDs in INBOX.
func inboxUIDs(b *testing.B, c *imapclient.Client) []imap.UID {
	b.Helper()
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		b.Fatal(err)
	}
	res, err := c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		b.Fatal(err)
	}
	return res.AllUIDs()
}

// flagsRoundTrips EXAMINEs INBOX, then times UID FETCH n (FLAGS) for each
// UID, one command at a time.
func flagsRoundTrips(b *testing.B, c *imapclient.Client, uids []imap.UID) []time.Duration {
	b.Helper()
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		b.Fatal(err)
	}
	opts := &imap.FetchOptions{UID: true, Flags: true}
	rtt := make([]time.Duration, 0, len(uids))
	for _, uid := range uids {
		start := time.Now()
		msgs, err := c.Fetch(imap.UIDSetNum(uid), opts).Collect()
		d := time.Since(start)
		if err != nil || len(msgs) != 1 || msgs[0].UID != uid {
			b.Fatalf("UID FETCH %d (FLAGS): %d messages, %v", uid, len(msgs), err)
		}
		rtt = append(rtt, d)
	}
	return rtt
}
