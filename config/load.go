package config

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Error is one problem found in a configuration file. Parse and Load return
// every problem they find, as *Error values joined with errors.Join.
type Error struct {
	// File is the name given to Parse (the path given to Load); may be "".
	File string
	// Line is the 1-based line of the key, or of the nearest enclosing table
	// written in the file when the key itself is absent; 0 when unknown.
	Line int
	// Key is the dotted key path, e.g. `providers.aruba.imap` or
	// `domains."pec.ordine.example".old`; "" for syntax errors.
	Key string
	// Msg says what is wrong.
	Msg string
}

// Error formats e as "FILE:LINE: KEY: MSG", leaving out what is unknown.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads the TOML file at path and parses it with Parse, naming the file
// by path in errors.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes a TOML configuration, named name in errors, and returns it
// with presets and defaults applied, or every problem found in it.
//
// The steps are: decode (a syntax or type error stops here, with its line);
// reject unknown keys, including keys that match a known one only when case
// is ignored; set Provider.Name and Domain.Name from the table keys (domain
// keys lower-cased); fill empty provider fields from presets; apply the
// defaults documented on each field; validate. All problems after decoding
// are reported at once, sorted by line, each an *Error carrying its key path
// and, where the file has the key or its table, its line.
//
// After a successful Parse, Providers and Domains are non-nil, every listener
// field of Server is non-nil ("" when disabled), and re-encoding the Config
// as TOML and parsing it again yields an equal Config.
//
// Parse reads no other file and dials nothing: the files the configuration
// names (certificates, keys, tokens) are checked by the packages that read
// them.
func Parse(data []byte, name string) (*Config, error) {
	p := &parser{name: name, data: string(data), lines: map[string]int{}}
	// A first pass into an empty struct only parses, so its errors are
	// syntax errors, whose "last key" may be a key before the mistake.
	if _, err := toml.Decode(p.data, &struct{}{}); err != nil {
		return nil, p.syntaxError(err)
	}
	c := new(Config)
	md, err := toml.Decode(p.data, c)
	if err != nil {
		return nil, p.decodeError(err)
	}
	p.md = md
	p.unknownKeys()
	p.names(c)
	p.presets(c)
	p.defaults(c)
	p.validate(c)
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *Error) int {
			// Problems without a line go last.
			return cmp.Compare(uint(a.Line-1), uint(b.Line-1))
		})
		errs := make([]error, len(p.errs))
		for i, e := range p.errs {
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// parser collects the problems of one Parse.
type parser struct {
	name  string
	data  string
	md    toml.MetaData
	errs  []*Error
	lines map[string]int  // key path -> line, a cache for line
	keys  map[string]bool // the key paths of md.Keys, made by defined
	// domainKeys maps each domain key of the file to itself and each
	// lower-cased domain name to the key the file spells it with.
	domainKeys map[string]string
}

// errorf records a problem with key, placed at the line of key or of its
// nearest enclosing table in the file.
func (p *parser) errorf(key toml.Key, format string, args ...any) {
	if len(key) >= 2 && key[0] == "domains" {
		// Name the domain as the file spells it.
		if orig, ok := p.domainKeys[key[1]]; ok && orig != key[1] {
			key = append(toml.Key{"domains", orig}, key[2:]...)
		}
	}
	p.errs = append(p.errs, &Error{File: p.name, Line: p.lineNear(key), Key: key.String(), Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) syntaxError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		line := pe.Position.Line
		if s := pe.Position.Start; s > 0 && s < len(p.data) {
			// The lexer counts a newline it complains about as part of
			// the next line; the byte offset is exact.
			line = 1 + strings.Count(p.data[:s], "\n")
		}
		return &Error{File: p.name, Line: line, Msg: pe.Message}
	}
	return &Error{File: p.name, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

// typeErrorRE matches the type errors of BurntSushi/toml v1.6.0
// (MetaData.e), which are not ParseErrors.
var typeErrorRE = regexp.MustCompile(`(?s)^toml: (?:line (\d+) )?\(last key ("(?:[^"\\]|\\.)*")\): (.*)$`)

func (p *parser) decodeError(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: p.name, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	}
	if m := typeErrorRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		key, uerr := strconv.Unquote(m[2])
		if uerr == nil {
			return &Error{File: p.name, Line: line, Key: key, Msg: m[3]}
		}
	}
	return &Error{File: p.name, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

// unknownKeys reports the keys that Decode left undecoded, and the keys that
// it decoded only because it matches field names case-insensitively. Keys
// under a reported key are not reported again.
func (p *parser) unknownKeys() {
	undecoded := map[string]bool{}
	for _, k := range p.md.Undecoded() {
		undecoded[k.String()] = true
	}
	var reported []toml.Key
next:
	for _, k := range p.md.Keys() {
		for _, r := range reported {
			if len(k) > len(r) && slices.Equal(k[:len(r)], r) {
				continue next
			}
		}
		switch fix := caseFix(k); {
		case fix != nil:
			p.errorf(k, "unknown key (did you mean %s?)", fix)
		case undecoded[k.String()]:
			p.errorf(k, "unknown key")
		default:
			continue
		}
		reported = append(reported, k)
	}
}

// caseFix returns k spelt as the schema spells it when k differs from a key
// of the schema only by the case of a table or field name, else nil.
// (BurntSushi/toml matches field names case-insensitively, so Undecoded does
// not report such keys.)
func caseFix(k toml.Key) toml.Key {
	t := reflect.TypeFor[Config]()
	for i, seg := range k {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Map:
			t = t.Elem()
			continue
		case reflect.Struct:
		default:
			return nil
		}
		var exact, folded *reflect.StructField
		for j := range t.NumField() {
			f := t.Field(j)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			switch {
			case name == "-" || name == "":
			case name == seg:
				exact = &f
			case strings.EqualFold(name, seg) && folded == nil:
				folded = &f
			}
		}
		switch {
		case exact != nil:
			t = exact.Type
		case folded != nil:
			fix := slices.Clone(k[:i+1])
			fix[i], _, _ = strings.Cut(folded.Tag.Get("toml"), ",")
			return fix
		default:
			return nil
		}
	}
	return nil
}

// lineNear returns the line of key, or of its nearest ancestor that has one,
// or 0.
func (p *parser) lineNear(key toml.Key) int {
	for i := len(key); i > 0; i-- {
		if l := p.line(key[:i]); l > 0 {
			return l
		}
	}
	return 0
}

// maxProbes bounds the decodes line may run for one Parse.
const maxProbes = 100

// line returns the line where key is defined in the file, or 0 when key is
// absent, implicit (a table only named by its sub-keys) or cannot be probed.
//
// BurntSushi/toml v1.6.0 keeps each key's position in MetaData but exposes it
// only in the ParseError of a failing Unmarshaler: line decodes the file once
// more into a struct type built for key alone, whose leaf always fails, and
// reads the position from that error.
func (p *parser) line(key toml.Key) int {
	ks := key.String()
	if l, ok := p.lines[ks]; ok {
		return l
	}
	l := 0
	if len(p.lines) < maxProbes && p.defined(key) {
		if t := p.probeType(key); t != nil {
			_, err := toml.Decode(p.data, reflect.New(t).Interface())
			var pe toml.ParseError
			if errors.As(err, &pe) && pe.Message == errProbe.Error() && pe.LastKey == ks {
				l = pe.Position.Line
			}
		}
	}
	p.lines[ks] = l
	return l
}

// defined reports whether the file writes key itself: as a table header,
// a key = value line or a key of an inline table. (MetaData.IsDefined
// cannot look inside arrays of tables.)
func (p *parser) defined(key toml.Key) bool {
	if p.keys == nil {
		p.keys = map[string]bool{}
		for _, k := range p.md.Keys() {
			p.keys[k.String()] = true
		}
	}
	return p.keys[key.String()]
}

var errProbe = errors.New("config: position probe 7f3c")

// probe fails to decode, making the decoder report its key's position.
type probe struct{}

// UnmarshalTOML implements toml.Unmarshaler.
func (probe) UnmarshalTOML(any) error { return errProbe }

var (
	probeT = reflect.TypeFor[probe]()
	anyT   = reflect.TypeFor[any]()
)

// probeType builds struct{ K0 struct{ K1 ... probe } }, following arrays
// with slices. Siblings that differ from a segment only by case get fields of
// their own, so that the case-insensitive field match of the decoder cannot
// pick them. It returns nil when a segment cannot be a struct tag name.
func (p *parser) probeType(key toml.Key) reflect.Type {
	t := probeT
	for i := len(key) - 1; i >= 0; i-- {
		seg := key[i]
		if seg == "" || seg == "-" || strings.ContainsRune(seg, ',') {
			return nil
		}
		if i < len(key)-1 {
			switch p.md.Type(key[:i+1]...) {
			case "Array", "ArrayHash":
				t = reflect.SliceOf(t)
			}
		}
		fields := []reflect.StructField{{Name: "F0", Type: t, Tag: tomlTag(seg)}}
		seen := map[string]bool{seg: true}
		for _, k := range p.md.Keys() {
			if len(k) <= i || !slices.Equal(k[:i], key[:i]) || seen[k[i]] || !strings.EqualFold(k[i], seg) {
				continue
			}
			seen[k[i]] = true
			if strings.ContainsRune(k[i], ',') {
				return nil
			}
			fields = append(fields, reflect.StructField{Name: "F" + strconv.Itoa(len(fields)), Type: anyT, Tag: tomlTag(k[i])})
		}
		t = reflect.StructOf(fields)
	}
	return t
}

func tomlTag(name string) reflect.StructTag {
	return reflect.StructTag("toml:" + strconv.Quote(name))
}
