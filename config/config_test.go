package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the expected output of testdata/*.golden")

func TestMain(m *testing.M) {
	osHostname = func() (string, error) { return "gateway.test", nil }
	os.Exit(m.Run())
}

// goldenSep separates a golden file's input TOML from its expected output.
const goldenSep = "----------\n"

// splitGolden returns the input and the expected output of a golden file.
func splitGolden(t testing.TB, data []byte) (input, want []byte) {
	t.Helper()
	var ok bool
	if bytes.HasPrefix(data, []byte(goldenSep)) {
		return nil, data[len(goldenSep):]
	}
	input, want, ok = bytes.Cut(data, []byte("\n"+goldenSep))
	if !ok {
		t.Fatalf("no %q line", strings.TrimSpace(goldenSep))
	}
	return append(input, '\n'), want
}

// render is the canonical text of a Parse result: the Config as JSON with
// sorted keys, or the error text.
func render(t testing.TB, c *Config, err error) []byte {
	t.Helper()
	if err != nil {
		return []byte("error:\n" + err.Error() + "\n")
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	b, err = json.MarshalIndent(v, "", "  ") // maps marshal with sorted keys
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// TestGolden parses the input of each testdata/NAME.golden file and compares
// the result with the expected output after its "----------" line. Run with
// -update to rewrite the expected outputs.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.golden")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.golden files")
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".golden"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want := splitGolden(t, data)
			c, err := Parse(input, "pecgate.toml")
			got := render(t, c, err)
			if *update {
				out := append(append(bytes.TrimRight(input, "\n"), '\n'), goldenSep...)
				if err := os.WriteFile(file, append(out, got...), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// TestGoldenPresets checks that every preset has a golden file.
func TestGoldenPresets(t *testing.T) {
	for name := range Presets {
		if _, err := os.Stat(filepath.Join("testdata", "preset_"+name+".golden")); err != nil {
			t.Errorf("preset %s: %v", name, err)
		}
	}
}

func TestPresetsValid(t *testing.T) {
	for name, ps := range Presets {
		if _, err := ParseEndpoint(ps.IMAP, "imaps", "imap"); err != nil {
			t.Errorf("%s imap: %v", name, err)
		}
		if _, err := ParseEndpoint(ps.SMTP, "smtps", "smtp"); err != nil {
			t.Errorf("%s smtp: %v", name, err)
		}
		if ps.Description == "" {
			t.Errorf("%s: no description", name)
		}
	}
}

func TestExample(t *testing.T) {
	c, err := Load("../pecgate.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := c.LookupDomain("mario.rossi@PEC.Ordine.Example")
	if d == nil || d.Old != "aruba" || d.New != "infocert" {
		t.Fatalf("domain: %+v", d)
	}
	// The example sets every key the schema has.
	if missing := undefinedKeys(t, "../pecgate.example.toml"); len(missing) > 0 {
		t.Errorf("keys missing from the example: %v", missing)
	}
	if missing := undefinedKeys(t, "testdata/minimal.golden"); len(missing) < 20 {
		t.Errorf("undefinedKeys misses keys absent from minimal.golden: %v", missing)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want ErrNotExist", err)
	}
}

func TestErrorType(t *testing.T) {
	_, err := Parse([]byte("[server]\nimapz = \":993\"\n"), "f.toml")
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%T %v", err, err)
	}
	want := Error{File: "f.toml", Line: 2, Key: "server.imapz", Msg: "unknown key"}
	if *e != want {
		t.Fatalf("got %+v, want %+v", *e, want)
	}
	_, err = Parse([]byte("[server]\nimapz = \":993\"\n"), "")
	if got := err.Error(); !strings.HasPrefix(got, "line 2: server.imapz: unknown key\n") {
		t.Fatalf("unnamed: %q", got)
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct {
		raw, tls, starttls string
		want               Endpoint
		err                string
	}{
		{"imaps://imaps.pec.aruba.it:993", "imaps", "imap", Endpoint{"imaps.pec.aruba.it", "993", true}, ""},
		{"imaps://imaps.pec.aruba.it", "imaps", "imap", Endpoint{"imaps.pec.aruba.it", "993", true}, ""},
		{"IMAPS://Host/", "imaps", "imap", Endpoint{"Host", "993", true}, ""},
		{"imap://host", "imaps", "imap", Endpoint{"host", "143", false}, ""},
		{"imap://127.0.0.1:1143", "imaps", "imap", Endpoint{"127.0.0.1", "1143", false}, ""},
		{"imaps://[::1]:10993", "imaps", "imap", Endpoint{"::1", "10993", true}, ""},
		{"smtps://smtps.pec.aruba.it", "smtps", "smtp", Endpoint{"smtps.pec.aruba.it", "465", true}, ""},
		{"smtp://host", "smtps", "smtp", Endpoint{"host", "587", false}, ""},
		{"https://host", "imaps", "imap", Endpoint{}, `scheme must be imaps:// (implicit TLS) or imap:// (STARTTLS), got "https"`},
		{"smtps://host", "imaps", "imap", Endpoint{}, `scheme must be imaps:// (implicit TLS) or imap:// (STARTTLS), got "smtps"`},
		{"imaps.pec.aruba.it:993", "imaps", "imap", Endpoint{}, `want imaps://host[:port] (implicit TLS) or imap://host[:port] (STARTTLS), got "imaps.pec.aruba.it:993"`},
		{"", "imaps", "imap", Endpoint{}, `want imaps://host[:port] (implicit TLS) or imap://host[:port] (STARTTLS), got ""`},
		{"imaps://", "imaps", "imap", Endpoint{}, "missing host"},
		{"imaps://:993", "imaps", "imap", Endpoint{}, "missing host"},
		{"imaps://host:0", "imaps", "imap", Endpoint{}, `bad port "0"`},
		{"imaps://host:70000", "imaps", "imap", Endpoint{}, `bad port "70000"`},
		{"imaps://user@host", "imaps", "imap", Endpoint{}, "want imaps://host[:port] with no user, path, query or fragment"},
		{"imaps://host/INBOX", "imaps", "imap", Endpoint{}, "want imaps://host[:port] with no user, path, query or fragment"},
		{"imaps://host?x=1", "imaps", "imap", Endpoint{}, "want imaps://host[:port] with no user, path, query or fragment"},
		{"imaps://host#x", "imaps", "imap", Endpoint{}, "want imaps://host[:port] with no user, path, query or fragment"},
		{"imap://x:143:1", "imaps", "imap", Endpoint{}, `bad host "x:143:1": write an IPv6 address in brackets`},
		{"imaps://host:x", "imaps", "imap", Endpoint{}, `not a URL: parse "imaps://host:x": invalid port ":x" after host`},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			got, err := ParseEndpoint(tc.raw, tc.tls, tc.starttls)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("got %+v, %v; want error %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if a := (Endpoint{Host: "::1", Port: "993"}).Addr(); a != "[::1]:993" {
		t.Errorf("Addr: %s", a)
	}
}

func TestLookupDomain(t *testing.T) {
	c, err := Parse([]byte(`
[tls]
self_signed = true
[admin]
token_file = "/t"
[providers.aruba]
preset = "aruba"
[domains."PEC.Ordine.Example"]
old = "aruba"
[domains."pec.altro.example"]
old = "aruba"
`), "t.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		want string
	}{
		{"mario.rossi@pec.ordine.example", "pec.ordine.example"},
		{"Mario.Rossi@PEC.ORDINE.EXAMPLE", "pec.ordine.example"},
		{"a@b@pec.altro.example", "pec.altro.example"},
		{"pec.ordine.example", ""},
		{"mario@", ""},
		{"", ""},
		{"mario@other.example", ""},
		{"mario@ordine.example", ""},
	} {
		d := c.LookupDomain(tc.addr)
		got := ""
		if d != nil {
			got = d.Name
		}
		if got != tc.want {
			t.Errorf("LookupDomain(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

func TestAddr(t *testing.T) {
	s := ":993"
	if Addr(nil) != "" || Addr(&s) != ":993" {
		t.Fatal("Addr")
	}
}

// undefinedKeys returns the schema's keys that the file neither sets nor
// shows in a comment ("# key = ..." at the start of a line).
func undefinedKeys(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.SplitSeq(string(data), "\n") {
		l = strings.TrimSpace(l)
		l = strings.TrimSpace(strings.TrimLeft(l, "#"))
		lines = append(lines, l)
	}
	has := func(name string) bool {
		for _, l := range lines {
			if k, _, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == name {
				return true
			}
		}
		return false
	}
	var missing []string
	for _, k := range schemaKeys(reflect.TypeFor[Config](), "") {
		if !has(k[strings.LastIndexByte(k, '.')+1:]) {
			missing = append(missing, k)
		}
	}
	return missing
}

// schemaKeys lists the leaf keys of t, "*" standing for map keys.
func schemaKeys(t reflect.Type, prefix string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Map:
		return schemaKeys(t.Elem(), prefix+"*.")
	case t.Kind() != reflect.Struct:
		return []string{strings.TrimSuffix(prefix, ".")}
	}
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" || name == "" {
			continue
		}
		keys = append(keys, schemaKeys(f.Type, prefix+name+".")...)
	}
	return keys
}
