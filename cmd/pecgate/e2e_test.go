package main

// End-to-end tests: they build the real pecgate binary, run `pecgate serve`
// as a child process against a real Dovecot (internal/dovetest) and drive it
// as a mail client would. Everything here talks to the process over its
// sockets, signals and stderr only.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	gosync "sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/internal/dovetest"
)

// Bounds of the e2e tests. None of them is a performance assertion: each
// only keeps a broken gateway from hanging the test.
const (
	e2eBuildTimeout = 5 * time.Minute  // go build of ./cmd/pecgate
	e2eReadyTimeout = 20 * time.Second // serve binding its listeners
	e2eExitTimeout  = 30 * time.Second // a process expected to exit by itself
	e2eIOTimeout    = 30 * time.Second // one protocol exchange on loopback
)

const e2eUser = "giulia.verdi@example.org"

// buildPecgate builds ./cmd/pecgate (this package) into a fresh temporary
// directory and returns the binary's path. It is built without -race even
// under `go test -race`, so the memory figures are the real binary's.
func buildPecgate(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "pecgate")
	cmd := exec.Command(goBin, "build", "-o", bin, ".")
	out, err := e2eRun(cmd, e2eBuildTimeout)
	if err != nil {
		t.Fatalf("go build ./cmd/pecgate: %v\n%s", err, out)
	}
	return bin
}

// e2eRun runs cmd with its combined output captured, killing it after
// timeout.
func e2eRun(cmd *exec.Cmd, timeout time.Duration) ([]byte, error) {
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := e2eWait(cmd, timeout)
	return out.Bytes(), err
}

// e2eWait runs cmd, killing it after timeout.
func e2eWait(cmd *exec.Cmd, timeout time.Duration) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("still running after %v, killed", timeout)
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer goroutine (os/exec's
// copier) and a reading test.
type lockedBuffer struct {
	mu  gosync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *lockedBuffer) String() string { return string(b.Bytes()) }

// freeAddrs returns n loopback addresses whose ports were free a moment
// ago (listen on port 0, close).
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// e2eSetup is a gateway configuration in front of one "old" Dovecot.
type e2eSetup struct {
	dir        string
	configPath string
	// addrs of the four client listeners, by config key.
	addrs map[string]string
	pool  *x509.CertPool // trusts the gateway's certificate
}

var e2eListeners = []string{"imaps", "imap", "smtps", "submission"}

// newE2ESetup makes what every serve configuration of these tests shares:
// a temp dir, a gateway certificate for localhost/127.0.0.1 from a fresh
// test CA (trusted by s.pool), and a free loopback port per listener.
func newE2ESetup(t *testing.T) (s *e2eSetup, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err = ca.WriteFiles(dir, "gw", "localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	ports := freeAddrs(t, len(e2eListeners))
	s = &e2eSetup{dir: dir, configPath: filepath.Join(dir, "pecgate.toml"), addrs: map[string]string{}, pool: pool}
	for i, l := range e2eListeners {
		s.addrs[l] = ports[i]
	}
	return s, certFile, keyFile
}

// writeE2EConfig writes a complete serve configuration: every client
// listener on a free loopback port, no admin listener, a certificate for
// localhost/127.0.0.1 from a fresh test CA, domain example.org on old in
// state old; serverExtra is added to [server] and extra appended, verbatim.
func writeE2EConfig(t *testing.T, old *dovetest.Server, serverExtra, extra string) *e2eSetup {
	t.Helper()
	s, certFile, keyFile := newE2ESetup(t)
	dir := s.dir
	cfg := fmt.Sprintf(`[server]
hostname = "localhost"
imaps = %q
imap = %q
smtps = %q
submission = %q
admin = ""
%s
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

[domains."example.org"]
old = "old"
state = "old"
%s`, s.addrs["imaps"], s.addrs["imap"], s.addrs["smtps"], s.addrs["submission"], serverExtra,
		certFile, keyFile, filepath.Join(dir, "store"),
		old.IMAPSAddr, old.SubmissionAddr, old.CAFile, extra)
	if err := os.WriteFile(s.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *e2eSetup) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: s.pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// e2eProcess is a running `pecgate serve`.
type e2eProcess struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{} // closed once the process is reaped
	err    error         // cmd.Wait's result, set before exited closes
}

// startServe runs `pecgate serve -config PATH` and waits until every
// listener of s accepts TCP connections. The process is killed when the
// test ends if it is still running; when the test failed its stderr is
// logged.
func startServe(t *testing.T, bin string, s *e2eSetup) *e2eProcess {
	t.Helper()
	p := &e2eProcess{cmd: exec.Command(bin, "serve", "-config", s.configPath), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("pecgate serve stderr:\n%s", p.stderr)
		}
	})
	deadline := time.Now().Add(e2eReadyTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var notReady error
		for _, l := range e2eListeners {
			c, err := net.DialTimeout("tcp", s.addrs[l], time.Second)
			if err != nil {
				notReady = fmt.Errorf("%s %s: %w", l, s.addrs[l], err)
				break
			}
			c.Close()
		}
		if notReady == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pecgate serve not ready after %v: %v\nstderr:\n%s", e2eReadyTimeout, notReady, p.stderr)
		}
		select {
		case <-p.exited:
			t.Fatalf("pecgate serve exited during start-up (%v)\nstderr:\n%s", p.err, p.stderr)
		case <-tick.C:
		}
	}
}

// signal sends sig to the process.
func (p *e2eProcess) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits at most timeout for the process to exit and returns its
// exit code; it fails the test if the process is still running.
func (p *e2eProcess) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		t.Fatalf("pecgate serve still running %v later", timeout)
	}
	if p.err == nil {
		return 0
	}
	var exitErr *exec.ExitError
	if errors.As(p.err, &exitErr) {
		return exitErr.ExitCode()
	}
	t.Fatalf("pecgate serve: %v", p.err)
	return -1
}

// procMemory returns VmHWM (peak resident set) and VmRSS of pid, in bytes.
func procMemory(t *testing.T, pid int) (hwm, rss int64) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read memory figures: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || (name != "VmHWM" && name != "VmRSS") {
			continue
		}
		f := strings.Fields(value) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			t.Fatalf("/proc/%d/status: unexpected %q", pid, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/status: %q: %v", pid, line, err)
		}
		if name == "VmHWM" {
			hwm = kb << 10
		} else {
			rss = kb << 10
		}
	}
	if hwm == 0 || rss == 0 {
		t.Fatalf("/proc/%d/status has no VmHWM or VmRSS", pid)
	}
	return hwm, rss
}

// genReader produces a deterministic message of exactly Size() bytes: a
// short header block, then body lines of 78 printable characters and CRLF,
// each a function of seed and the line number. Nothing is held but the
// current line.
type genReader struct {
	header []byte
	size   int64
	off    int64
	seed   uint64
	line   [80]byte
	lineNo int64 // the line in line, -1 for none
}

const genLine = 80

// newGenReader returns a generator of about size bytes (rounded down to a
// whole line).
func newGenReader(seed uint64, size int64) *genReader {
	header := []byte(fmt.Sprintf("From: Mittente <mittente@example.org>\r\n"+
		"To: %s\r\nSubject: generated %d\r\nMessage-ID: <gen.%d@example.org>\r\n"+
		"Date: Mon, 02 Jun 2025 10:00:00 +0200\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n", e2eUser, seed, seed))
	lines := (size - int64(len(header))) / genLine
	return &genReader{header: header, size: int64(len(header)) + lines*genLine, seed: seed, lineNo: -1}
}

func (g *genReader) Size() int64 { return g.size }

const genAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

func (g *genReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && g.off < g.size {
		if g.off < int64(len(g.header)) {
			c := copy(p[n:], g.header[g.off:])
			n += c
			g.off += int64(c)
			continue
		}
		body := g.off - int64(len(g.header))
		no, col := body/genLine, body%genLine
		if no != g.lineNo {
			x := g.seed*0x9e3779b97f4a7c15 + uint64(no)
			for i := range genLine - 2 {
				// splitmix64 step per character: cheap, deterministic.
				x += 0x9e3779b97f4a7c15
				z := x
				z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
				z = (z ^ z>>27) * 0x94d049bb133111eb
				g.line[i] = genAlphabet[(z^z>>31)&63]
			}
			g.line[genLine-2], g.line[genLine-1] = '\r', '\n'
			g.lineNo = no
		}
		c := copy(p[n:], g.line[col:])
		n += c
		g.off += int64(c)
	}
	if n == 0 && g.off >= g.size {
		return 0, io.EOF
	}
	return n, nil
}

// fetchBodiesSHA256 runs UID FETCH uids (UID BODY.PEEK[]) on c, streaming
// each literal into SHA-256 (never holding a message), and returns the
// digests and sizes by UID.
func fetchBodiesSHA256(c *imapclient.Client, uids imap.UIDSet) (map[imap.UID][32]byte, map[imap.UID]int64, error) {
	sums, sizes := map[imap.UID][32]byte{}, map[imap.UID]int64{}
	bs := &imap.FetchItemBodySection{Peek: true}
	cmd := c.Fetch(uids, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{bs}})
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
				var err error
				if n, err = io.Copy(h, item.Literal); err != nil {
					cmd.Close()
					return nil, nil, fmt.Errorf("read literal of seq %d: %w", msg.SeqNum, err)
				}
				h.Sum(sum[:0])
			}
		}
		if uid == 0 || n < 0 {
			cmd.Close()
			return nil, nil, fmt.Errorf("seq %d: FETCH response without UID or body", msg.SeqNum)
		}
		sums[uid], sizes[uid] = sum, n
	}
	return sums, sizes, cmd.Close()
}

// TestServeStreamsWithoutBuffering moves a 100 MB message each way through
// the gateway binary and checks its bytes and that the gateway's peak
// memory barely moves: bodies are streamed, never held.
func TestServeStreamsWithoutBuffering(t *testing.T) {
	dovetest.Require(t)
	if testing.Short() {
		t.Skip("-short: moves 200 MB through the gateway")
	}
	bin := buildPecgate(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})

	const size = 100_000_000 // under the default 100 MiB APPEND limit
	seeded, err := io.ReadAll(newGenReader(1, size))
	if err != nil {
		t.Fatal(err)
	}
	seededSum := sha256.Sum256(seeded)
	old.SeedMaildir(t, e2eUser, []dovetest.SeedMessage{{Mailbox: "INBOX", Body: seeded}})
	seeded = nil

	s := writeE2EConfig(t, old, "", "")
	p := startServe(t, bin, s)
	pid := p.cmd.Process.Pid

	c, err := imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(e2eUser, old.Password(e2eUser)).Wait(); err != nil {
		t.Fatalf("login through the gateway: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 1 {
		t.Fatalf("INBOX has %d messages, want the seeded one", sel.NumMessages)
	}
	hwm0, rss0 := procMemory(t, pid)

	// FETCH: old -> gateway -> client.
	sums, sizes, err := fetchBodiesSHA256(c, imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}})
	if err != nil {
		t.Fatalf("UID FETCH 1:* BODY.PEEK[] through the gateway: %v", err)
	}
	if len(sums) != 1 {
		t.Fatalf("got %d messages, want 1", len(sums))
	}
	wantSize := newGenReader(1, size).Size()
	for uid, sum := range sums {
		if sum != seededSum || sizes[uid] != wantSize {
			t.Errorf("UID %d through the gateway: %d bytes sha256 %x, want %d bytes %x", uid, sizes[uid], sum, wantSize, seededSum)
		}
	}
	hwm1, rss1 := procMemory(t, pid)

	// APPEND: client -> gateway -> old, from a generator.
	gen := newGenReader(2, size)
	h := sha256.New()
	app := c.Append("INBOX", gen.Size(), nil)
	n, err := io.Copy(app, io.TeeReader(gen, h))
	if err != nil || n != gen.Size() {
		t.Fatalf("APPEND literal: wrote %d of %d bytes: %v", n, gen.Size(), err)
	}
	if err := app.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := app.Wait()
	if err != nil {
		t.Fatalf("APPEND through the gateway: %v", err)
	}
	var appendedSum [32]byte
	h.Sum(appendedSum[:0])
	hwm2, rss2 := procMemory(t, pid)

	direct := old.Dial(t, e2eUser)
	if _, err := direct.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	uid := data.UID
	if uid == 0 {
		uid = 2 // no APPENDUID: the second message of a fresh INBOX
	}
	sums, sizes, err = fetchBodiesSHA256(direct, imap.UIDSetNum(uid))
	if err != nil {
		t.Fatalf("reading the appended message from Dovecot: %v", err)
	}
	if sums[uid] != appendedSum || sizes[uid] != gen.Size() {
		t.Errorf("appended UID %d in Dovecot: %d bytes sha256 %x, want %d bytes %x", uid, sizes[uid], sums[uid], gen.Size(), appendedSum)
	}

	const mb = 1 << 20
	t.Logf("gateway memory (MiB): after login VmHWM %.1f VmRSS %.1f; after FETCH VmHWM %.1f VmRSS %.1f; after APPEND VmHWM %.1f VmRSS %.1f; peak growth %.1f for %d-byte messages",
		float64(hwm0)/mb, float64(rss0)/mb, float64(hwm1)/mb, float64(rss1)/mb, float64(hwm2)/mb, float64(rss2)/mb,
		float64(hwm2-hwm0)/mb, size)
	if growth := hwm2 - hwm0; growth >= 20*mb {
		t.Errorf("gateway peak RSS grew by %.1f MiB while moving %d-byte messages; want < 20 MiB (bodies must stream)", float64(growth)/mb, size)
	}
}

// rawIMAP is a client that sees the server's lines as sent, for asserting
// on untagged responses (BYE) that imapclient consumes.
type rawIMAP struct {
	conn net.Conn
	r    *bufio.Reader
}

// dialRawIMAP connects to addr, with implicit TLS unless cfg is nil, and
// reads the greeting.
func dialRawIMAP(t *testing.T, addr string, cfg *tls.Config) *rawIMAP {
	t.Helper()
	var conn net.Conn
	var err error
	if cfg != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: e2eIOTimeout}, "tcp", addr, cfg)
	} else {
		conn, err = net.DialTimeout("tcp", addr, e2eIOTimeout)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawIMAP{conn: conn, r: bufio.NewReader(conn)}
	if line, err := c.readLine(time.Now().Add(e2eIOTimeout)); err != nil || !strings.HasPrefix(line, "* OK") {
		t.Fatalf("greeting: %q, %v", line, err)
	}
	return c
}

func (c *rawIMAP) readLine(deadline time.Time) (string, error) {
	c.conn.SetReadDeadline(deadline)
	line, err := c.r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// command sends "tag cmd" and reads up to the tagged reply, which must be
// OK.
func (c *rawIMAP) command(t *testing.T, tag, cmd string) {
	t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(e2eIOTimeout))
	if _, err := fmt.Fprintf(c.conn, "%s %s\r\n", tag, cmd); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(e2eIOTimeout)
	for {
		line, err := c.readLine(deadline)
		if err != nil {
			t.Fatalf("%s %s: %v", tag, strings.Fields(cmd)[0], err)
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				t.Fatalf("%s %s: %s", tag, strings.Fields(cmd)[0], line)
			}
			return
		}
	}
}

// untilBye reads until a "* BYE" line, an error or the deadline, and
// returns the BYE line ("" if none) and whether the connection then ended.
func (c *rawIMAP) untilBye(deadline time.Time) (bye string, closed bool, err error) {
	for {
		line, err := c.readLine(deadline)
		if err != nil {
			return "", false, err
		}
		if strings.HasPrefix(line, "* BYE") {
			// Nothing may follow but the end of the connection: EOF, or
			// ErrUnexpectedEOF when TLS ends without close_notify.
			_, err := c.readLine(deadline)
			var ne net.Error
			return line, err != nil && !(errors.As(err, &ne) && ne.Timeout()), nil
		}
	}
}

// TestServeGracefulShutdown sends SIGTERM to a gateway with an IDLE client
// and an idle authenticated one: both get BYE, the process exits 0 within
// its grace period, and no listener accepts any more.
func TestServeGracefulShutdown(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})
	const grace = 4 * time.Second
	s := writeE2EConfig(t, old, fmt.Sprintf("shutdown_grace = %q\n", grace.String()), "")
	p := startServe(t, bin, s)

	login := fmt.Sprintf("LOGIN %q %q", e2eUser, old.Password(e2eUser))
	idling := dialRawIMAP(t, s.addrs["imaps"], s.tlsConfig())
	idling.command(t, "a1", login)
	idling.command(t, "a2", "SELECT INBOX")
	idling.conn.SetWriteDeadline(time.Now().Add(e2eIOTimeout))
	fmt.Fprintf(idling.conn, "a3 IDLE\r\n")
	if line, err := idling.readLine(time.Now().Add(e2eIOTimeout)); err != nil || !strings.HasPrefix(line, "+") {
		t.Fatalf("IDLE: got %q, %v; want a continuation", line, err)
	}
	quiet := dialRawIMAP(t, s.addrs["imap"], nil)
	quiet.command(t, "b1", "STARTTLS")
	tc := tls.Client(quiet.conn, s.tlsConfig())
	t.Cleanup(func() { tc.Close() })
	quiet.conn, quiet.r = tc, bufio.NewReader(tc)
	quiet.command(t, "b2", login)

	start := time.Now()
	p.signal(t, syscall.SIGTERM)
	type result struct {
		name, bye string
		closed    bool
		err       error
	}
	results := make(chan result, 2)
	for name, c := range map[string]*rawIMAP{"IDLE client (imaps)": idling, "idle client (imap+STARTTLS)": quiet} {
		go func() {
			bye, closed, err := c.untilBye(start.Add(grace + e2eIOTimeout))
			results <- result{name, bye, closed, err}
		}()
	}
	code := p.waitExit(t, grace+e2eExitTimeout)
	elapsed := time.Since(start)
	for range 2 {
		r := <-results
		switch {
		case r.bye == "":
			t.Errorf("%s: no BYE before the connection ended: %v", r.name, r.err)
		case !r.closed:
			t.Errorf("%s: got %q but the connection stayed open", r.name, r.bye)
		default:
			t.Logf("%s: %s", r.name, r.bye)
		}
	}
	t.Logf("exit code %d %v after SIGTERM (grace %v)", code, elapsed.Round(time.Millisecond), grace)
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	// The process may take a moment beyond the grace to close sockets and
	// exit; more than that means it ignored the grace.
	if elapsed > grace+2*time.Second {
		t.Errorf("exited %v after SIGTERM, want within the %v grace period", elapsed, grace)
	}
	for _, l := range e2eListeners {
		if c, err := net.DialTimeout("tcp", s.addrs[l], time.Second); err == nil {
			c.Close()
			t.Errorf("%s %s still accepts connections after exit", l, s.addrs[l])
		}
	}
	if !strings.Contains(p.stderr.String(), `"msg":"stopped"`) {
		t.Errorf("stderr has no \"stopped\" line")
	}
}

// TestServeRejectsBadConfig: serve refuses a configuration it cannot
// trust, exits 1 and says why.
func TestServeRejectsBadConfig(t *testing.T) {
	bin := buildPecgate(t)
	dir := t.TempDir()
	cases := []struct {
		name   string
		config string // "" means: no file
		want   []string
	}{
		{
			name: "unknown key",
			config: "[server]\nhostname = \"localhost\"\nimaps = \"\"\nimap = \"\"\nsmtps = \"\"\nsubmission = \"\"\nadmin = \"\"\n" +
				"listen_everywhere = true\n\n[providers.old]\nimap = \"imaps://127.0.0.1:1\"\nsmtp = \"smtps://127.0.0.1:1\"\n\n" +
				"[domains.\"example.org\"]\nold = \"old\"\n",
			// line 8 is listen_everywhere
			want: []string{"pecgate.toml:8: server.listen_everywhere: unknown key"},
		},
		{
			name: "missing file",
			want: []string{"pecgate.toml", "no such file or directory"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"), "pecgate.toml")
			if tc.config != "" {
				if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(bin, "serve", "-config", path)
			var stdout, stderr lockedBuffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := e2eWait(cmd, e2eExitTimeout)
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
				t.Fatalf("exit: %v, want exit status 1\nstderr:\n%s", err, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not say %q:\n%s", w, stderr.String())
				}
			}
			if strings.Contains(stderr.String(), `"msg":"listening"`) {
				t.Errorf("it listened before refusing:\n%s", stderr.String())
			}
			if out := stdout.String(); out != "" {
				t.Errorf("stdout is not empty: %q", out)
			}
			t.Logf("stderr:\n%s", stderr.String())
		})
	}
}

// TestServeNoSecretsInLogs logs in with the right password and with a
// wrong one, over IMAP and SMTP, at log level debug: stderr must name the
// user but contain neither password, in clear or base64 (SASL).
func TestServeNoSecretsInLogs(t *testing.T) {
	dovetest.Require(t)
	bin := buildPecgate(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: e2eUser}}})
	s := writeE2EConfig(t, old, "", "\n[log]\nlevel = \"debug\"\n")
	p := startServe(t, bin, s)
	good := old.Password(e2eUser)
	bad := "Wr0ng-" + good[:8] + "-pw"

	c, err := imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(e2eUser, good).Wait(); err != nil {
		t.Fatalf("IMAP login with the right password: %v", err)
	}
	c.Logout().Wait()
	c.Close()
	c, err = imapclient.DialTLS(s.addrs["imaps"], &imapclient.Options{TLSConfig: s.tlsConfig()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(e2eUser, bad).Wait(); err == nil {
		t.Errorf("IMAP login with a wrong password succeeded")
	}
	c.Close()

	for _, pw := range []string{good, bad} {
		sc, err := smtp.DialTLS(s.addrs["smtps"], s.tlsConfig())
		if err != nil {
			t.Fatal(err)
		}
		err = sc.Auth(sasl.NewPlainClient("", e2eUser, pw))
		if (err == nil) != (pw == good) {
			t.Errorf("SMTP AUTH PLAIN with the %s password: %v", map[bool]string{true: "right", false: "wrong"}[pw == good], err)
		}
		sc.Close()
	}

	p.signal(t, syscall.SIGTERM)
	if code := p.waitExit(t, e2eExitTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	logs := p.stderr.String()
	if !strings.Contains(logs, e2eUser) {
		t.Fatalf("stderr never names %s: the logins were not logged, so this test proves nothing:\n%s", e2eUser, logs)
	}
	for _, pw := range []string{good, bad} {
		for _, form := range []string{
			pw,
			base64.StdEncoding.EncodeToString([]byte(pw)),                             // SASL LOGIN
			base64.StdEncoding.EncodeToString([]byte("\x00" + e2eUser + "\x00" + pw)), // SASL PLAIN
		} {
			if strings.Contains(logs, form) {
				t.Errorf("stderr contains a password (%q)", form)
			}
		}
	}
	t.Logf("%d bytes of logs, %d lines, no password", len(logs), strings.Count(logs, "\n"))
}
