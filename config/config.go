// Package config holds pecgate's TOML schema, its documented defaults, the
// provider presets and validation. It dials nothing and imports no other
// pecgate package.
//
// Load decodes a file, rejects unknown keys, applies presets and defaults and
// then validates the whole result, reporting every problem at once with its key
// path and line (for example `pecgate.toml:12: providers.aruba.imap: scheme
// must be imaps:// (implicit TLS) or imap:// (STARTTLS), got "https"`).
//
// Invariants: a Config returned by Load or Parse is complete (every default
// filled, every listener field non-nil, Providers and Domains non-nil, domain
// keys lower case) and valid; Parse never reads another file, resolves a name
// or dials; re-encoding a parsed Config as TOML and parsing it again yields an
// equal Config (FuzzParse checks it).
package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is the whole configuration file.
type Config struct {
	Server    Server               `toml:"server"`
	TLS       TLS                  `toml:"tls"`
	Store     Store                `toml:"store"`
	Providers map[string]*Provider `toml:"providers"`
	Domains   map[string]*Domain   `toml:"domains"`
	Admin     Admin                `toml:"admin"`
	Vault     Vault                `toml:"vault"`
	Log       Log                  `toml:"log"`
}

// Server holds the client-facing listeners.
type Server struct {
	// Hostname is the name clients use to reach the gateway; it is the
	// subject of the self-signed certificate and the SMTP greeting.
	// Default: the machine's host name. It must be a DNS name (labels of
	// letters, digits, '-' and '_' joined by dots).
	Hostname string `toml:"hostname"`
	// IMAPS is the implicit-TLS IMAP listen address. Default ":993"; "" disables.
	IMAPS *string `toml:"imaps"`
	// IMAP is the STARTTLS IMAP listen address. Default ":143"; "" disables.
	IMAP *string `toml:"imap"`
	// SMTPS is the implicit-TLS submission listen address. Default ":465"; "" disables.
	SMTPS *string `toml:"smtps"`
	// Submission is the STARTTLS submission listen address. Default ":587"; "" disables.
	Submission *string `toml:"submission"`
	// Admin is the admin HTTP listen address. Default "127.0.0.1:8080"; "" disables.
	// It must be a loopback address (localhost, 127.0.0.0/8, ::1) unless
	// Admin.AllowNonLoopback is set.
	Admin *string `toml:"admin"`
	// Member is the listen address of the member self-service page (/me)
	// on a listener of its own, served over TLS with the client listeners'
	// certificates (tls.cert/key or self_signed), with nothing but /me on
	// it: no admin API, no status page. Default "": no listener of its
	// own, and /me is served on the admin listener only.
	Member string `toml:"member"`
	// ShutdownGrace is how long `serve` waits on SIGTERM for sessions to end
	// after telling them BYE. Default 10s; zero means the default; negative
	// is an error.
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// MaxMessageSize caps a client APPEND or SMTP DATA, in bytes. Default
	// 104857600 (100 MiB); zero means the default; negative is an error. A
	// provider's own smaller limit wins.
	MaxMessageSize int64 `toml:"max_message_size"`
}

// TLS holds the certificates served to clients.
type TLS struct {
	// Cert and Key are the default PEM certificate chain and private key
	// (file paths). One of Cert+Key or SelfSigned is required while a client
	// listener (IMAPS, IMAP, SMTPS, Submission) is enabled; they exclude each
	// other.
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	// Certs are further pairs chosen by SNI (the client's server name);
	// Cert/Key serve names none of them covers. Optional; each entry needs
	// both Cert and Key.
	Certs []CertPair `toml:"certs"`
	// SelfSigned generates a certificate for Server.Hostname at start-up
	// (development only). Default false.
	SelfSigned bool `toml:"self_signed"`
}

// CertPair is one PEM certificate chain and its key.
type CertPair struct {
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
}

// Store says where the durable state lives.
type Store struct {
	// Path is the directory of the embedded bbolt store. Default "/var/lib/pecgate".
	Path string `toml:"path"`
	// URL is a PostgreSQL URL (postgres:// or postgresql://) or key=value
	// connection string; when set, Path is unused. Default "": embedded store.
	URL string `toml:"url"`
}

// Provider is one upstream mail service.
type Provider struct {
	// Name is the provider's key in [providers.NAME]; set by Load. Names
	// hold only letters, digits, '-' and '_', and are case-sensitive.
	Name string `toml:"-"`
	// Preset fills IMAP, SMTP and quirks for a known provider: aruba,
	// infocert, namirial, poste, register, actalis (see Presets). A preset
	// fills only the fields the file leaves empty. Optional.
	Preset string `toml:"preset"`
	// IMAP is the upstream IMAP endpoint: imaps://host[:993] (implicit TLS)
	// or imap://host[:143] (STARTTLS, required). Required unless a preset fills it.
	IMAP string `toml:"imap"`
	// SMTP is the upstream submission endpoint: smtps://host[:465] or
	// smtp://host[:587] (STARTTLS, required). Required unless a preset fills it.
	SMTP string `toml:"smtp"`
	// Auth is how pecgate logs in upstream: passthrough, master or vault.
	// Default "passthrough".
	Auth string `toml:"auth"`
	// CA is a PEM bundle trusted for this upstream in addition to the
	// system roots. Optional (tests, private CAs).
	CA string `toml:"ca"`
	// MasterUser and MasterPasswordFile are used, and both required, when
	// Auth is "master"; the file holds the master password.
	MasterUser         string `toml:"master_user"`
	MasterPasswordFile string `toml:"master_password_file"`
	// MasterStyle is how the master user names the user it acts for, when
	// Auth is "master": "sasl" (AUTHENTICATE PLAIN / AUTH PLAIN with the
	// user as authorization identity, RFC 4616) or "separator" (LOGIN
	// "user*master", Dovecot's auth_master_user_separator = *). Default
	// "sasl"; unused with other Auth values.
	MasterStyle string `toml:"master_style"`
	// MaxConnections caps concurrent upstream IMAP connections to this
	// provider, all users together. Default 200; zero means the default;
	// negative means unlimited (kept as written).
	MaxConnections int `toml:"max_connections"`
	// ConnectTimeout bounds dialling and the TLS handshake. Default 15s; zero
	// means the default; negative is an error.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// LoginTimeout bounds the upstream greeting and LOGIN. Default 30s; zero
	// means the default; negative is an error.
	LoginTimeout Duration `toml:"login_timeout"`
	// MaxMessageSize is the provider's message size limit in bytes (PEC
	// providers typically accept 30-100 MB). Default 0: unknown, only
	// Server.MaxMessageSize applies. Negative is an error.
	MaxMessageSize int64 `toml:"max_message_size"`
	// AppPasswords says the provider is known to require an app password when
	// the account has two-factor login; a refused login then carries a hint.
	// Filled by presets unless the file sets it. Default false.
	AppPasswords bool `toml:"app_passwords"`
	// CopyConnections is how many users the back-fill copies at once to or
	// from this provider, each over one IMAP connection here (it counts
	// against MaxConnections too). Default 2; zero means the default;
	// negative is an error.
	CopyConnections int `toml:"copy_connections"`
	// CopyMessagesPerSecond caps the messages the back-fill reads from or
	// writes to this provider per second, all users together. Default 0:
	// unlimited; negative is an error.
	CopyMessagesPerSecond float64 `toml:"copy_messages_per_second"`
	// CopyBytesPerSecond caps the message bytes the back-fill reads from or
	// writes to this provider per second, all users together. Default 0:
	// unlimited; negative is an error.
	CopyBytesPerSecond int64 `toml:"copy_bytes_per_second"`
	// QuotaBytes is each mailbox's storage quota here in bytes, used by the
	// back-fill before copying a user when the provider does not answer
	// GETQUOTAROOT (RFC 9208). Default 0: unknown (no check); negative is
	// an error.
	QuotaBytes int64 `toml:"quota_bytes"`
}

// Domain is one mail domain the gateway serves.
type Domain struct {
	// Name is the domain (lower case), set by Load from [domains."NAME"].
	// Keys are case-insensitive: two keys that differ only by case are an
	// error.
	Name string `toml:"-"`
	// Old names the provider (a key of [providers]) the domain is on now.
	// Required.
	Old string `toml:"old"`
	// New names the provider the domain moves to; not Old. Optional;
	// required for states migrating and new.
	New string `toml:"new"`
	// State is old, migrating or new. Default "old".
	State string `toml:"state"`
}

// Admin configures the admin HTTP API.
type Admin struct {
	// TokenFile holds the bearer token admin calls need. Required when the
	// admin listener (Server.Admin) is enabled.
	TokenFile string `toml:"token_file"`
	// AllowNonLoopback lets Server.Admin listen on an address that is not
	// loopback (":8080", "0.0.0.0:8080", a LAN address), exposing the admin
	// API, token-protected, beyond this machine. Default false.
	AllowNonLoopback bool `toml:"allow_non_loopback"`
}

// Vault configures the credential vault.
type Vault struct {
	// KeyFile holds 32 random bytes (raw, hex or base64) that encrypt the
	// vault; never stored in the store. Required when a provider has
	// Auth "vault", optional otherwise.
	KeyFile string `toml:"key_file"`
}

// Log configures logging.
type Log struct {
	// Format is json or text. Default "json".
	Format string `toml:"format"`
	// Level is debug, info, warn or error. Default "info".
	Level string `toml:"level"`
}

// States a domain or user can be in.
const (
	StateOld       = "old"
	StateMigrating = "migrating"
	StateNew       = "new"
)

// Credential strategies.
const (
	AuthPassthrough = "passthrough"
	AuthMaster      = "master"
	AuthVault       = "vault"
)

// Master styles (Provider.MasterStyle).
const (
	MasterStyleSASL      = "sasl"
	MasterStyleSeparator = "separator"
)

// Duration is a time.Duration written as a Go duration string ("15s", "2m").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Endpoint is a parsed upstream URL.
type Endpoint struct {
	// Host and Port as dialled; Port is filled from the scheme when absent.
	Host string
	Port string
	// ImplicitTLS is true for imaps:// and smtps://, false for STARTTLS.
	ImplicitTLS bool
}

// Addr is Host:Port.
func (e Endpoint) Addr() string { return net.JoinHostPort(e.Host, e.Port) }

// ParseEndpoint parses an endpoint URL whose scheme is tlsScheme (implicit
// TLS) or startTLSScheme (STARTTLS), e.g. ParseEndpoint(u, "imaps", "imap").
func ParseEndpoint(raw, tlsScheme, startTLSScheme string) (Endpoint, error) {
	if !strings.Contains(raw, "://") {
		return Endpoint{}, fmt.Errorf("want %s://host[:port] (implicit TLS) or %s://host[:port] (STARTTLS), got %q", tlsScheme, startTLSScheme, raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("not a URL: %w", err)
	}
	var ep Endpoint
	switch strings.ToLower(u.Scheme) {
	case tlsScheme:
		ep.ImplicitTLS = true
	case startTLSScheme:
	default:
		return Endpoint{}, fmt.Errorf("scheme must be %s:// (implicit TLS) or %s:// (STARTTLS), got %q", tlsScheme, startTLSScheme, u.Scheme)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil || u.Opaque != "" {
		return Endpoint{}, fmt.Errorf("want %s://host[:port] with no user, path, query or fragment", tlsScheme)
	}
	ep.Host = u.Hostname()
	if ep.Host == "" {
		return Endpoint{}, fmt.Errorf("missing host")
	}
	if strings.Contains(ep.Host, ":") && !strings.HasPrefix(u.Host, "[") {
		return Endpoint{}, fmt.Errorf("bad host %q: write an IPv6 address in brackets", u.Host)
	}
	ep.Port = u.Port()
	if ep.Port == "" {
		ep.Port = defaultPorts[strings.ToLower(u.Scheme)]
	}
	if n, err := strconv.Atoi(ep.Port); err != nil || n < 1 || n > 65535 {
		return Endpoint{}, fmt.Errorf("bad port %q", ep.Port)
	}
	return ep, nil
}

var defaultPorts = map[string]string{"imaps": "993", "imap": "143", "smtps": "465", "smtp": "587"}

// IMAPEndpoint parses p.IMAP. Valid after Load.
func (p *Provider) IMAPEndpoint() (Endpoint, error) { return ParseEndpoint(p.IMAP, "imaps", "imap") }

// SMTPEndpoint parses p.SMTP. Valid after Load.
func (p *Provider) SMTPEndpoint() (Endpoint, error) { return ParseEndpoint(p.SMTP, "smtps", "smtp") }

// Addr returns the listen address a *string field holds, "" when disabled.
func Addr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// LookupDomain finds the domain of an address (case-insensitively), or nil.
func (c *Config) LookupDomain(address string) *Domain {
	at := strings.LastIndexByte(address, '@')
	if at < 0 || at == len(address)-1 {
		return nil
	}
	return c.Domains[strings.ToLower(address[at+1:])]
}
