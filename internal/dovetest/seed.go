package dovetest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/internal/mutf7"
)

// SeedMessage is one message for SeedMaildir.
type SeedMessage struct {
	// Mailbox is the IMAP mailbox name with the server's delimiter (see
	// Server.MailboxName); "" means INBOX. A missing mailbox is created and
	// subscribed, its missing parents are not: like after IMAP CREATE in
	// Dovecot, they LIST as \Noselect (Maildir++ has no directory for
	// them). Seed a message into a parent, or create it with Doveadm, to
	// make it a real mailbox.
	Mailbox string
	// Body is the whole message, stored byte for byte. Use CRLF line ends:
	// IMAP serves CRLF whatever the file holds.
	Body []byte
	// Flags are system flags (\Seen, \Answered, \Flagged, \Deleted,
	// \Draft) and keywords ($label1, NonJunk, ...). \Recent cannot be set.
	Flags []string
	// InternalDate is the INTERNALDATE; zero means now. Dovecot reports it
	// in its own time zone: compare instants, not zones.
	InternalDate time.Time
}

// SeedMaildir bulk-loads messages for addr by writing Maildir files
// directly, then runs `doveadm force-resync -u ADDR '*'` and subscribes
// the folders. Within a mailbox, UIDs follow the order of msgs, after any
// message already there. The server must be running.
//
// Layout: Maildir++ (see the package doc): INBOX is MaildirPath itself,
// "A<delim>B" is the directory ".A.B" with each level in modified UTF-7
// ("Pratiche.Città" -> ".Pratiche.Citt&AOA-"). Dovecot: `doveadm mailbox
// create "Pratiche.Città & co"` makes exactly ".Pratiche.Citt&AOA- &- co"
// and no ".Pratiche".
//
// Measured on 2 cores (Dovecot 2.3.19), 5,000 PEC fixture variants of
// ~10 KiB in 3 folders (BenchmarkSeedMaildir5000): 0.32 s with TMPDIR on
// tmpfs: writing the files ~0.26 s, force-resync ~30 ms, subscribe ~25
// ms. On the ext4 /tmp of the VM where this was written the
// same took 2.2-4.8 s, because creating a file cost ~0.5 ms there whoever
// did it (a bare os.WriteFile loop of 5,000 files took 3-4 s, and writing
// from 8 goroutines did not help): set TMPDIR=/dev/shm if seeding is slow.
// APPEND over IMAP, for comparison, runs at 230-630 msg/s
// (GOIMAP-NOTES.md).
//
// It must not run while IMAP sessions change keywords in the same
// folders: it rewrites dovecot-keywords without Dovecot's lock.
func (s *Server) SeedMaildir(t testing.TB, addr string, msgs []SeedMessage) {
	t.Helper()
	if err := s.seedMaildir(addr, msgs); err != nil {
		t.Fatalf("dovetest: %s: seed %s: %v", s.Name, addr, err)
	}
}

func (s *Server) seedMaildir(addr string, msgs []SeedMessage) error {
	if s.Password(addr) == "" {
		return fmt.Errorf("%q is not a user here", addr)
	}
	if s.Layout != "" {
		return fmt.Errorf("SeedMaildir writes Maildir++ only, and this server has layout %q: use CreateMailbox and Deliver", s.Layout)
	}
	root := s.MaildirPath(addr)
	if err := s.mkdirOwned(s.home(addr)); err != nil {
		return err
	}
	folders := map[string]*seedFolder{} // by directory
	var subscribe []string
	folderOf := func(mailbox string) (*seedFolder, error) {
		levels, err := s.folderLevels(mailbox)
		if err != nil {
			return nil, err
		}
		dir := root
		if levels[0] != "" {
			dir = filepath.Join(root, "."+strings.Join(levels, "."))
		}
		if f := folders[dir]; f != nil {
			return f, nil
		}
		f := &seedFolder{dir: dir, index: map[string]int{}}
		if err := s.makeFolder(f, dir != root); err != nil {
			return nil, err
		}
		folders[dir] = f
		if dir != root {
			subscribe = append(subscribe, mailbox)
		}
		return f, nil
	}

	for i, m := range msgs {
		f, err := folderOf(m.Mailbox)
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		info, err := f.flagLetters(m.Flags)
		if err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		date := m.InternalDate
		if date.IsZero() {
			date = time.Now()
		}
		if err := s.writeMessage(f, m.Body, info, date); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
	}
	for _, f := range folders {
		if err := s.writeKeywords(f); err != nil {
			return err
		}
	}
	// Dovecot: files written behind its back are found at the next sync
	// anyway; force-resync does it now for every folder, so the indexes and
	// UIDs exist before the test's first SELECT.
	if _, err := s.doveadm(nil, "force-resync", "-u", addr, "*"); err != nil {
		return err
	}
	if len(subscribe) > 0 {
		// Dovecot: doveadm takes mailbox names in UTF-8 and the server's
		// delimiter.
		if _, err := s.doveadm(nil, append([]string{"mailbox", "subscribe", "-u", addr}, subscribe...)...); err != nil {
			return err
		}
	}
	return nil
}

// folderLevels splits a mailbox name into its levels, each in modified
// UTF-7. INBOX (any case) or "" is the single level "".
func (s *Server) folderLevels(mailbox string) ([]string, error) {
	if mailbox == "" || strings.EqualFold(mailbox, "INBOX") {
		return []string{""}, nil
	}
	var levels []string
	for _, p := range strings.Split(mailbox, s.Delimiter) {
		switch {
		case p == "":
			return nil, fmt.Errorf("mailbox %q: empty level", mailbox)
		case strings.Contains(p, "."):
			// With "/" as delimiter a "." in a name would become a level on
			// disk.
			return nil, fmt.Errorf("mailbox %q: '.' in a level is not storable in Maildir++", mailbox)
		case strings.ContainsAny(p, "/\x00\r\n") || p[0] == '~':
			return nil, fmt.Errorf("mailbox %q: '/', '~', control characters not allowed", mailbox)
		}
		levels = append(levels, mutf7.Encode(p))
	}
	return levels, nil
}

type seedFolder struct {
	dir      string
	keywords []string       // dovecot-keywords: index = letter - 'a'
	index    map[string]int // keyword -> index
	changed  bool
}

// makeFolder creates a Maildir folder's directories if missing and loads
// its dovecot-keywords.
func (s *Server) makeFolder(f *seedFolder, sub bool) error {
	for _, d := range []string{f.dir, filepath.Join(f.dir, "cur"), filepath.Join(f.dir, "new"), filepath.Join(f.dir, "tmp")} {
		if err := s.mkdirOwned(d); err != nil {
			return err
		}
	}
	if sub {
		// Maildir++ marks folders with an empty maildirfolder file.
		p := filepath.Join(f.dir, "maildirfolder")
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				return err
			}
			if err := s.mail.chown(p); err != nil {
				return err
			}
		}
	}
	b, err := os.ReadFile(filepath.Join(f.dir, "dovecot-keywords"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		num, kw, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.Atoi(num)
		if !ok || err != nil || n < 0 || n >= 26 {
			continue
		}
		for len(f.keywords) <= n {
			f.keywords = append(f.keywords, "")
		}
		f.keywords[n] = kw
		f.index[kw] = n
	}
	return nil
}

// Maildir info letters for IMAP system flags (cr.yp.to/proto/maildir.html;
// P, "passed", has no IMAP flag).
var systemFlagLetters = map[string]byte{
	`\draft`:    'D',
	`\flagged`:  'F',
	`\answered`: 'R',
	`\seen`:     'S',
	`\deleted`:  'T',
}

// flagLetters returns the ":2," info for flags: system flag letters, then
// keyword letters a-z (Dovecot: index in the folder's dovecot-keywords
// file), in ASCII order as the Maildir spec wants.
func (f *seedFolder) flagLetters(flags []string) (string, error) {
	var letters []byte
	for _, fl := range flags {
		if strings.HasPrefix(fl, `\`) {
			c, ok := systemFlagLetters[strings.ToLower(fl)]
			if !ok {
				return "", fmt.Errorf("flag %q cannot be stored", fl)
			}
			letters = append(letters, c)
			continue
		}
		if fl == "" || strings.ContainsAny(fl, " (){%*\"\\]\x00\r\n") {
			return "", fmt.Errorf("keyword %q is not an IMAP atom", fl)
		}
		n, ok := f.index[fl]
		if !ok {
			// Dovecot: only 26 keywords per folder fit in Maildir filenames
			// (a-z); more live only in its index files, out of our reach.
			if len(f.keywords) >= 26 {
				return "", fmt.Errorf("keyword %q: a Maildir folder holds at most 26 keywords", fl)
			}
			n = len(f.keywords)
			f.keywords = append(f.keywords, fl)
			f.index[fl] = n
			f.changed = true
		}
		letters = append(letters, byte('a'+n))
	}
	slices.Sort(letters)
	return string(slices.Compact(letters)), nil
}

// writeKeywords replaces dovecot-keywords ("N keyword" per line, N = letter
// - 'a') by rename, as Dovecot does.
func (s *Server) writeKeywords(f *seedFolder) error {
	if !f.changed {
		return nil
	}
	var b strings.Builder
	for n, kw := range f.keywords {
		if kw != "" {
			fmt.Fprintf(&b, "%d %s\n", n, kw)
		}
	}
	tmp := filepath.Join(f.dir, "tmp", "dovecot-keywords.dovetest")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	if err := s.mail.chown(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(f.dir, "dovecot-keywords"))
}

// seedClock hands out strictly increasing microsecond timestamps for
// Maildir file names, across calls and servers of this process.
var seedClock struct {
	sync.Mutex
	last int64
}

func nextSeedMicros() int64 {
	seedClock.Lock()
	defer seedClock.Unlock()
	seedClock.last = max(seedClock.last+1, time.Now().UnixMicro())
	return seedClock.last
}

// writeMessage writes one message into the folder's cur/ (it is not new:
// no \Recent) with its flags in the name and INTERNALDATE as mtime.
//
// The name is "SECS.MUSECSPPID.HOST,S=SIZE,W=VSIZE:2,INFO". Dovecot: S= is
// the file size and W= the size with CRLF line ends (RFC822.SIZE), so
// neither needs a stat or a read; new files get their UIDs in file name
// order (time, then microseconds), which seedClock makes the order of the
// calls; mtime is INTERNALDATE.
func (s *Server) writeMessage(f *seedFolder, body []byte, info string, date time.Time) error {
	us := nextSeedMicros()
	vsize := len(body) + bytes.Count(body, []byte("\n")) - bytes.Count(body, []byte("\r\n"))
	base := fmt.Sprintf("%d.M%06dP%d.dovetest,S=%d,W=%d", us/1e6, us%1e6, os.Getpid(), len(body), vsize)
	tmp := filepath.Join(f.dir, "tmp", base)
	if err := os.WriteFile(tmp, body, 0o600); err != nil {
		return err
	}
	if err := s.mail.chown(tmp); err != nil {
		return err
	}
	if err := os.Chtimes(tmp, date, date); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(f.dir, "cur", base+":2,"+info))
}

func (s *Server) mkdirOwned(dir string) error {
	if err := os.Mkdir(dir, 0o700); errors.Is(err, os.ErrExist) {
		return nil
	} else if err != nil {
		return err
	}
	return s.mail.chown(dir)
}
