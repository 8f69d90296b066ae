package dovetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Fixture is one PEC-shaped message of ../shared/fixtures/pec, with the
// manifest's suggestions for where it lives.
type Fixture struct {
	File      string // e.g. "01-busta-trasporto.eml"
	Kind      string // e.g. "busta-trasporto", "accettazione"
	Size      int64
	SHA256    string // hex SHA-256 of Body
	MessageID string // the outer Message-ID, with angle brackets
	// Folder is "/"-separated ("INBOX", "Posta inviata", "Pratiche/Città"):
	// map it with Server.MailboxName.
	Folder       string
	Flags        []string // system flags and keywords; may be empty
	InternalDate time.Time
	Body         []byte
}

// FixturesEnv names an environment variable that, when set, is the
// fixtures directory instead of ../shared/fixtures/pec next to the
// repository.
const FixturesEnv = "PECGATE_FIXTURES"

// LoadFixtures reads the PEC fixtures and their manifest.tsv, checking every
// file's size and SHA-256. The directory is $PECGATE_FIXTURES, else
// ../shared/fixtures/pec relative to the repository root (the directory
// holding go.mod, found walking up from the working directory), else the
// repository's copy in internal/demo/fixtures/pec. If it is
// missing the test fails when CI is "true" and skips otherwise; a file that
// does not match the manifest always fails the test.
func LoadFixtures(t testing.TB) []Fixture {
	t.Helper()
	dir, err := fixturesDir()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("dovetest: fixtures: %v", err)
		}
		t.Skipf("dovetest: fixtures: %v", err)
	}
	fs, err := loadFixtures(dir)
	if err != nil {
		t.Fatalf("dovetest: fixtures in %s: %v", dir, err)
	}
	return fs
}

func fixturesDir() (string, error) {
	if d := os.Getenv(FixturesEnv); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			fd := filepath.Join(filepath.Dir(d), "shared", "fixtures", "pec")
			if _, err := os.Stat(filepath.Join(fd, "manifest.tsv")); err == nil {
				return fd, nil
			}
			// The repository's own copy (embedded by internal/demo, kept
			// equal to the shared one by TestEmbeddedFixturesMatchShared),
			// for a checkout without ../shared, e.g. a git worktree.
			own := filepath.Join(d, "internal", "demo", "fixtures", "pec")
			if _, err := os.Stat(filepath.Join(own, "manifest.tsv")); err == nil {
				return own, nil
			}
			return "", fmt.Errorf("no manifest.tsv in %s nor %s (set %s to the fixtures directory)", fd, own, FixturesEnv)
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", wd)
		}
	}
}

func loadFixtures(dir string) ([]Fixture, error) {
	manifest, err := os.ReadFile(filepath.Join(dir, "manifest.tsv"))
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimRight(string(manifest), "\n"), "\n")
	if len(lines) < 2 {
		return nil, errors.New("manifest.tsv has no rows")
	}
	header := strings.Split(lines[0], "\t")
	col := map[string]int{}
	for i, h := range header {
		col[h] = i
	}
	for _, h := range []string{"file", "kind", "size", "sha256", "message_id", "folder", "flags", "internaldate"} {
		if _, ok := col[h]; !ok {
			return nil, fmt.Errorf("manifest.tsv: no column %q", h)
		}
	}
	var fs []Fixture
	for n, line := range lines[1:] {
		cells := strings.Split(line, "\t")
		if len(cells) != len(header) {
			return nil, fmt.Errorf("manifest.tsv line %d: %d cells, want %d", n+2, len(cells), len(header))
		}
		get := func(h string) string { return cells[col[h]] }
		f := Fixture{
			File:      get("file"),
			Kind:      get("kind"),
			SHA256:    get("sha256"),
			MessageID: get("message_id"),
			Folder:    get("folder"),
			Flags:     strings.Fields(get("flags")),
		}
		if f.Size, err = strconv.ParseInt(get("size"), 10, 64); err != nil {
			return nil, fmt.Errorf("%s: size: %w", f.File, err)
		}
		// RFC 3501 date-time without the quotes; the day may be space-padded.
		if f.InternalDate, err = time.Parse("_2-Jan-2006 15:04:05 -0700", get("internaldate")); err != nil {
			return nil, fmt.Errorf("%s: internaldate: %w", f.File, err)
		}
		if f.Body, err = os.ReadFile(filepath.Join(dir, f.File)); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(f.Body)
		if got := hex.EncodeToString(sum[:]); got != f.SHA256 || int64(len(f.Body)) != f.Size {
			return nil, fmt.Errorf("%s: %d bytes, sha256 %s; manifest says %d bytes, %s", f.File, len(f.Body), got, f.Size, f.SHA256)
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// Variant returns a distinct copy of the fixture, as the fixtures' README
// allows: "X-Fixture-Seq: n" prepended and the outer Message-ID prefixed
// with "vN.". Only the outer header block changes, so PEC signatures still
// verify; its SHA-256 differs from the manifest's.
func (f Fixture) Variant(n int) []byte {
	hdrEnd := bytes.Index(f.Body, []byte("\r\n\r\n"))
	if hdrEnd < 0 {
		hdrEnd = len(f.Body)
	}
	head := append([]byte(fmt.Sprintf("X-Fixture-Seq: %d\r\n", n)), f.Body[:hdrEnd]...)
	if i := bytes.Index(bytes.ToLower(head), []byte("\r\nmessage-id: <")); i >= 0 {
		at := i + len("\r\nmessage-id: <")
		head = append(head[:at:at], append([]byte(fmt.Sprintf("v%d.", n)), head[at:]...)...)
	}
	return append(head, f.Body[hdrEnd:]...)
}

// SeedMessage returns the fixture as a SeedMessage for s: its folder mapped
// to s's delimiter, its flags and internal date, the given body (Body or a
// Variant).
func (f Fixture) SeedMessage(s *Server, body []byte) SeedMessage {
	return SeedMessage{Mailbox: s.MailboxName(f.Folder), Body: body, Flags: f.Flags, InternalDate: f.InternalDate}
}
