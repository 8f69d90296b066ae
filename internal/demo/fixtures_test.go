package demo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// TestEmbeddedFixturesMatchShared catches an embedded copy that drifted from
// ../shared/fixtures/pec: the same manifest, the same files, each with the
// SHA-256 the shared manifest gives. Refresh the copy with
//
//	cp ../shared/fixtures/pec/*.eml ../shared/fixtures/pec/manifest.tsv internal/demo/fixtures/pec/
func TestEmbeddedFixturesMatchShared(t *testing.T) {
	shared := SharedFixturesDir()
	if shared == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("../shared/fixtures/pec not found next to the module root")
		}
		t.Skip("../shared/fixtures/pec not found next to the module root: nothing to compare the embedded copy with")
	}
	sharedManifest, err := os.ReadFile(filepath.Join(shared, "manifest.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	emb := EmbeddedFixtures()
	embManifest, err := fs.ReadFile(emb, "manifest.tsv")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(embManifest, sharedManifest) {
		t.Errorf("fixtures/pec/manifest.tsv differs from %s/manifest.tsv", shared)
	}

	// Every file the shared manifest names, with its sum, from the shared
	// manifest's text (not LoadFixtures, which this also guards).
	want := map[string]string{}
	for i, line := range strings.Split(strings.TrimRight(string(sharedManifest), "\n"), "\n") {
		if i == 0 {
			continue
		}
		cols := strings.Split(line, "\t")
		want[cols[0]] = cols[3]
	}
	if len(want) == 0 {
		t.Fatal("shared manifest lists no file")
	}
	embFiles, err := fs.Glob(emb, "*.eml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range embFiles {
		if _, ok := want[name]; !ok {
			t.Errorf("embedded %s is not in the shared manifest", name)
		}
	}
	for name, sum := range want {
		b, err := fs.ReadFile(emb, name)
		if err != nil {
			t.Errorf("embedded copy: %v", err)
			continue
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
			t.Errorf("embedded %s: SHA-256 %x, shared manifest %s", name, got, sum)
		}
	}
}

func TestLoadFixtures(t *testing.T) {
	sources := map[string]fs.FS{"embedded": EmbeddedFixtures()}
	if dir := SharedFixturesDir(); dir != "" {
		sources["shared"] = os.DirFS(dir)
	}
	for name, fsys := range sources {
		t.Run(name, func(t *testing.T) {
			fx, err := LoadFixtures(fsys)
			if err != nil {
				t.Fatal(err)
			}
			if len(fx) != 14 {
				t.Fatalf("%d fixtures, want 14", len(fx))
			}
			folders := map[string]int{}
			for _, f := range fx {
				folders[f.Folder]++
				head, _, _ := bytes.Cut(f.Body, []byte("\r\n\r\n"))
				if !bytes.Contains(bytes.ToLower(append([]byte("\r\n"), head...)), []byte(strings.ToLower("\r\nMessage-ID: "+f.MessageID+"\r\n"))) {
					t.Errorf("%s: Message-ID %s not in its header", f.File, f.MessageID)
				}
				if f.InternalDate.IsZero() {
					t.Errorf("%s: no INTERNALDATE", f.File)
				}
			}
			want := map[string]int{MailboxInbox: 10, MailboxSent: 1, MailboxCitta: 3}
			for k, v := range want {
				if folders[k] != v {
					t.Errorf("folders %v, want %v", folders, want)
					break
				}
			}
			f13 := fx[slices.IndexFunc(fx, func(f Fixture) bool { return f.File == "13-x-tiporicevuta-aruba.eml" })]
			if got := strings.Join([]string{string(f13.Flags[0]), string(f13.Flags[1])}, " "); got != `\Seen $Forwarded` || len(f13.Flags) != 2 {
				t.Errorf("13 flags %q", f13.Flags)
			}
			if got := f13.InternalDate.Format(internalDateLayout); got != "26-May-2025 15:47:14 +0200" {
				t.Errorf("13 internaldate %s", got)
			}
		})
	}
}

// TestLoadFixturesRefusesConvertedCopy: a copy with LF line ends (what a
// careless checkout makes of CRLF) does not load.
func TestLoadFixturesRefusesConvertedCopy(t *testing.T) {
	emb := EmbeddedFixtures()
	manifest, err := fs.ReadFile(emb, "manifest.tsv")
	if err != nil {
		t.Fatal(err)
	}
	body, err := fs.ReadFile(emb, "10-non-pec-posta-inviata.eml")
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, line := range strings.Split(string(manifest), "\n") {
		if strings.HasPrefix(line, "file\t") || strings.HasPrefix(line, "10-") {
			row += line + "\n"
		}
	}
	fsys := fstest.MapFS{
		"manifest.tsv":                 {Data: []byte(row)},
		"10-non-pec-posta-inviata.eml": {Data: bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))},
	}
	if _, err := LoadFixtures(fsys); err == nil || !strings.Contains(err.Error(), "10-non-pec-posta-inviata.eml") {
		t.Fatalf("LoadFixtures of an LF copy: err = %v, want a refusal naming the file", err)
	}
	fsys["10-non-pec-posta-inviata.eml"] = &fstest.MapFile{Data: body}
	if fx, err := LoadFixtures(fsys); err != nil || len(fx) != 1 {
		t.Fatalf("LoadFixtures of the exact copy: %d fixtures, err = %v", len(fx), err)
	}
}
