package demo

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
)

// embedded is a copy of ../shared/fixtures/pec (the messages and their
// manifest), so that the demo works from a binary or a `go run` anywhere.
// go:embed cannot reach outside the module; TestEmbeddedFixturesMatchShared
// catches a copy that drifted from the original.
//
//go:embed fixtures/pec/*.eml fixtures/pec/manifest.tsv
var embedded embed.FS

// FixtureFolderDelim is the hierarchy delimiter of Fixture.Folder.
const FixtureFolderDelim = "/"

// internalDateLayout is RFC 3501 date-time without the quotes, as the
// manifest writes it ("11-Mar-2025 09:41:21 +0100").
const internalDateLayout = "02-Jan-2006 15:04:05 -0700"

// Fixture is one PEC-shaped message of the shared fixture set and where it
// belongs in its owner's mailbox, as manifest.tsv says.
type Fixture struct {
	// File is the file name, e.g. "01-busta-trasporto.eml".
	File string
	// Kind is the manifest's classification, e.g. "accettazione".
	Kind string
	// SHA256 is the lower-case hex SHA-256 of the exact bytes, from the
	// manifest (LoadFixtures checks Body against it).
	SHA256 string
	// MessageID is the outer Message-ID header, with its angle brackets.
	MessageID string
	// Folder is the mailbox, with FixtureFolderDelim as hierarchy delimiter:
	// "INBOX", "Posta inviata" or "Pratiche/Città".
	Folder string
	// Flags are the message's flags and keywords; nil when it has none.
	Flags []imap.Flag
	// InternalDate is the INTERNALDATE to give the message, in the zone the
	// manifest writes.
	InternalDate time.Time
	// Body is the whole RFC 5322 message, CRLF line ends. Callers must not
	// modify it: the slices returned by Fixtures are shared.
	Body []byte
}

// LoadFixtures reads manifest.tsv and every file it names from fsys, and
// checks each file's size and SHA-256 against the manifest, so a copy whose
// line ends were converted is refused rather than served.
func LoadFixtures(fsys fs.FS) ([]Fixture, error) {
	manifest, err := fs.ReadFile(fsys, "manifest.tsv")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(manifest))
	var (
		out  []Fixture
		errs []error
		line int
	)
	for sc.Scan() {
		line++
		if line == 1 || sc.Text() == "" { // header row
			continue
		}
		f, err := parseManifestRow(fsys, sc.Text())
		if err != nil {
			errs = append(errs, fmt.Errorf("manifest.tsv:%d: %w", line, err))
			continue
		}
		out = append(out, f)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("manifest.tsv: %w", err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("manifest.tsv: no fixtures")
	}
	return out, nil
}

// parseManifestRow parses one row (file, kind, size, sha256, message_id,
// folder, flags, internaldate) and reads the file it names.
func parseManifestRow(fsys fs.FS, row string) (Fixture, error) {
	cols := strings.Split(row, "\t")
	if len(cols) != 8 {
		return Fixture{}, fmt.Errorf("want 8 tab-separated columns, got %d", len(cols))
	}
	f := Fixture{File: cols[0], Kind: cols[1], SHA256: cols[3], MessageID: cols[4], Folder: cols[5]}
	size, err := strconv.ParseInt(cols[2], 10, 64)
	if err != nil {
		return Fixture{}, fmt.Errorf("%s: size: %w", f.File, err)
	}
	for _, fl := range strings.Fields(cols[6]) {
		f.Flags = append(f.Flags, imap.Flag(fl))
	}
	if f.InternalDate, err = parseInternalDate(cols[7]); err != nil {
		return Fixture{}, fmt.Errorf("%s: internaldate: %w", f.File, err)
	}
	if f.Body, err = fs.ReadFile(fsys, f.File); err != nil {
		return Fixture{}, err
	}
	if int64(len(f.Body)) != size {
		return Fixture{}, fmt.Errorf("%s: %d bytes, the manifest says %d", f.File, len(f.Body), size)
	}
	if sum := sha256.Sum256(f.Body); hex.EncodeToString(sum[:]) != f.SHA256 {
		return Fixture{}, fmt.Errorf("%s: SHA-256 %x, the manifest says %s", f.File, sum, f.SHA256)
	}
	return f, nil
}

// parseInternalDate parses an RFC 3501 date-time (without quotes), whose
// day is either two digits or a space and one digit.
func parseInternalDate(s string) (time.Time, error) {
	t, err := time.Parse(internalDateLayout, s)
	if err != nil {
		t, err = time.Parse("_2-Jan-2006 15:04:05 -0700", s)
	}
	return t, err
}

// EmbeddedFixtures returns the fixture files compiled into the binary: the
// directory holding manifest.tsv and the .eml files.
func EmbeddedFixtures() fs.FS {
	sub, err := fs.Sub(embedded, "fixtures/pec")
	if err != nil {
		panic(err) // a constant path that go:embed guarantees
	}
	return sub
}

// SharedFixturesDir returns ../shared/fixtures/pec next to the module root
// found by walking up from the working directory to the first directory that
// holds go.mod, or "" when there is no such directory with a manifest.tsv.
func SharedFixturesDir() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			shared := filepath.Join(filepath.Dir(dir), "shared", "fixtures", "pec")
			if _, err := os.Stat(filepath.Join(shared, "manifest.tsv")); err == nil {
				return shared
			}
			return ""
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// FixturesSource returns where Fixtures reads from: the shared fixture
// directory when SharedFixturesDir finds one, otherwise the embedded copy;
// where names it for people ("embedded" for the latter).
func FixturesSource() (fsys fs.FS, where string) {
	if dir := SharedFixturesDir(); dir != "" {
		return os.DirFS(dir), dir
	}
	return EmbeddedFixtures(), "embedded"
}

var loadFixtures = sync.OnceValues(func() ([]Fixture, error) {
	fsys, where := FixturesSource()
	fx, err := LoadFixtures(fsys)
	if err != nil {
		return nil, fmt.Errorf("fixtures (%s): %w", where, err)
	}
	return fx, nil
})

// Fixtures returns the fixtures from FixturesSource, loaded and checked once
// per process, in manifest order. The returned slice and the bodies it points
// to are shared: callers must not modify them.
func Fixtures() ([]Fixture, error) { return loadFixtures() }
