package proxy

// Real clients are the judge: mbsync, curl and Python's imaplib talk to the
// gateway in front of a real Dovecot (the "old" provider, domain in state
// old, passthrough auth) and must see exactly what they see when they talk
// to Dovecot directly. Every comparison is by SHA-256 of exact bytes.
//
// A test whose client binary is missing fails when CI=true and skips with
// an install hint otherwise, like the Dovecot helpers (STYLE rule 12).
// Clients run without the user's configuration: curl -q (no ~/.curlrc),
// python3 -I (no user site or PYTHON* variables), mbsync with its own rc
// file and HOME.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/internal/dovetest"
)

const (
	clientsDomain = "pec.vecchio.test"
	clientsUser   = "giulia.verdi@pec.vecchio.test"
	clientsUser2  = "mario.rossi@pec.vecchio.test"
	// clientsToolTimeout bounds one run of an external client.
	clientsToolTimeout = 4 * time.Minute
)

// clientsRequireTool returns the path of an external client, or fails the
// test when CI=true and skips it otherwise, saying how to install it.
func clientsRequireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (%v); CI=true, so it must be installed: apt-get install %s", name, err, pkg)
		}
		t.Skipf("%s not installed: apt-get install %s", name, pkg)
	}
	return p
}

// clientsEnv is one "old" Dovecot and the gateway in front of it.
type clientsEnv struct {
	old  *dovetest.Server
	gw   *testGateway
	gwCA string // PEM file of the CA that issued the gateway's certificate
}

func clientsStart(t *testing.T, users ...string) *clientsEnv {
	t.Helper()
	dovetest.Require(t)
	var us []dovetest.User
	for _, u := range users {
		us = append(us, dovetest.User{Address: u})
	}
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: us})
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	gwCA := filepath.Join(t.TempDir(), "gateway-ca.pem")
	if err := os.WriteFile(gwCA, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	gw := startTestGateway(t, ca, oneProviderConfig("imaps://"+old.IMAPSAddr, old.CAFile, clientsDomain))
	return &clientsEnv{old: old, gw: gw, gwCA: gwCA}
}

// clientsRun runs an external client and returns its stdout; the test
// fails with its stderr if it exits non-zero.
func clientsRun(t *testing.T, stdin []byte, env []string, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientsToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstderr:\n%s\nstdout (last 2000 bytes):\n%s", name, strings.Join(args, " "), err,
			clientsTail(stderr.Bytes(), 8000), clientsTail(stdout.Bytes(), 2000))
	}
	return stdout.Bytes()
}

func clientsTail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func clientsSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func clientsPort(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// clientsFlagSets are the flag combinations the seeded messages cycle
// through: every system flag but \Deleted, and the PEC keywords.
var clientsFlagSets = [][]string{
	nil,
	{`\Seen`},
	{`\Seen`, `\Flagged`},
	{`\Seen`, `\Answered`},
	{`\Draft`},
	{`\Seen`, `$label1`},
	{`\Seen`, `$Forwarded`},
	{`NonJunk`},
	{`\Seen`, `\Answered`, `\Flagged`, `$label1`, `NonJunk`},
	{`\Flagged`, `$Forwarded`},
}

// clientsFolders are the seeded folders, "/"-separated as in the fixtures'
// manifest.
var clientsFolders = []string{"INBOX", "Posta inviata", "Pratiche/Città", "Archivio/2024"}

// clientsBigMessage returns a MIME message of about size bytes whose
// attachment is deterministic pseudo-random data in base64, CRLF lines.
func clientsBigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: \"Studio Bianchi\" <studio.bianchi@pec.nuovo.test>\r\n" +
		"To: giulia.verdi@pec.vecchio.test\r\n" +
		"Subject: Fascicolo completo (allegato grande)\r\n" +
		"Date: Mon, 02 Jun 2025 09:00:00 +0200\r\n" +
		"Message-ID: <big-20mb@pec.nuovo.test>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"----=_big_boundary\"\r\n\r\n" +
		"------=_big_boundary\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"In allegato il fascicolo, è grande.\r\n\r\n" +
		"------=_big_boundary\r\nContent-Type: application/zip; name=\"fascicolo.zip\"\r\n" +
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"fascicolo.zip\"\r\n\r\n")
	rng := rand.NewChaCha8([32]byte{'p', 'e', 'c', 'g', 'a', 't', 'e'})
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	line := make([]byte, 76)
	var rnd [8]byte
	for b.Len() < size-100 {
		for i := 0; i < len(line); i += 8 {
			rng.Read(rnd[:])
			for j := 0; j < 8 && i+j < len(line); j++ {
				line[i+j] = alphabet[rnd[j]&63]
			}
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	b.WriteString("------=_big_boundary--\r\n")
	return b.Bytes()
}

// clientsMaildirMsg is one message as mbsync stored it.
type clientsMaildirMsg struct {
	sum   string // SHA-256 of the file, less the X-TUID line mbsync adds
	flags string // the Maildir info after ":2,"
	mtime int64  // Unix seconds: mbsync sets it to INTERNALDATE (CopyArrivalDate)
}

func (m clientsMaildirMsg) String() string {
	return fmt.Sprintf("%s :2,%s @%d", m.sum, m.flags, m.mtime)
}

// clientsStripTUID removes the "X-TUID: <12 characters>" line that isync
// appends to the header of every message it stores (its own tracking ID,
// random per run), so that two runs store the same bytes.
func clientsStripTUID(b []byte) []byte {
	end := bytes.Index(b, []byte("\n\n"))
	if end < 0 {
		end = len(b)
	}
	i := bytes.Index(b[:end+1], []byte("\nX-TUID: "))
	if i < 0 {
		return b
	}
	j := bytes.IndexByte(b[i+1:], '\n')
	return append(b[:i+1:i+1], b[i+1+j+1:]...)
}

// clientsReadMaildirs returns, for every Maildir folder under root (a
// directory with cur/), its messages sorted, keyed by the folder's path
// relative to root.
func clientsReadMaildirs(t *testing.T, root string) map[string][]clientsMaildirMsg {
	t.Helper()
	out := map[string][]clientsMaildirMsg{}
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
		if _, ok := out[folder]; !ok {
			out[folder] = nil
		}
		ents, err := os.ReadDir(path)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			b, err := os.ReadFile(filepath.Join(path, e.Name()))
			if err != nil {
				return err
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			_, flags, _ := strings.Cut(e.Name(), ":2,")
			out[folder] = append(out[folder], clientsMaildirMsg{sum: clientsSum(clientsStripTUID(b)), flags: flags, mtime: info.ModTime().Unix()})
		}
		return fs.SkipDir
	})
	if err != nil {
		t.Fatal(err)
	}
	for f := range out {
		clientsSortMsgs(out[f])
	}
	return out
}

func clientsSortMsgs(ms []clientsMaildirMsg) {
	slices.SortFunc(ms, func(a, b clientsMaildirMsg) int { return strings.Compare(a.String(), b.String()) })
}

// clientsMbsyncLetters maps IMAP flags to the Maildir info letters isync
// 1.4 writes. It maps $Forwarded to P ("passed") and drops other keywords.
var clientsMbsyncLetters = map[string]byte{
	`\draft`: 'D', `\flagged`: 'F', `$forwarded`: 'P', `\answered`: 'R', `\seen`: 'S', `\deleted`: 'T',
}

// clientsExpectMaildir is what mbsync must store for a seeded message: the
// bytes with LF line ends (isync's Maildirs are LF-native), the flags as
// info letters in ASCII order, INTERNALDATE as mtime.
func clientsExpectMaildir(m dovetest.SeedMessage) clientsMaildirMsg {
	var letters []byte
	for _, f := range m.Flags {
		if c, ok := clientsMbsyncLetters[strings.ToLower(f)]; ok {
			letters = append(letters, c)
		}
	}
	slices.Sort(letters)
	letters = slices.Compact(letters)
	return clientsMaildirMsg{
		sum:   clientsSum(bytes.ReplaceAll(m.Body, []byte("\r\n"), []byte("\n"))),
		flags: string(letters),
		mtime: m.InternalDate.Unix(),
	}
}

// mbsyncRC is the mbsyncrc for one Sync Pull of the whole account at
// localhost:port (implicit TLS, trusting caFile) into the Maildir at root.
func mbsyncRC(port, user, pass, caFile, root string) string {
	// isync 1.4 (Debian 12) syntax: SSLType/SSLVersions (1.5 renamed them
	// TLSType/TLSVersions), Far/Near (1.4 still accepts Master/Slave).
	//
	// Host is "localhost", not 127.0.0.1: isync 1.4 checks the name against
	// the certificate's DNS names only (it says "certificate owner does not
	// match hostname 127.0.0.1" despite an IP SAN). Where localhost resolves
	// to ::1 first, isync tries the next address.
	return fmt.Sprintf(`IMAPAccount acct
Host localhost
Port %s
User %s
Pass %s
SSLType IMAPS
SSLVersions TLSv1.2 TLSv1.3
SystemCertificates no
CertificateFile %s

IMAPStore far
Account acct

MaildirStore near
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel all
Far :far:
Near :near:
Patterns *
Create Near
Sync Pull
Expunge None
CopyArrivalDate yes
SyncState *
`, port, user, pass, caFile, root, root)
}

// clientsMbsync syncs the whole account at addr (implicit TLS, trusting
// caFile) into a new Maildir under dir, and returns the Maildir's root and
// how long mbsync ran.
func clientsMbsync(t *testing.T, mbsync, dir, name, addr, caFile, user, pass string) (string, time.Duration) {
	t.Helper()
	port := clientsPort(t, addr)
	base := filepath.Join(dir, name)
	root := filepath.Join(base, "mail")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := mbsyncRC(port, user, pass, caFile, root)
	rcFile := filepath.Join(base, "mbsyncrc")
	if err := os.WriteFile(rcFile, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	clientsRun(t, nil, []string{"HOME=" + base}, mbsync, "-c", rcFile, "all")
	return root, time.Since(t0)
}

// TestMbsyncThroughGatewayMatchesDirect syncs a 2,000-message account with
// mbsync once directly from Dovecot and once through the gateway: the two
// Maildirs must hold the same folders and, in each, the same messages
// (bytes, flags, arrival date).
func TestMbsyncThroughGatewayMatchesDirect(t *testing.T) {
	mbsync := clientsRequireTool(t, "mbsync", "isync")
	fixtures := dovetest.LoadFixtures(t)
	env := clientsStart(t, clientsUser)
	old := env.old

	// Scale the fixtures up: every small fixture in turn, each copy made
	// distinct by its outer header block (signatures still verify), spread
	// over the folders with flags cycling; the 3 MB one twice; one 20 MB
	// message.
	var small []dovetest.Fixture
	var large dovetest.Fixture
	for _, f := range fixtures {
		if f.Size > 1<<20 {
			large = f
		} else {
			small = append(small, f)
		}
	}
	if large.Body == nil || len(small) == 0 {
		t.Fatal("fixtures: want small ones and the 3 MB one")
	}
	const nSmall = 2100
	var msgs []dovetest.SeedMessage
	var seededFolder []string // msgs[i] is in seededFolder[i], "/"-separated
	perFolder := map[string]int{}
	add := func(folder string, body []byte, flags []string, date time.Time) {
		msgs = append(msgs, dovetest.SeedMessage{Mailbox: old.MailboxName(folder), Body: body, Flags: flags, InternalDate: date})
		seededFolder = append(seededFolder, folder)
		perFolder[folder]++
	}
	for i := range nSmall {
		f := small[i%len(small)]
		add(clientsFolders[(i/7)%len(clientsFolders)], f.Variant(i), clientsFlagSets[i%len(clientsFlagSets)],
			f.InternalDate.Add(time.Duration(i)*time.Minute))
	}
	add("Pratiche/Città", large.Variant(nSmall), large.Flags, large.InternalDate)
	add("INBOX", large.Variant(nSmall+1), nil, large.InternalDate.Add(time.Hour))
	big := clientsBigMessage(20 << 20)
	add("Archivio/2024", big, []string{`\Seen`, `$label1`}, time.Date(2025, 6, 2, 9, 0, 5, 0, time.FixedZone("", 2*3600)))
	t0 := time.Now()
	old.SeedMaildir(t, clientsUser, msgs)
	t.Logf("seeded %d messages (%d folders) in %v", len(msgs), len(perFolder), time.Since(t0))

	pass := old.Password(clientsUser)
	dir := t.TempDir()
	// syncBoth runs mbsync directly and through the gateway, and checks that
	// both Maildirs hold what the account holds: every message of msgs
	// once, in its folder, with its bytes, flags and INTERNALDATE.
	syncBoth := func(round string) {
		t.Helper()
		directRoot, directTime := clientsMbsync(t, mbsync, dir, "direct", old.IMAPSAddr, old.CAFile, clientsUser, pass)
		t.Logf("%s: mbsync directly from Dovecot: %v", round, directTime)
		gwRoot, gwTime := clientsMbsync(t, mbsync, dir, "gateway", env.gw.imapsAddr, env.gwCA, clientsUser, pass)
		t.Logf("%s: mbsync through the gateway: %v", round, gwTime)
		direct := clientsReadMaildirs(t, directRoot)
		viaGW := clientsReadMaildirs(t, gwRoot)

		// The same folders, each with the same messages.
		if got, want := slices.Sorted(maps.Keys(viaGW)), slices.Sorted(maps.Keys(direct)); !slices.Equal(got, want) {
			t.Errorf("%s: folders through the gateway %q, directly %q", round, got, want)
		}
		for folder, want := range direct {
			if got := viaGW[folder]; !slices.Equal(got, want) {
				t.Errorf("%s: folder %q: %d messages through the gateway, %d directly; differences (+ gateway only, - direct only):\n%s",
					round, folder, len(got), len(want), clientsDiff(got, want, 10))
			}
		}

		// And what both got is what the account holds, as msgs says.
		// isync 1.4 keeps folder names in modified UTF-7
		// ("Pratiche/Citt&AOA-"); a later one may decode them.
		want := map[string][]clientsMaildirMsg{}
		for i, m := range msgs {
			folder := strings.ReplaceAll(seededFolder[i], "/", string(filepath.Separator))
			if _, ok := direct[folder]; !ok {
				folder = strings.ReplaceAll(folder, "Città", "Citt&AOA-")
			}
			want[folder] = append(want[folder], clientsExpectMaildir(m))
		}
		total := 0
		for folder, ms := range direct {
			total += len(ms)
			if want[folder] == nil && len(ms) > 0 {
				t.Errorf("%s: folder %q: %d messages, none in the account", round, folder, len(ms))
			}
		}
		for folder, w := range want {
			clientsSortMsgs(w)
			if got := direct[folder]; !slices.Equal(got, w) {
				t.Errorf("%s: folder %q: mbsync got %d messages directly, the account has %d; differences (+ mbsync only, - account only):\n%s",
					round, folder, len(got), len(w), clientsDiff(got, w, 10))
			}
		}
		if total != len(msgs) {
			t.Errorf("%s: mbsync fetched %d messages directly, the account has %d (per folder: %v; got %v)", round, total, len(msgs), perFolder, clientsCounts(direct))
		}
	}
	syncBoth("first sync")
	if t.Failed() {
		return
	}

	// Mail arrives and another client changes flags and deletes: the next
	// sync, an incremental one, must bring exactly that, through the
	// gateway as directly.
	c := old.Dial(t, clientsUser)
	var inbox []int // indexes in msgs of INBOX's messages: UID i+1 is msgs[inbox[i]]
	for i, f := range seededFolder {
		if f == "INBOX" {
			inbox = append(inbox, i)
		}
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	store := func(uids imap.UIDSet, op imap.StoreFlagsOp, flag imap.Flag) {
		t.Helper()
		if err := c.Store(uids, &imap.StoreFlags{Op: op, Silent: true, Flags: []imap.Flag{flag}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
	}
	store(imap.UIDSetNum(1, 2, 3, 4, 5), imap.StoreFlagsAdd, imap.FlagFlagged)
	store(imap.UIDSetNum(6, 7, 8, 9, 10), imap.StoreFlagsAdd, imap.FlagAnswered)
	store(imap.UIDSetNum(11, 12, 13, 14, 15), imap.StoreFlagsDel, imap.FlagSeen)
	for uid := imap.UID(1); uid <= 15; uid++ {
		m := &msgs[inbox[uid-1]]
		switch {
		case uid <= 5:
			m.Flags = append(slices.Clone(m.Flags), `\Flagged`)
		case uid <= 10:
			m.Flags = append(slices.Clone(m.Flags), `\Answered`)
		default:
			m.Flags = slices.DeleteFunc(slices.Clone(m.Flags), func(f string) bool { return f == `\Seen` })
		}
	}
	store(imap.UIDSetNum(16, 17, 18), imap.StoreFlagsAdd, imap.FlagDeleted)
	if err := c.UIDExpunge(imap.UIDSetNum(16, 17, 18)).Close(); err != nil {
		t.Fatal(err)
	}
	// mbsync marks a message expunged on the far side \Deleted (T) in the
	// Maildir and keeps it (Expunge None).
	for _, i := range inbox[15:18] {
		msgs[i].Flags = append(slices.Clone(msgs[i].Flags), `\Deleted`)
	}
	for n, folder := range []string{"INBOX", "Posta inviata", "Pratiche/Città"} {
		f := small[n]
		m := dovetest.SeedMessage{Mailbox: old.MailboxName(folder), Body: f.Variant(100000 + n), Flags: []string{`\Seen`, `$label1`},
			InternalDate: time.Date(2025, 7, 1, 8, n, 0, 0, time.UTC)}
		ap := c.Append(m.Mailbox, int64(len(m.Body)), &imap.AppendOptions{Flags: []imap.Flag{imap.FlagSeen, "$label1"}, Time: m.InternalDate})
		if _, err := ap.Write(m.Body); err != nil {
			t.Fatal(err)
		}
		if err := ap.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := ap.Wait(); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
		seededFolder = append(seededFolder, folder)
		perFolder[folder]++
	}
	syncBoth("second sync")
}

func clientsCounts(m map[string][]clientsMaildirMsg) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = len(v)
	}
	return out
}

// clientsDiff lists up to n entries only in got ("+") or only in want
// ("-"); both are sorted.
func clientsDiff(got, want []clientsMaildirMsg, n int) string {
	var b strings.Builder
	i, j := 0, 0
	for (i < len(got) || j < len(want)) && n > 0 {
		switch {
		case j >= len(want) || (i < len(got) && got[i].String() < want[j].String()):
			fmt.Fprintf(&b, "  + %v\n", got[i])
			i++
			n--
		case i >= len(got) || want[j].String() < got[i].String():
			fmt.Fprintf(&b, "  - %v\n", want[j])
			j++
			n--
		default:
			i++
			j++
		}
	}
	return b.String()
}

// clientsWireName is a fixture folder ("/"-separated, UTF-8) as Dovecot
// names it on the wire: its delimiter, each level in modified UTF-7
// (RFC 3501 section 5.1.3), e.g. "Pratiche/Città" -> "Pratiche.Citt&AOA-".
func clientsWireName(s *dovetest.Server, folder string) string {
	levels := strings.Split(folder, "/")
	for i, l := range levels {
		levels[i] = clientsMUTF7(l)
	}
	return strings.Join(levels, s.Delimiter)
}

func clientsMUTF7(s string) string {
	enc := base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)
	var b strings.Builder
	var run []byte
	flush := func() {
		if len(run) > 0 {
			b.WriteString("&" + enc.EncodeToString(run) + "-")
			run = run[:0]
		}
	}
	for _, r := range s {
		switch {
		case r == '&':
			flush()
			b.WriteString("&-")
		case r >= 0x20 && r <= 0x7e:
			flush()
			b.WriteRune(r)
		default:
			for _, u := range utf16.Encode([]rune{r}) {
				run = append(run, byte(u>>8), byte(u))
			}
		}
	}
	flush()
	return b.String()
}

// clientsListEntry is one LIST response line as curl prints it.
type clientsListEntry struct{ attrs, delim, name string }

// clientsParseList parses curl's LIST output ("* LIST (\HasNoChildren) "."
// "Posta inviata""), unquoting names (a server may quote an atom or not)
// and lower-casing attributes.
func clientsParseList(t *testing.T, out []byte) []clientsListEntry {
	t.Helper()
	var es []clientsListEntry
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		rest, ok := strings.CutPrefix(line, "* LIST (")
		if !ok {
			t.Errorf("not a LIST line: %q", line)
			continue
		}
		attrs, rest, ok1 := strings.Cut(rest, ") ")
		delim, name, ok2 := strings.Cut(rest, " ")
		if !ok1 || !ok2 {
			t.Errorf("bad LIST line: %q", line)
			continue
		}
		for _, p := range []*string{&delim, &name} {
			if len(*p) >= 2 && (*p)[0] == '"' && (*p)[len(*p)-1] == '"' {
				u, err := strconv.Unquote(*p)
				if err != nil {
					t.Errorf("bad quoted string in %q: %v", line, err)
				}
				*p = u
			}
		}
		// Attributes are case-insensitive (RFC 3501 section 7.2.2):
		// Dovecot writes \UnMarked, go-imap \Unmarked.
		es = append(es, clientsListEntry{attrs: strings.ToLower(attrs), delim: delim, name: name})
	}
	slices.SortFunc(es, func(a, b clientsListEntry) int { return strings.Compare(a.name, b.name) })
	return es
}

// clientsURLMailbox escapes a wire mailbox name for an IMAP URL path
// (RFC 5092): curl sends the decoded name as is.
func clientsURLMailbox(name string) string {
	return strings.NewReplacer("%", "%25", " ", "%20", "&", "%26", ";", "%3B", "?", "%3F", "#", "%23", "/", "%2F").Replace(name)
}

// TestCurlThroughGateway searches, lists the folders and fetches every PEC
// fixture by UID with curl, through the gateway's IMAPS port and its
// STARTTLS port: searches print what Dovecot prints, the listing names the
// folders as Dovecot does and every message comes back byte for byte.
func TestCurlThroughGateway(t *testing.T) {
	curl := clientsRequireTool(t, "curl", "curl")
	fixtures := dovetest.LoadFixtures(t)
	env := clientsStart(t, clientsUser)
	old := env.old
	var msgs []dovetest.SeedMessage
	uidNext := map[string]imap.UID{}
	uids := make([]imap.UID, len(fixtures))
	for i, f := range fixtures {
		msgs = append(msgs, f.SeedMessage(old, f.Body))
		// SeedMaildir: within a mailbox, UIDs follow the order of msgs.
		uidNext[f.Folder]++
		uids[i] = uidNext[f.Folder]
	}
	old.SeedMaildir(t, clientsUser, msgs)
	userpass := clientsUser + ":" + old.Password(clientsUser)
	dir := t.TempDir()

	// directList is what Dovecot lists now. Its attributes change as
	// mailboxes are used (\Unmarked appears once a mailbox was selected),
	// so each gateway LIST is compared with a fresh one.
	directList := func() []clientsListEntry {
		t.Helper()
		l := clientsParseList(t, clientsRun(t, nil, nil, curl, "-q", "-sS", "--cacert", old.CAFile, "-u", userpass,
			"imaps://127.0.0.1:"+clientsPort(t, old.IMAPSAddr)+"/"))
		if !slices.ContainsFunc(l, func(e clientsListEntry) bool { return e.name == "Pratiche.Citt&AOA-" }) {
			t.Fatalf("Dovecot itself does not list Pratiche.Citt&AOA-: %v", l)
		}
		return l
	}

	// SEARCH, before the FETCHes below mark messages \Seen: curl prints
	// the untagged responses; through the gateway they must be Dovecot's.
	// A search that matches nothing is common ("anything unread?").
	// --max-time bounds a server that never completes the command.
	t.Run("search", func(t *testing.T) {
		direct := "imaps://127.0.0.1:" + clientsPort(t, old.IMAPSAddr) + "/INBOX"
		viaGW := "imaps://127.0.0.1:" + clientsPort(t, env.gw.imapsAddr) + "/INBOX"
		for _, q := range []struct{ name, query, request string }{
			{"unseen", "?UNSEEN", ""},
			{"header", "?HEADER%20X-Riferimento-Message-ID%20%227b3f2c1e-5a4d-4e9b-9c21-0d8e6f4a1b23%40pec.vecchio.test%22", ""},
			{"no match", "?DRAFT", ""},
			{"uid no match", "", "UID SEARCH SUBJECT \"nessun risultato\""},
			{"esearch count", "", "SEARCH RETURN (COUNT) UNSEEN"},
			{"esearch all no match", "", "UID SEARCH RETURN (ALL) DRAFT"},
		} {
			t.Run(q.name, func(t *testing.T) {
				run := func(base, ca string) ([]byte, error) {
					args := []string{"-q", "-sS", "--max-time", "10", "--cacert", ca, "-u", userpass, base + q.query}
					if q.request != "" {
						args = append(args, "-X", q.request)
					}
					var stderr bytes.Buffer
					cmd := exec.Command(curl, args...)
					cmd.Stderr = &stderr
					out, err := cmd.Output()
					if err != nil {
						err = fmt.Errorf("curl %s: %w: %s", strings.Join(args[8:], " "), err, bytes.TrimSpace(stderr.Bytes()))
					}
					return out, err
				}
				want, err := run(direct, old.CAFile)
				if err != nil {
					t.Fatalf("directly: %v", err)
				}
				got, err := run(viaGW, env.gwCA)
				if err != nil {
					t.Fatalf("through the gateway: %v (directly it printed %q)", err, want)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("through the gateway curl printed %q, directly %q", got, want)
				}
			})
		}
	})

	for _, tc := range []struct {
		name string
		base string
		args []string
	}{
		{"imaps", "imaps://127.0.0.1:" + clientsPort(t, env.gw.imapsAddr) + "/", nil},
		{"starttls", "imap://127.0.0.1:" + clientsPort(t, env.gw.imapAddr) + "/", []string{"--ssl-reqd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-q", "-sS", "--cacert", env.gwCA, "-u", userpass}, tc.args...)

			// LIST: the same folders, named as Dovecot names them.
			want := directList()
			list := clientsParseList(t, clientsRun(t, nil, nil, curl, append(args, tc.base)...))
			if !slices.Equal(list, want) {
				t.Errorf("LIST through the gateway:\n%v\ndirectly:\n%v", list, want)
			}

			// FETCH: one curl (it reuses its connection), every fixture
			// by UID in its folder (curl SELECTs as the URL changes).
			fetchArgs := slices.Clone(args)
			for i, f := range fixtures {
				u := fmt.Sprintf("%s%s;UID=%d", tc.base, clientsURLMailbox(clientsWireName(old, f.Folder)), uids[i])
				fetchArgs = append(fetchArgs, u, "-o", filepath.Join(dir, tc.name+"-"+f.File))
			}
			clientsRun(t, nil, nil, curl, fetchArgs...)
			for _, f := range fixtures {
				got, err := os.ReadFile(filepath.Join(dir, tc.name+"-"+f.File))
				if err != nil {
					t.Fatal(err)
				}
				if sum := clientsSum(got); sum != f.SHA256 {
					t.Errorf("%s (%s): curl got %d bytes, sha256 %s; want %d bytes, %s", f.File, f.Folder, len(got), sum, f.Size, f.SHA256)
				}
			}
		})
	}
}

// clientsImaplibResult is one line of imaplib_client.py's output.
type clientsImaplibResult struct {
	File         string   `json:"file"`
	Mailbox      string   `json:"mailbox"`
	AppendUID    uint32   `json:"appenduid"`
	UID          uint32   `json:"uid"`
	SHA256       string   `json:"sha256"`
	Size         int64    `json:"size"`
	Flags        []string `json:"flags"`
	InternalDate string   `json:"internaldate"`
}

// clientsFlagSet is flags as a sorted, lower-cased set without \Recent,
// for comparing what a server reports with what was stored.
func clientsFlagSet[F ~string](flags []F) []string {
	var out []string
	for _, f := range flags {
		if l := strings.ToLower(string(f)); l != `\recent` {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// TestImaplibAppendFetch has Python's imaplib APPEND every PEC fixture
// (with its flags and INTERNALDATE) through the gateway, then read each
// back with UID FETCH BODY.PEEK[]: the bytes hash as in the manifest, both
// as imaplib reads them through the gateway and as Dovecot stored them.
// Once over IMAPS, once over IMAP with STARTTLS (imaplib.IMAP4.starttls).
func TestImaplibAppendFetch(t *testing.T) {
	python := clientsRequireTool(t, "python3", "python3")
	script, err := filepath.Abs(filepath.Join("testdata", "clients", "imaplib_client.py"))
	if err != nil {
		t.Fatal(err)
	}
	fixtures := dovetest.LoadFixtures(t)
	env := clientsStart(t, clientsUser, clientsUser2)
	old := env.old
	dir := t.TempDir()
	byFile := map[string]dovetest.Fixture{}
	var messages []map[string]any
	for _, f := range fixtures {
		// imaplib reads the message from a file; its APPEND turns bare
		// CR or LF into CRLF (imaplib.MapCRLF), a no-op on the fixtures,
		// which are CRLF throughout.
		path := filepath.Join(dir, f.File)
		if err := os.WriteFile(path, f.Body, 0o600); err != nil {
			t.Fatal(err)
		}
		byFile[path] = f
		flags := f.Flags
		if flags == nil {
			flags = []string{}
		}
		messages = append(messages, map[string]any{
			"file": path, "mailbox": clientsWireName(old, f.Folder), "flags": flags,
			"internaldate": f.InternalDate.Format("02-Jan-2006 15:04:05 -0700"),
		})
	}

	for _, tc := range []struct{ name, mode, addr, user string }{
		{"imaps", "ssl", env.gw.imapsAddr, clientsUser},
		{"starttls", "starttls", env.gw.imapAddr, clientsUser2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := json.Marshal(map[string]any{
				"host": "127.0.0.1", "port": clientsAtoi(t, clientsPort(t, tc.addr)), "mode": tc.mode,
				"cafile": env.gwCA, "user": tc.user, "password": old.Password(tc.user),
				"messages": messages, "timeout": 120,
			})
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			out := clientsRun(t, in, nil, python, "-I", script)
			t.Logf("imaplib: %d APPENDs and UID FETCHes in %v", len(fixtures), time.Since(t0))
			var results []clientsImaplibResult
			dec := json.NewDecoder(bytes.NewReader(out))
			for dec.More() {
				var r clientsImaplibResult
				if err := dec.Decode(&r); err != nil {
					t.Fatalf("script output: %v\n%s", err, out)
				}
				results = append(results, r)
			}
			if len(results) != len(fixtures) {
				t.Fatalf("script reported %d messages, want %d:\n%s", len(results), len(fixtures), out)
			}

			// What imaplib read back through the gateway.
			for _, r := range results {
				f := byFile[r.File]
				if r.SHA256 != f.SHA256 || r.Size != f.Size {
					t.Errorf("%s: imaplib fetched %d bytes, sha256 %s; want %d bytes, %s", f.File, r.Size, r.SHA256, f.Size, f.SHA256)
				}
				if r.UID != r.AppendUID {
					t.Errorf("%s: APPENDUID %d, FETCH answered UID %d", f.File, r.AppendUID, r.UID)
				}
				if got, want := clientsFlagSet(r.Flags), clientsFlagSet(f.Flags); !slices.Equal(got, want) {
					t.Errorf("%s: flags %q, want %q", f.File, got, want)
				}
				if d, err := time.Parse("_2-Jan-2006 15:04:05 -0700", r.InternalDate); err != nil || !d.Equal(f.InternalDate) {
					t.Errorf("%s: INTERNALDATE %q (%v), want %v", f.File, r.InternalDate, err, f.InternalDate)
				}
			}

			// What Dovecot stored, read directly.
			c := old.Dial(t, tc.user)
			selected := ""
			body := &imap.FetchItemBodySection{Peek: true}
			for _, r := range results {
				f := byFile[r.File]
				if mbox := old.MailboxName(f.Folder); mbox != selected {
					if _, err := c.Select(mbox, nil).Wait(); err != nil {
						t.Fatalf("select %q directly: %v", mbox, err)
					}
					selected = mbox
				}
				got, err := c.Fetch(imap.UIDSetNum(imap.UID(r.AppendUID)), &imap.FetchOptions{
					UID: true, Flags: true, InternalDate: true, BodySection: []*imap.FetchItemBodySection{body},
				}).Collect()
				if err != nil || len(got) != 1 {
					t.Fatalf("%s: UID FETCH %d directly: %v (%d messages)", f.File, r.AppendUID, err, len(got))
				}
				if sum := clientsSum(got[0].FindBodySection(body)); sum != f.SHA256 {
					t.Errorf("%s: Dovecot stored sha256 %s, want %s", f.File, sum, f.SHA256)
				}
				if gotF, want := clientsFlagSet(got[0].Flags), clientsFlagSet(f.Flags); !slices.Equal(gotF, want) {
					t.Errorf("%s: Dovecot stored flags %q, want %q", f.File, gotF, want)
				}
				if !got[0].InternalDate.Equal(f.InternalDate) {
					t.Errorf("%s: Dovecot stored INTERNALDATE %v, want %v", f.File, got[0].InternalDate, f.InternalDate)
				}
			}
		})
	}
}

func clientsAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestImaplibSearch runs the searches a user's imaplib script runs (by a
// PEC receipt's X-Riferimento-Message-ID, unread mail, and searches that
// match nothing) with the same script once directly against Dovecot and
// once through the gateway: the UIDs must be the same, and right.
func TestImaplibSearch(t *testing.T) {
	python := clientsRequireTool(t, "python3", "python3")
	script, err := filepath.Abs(filepath.Join("testdata", "clients", "imaplib_client.py"))
	if err != nil {
		t.Fatal(err)
	}
	fixtures := dovetest.LoadFixtures(t)
	env := clientsStart(t, clientsUser)
	old := env.old
	var msgs []dovetest.SeedMessage
	var refUIDs, unseenUIDs []int // in INBOX; UIDs follow the order of msgs
	const ref = "<7b3f2c1e-5a4d-4e9b-9c21-0d8e6f4a1b23@pec.vecchio.test>"
	for _, f := range fixtures {
		msgs = append(msgs, f.SeedMessage(old, f.Body))
		if f.Folder != "INBOX" {
			continue
		}
		uid := 0
		for _, m := range msgs {
			if m.Mailbox == "INBOX" {
				uid++
			}
		}
		head, _, _ := bytes.Cut(f.Body, []byte("\r\n\r\n"))
		if bytes.Contains(head, []byte("\r\nX-Riferimento-Message-ID: "+ref+"\r\n")) {
			refUIDs = append(refUIDs, uid)
		}
		if !slices.Contains(f.Flags, `\Seen`) {
			unseenUIDs = append(unseenUIDs, uid)
		}
	}
	old.SeedMaildir(t, clientsUser, msgs)
	if len(refUIDs) == 0 || len(unseenUIDs) == 0 {
		t.Fatalf("fixtures: want INBOX messages referring to %s and unseen ones", ref)
	}
	searches := []struct {
		criteria []string
		want     []int
	}{
		{[]string{"HEADER", "X-Riferimento-Message-ID", `"` + ref + `"`}, refUIDs},
		{[]string{"UNSEEN"}, unseenUIDs},
		{[]string{"DRAFT"}, []int{}},
		{[]string{"SUBJECT", `"nessun risultato"`}, []int{}},
	}
	var in []map[string]any
	for _, s := range searches {
		in = append(in, map[string]any{"mailbox": "INBOX", "criteria": s.criteria})
	}
	for _, tc := range []struct{ name, addr, ca string }{
		{"direct", old.IMAPSAddr, old.CAFile},
		{"gateway", env.gw.imapsAddr, env.gwCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := json.Marshal(map[string]any{
				"host": "127.0.0.1", "port": clientsAtoi(t, clientsPort(t, tc.addr)), "mode": "ssl",
				"cafile": tc.ca, "user": clientsUser, "password": old.Password(clientsUser),
				"searches": in, "timeout": 10,
			})
			if err != nil {
				t.Fatal(err)
			}
			out := clientsRun(t, cfg, nil, python, "-I", script)
			dec := json.NewDecoder(bytes.NewReader(out))
			i := 0
			for ; dec.More(); i++ {
				var r struct {
					Criteria []string `json:"criteria"`
					UIDs     []int    `json:"uids"`
				}
				if err := dec.Decode(&r); err != nil || i >= len(searches) {
					t.Fatalf("script output: %v\n%s", err, out)
				}
				if want := searches[i].want; !slices.Equal(r.UIDs, want) {
					t.Errorf("UID SEARCH %s: %v, want %v", strings.Join(r.Criteria, " "), r.UIDs, want)
				}
			}
			if i != len(searches) {
				t.Errorf("script reported %d searches, want %d:\n%s", i, len(searches), out)
			}
		})
	}
}
