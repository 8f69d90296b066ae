// Package certs owns the certificates pecgate shows to its clients: it loads
// the PEM pairs named in the config's tls table, or generates a self-signed development
// certificate, picks one per handshake by SNI, and reloads them when their
// files change (Watch) or when asked to (Reload, which cmd calls on SIGHUP).
// It knows nothing about IMAP or SMTP and handles no signals.
//
// Invariants:
//
//   - The served certificates form one immutable set behind an atomic
//     pointer. Every handshake loads the pointer once, so a reload affects
//     only handshakes that start after it; established connections keep the
//     certificate and keys they negotiated and are never interrupted.
//   - A set is replaced only whole, and only when every configured file was
//     read and validated. On any error the previous set keeps being served
//     and the error is returned and logged.
//   - A pair is accepted only if its file holds at least one certificate, its
//     key file holds a private key whose public half matches the leaf, and
//     every certificate of the chain is valid at load time (neither expired
//     nor not yet valid). Every error names the config key and the file.
//   - Selection (GetCertificate): exact SNI name, then a wildcard covering
//     exactly one extra leftmost label (*.example.org matches a.example.org,
//     not example.org nor b.a.example.org), then the default pair. Names are
//     each certificate's DNS SANs, or its subject CN when it has no SANs at
//     all; comparison ignores case and a trailing dot. When several pairs
//     claim a name, the extra pairs win in config order over the default.
//   - TLS 1.2 is the minimum protocol version.
package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pecgate/pecgate/config"
)

// expiryWarning is how close to its NotAfter a loaded certificate must be for
// the load to be logged as a warning.
const expiryWarning = 30 * 24 * time.Hour

// Manager serves the configured certificates and reloads them. Its methods
// are safe for concurrent use.
type Manager struct {
	cfg  config.TLS
	log  *slog.Logger
	self *tls.Certificate // generated once when cfg.SelfSigned; kept across reloads

	cur atomic.Pointer[certSet]

	mu   sync.Mutex           // serialises loads and the watcher's checks
	seen map[string]fileState // guarded by mu: each file as the last load read it
}

// certSet is one immutable generation of served certificates.
type certSet struct {
	def    *tls.Certificate
	defPEM []byte
	exact  map[string]*tls.Certificate // lower-case name -> pair
	wild   map[string]*tls.Certificate // "example.org" for "*.example.org" -> pair
}

// pair is one loaded certificate with where it came from.
type pair struct {
	source string // config key: "tls", "tls.certs[0]" or "self_signed"
	file   string // certificate file, "" when generated
	cert   *tls.Certificate
}

// New loads the certificates cfg names, or generates a self-signed one for
// hostname when cfg.SelfSigned is true (extra pairs in cfg.Certs are loaded
// in both cases). hostname is used only for the self-signed certificate; ""
// means it covers only localhost, 127.0.0.1 and ::1. A nil log discards.
// Every problem found is returned at once, each naming its config key and file.
func New(cfg config.TLS, hostname string, log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: log}
	if cfg.SelfSigned {
		if cfg.Cert != "" || cfg.Key != "" {
			return nil, errors.New("tls.self_signed cannot be combined with tls.cert and tls.key")
		}
		c, err := selfSigned(hostname, time.Now())
		if err != nil {
			return nil, fmt.Errorf("generate self-signed certificate: %w", err)
		}
		m.self = c
		log.Warn("serving a self-signed TLS certificate (development only)",
			"names", c.Leaf.DNSNames, "not_after", c.Leaf.NotAfter)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	set, pairs, err := m.load(time.Now())
	if err != nil {
		return nil, err
	}
	m.cur.Store(set)
	m.logPairs(pairs)
	return m, nil
}

// TLSConfig returns a new server configuration that serves the manager's
// current certificates: TLS 1.2 at least, certificate chosen by SNI on every
// handshake. The caller may change the returned value; changes do not affect
// the manager or other configurations it returned.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.getCertificate,
	}
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return m.cur.Load().pick(hello.ServerName), nil
}

// pick returns the pair for the SNI name: exact, then one-label wildcard,
// then the default.
func (s *certSet) pick(name string) *tls.Certificate {
	name = normalizeName(name)
	if name == "" {
		return s.def
	}
	if c := s.exact[name]; c != nil {
		return c
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c := s.wild[name[i+1:]]; c != nil {
			return c
		}
	}
	return s.def
}

// CertificatePEM returns the PEM of the default certificate chain now being
// served. For a self-signed manager it is the certificate that clients must
// be told to trust. The caller owns the returned slice.
func (m *Manager) CertificatePEM() []byte {
	return bytes.Clone(m.cur.Load().defPEM)
}

// Reload re-reads every configured file and, when all of them load and
// validate, makes the new set the one served to new handshakes. On any error
// the previous set stays in service and the error is logged and returned.
// A self-signed certificate is kept, not regenerated.
func (m *Manager) Reload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	set, pairs, err := m.load(time.Now())
	if err != nil {
		m.log.Error("tls reload failed; still serving the previous certificates", "err", err)
		return err
	}
	m.cur.Store(set)
	m.log.Info("tls certificates reloaded", "pairs", len(pairs))
	m.logPairs(pairs)
	return nil
}

// load reads and validates every configured pair and builds a set. It
// records what it read in m.seen, whether it succeeds or not, so that the
// watcher retries only after a file changes again. m.mu must be held.
func (m *Manager) load(now time.Time) (*certSet, []pair, error) {
	seen := make(map[string]fileState)
	defer func() { m.seen = seen }()

	var errs []error
	var pairs []pair // extra pairs first (they win on shared names), default last
	for i, cp := range m.cfg.Certs {
		src := fmt.Sprintf("tls.certs[%d]", i)
		c, err := loadPair(src, cp.Cert, cp.Key, now, seen)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pairs = append(pairs, pair{source: src, file: cp.Cert, cert: c})
	}
	switch {
	case m.self != nil:
		pairs = append(pairs, pair{source: "self_signed", cert: m.self})
	case m.cfg.Cert == "" && m.cfg.Key == "":
		errs = append(errs, errors.New("tls.cert and tls.key are required unless tls.self_signed is true"))
	default:
		c, err := loadPair("tls", m.cfg.Cert, m.cfg.Key, now, seen)
		if err != nil {
			errs = append(errs, err)
		} else {
			pairs = append(pairs, pair{source: "tls", file: m.cfg.Cert, cert: c})
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}

	def := pairs[len(pairs)-1].cert
	set := &certSet{
		def:    def,
		defPEM: chainPEM(def),
		exact:  make(map[string]*tls.Certificate),
		wild:   make(map[string]*tls.Certificate),
	}
	for _, p := range pairs {
		for _, name := range certNames(p.cert.Leaf) {
			table, key := set.exact, name
			if rest, ok := strings.CutPrefix(name, "*."); ok {
				table, key = set.wild, rest
			}
			if _, dup := table[key]; dup {
				m.log.Warn("tls certificate name already served by an earlier pair",
					"name", name, "source", p.source, "cert", p.file)
				continue
			}
			table[key] = p.cert
		}
	}
	return set, pairs, nil
}

func (m *Manager) logPairs(pairs []pair) {
	now := time.Now()
	for _, p := range pairs {
		leaf := p.cert.Leaf
		level := slog.LevelInfo
		if leaf.NotAfter.Sub(now) < expiryWarning && p.cert != m.self {
			level = slog.LevelWarn
		}
		m.log.Log(context.Background(), level, "tls certificate loaded",
			"source", p.source, "cert", p.file, "names", certNames(leaf),
			"serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
	}
}

// certNames returns the names a leaf serves: its DNS SANs, or its subject
// CN when it has no subject alternative names at all; normalised.
func certNames(leaf *x509.Certificate) []string {
	raw := leaf.DNSNames
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 && len(leaf.URIs) == 0 &&
		len(leaf.EmailAddresses) == 0 && leaf.Subject.CommonName != "" {
		raw = []string{leaf.Subject.CommonName}
	}
	names := make([]string, 0, len(raw))
	for _, n := range raw {
		if n = normalizeName(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

func chainPEM(c *tls.Certificate) []byte {
	var b bytes.Buffer
	for _, der := range c.Certificate {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der}) // writes to memory
	}
	return b.Bytes()
}
