package config

import (
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"
)

// Defaults, as documented on the fields they fill.
const (
	DefaultIMAPS          = ":993"
	DefaultIMAP           = ":143"
	DefaultSMTPS          = ":465"
	DefaultSubmission     = ":587"
	DefaultAdmin          = "127.0.0.1:8080"
	DefaultShutdownGrace  = 10 * time.Second
	DefaultMaxMessageSize = 100 << 20 // 100 MiB
	DefaultStorePath      = "/var/lib/pecgate"
	DefaultAuth           = AuthPassthrough
	DefaultMasterStyle    = MasterStyleSASL
	DefaultMaxConnections = 200
	DefaultConnectTimeout = 15 * time.Second
	DefaultLoginTimeout   = 30 * time.Second
	DefaultState          = StateOld
	DefaultLogFormat      = "json"
	DefaultLogLevel       = "info"
)

// DefaultCopyConnections fills Provider.CopyConnections.
const DefaultCopyConnections = 2

// osHostname is os.Hostname, replaced in tests.
var osHostname = os.Hostname

func key(parts ...string) toml.Key { return toml.Key(parts) }

// names sets Provider.Name and Domain.Name, lower-cases the domain keys and
// makes the maps non-nil.
func (p *parser) names(c *Config) {
	if c.Providers == nil {
		c.Providers = map[string]*Provider{}
	}
	for name, pr := range c.Providers {
		if pr == nil {
			pr = new(Provider)
			c.Providers[name] = pr
		}
		pr.Name = name
	}

	// Walk the domain keys in file order, so that a collision is reported
	// on the key written last.
	order := map[string]int{}
	for i, k := range p.md.Keys() {
		if len(k) >= 2 && k[0] == "domains" {
			if _, ok := order[k[1]]; !ok {
				order[k[1]] = i
			}
		}
	}
	names := slices.SortedFunc(maps.Keys(c.Domains), func(a, b string) int {
		if oa, ob := order[a], order[b]; oa != ob {
			return oa - ob
		}
		return strings.Compare(a, b)
	})
	p.domainKeys = map[string]string{}
	for _, name := range names {
		p.domainKeys[name] = name
	}
	domains := make(map[string]*Domain, len(c.Domains))
	first := map[string]string{}
	for _, name := range names {
		d := c.Domains[name]
		if d == nil {
			d = new(Domain)
		}
		lower := strings.ToLower(name)
		if prev, ok := first[lower]; ok {
			p.errorf(key("domains", name), "same domain as %s: domain names are case-insensitive", key("domains", prev))
			continue
		}
		first[lower] = name
		if _, ok := p.domainKeys[lower]; !ok {
			p.domainKeys[lower] = name
		}
		d.Name = lower
		domains[lower] = d
	}
	c.Domains = domains
	if len(c.TLS.Certs) == 0 {
		c.TLS.Certs = nil
	}
}

// defaults fills what the file leaves unset, as documented on each field.
func (p *parser) defaults(c *Config) {
	s := &c.Server
	if s.Hostname == "" {
		h, err := osHostname()
		if err != nil || h == "" {
			p.errorf(key("server", "hostname"), "not set, and the machine's host name is unknown (%v)", err)
		}
		s.Hostname = h
	}
	for _, l := range []struct {
		f   **string
		def string
	}{
		{&s.IMAPS, DefaultIMAPS},
		{&s.IMAP, DefaultIMAP},
		{&s.SMTPS, DefaultSMTPS},
		{&s.Submission, DefaultSubmission},
		{&s.Admin, DefaultAdmin},
	} {
		if *l.f == nil {
			v := l.def
			*l.f = &v
		}
	}
	if s.ShutdownGrace == 0 {
		s.ShutdownGrace = Duration(DefaultShutdownGrace)
	}
	if s.MaxMessageSize == 0 {
		s.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.Store.Path == "" {
		c.Store.Path = DefaultStorePath
	}
	for _, pr := range c.Providers {
		if pr.Auth == "" {
			pr.Auth = DefaultAuth
		}
		if pr.MasterStyle == "" {
			pr.MasterStyle = DefaultMasterStyle
		}
		if pr.MaxConnections == 0 {
			pr.MaxConnections = DefaultMaxConnections
		}
		if pr.ConnectTimeout == 0 {
			pr.ConnectTimeout = Duration(DefaultConnectTimeout)
		}
		if pr.LoginTimeout == 0 {
			pr.LoginTimeout = Duration(DefaultLoginTimeout)
		}
		if pr.CopyConnections == 0 {
			pr.CopyConnections = DefaultCopyConnections
		}
	}
	for _, d := range c.Domains {
		if d.State == "" {
			d.State = DefaultState
		}
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
}

// validate checks the whole configuration after defaults.
func (p *parser) validate(c *Config) {
	p.validateServer(c)
	p.validateTLS(c)
	p.validateStore(c)
	for _, name := range slices.Sorted(maps.Keys(c.Providers)) {
		p.validateProvider(c, name, c.Providers[name])
	}
	for _, name := range slices.Sorted(maps.Keys(c.Domains)) {
		p.validateDomain(c, c.Domains[name])
	}
	if c.Log.Format != "json" && c.Log.Format != "text" {
		p.errorf(key("log", "format"), "must be json or text, got %q", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.errorf(key("log", "level"), "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	p.validateHostname(c.Server.Hostname)
	p.validateStrings(reflect.ValueOf(c).Elem(), nil, "")
}

func (p *parser) validateServer(c *Config) {
	s := &c.Server
	seen := map[string]string{}
	for _, l := range []struct {
		name string
		addr string
	}{
		{"imaps", *s.IMAPS},
		{"imap", *s.IMAP},
		{"smtps", *s.SMTPS},
		{"submission", *s.Submission},
		{"admin", *s.Admin},
		{"member", s.Member},
	} {
		if l.addr == "" {
			continue
		}
		k := key("server", l.name)
		_, port, err := net.SplitHostPort(l.addr)
		if err != nil {
			p.errorf(k, "bad listen address %q: want host:port or :port", l.addr)
			continue
		}
		if port == "" || port == "0" {
			continue // any free port: tests use 127.0.0.1:0 for every listener
		}
		if prev, ok := seen[l.addr]; ok {
			p.errorf(k, "same address as server.%s", prev)
		}
		seen[l.addr] = l.name
	}
	if s.ShutdownGrace < 0 {
		p.errorf(key("server", "shutdown_grace"), "must not be negative")
	}
	if s.MaxMessageSize < 0 {
		p.errorf(key("server", "max_message_size"), "must not be negative")
	}
	if admin := *s.Admin; admin != "" {
		if c.Admin.TokenFile == "" {
			p.errorf(key("admin", "token_file"), "required while the admin listener (server.admin) is enabled")
		}
		if !isLoopback(admin) && !c.Admin.AllowNonLoopback {
			p.errorf(key("server", "admin"), "%q is not a loopback address; set admin.allow_non_loopback = true to expose the admin API beyond this machine", admin)
		}
	}
}

// isLoopback reports whether a listen address binds only loopback: localhost
// or a loopback IP. An empty host binds every interface.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	host, _, _ = strings.Cut(host, "%") // IPv6 zone
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (p *parser) validateTLS(c *Config) {
	t := &c.TLS
	switch {
	case t.Cert != "" && t.Key == "":
		p.errorf(key("tls", "key"), "required with tls.cert")
	case t.Key != "" && t.Cert == "":
		p.errorf(key("tls", "cert"), "required with tls.key")
	}
	if t.SelfSigned && (t.Cert != "" || t.Key != "") {
		p.errorf(key("tls", "self_signed"), "cannot be combined with tls.cert and tls.key")
	}
	s := &c.Server
	noCert := t.Cert == "" && t.Key == "" && !t.SelfSigned
	clients := *s.IMAPS != "" || *s.IMAP != "" || *s.SMTPS != "" || *s.Submission != ""
	if noCert && clients {
		p.errorf(key("tls"), "cert and key are required while a client listener is enabled (or self_signed = true, for development only)")
	} else if noCert && s.Member != "" {
		p.errorf(key("tls"), "cert and key are required while the member page listener (server.member) is enabled (or self_signed = true, for development only)")
	}
	for i, pair := range t.Certs {
		if pair.Cert == "" || pair.Key == "" {
			// Every [[tls.certs]] entry shares one key path, so the
			// decoder knows no line for entry i.
			p.errs = append(p.errs, &Error{File: p.name, Key: fmt.Sprintf("tls.certs[%d]", i), Msg: "cert and key are both required"})
		}
	}
}

func (p *parser) validateStore(c *Config) {
	u := c.Store.URL
	if u == "" {
		return
	}
	if scheme, _, ok := strings.Cut(u, "://"); ok {
		// Never echo the URL: it may hold a password.
		if _, err := url.Parse(u); err != nil {
			p.errorf(key("store", "url"), "not a valid URL")
		} else if s := strings.ToLower(scheme); s != "postgres" && s != "postgresql" {
			p.errorf(key("store", "url"), "scheme must be postgres:// or postgresql://")
		}
	}
}

func (p *parser) validateProvider(c *Config, name string, pr *Provider) {
	k := func(f string) toml.Key { return key("providers", name, f) }
	if !isBareKey(name) {
		p.errorf(key("providers", name), "provider names may hold only letters, digits, '-' and '_'")
	}
	switch {
	case pr.IMAP == "":
		p.errorf(k("imap"), "required (imaps://host[:port] or imap://host[:port]) unless a preset fills it")
	default:
		if _, err := pr.IMAPEndpoint(); err != nil {
			p.errorf(k("imap"), "%v", err)
		}
	}
	switch {
	case pr.SMTP == "":
		p.errorf(k("smtp"), "required (smtps://host[:port] or smtp://host[:port]) unless a preset fills it")
	default:
		if _, err := pr.SMTPEndpoint(); err != nil {
			p.errorf(k("smtp"), "%v", err)
		}
	}
	switch pr.Auth {
	case AuthPassthrough:
	case AuthMaster:
		if pr.MasterUser == "" {
			p.errorf(k("master_user"), "required with auth = \"master\"")
		}
		if pr.MasterPasswordFile == "" {
			p.errorf(k("master_password_file"), "required with auth = \"master\"")
		}
	case AuthVault:
		if c.Vault.KeyFile == "" {
			p.errorf(key("vault", "key_file"), "required: provider %s uses auth = \"vault\"", name)
		}
	default:
		p.errorf(k("auth"), "must be passthrough, master or vault, got %q", pr.Auth)
	}
	if pr.MasterStyle != MasterStyleSASL && pr.MasterStyle != MasterStyleSeparator {
		p.errorf(k("master_style"), "must be sasl or separator, got %q", pr.MasterStyle)
	}
	if pr.ConnectTimeout < 0 {
		p.errorf(k("connect_timeout"), "must not be negative")
	}
	if pr.LoginTimeout < 0 {
		p.errorf(k("login_timeout"), "must not be negative")
	}
	if pr.MaxMessageSize < 0 {
		p.errorf(k("max_message_size"), "must not be negative")
	}
	if pr.CopyConnections < 0 {
		p.errorf(k("copy_connections"), "must not be negative")
	}
	if r := pr.CopyMessagesPerSecond; math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
		p.errorf(k("copy_messages_per_second"), "must be a finite number, 0 or more")
	}
	if pr.CopyBytesPerSecond < 0 {
		p.errorf(k("copy_bytes_per_second"), "must not be negative")
	}
	if pr.QuotaBytes < 0 {
		p.errorf(k("quota_bytes"), "must not be negative")
	}
}

// isBareKey reports whether s can be written as a bare TOML key.
func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (p *parser) validateDomain(c *Config, d *Domain) {
	k := func(f string) toml.Key { return key("domains", d.Name, f) }
	if msg := checkDomainName(d.Name); msg != "" {
		p.errorf(key("domains", d.Name), "%s", msg)
	}
	switch {
	case d.Old == "":
		p.errorf(k("old"), "required: the provider the domain is on now")
	case c.Providers[d.Old] == nil:
		p.errorf(k("old"), "no provider %q; configured: %s", d.Old, providerList(c))
	}
	switch {
	case d.New == "":
	case c.Providers[d.New] == nil:
		p.errorf(k("new"), "no provider %q; configured: %s", d.New, providerList(c))
	case d.New == d.Old:
		p.errorf(k("new"), "same provider as old")
	}
	switch d.State {
	case StateOld:
	case StateMigrating, StateNew:
		if d.New == "" {
			p.errorf(k("new"), "required with state = %q", d.State)
		}
	default:
		p.errorf(k("state"), "must be old, migrating or new, got %q", d.State)
	}
}

func providerList(c *Config) string {
	if len(c.Providers) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(maps.Keys(c.Providers)), ", ")
}

// checkDomainName returns what is wrong with a lower-cased domain name, or "".
func checkDomainName(name string) string {
	switch {
	case name == "":
		return "empty domain name"
	case strings.ContainsRune(name, '@'):
		return "a domain name, not an address"
	case strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, ".."):
		return "empty label in domain name"
	case strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == '/' }) >= 0:
		return "domain name holds a space, control character or '/'"
	}
	return ""
}

// validateHostname checks Server.Hostname, which goes into the SMTP greeting
// and the self-signed certificate: DNS labels of letters, digits, '-' and
// '_', joined by dots.
func (p *parser) validateHostname(h string) {
	if h == "" {
		return // already reported by defaults
	}
	ok := len(h) <= 253
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			ok = false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				ok = false
			}
		}
	}
	if !ok {
		p.errorf(key("server", "hostname"), "%q is not a host name", h)
	}
}

// validateStrings reports every string of the configuration that holds a
// control character: a newline in a path or an address is always a mistake,
// and some strings reach protocol lines and logs. Inside arrays, where the
// decoder knows no line per entry, display names the key (tls.certs[1].key).
func (p *parser) validateStrings(v reflect.Value, k toml.Key, display string) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			p.validateStrings(v.Elem(), k, display)
		}
	case reflect.String:
		if strings.IndexFunc(v.String(), unicode.IsControl) < 0 {
			return
		}
		if display != "" {
			p.errs = append(p.errs, &Error{File: p.name, Key: display, Msg: "holds a control character"})
		} else {
			p.errorf(k, "holds a control character")
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			d := display
			if d != "" {
				d += "." + toml.Key{name}.String()
			}
			p.validateStrings(v.Field(i), append(slices.Clip(k), name), d)
		}
	case reflect.Map:
		keys := v.MapKeys()
		slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
		for _, mk := range keys {
			name := mk.String()
			d := display
			if d != "" {
				d += "." + toml.Key{name}.String()
			}
			p.validateStrings(v.MapIndex(mk), append(slices.Clip(k), name), d)
		}
	case reflect.Slice:
		for i := range v.Len() {
			d := display
			if d == "" {
				d = k.String()
			}
			p.validateStrings(v.Index(i), k, fmt.Sprintf("%s[%d]", d, i))
		}
	}
}
