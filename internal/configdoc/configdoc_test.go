package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/pecgate/pecgate/config"
)

const repoRoot = "../.."

// TestGeneratedFilesUpToDate fails when docs/config.md or README.md's
// configuration reference differs from what the generator makes of
// config/*.go today.
func TestGeneratedFilesUpToDate(t *testing.T) {
	files, err := generate(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(repoRoot, f.path))
		if err != nil {
			t.Fatalf("%v; run %s to create it", err, regenerate)
		}
		if !bytes.Equal(got, f.data) {
			t.Errorf("%s is out of date with the doc comments in config/*.go (%s); run %s and commit the result",
				f.path, firstDiff(got, f.data), regenerate)
		}
	}
}

// firstDiff describes the first line where have and want differ.
func firstDiff(have, want []byte) string {
	h := strings.Split(string(have), "\n")
	w := strings.Split(string(want), "\n")
	for i := 0; i < max(len(h), len(w)); i++ {
		var hl, wl string
		if i < len(h) {
			hl = h[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if hl != wl {
			return fmt.Sprintf("line %d is %q, the generator writes %q", i+1, hl, wl)
		}
	}
	return "they differ"
}

// undocumented lists the keys whose field in config/*.go has no doc
// comment yet. The test below fails for any other such key, and for a key
// listed here once it is documented (then remove it from this list).
var undocumented = []string{
	"tls.certs[].cert",
	"tls.certs[].key",
}

// TestEveryKeyDocumented checks that every table and every key of the
// schema carries a doc comment, the reference's only source of text.
func TestEveryKeyDocumented(t *testing.T) {
	s, err := parseSchema(filepath.Join(repoRoot, configDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range s.tables {
		if strings.TrimSpace(tb.doc) == "" {
			t.Errorf("table %s has no doc comment: document its field or its type in config/*.go", tb.header)
		}
		for _, e := range tb.entries {
			for _, k := range e.keys {
				known := slices.Contains(undocumented, k.path)
				switch has := strings.TrimSpace(e.doc) != ""; {
				case !has && !known:
					t.Errorf("key %s (%s) has no doc comment: say what it is, its unit and its default in config/*.go, then run %s", k.path, k.goField, regenerate)
				case has && known:
					t.Errorf("key %s is documented now: remove it from the undocumented list in %s", k.path, "internal/configdoc/configdoc_test.go")
				}
			}
		}
	}
	for _, vt := range s.valueTypes {
		if strings.TrimSpace(vt.doc) == "" {
			t.Errorf("value type %s has no doc comment", vt.name)
		}
	}
}

// TestSchemaMatchesDecoder checks the generator against the package it
// documents: the key paths it finds in the source must be exactly the keys
// the TOML decoder accepts, which reflect finds in config.Config's tags.
func TestSchemaMatchesDecoder(t *testing.T) {
	s, err := parseSchema(filepath.Join(repoRoot, configDir))
	if err != nil {
		t.Fatal(err)
	}
	var fromSource []string
	for _, tb := range s.tables {
		for _, e := range tb.entries {
			for _, k := range e.keys {
				fromSource = append(fromSource, k.path)
			}
		}
	}
	var fromReflect []string
	reflectKeys(reflect.TypeFor[config.Config](), "", &fromReflect)
	slices.Sort(fromSource)
	slices.Sort(fromReflect)
	if !slices.Equal(fromSource, fromReflect) {
		t.Errorf("keys from config/*.go source:\n  %s\nkeys from config.Config's struct tags:\n  %s",
			strings.Join(fromSource, "\n  "), strings.Join(fromReflect, "\n  "))
	}
	if len(fromSource) < 30 {
		t.Errorf("only %d keys found; the walk stopped early", len(fromSource))
	}
}

// reflectKeys lists the key paths below type t, named the way the
// generator names them, from the struct tags BurntSushi/toml reads.
func reflectKeys(t reflect.Type, prefix string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		path := name
		if prefix != "" {
			path = prefix + "." + name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct && !implementsText(ft):
			reflectKeys(ft, path, out)
		case ft.Kind() == reflect.Map && deref(ft.Elem()).Kind() == reflect.Struct:
			reflectKeys(ft.Elem(), path+".<"+strings.ToLower(deref(ft.Elem()).Name())+">", out)
		case ft.Kind() == reflect.Slice && deref(ft.Elem()).Kind() == reflect.Struct:
			reflectKeys(ft.Elem(), path+"[]", out)
		default:
			*out = append(*out, path)
		}
	}
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// implementsText reports whether the decoder reads t from a string.
func implementsText(t reflect.Type) bool {
	return reflect.PointerTo(t).Implements(reflect.TypeFor[toml.Unmarshaler]()) ||
		reflect.PointerTo(t).Implements(reflect.TypeFor[interface{ UnmarshalText([]byte) error }]())
}

// TestWalk runs the generator on a small schema with each shape it
// follows: nested, pointer, map and array tables, keys sharing a doc, a
// tagless field, skipped and unexported fields, and a key without a doc.
func TestWalk(t *testing.T) {
	s, err := parseSchema("testdata/walk")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tb := range s.tables {
		got = append(got, tb.header)
		for _, e := range tb.entries {
			var ks []string
			for _, k := range e.keys {
				ks = append(ks, k.path+":"+k.typ)
			}
			got = append(got, "  "+strings.Join(ks, " ")+" = "+firstSentence(e.doc))
		}
	}
	want := []string{
		"top level",
		"  Untyped:string = ",
		"[server]",
		"  server.addr:string = Addr is the listen address.",
		"  server.cert:string server.key:string = Cert and Key are a pair.",
		"  server.wait:duration = Wait is how long.",
		"  server.lonely:integer = ",
		"[[server.pairs]]",
		"  server.pairs[].A:integer server.pairs[].B:integer = A and B are numbers.",
		"[server.member]",
		"  server.member.on:boolean = On says it listens.",
		"  server.member.rate:float = Rate is a float.",
		"  server.member.names:array of string = Names are names.",
		"[peers.PEER]",
		"  peers.<peer>.url:string = URL is where.",
		"[extra]",
		"  extra.level:string = Level is a level.",
	}
	if !slices.Equal(got, want) {
		t.Errorf("schema:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(s.valueTypes) != 1 || s.valueTypes[0].name != "duration" {
		t.Errorf("value types %+v, want duration", s.valueTypes)
	}
	md := string(s.markdown())
	for _, want := range []string{
		"### `server.cert`, `server.key`\n\nType: string. Go field: `Server.Cert`, `Server.Key`.\n\nCert and Key are a pair. Optional.\n",
		"### `server.lonely`\n\nType: integer. Go field: `Server.Lonely`.\n\nUndocumented.\n",
		"## `[peers.PEER]`\n\nPeer is one peer.\n",
		"- **duration**: Duration is a Go duration string.\n",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	table := string(s.readmeTable())
	for _, want := range []string{
		"| [`server.addr`](docs/config.md#server-addr) | string | Addr is the listen address. | \":1\"; Required |\n",
		"| [`server.wait`](docs/config.md#server-wait) | duration | Wait is how long. | 5s; e.g. 1m |\n",
		"| [`peers.<peer>.url`](docs/config.md#peers-peer-url) | string | URL is where. | \"x\\|y\" |\n",
		"| [`server.lonely`](docs/config.md#server-lonely) | integer | (undocumented) |  |\n",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("README table lacks %q:\n%s", want, table)
		}
	}
}

// TestSplice checks the README markers: the part between them is replaced,
// the rest kept byte for byte, and missing or repeated markers are an error
// that names them.
func TestSplice(t *testing.T) {
	in := "head\n" + beginMarker + "\nold\n" + endMarker + "\ntail\n"
	got, err := splice([]byte(in), []byte("new\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "head\n" + beginMarker + "\nnew\n" + endMarker + "\ntail\n"; string(got) != want {
		t.Errorf("splice = %q, want %q", got, want)
	}
	for name, bad := range map[string]string{
		"none":     "head\n",
		"reversed": endMarker + "\n" + beginMarker + "\n",
		"twice":    beginMarker + endMarker + beginMarker + endMarker,
	} {
		if _, err := splice([]byte(bad), nil); err == nil || !strings.Contains(err.Error(), "config-reference") {
			t.Errorf("%s: splice error %v, want one naming the markers", name, err)
		}
	}
}

// TestWriteIdempotent runs the generator on a copy of the inputs twice:
// the second run changes nothing, and a README without markers is refused
// with a message saying what to add.
func TestWriteIdempotent(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, configDir), os.DirFS(filepath.Join(repoRoot, configDir))); err != nil {
		t.Fatal(err)
	}
	readme := "# x\n\n" + beginMarker + "\n" + endMarker + "\n"
	if err := os.WriteFile(filepath.Join(dir, readmePath), []byte(readme), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := write(dir); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(filepath.Join(dir, readmePath))
	doc1, _ := os.ReadFile(filepath.Join(dir, docPath))
	if !strings.Contains(string(first), "| [`server.imaps`]") || !strings.Contains(string(doc1), "### `server.imaps`") {
		t.Fatalf("generated files lack server.imaps:\n%s", first)
	}
	if err := write(dir); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(filepath.Join(dir, readmePath))
	doc2, _ := os.ReadFile(filepath.Join(dir, docPath))
	if !bytes.Equal(first, second) || !bytes.Equal(doc1, doc2) {
		t.Error("a second run changed the output")
	}
	if err := os.WriteFile(filepath.Join(dir, readmePath), []byte("# x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := write(dir); err == nil || !strings.Contains(err.Error(), beginMarker) {
		t.Errorf("README without markers: err %v, want one naming %s", err, beginMarker)
	}
}
