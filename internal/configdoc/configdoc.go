// Command configdoc writes pecgate's configuration reference from the doc
// comments of the config package, so the reference cannot drift from the
// schema it describes.
//
// It parses config/*.go (not the tests) with go/parser, starts at the Config
// struct and follows its fields by their TOML tags: a struct field is a table
// ([server]), a map of structs is a table of named tables
// ([providers.<provider>]), a slice of structs is an array of tables
// ([[tls.certs]]). Every other field is a key, documented by its field's doc
// comment. It writes docs/config.md (the whole text of every key) and, between
// the markers
//
//	<!-- config-reference:begin -->
//	<!-- config-reference:end -->
//
// in README.md, a table of every key with the first sentence of its doc.
//
// Run it from the repository root, as `make docs` does:
//
//	go run ./internal/configdoc
//
// Invariants: the output depends only on the source text (no map iteration
// order, no time, no paths), so running it twice changes nothing; the test
// in this package fails when the committed files differ from its output.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Markers delimit the generated part of README.md.
const (
	beginMarker = "<!-- config-reference:begin -->"
	endMarker   = "<!-- config-reference:end -->"
)

// Output paths, relative to the repository root.
const (
	configDir  = "config"
	docPath    = "docs/config.md"
	readmePath = "README.md"
)

// regenerate is the command that rewrites the generated files.
const regenerate = "make docs (or: go run ./internal/configdoc)"

func main() {
	root := flag.String("root", ".", "repository root (holds config/, docs/ and README.md)")
	flag.Parse()
	if err := write(*root); err != nil {
		fmt.Fprintf(os.Stderr, "configdoc: %v\n", err)
		os.Exit(1)
	}
}

// write regenerates docs/config.md and the marked part of README.md under
// root, leaving a file untouched when it is already up to date.
func write(root string) error {
	files, err := generate(root)
	if err != nil {
		return err
	}
	for _, f := range files {
		path := filepath.Join(root, f.path)
		old, _ := os.ReadFile(path)
		if bytes.Equal(old, f.data) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, f.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// file is one generated file: its path under the root and its whole content.
type file struct {
	path string
	data []byte
}

// generate returns the content docs/config.md and README.md must have.
func generate(root string) ([]file, error) {
	s, err := parseSchema(filepath.Join(root, configDir))
	if err != nil {
		return nil, err
	}
	readme, err := os.ReadFile(filepath.Join(root, readmePath))
	if err != nil {
		return nil, err
	}
	spliced, err := splice(readme, s.readmeTable())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", readmePath, err)
	}
	return []file{{docPath, s.markdown()}, {readmePath, spliced}}, nil
}

// splice replaces what lies between the markers in readme with body.
func splice(readme, body []byte) ([]byte, error) {
	b := bytes.Index(readme, []byte(beginMarker))
	e := bytes.Index(readme, []byte(endMarker))
	if b < 0 || e < 0 || e < b {
		return nil, fmt.Errorf("want the lines %s and %s, in that order, around the generated configuration reference", beginMarker, endMarker)
	}
	if bytes.Count(readme, []byte(beginMarker)) != 1 || bytes.Count(readme, []byte(endMarker)) != 1 {
		return nil, fmt.Errorf("the lines %s and %s must appear once each", beginMarker, endMarker)
	}
	var out bytes.Buffer
	out.Write(readme[:b+len(beginMarker)])
	out.WriteString("\n")
	out.Write(body)
	out.Write(readme[e:])
	return out.Bytes(), nil
}

// schema is the configuration's tree of tables and keys.
type schema struct {
	// tables are in the order a reader meets them: depth first, fields in
	// source order.
	tables []*table
	// valueTypes are the named non-struct types the keys use (Duration),
	// with their doc, in order of first use.
	valueTypes []valueType
}

// table is one TOML table: a section of the reference.
type table struct {
	// path is the dotted path ("server", "providers.<provider>",
	// "tls.certs[]"); header is how the file writes it ("[server]",
	// "[providers.NAME]", "[[tls.certs]]").
	path, header string
	doc          string
	entries      []*entry
}

// entry is one or more keys sharing one doc comment (Go's "Cert and Key
// are ..." style).
type entry struct {
	keys []key
	doc  string
}

// key is one TOML key.
type key struct {
	path string // full dotted path, e.g. "server.imaps"
	name string // the TOML key, e.g. "imaps"
	typ  string // e.g. "string", "integer", "duration"
	// goField is the Go struct and field, e.g. "Server.IMAPS".
	goField string
}

// valueType is a named type used as a key's value.
type valueType struct {
	name, doc string
}

// typeDecl is a type declared in the config package.
type typeDecl struct {
	spec *ast.TypeSpec
	doc  string
}

// parseSchema reads the Go files of the config package in dir and walks the
// tree below Config.
func parseSchema(dir string) (*schema, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	fset := token.NewFileSet()
	decls := map[string]typeDecl{}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			return nil, err
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.TYPE {
				continue
			}
			for _, sp := range g.Specs {
				ts := sp.(*ast.TypeSpec)
				doc := ts.Doc.Text()
				if doc == "" && len(g.Specs) == 1 {
					doc = g.Doc.Text()
				}
				decls[ts.Name.Name] = typeDecl{ts, doc}
			}
		}
	}
	root, ok := decls["Config"]
	if !ok {
		return nil, fmt.Errorf("%s: no type Config", dir)
	}
	w := &walker{types: decls, s: &schema{}, seenValue: map[string]bool{}}
	if err := w.table("", "", root.doc, "Config"); err != nil {
		return nil, err
	}
	return w.s, nil
}

// walker builds a schema from the type declarations.
type walker struct {
	types     map[string]typeDecl
	s         *schema
	seenValue map[string]bool
}

// table adds the table at path (header as written in a file), whose struct
// type is typeName, then the tables below it.
func (w *walker) table(path, header, doc, typeName string) error {
	td, ok := w.types[typeName]
	if !ok {
		return fmt.Errorf("%s: type %s is not declared in the config package", path, typeName)
	}
	st, ok := td.spec.Type.(*ast.StructType)
	if !ok {
		return fmt.Errorf("%s: type %s is not a struct", path, typeName)
	}
	t := &table{path: path, header: header, doc: doc}
	if path != "" {
		w.s.tables = append(w.s.tables, t)
	} else {
		// Keys outside any table come first, if there are any.
		defer func() {
			if len(t.entries) > 0 {
				t.path, t.header = "top-level", "top level"
				w.s.tables = append([]*table{t}, w.s.tables...)
			}
		}()
	}
	var subs []func() error
	var prev *entry
	var prevDoc string
	for _, f := range st.Fields.List {
		fieldDoc := f.Doc.Text()
		if fieldDoc == "" {
			fieldDoc = f.Comment.Text()
		}
		if len(f.Names) == 0 {
			return fmt.Errorf("%s: embedded field %s: configdoc does not follow embedded structs yet; name the field or teach configdoc", typeName, types.ExprString(f.Type))
		}
		for _, n := range f.Names {
			if !n.IsExported() {
				continue
			}
			name := tomlName(f, n.Name)
			if name == "-" {
				prev, prevDoc = nil, ""
				continue
			}
			kp := name
			if path != "" {
				kp = path + "." + name
			}
			kind, elem := classify(f.Type)
			if kind != kindValue {
				if _, isStruct := w.structType(elem); !isStruct {
					kind = kindValue
				}
			}
			switch kind {
			case kindTable:
				d := fieldDoc
				if d == "" {
					d = w.types[elem].doc
				}
				subs = append(subs, func() error { return w.table(kp, "["+kp+"]", d, elem) })
				prev, prevDoc = nil, ""
				continue
			case kindMap:
				ph := "<" + strings.ToLower(elem) + ">"
				d := joinDocs(fieldDoc, w.types[elem].doc)
				subs = append(subs, func() error {
					return w.table(kp+"."+ph, "["+kp+"."+strings.ToUpper(elem)+"]", d, elem)
				})
				prev, prevDoc = nil, ""
				continue
			case kindArray:
				d := joinDocs(fieldDoc, w.types[elem].doc)
				subs = append(subs, func() error { return w.table(kp+"[]", "[["+kp+"]]", d, elem) })
				prev, prevDoc = nil, ""
				continue
			}
			k := key{path: kp, name: name, typ: w.valueTypeName(f.Type), goField: typeName + "." + n.Name}
			switch {
			case len(f.Names) > 1 && n != f.Names[0] && prev != nil:
				// "A, B int": one declaration, one doc.
				prev.keys = append(prev.keys, k)
			case fieldDoc == "" && prev != nil && mentions(prevDoc, n.Name):
				// A field with no doc of its own, right after a doc
				// that names it ("Cert and Key are ...").
				prev.keys = append(prev.keys, k)
			default:
				prev = &entry{keys: []key{k}, doc: fieldDoc}
				prevDoc = fieldDoc
				t.entries = append(t.entries, prev)
			}
		}
	}
	for _, sub := range subs {
		if err := sub(); err != nil {
			return err
		}
	}
	return nil
}

// structType reports whether name is a struct type of the config package.
func (w *walker) structType(name string) (*ast.StructType, bool) {
	td, ok := w.types[name]
	if !ok {
		return nil, false
	}
	st, ok := td.spec.Type.(*ast.StructType)
	return st, ok
}

// joinDocs joins a field's doc and its type's doc, leaving out empty ones.
func joinDocs(docs ...string) string {
	var out []string
	for _, d := range docs {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return strings.Join(out, "\n\n") + "\n"
}

// mentions reports whether doc names the Go identifier name as a word.
func mentions(doc, name string) bool {
	return regexp.MustCompile(`\b` + regexp.QuoteMeta(name) + `\b`).MatchString(doc)
}

// tomlName is the key BurntSushi/toml uses for field goName: the tag's
// name, or the Go name when the tag gives none.
func tomlName(f *ast.Field, goName string) string {
	if f.Tag != nil {
		tag, err := strconv.Unquote(f.Tag.Value)
		if err == nil {
			v := reflect.StructTag(tag).Get("toml")
			if n, _, _ := strings.Cut(v, ","); n != "" {
				return n
			}
		}
	}
	return goName
}

type fieldKind int

const (
	kindValue fieldKind = iota // a key
	kindTable                  // T or *T, T a struct: [path]
	kindMap                    // map[string]T or map[string]*T: [path.NAME]
	kindArray                  // []T or []*T: [[path]]
)

// classify says how a field's type maps to TOML, and names the element
// type for tables (to be confirmed as a struct by the caller).
func classify(e ast.Expr) (fieldKind, string) {
	switch t := e.(type) {
	case *ast.Ident:
		return kindTable, t.Name
	case *ast.StarExpr:
		if id, ok := t.X.(*ast.Ident); ok {
			return kindTable, id.Name
		}
	case *ast.MapType:
		if id := elemIdent(t.Value); id != "" {
			return kindMap, id
		}
	case *ast.ArrayType:
		if t.Len == nil {
			if id := elemIdent(t.Elt); id != "" {
				return kindArray, id
			}
		}
	}
	return kindValue, ""
}

// elemIdent names T in T or *T, or returns "".
func elemIdent(e ast.Expr) string {
	if s, ok := e.(*ast.StarExpr); ok {
		e = s.X
	}
	if id, ok := e.(*ast.Ident); ok {
		return id.Name
	}
	return ""
}

// valueTypeName is the TOML type of a key of Go type e, as the reference
// prints it.
func (w *walker) valueTypeName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return w.valueTypeName(t.X)
	case *ast.ArrayType:
		return "array of " + w.valueTypeName(t.Elt)
	case *ast.MapType:
		return "table of " + w.valueTypeName(t.Value)
	case *ast.SelectorExpr:
		return types.ExprString(t)
	case *ast.Ident:
		switch t.Name {
		case "string":
			return "string"
		case "bool":
			return "boolean"
		case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
			return "integer"
		case "float32", "float64":
			return "float"
		}
		if td, ok := w.types[t.Name]; ok {
			n := strings.ToLower(t.Name)
			if !w.seenValue[n] {
				w.seenValue[n] = true
				w.s.valueTypes = append(w.s.valueTypes, valueType{n, td.doc})
			}
			return n
		}
		return t.Name
	}
	return types.ExprString(e)
}

// markdown renders docs/config.md.
func (s *schema) markdown() []byte {
	var b bytes.Buffer
	b.WriteString("# Configuration reference\n\n")
	b.WriteString("<!-- Generated by `" + regenerate + "` from the doc comments in config/*.go. Do not edit. -->\n\n")
	b.WriteString("pecgate reads one TOML file (`pecgate serve -config /etc/pecgate/pecgate.toml`). ")
	b.WriteString("A key that is not listed here, or a value that is not valid, makes pecgate refuse the whole file ")
	b.WriteString("and list every problem with its line and key path. `pecgate.example.toml` is a commented example. ")
	b.WriteString("This page is generated from the doc comments of the `config` package, which state each key's unit and default.\n\n")
	b.WriteString("Key paths are written with dots; `<provider>` and `<domain>` stand for a table's name ")
	b.WriteString("(`[providers.aruba]`, `[domains.\"pec.ordine.example\"]`), and `[]` for an array of tables (`[[tls.certs]]`).\n\n")
	if len(s.valueTypes) > 0 {
		b.WriteString("Value types other than TOML's own:\n\n")
		for _, vt := range s.valueTypes {
			fmt.Fprintf(&b, "- **%s**: %s\n", vt.name, oneLine(vt.doc))
		}
		b.WriteString("\n")
	}
	b.WriteString("Tables: ")
	for i, t := range s.tables {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "[`%s`](#%s)", t.header, anchor(t.path))
	}
	b.WriteString(".\n")
	for _, t := range s.tables {
		fmt.Fprintf(&b, "\n<a id=\"%s\"></a>\n\n## `%s`\n\n", anchor(t.path), t.header)
		if d := renderDoc(t.doc); d != "" {
			b.WriteString(d)
			b.WriteString("\n")
		}
		for _, e := range t.entries {
			var names, typs, fields []string
			for _, k := range e.keys {
				names = append(names, "`"+k.path+"`")
				fields = append(fields, "`"+k.goField+"`")
				if !slices.Contains(typs, k.typ) {
					typs = append(typs, k.typ)
				}
			}
			fmt.Fprintf(&b, "<a id=\"%s\"></a>\n\n### %s\n\n", anchor(e.keys[0].path), strings.Join(names, ", "))
			fmt.Fprintf(&b, "Type: %s. Go field: %s.\n\n", strings.Join(typs, ", "), strings.Join(fields, ", "))
			if d := renderDoc(e.doc); d != "" {
				b.WriteString(d)
			} else {
				b.WriteString("Undocumented.\n")
			}
			b.WriteString("\n")
		}
	}
	return append(bytes.TrimRight(b.Bytes(), "\n"), '\n')
}

// readmeTable renders the part of README.md between the markers: every key
// with its type and the first sentence of its doc.
func (s *schema) readmeTable() []byte {
	var b bytes.Buffer
	b.WriteString("<!-- Generated by `" + regenerate + "` from config/*.go. Do not edit. -->\n\n")
	b.WriteString("Every key with its type, the first sentence of its doc and what its doc says about its default; ")
	b.WriteString("[docs/config.md](docs/config.md) has the whole text.\n\n")
	b.WriteString("| key | type | what it is | default |\n| --- | --- | --- | --- |\n")
	for _, t := range s.tables {
		for _, e := range t.entries {
			what := "(undocumented)"
			if strings.TrimSpace(e.doc) != "" {
				what = firstSentence(e.doc)
			}
			for _, k := range e.keys {
				fmt.Fprintf(&b, "| [`%s`](docs/config.md#%s) | %s | %s | %s |\n", k.path, anchor(e.keys[0].path), k.typ, tableCell(what), tableCell(defaultOf(e.doc)))
			}
		}
	}
	return b.Bytes()
}

// anchor turns a key path into an HTML id: letters, digits and '-'.
func anchor(path string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(path) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == '.' || r == '_' || r == '-':
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-")
}

// renderDoc turns a Go doc comment into Markdown.
func renderDoc(doc string) string {
	if strings.TrimSpace(doc) == "" {
		return ""
	}
	var p comment.Parser
	pr := comment.Printer{HeadingLevel: 4, DocLinkURL: func(l *comment.DocLink) string { return "" }}
	// Our doc comments use backticks for code, as Markdown does; the
	// printer escapes them as plain text.
	return strings.ReplaceAll(string(pr.Markdown(p.Parse(doc))), "\\`", "`")
}

// oneLine joins a doc comment's lines.
func oneLine(doc string) string {
	return strings.Join(strings.Fields(doc), " ")
}

// firstSentence returns the doc's first sentence, on one line.
func firstSentence(doc string) string {
	if s := sentences(doc); len(s) > 0 {
		return s[0]
	}
	return ""
}

// sentences splits a doc comment into sentences: a sentence ends with a
// '.' followed by a space or the end, unless the '.' ends an abbreviation.
func sentences(doc string) []string {
	s := oneLine(doc)
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' && (i+1 == len(s) || s[i+1] == ' ') && !abbrev(s[:i]) {
			out = append(out, strings.TrimSpace(s[start:i+1]))
			start = i + 1
		}
	}
	if rest := strings.TrimSpace(s[start:]); rest != "" {
		out = append(out, rest)
	}
	return out
}

// defaultOf returns what a doc says about the default: its sentences that
// start with "Default", "Required" or "Optional", without the word
// "Default" and the final '.'. "" when the doc says none.
func defaultOf(doc string) string {
	var out []string
	for _, s := range sentences(doc) {
		switch {
		case strings.HasPrefix(s, "Default"):
			s = strings.TrimLeft(strings.TrimPrefix(s, "Default"), ": ")
		case strings.HasPrefix(s, "Required"), strings.HasPrefix(s, "Optional"):
		default:
			continue
		}
		out = append(out, strings.TrimSuffix(s, "."))
	}
	return strings.Join(out, "; ")
}

// abbrev reports whether text ends with an abbreviation whose '.' does not
// end a sentence ("e.g", "i.e", "etc" mid-sentence).
func abbrev(text string) bool {
	for _, a := range []string{"e.g", "i.e", "cf"} {
		if strings.HasSuffix(text, a) {
			return true
		}
	}
	return false
}

// tableCell escapes text for a Markdown table cell: '|' would split it,
// '*', '_' and '<' outside code spans would format it.
func tableCell(s string) string {
	var b strings.Builder
	code := false
	for _, r := range s {
		switch {
		case r == '`':
			code = !code
			b.WriteRune(r)
		case r == '|':
			b.WriteString(`\|`)
		case !code && (r == '*' || r == '_' || r == '<' || r == '['):
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
