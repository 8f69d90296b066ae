package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParse checks that Parse never panics, that every failure is reported
// as text, and that a parsed Config survives a round trip: encoded as TOML
// and parsed again, it is equal to itself. Seeds are the golden inputs and
// the example file.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.golden")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		input, _ := splitGolden(f, data)
		f.Add(input)
	}
	if data, err := os.ReadFile("../pecgate.example.toml"); err == nil {
		f.Add(data)
	}
	// Strings and keys that must survive the TOML encoder.
	base := "[tls]\nself_signed = true\n[admin]\ntoken_file = \"t\"\n[providers.p]\npreset = \"poste\"\n"
	for _, s := range []string{
		`[domains."pec.\u00e8.example"]` + "\nold = \"p\"\n",
		"[domains.x]\nold = \"p\"\n[server]\n" + `hostname = "a\u007fb\u0001\"\\c\t"` + "\n",
		"[domains.x]\nold = \"p\"\n[server]\nhostname = '''\nmulti\nline'''\nshutdown_grace = \"2562047h47m16.854775807s\"\n",
		"[providers]\n[domains]\n[tls.certs]\n",
		"tls.certs = []\n",
		"[domains.x]\nold = \"p\"\n[providers.q]\nimap = \"imap://[::1]:1\"\nsmtp = \"smtp://h\"\nmax_connections = -9223372036854775808\nca = \"\\ud7ff\"\n",
	} {
		f.Add([]byte(base + s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.toml")
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error text")
			}
			if c != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encode: %v", err)
		}
		c2, err := Parse(buf.Bytes(), "fuzz.toml")
		if err != nil {
			t.Fatalf("re-parse: %v\n%s", err, buf.Bytes())
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip differs:\n%s\n%s\nencoded:\n%s", render(t, c, nil), render(t, c2, nil), buf.Bytes())
		}
	})
}
