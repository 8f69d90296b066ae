package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/config"
)

// ioTimeout bounds every socket operation and polling loop of these tests.
const ioTimeout = 10 * time.Second

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newCA(t *testing.T) *TestCA {
	t.Helper()
	ca, err := NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func caPool(t *testing.T, pemBytes []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no certificate in PEM for the pool")
	}
	return pool
}

// writePair writes a leaf for names into dir as base-cert.pem/base-key.pem
// in place (not atomically, like an operator's cp) and returns the paths
// and the leaf's serial.
func writePair(t *testing.T, ca *TestCA, dir, base string, names ...string) (certFile, keyFile string, serial *big.Int) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(names...)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, base+"-cert.pem")
	keyFile = filepath.Join(dir, base+"-key.pem")
	writeFile(t, certFile, certPEM)
	writeFile(t, keyFile, keyPEM)
	return certFile, keyFile, serialOfPEM(t, certPEM)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func serialOfPEM(t *testing.T, certPEM []byte) *big.Int {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// startServer serves cfg on 127.0.0.1:0 and echoes whatever each client
// sends. Cleanup closes the listener and every connection and waits for
// every goroutine.
func startServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[raw] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, raw)
					mu.Unlock()
					raw.Close()
				}()
				c := tls.Server(raw, cfg)
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(addr string, cfg *tls.Config) (*tls.Conn, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	return c, nil
}

// servedSerial handshakes with serverName (without verification) and returns
// the serial of the leaf the server chose.
func servedSerial(t *testing.T, addr, serverName string) *big.Int {
	t.Helper()
	c, err := dial(addr, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("dial %q: %v", serverName, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// echo writes a line over c and expects it back.
func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

// waitSerial polls the certificate served for serverName until its serial
// is want, failing after ioTimeout.
func waitSerial(t *testing.T, addr, serverName string, want *big.Int) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for {
		got := servedSerial(t, addr, serverName)
		if got.Cmp(want) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("served serial is still %x, want %x", got, want)
		}
		time.Sleep(5 * time.Millisecond) // poll period, not synchronisation
	}
}

func TestSNISelection(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	defCert, defKey, defSerial := writePair(t, ca, dir, "default", "default.example", "shared.example")
	mailCert, mailKey, mailSerial := writePair(t, ca, dir, "mail", "mail.example.org", "shared.example")
	wildCert, wildKey, wildSerial := writePair(t, ca, dir, "wild", "*.example.org")

	// A legacy certificate with only a subject CN, no SANs.
	legacyPEM, legacyKey, err := ca.issue(&x509.Certificate{Subject: pkix.Name{CommonName: "legacy.example.net"}})
	if err != nil {
		t.Fatal(err)
	}
	legCert, legKey := filepath.Join(dir, "legacy-cert.pem"), filepath.Join(dir, "legacy-key.pem")
	writeFile(t, legCert, legacyPEM)
	writeFile(t, legKey, legacyKey)
	legSerial := serialOfPEM(t, legacyPEM)

	m, err := New(config.TLS{
		Cert: defCert, Key: defKey,
		Certs: []config.CertPair{
			{Cert: mailCert, Key: mailKey},
			{Cert: wildCert, Key: wildKey},
			{Cert: legCert, Key: legKey},
		},
	}, "ignored.example", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, m.TLSConfig())
	pool := caPool(t, ca.CertPEM())

	tests := []struct {
		name       string
		serverName string
		want       *big.Int
		verifies   bool // the chosen certificate covers serverName
	}{
		{"exact", "mail.example.org", mailSerial, true},
		{"exact, case and trailing dot", "MAIL.Example.ORG.", mailSerial, true},
		{"exact beats wildcard and default", "shared.example", mailSerial, true},
		{"wildcard one label", "a.example.org", wildSerial, true},
		{"wildcard not two labels", "b.a.example.org", defSerial, false},
		{"wildcard not the bare domain", "example.org", defSerial, false},
		{"CN without SANs", "legacy.example.net", legSerial, false},
		{"default by its own name", "default.example", defSerial, true},
		{"unknown name falls back to default", "unknown.test", defSerial, false},
		{"no SNI falls back to default", "", defSerial, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := servedSerial(t, addr, tc.serverName); got.Cmp(tc.want) != 0 {
				t.Fatalf("served serial %x, want %x", got, tc.want)
			}
			if !tc.verifies {
				return
			}
			c, err := dial(addr, &tls.Config{ServerName: tc.serverName, RootCAs: pool})
			if err != nil {
				t.Fatalf("verified dial: %v", err)
			}
			defer c.Close()
			echo(t, c, "a1 NOOP\r\n")
		})
	}
}

func TestProtocolVersions(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	cert, key, _ := writePair(t, ca, dir, "srv", "mail.example")
	m, err := New(config.TLS{Cert: cert, Key: key}, "", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, m.TLSConfig())
	pool := caPool(t, ca.CertPEM())

	tests := []struct {
		name    string
		version uint16
		ok      bool
	}{
		{"TLS 1.0 refused", tls.VersionTLS10, false},
		{"TLS 1.1 refused", tls.VersionTLS11, false},
		{"TLS 1.2 accepted", tls.VersionTLS12, true},
		{"TLS 1.3 accepted", tls.VersionTLS13, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dial(addr, &tls.Config{
				ServerName: "mail.example", RootCAs: pool,
				MinVersion: tc.version, MaxVersion: tc.version,
			})
			if !tc.ok {
				if err == nil {
					c.Close()
					t.Fatal("handshake succeeded, want refusal")
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			defer c.Close()
			if v := c.ConnectionState().Version; v != tc.version {
				t.Fatalf("negotiated %s, want %s", tls.VersionName(v), tls.VersionName(tc.version))
			}
			echo(t, c, "ping\n")
		})
	}
}

// startWatch runs m.Watch until the test ends and waits for it to return.
func startWatch(t *testing.T, m *Manager, interval time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Watch(ctx, interval)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(ioTimeout):
			t.Error("Watch did not return after its context ended")
		}
	})
}

func TestWatchReload(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	cert, key, oldSerial := writePair(t, ca, dir, "srv", "mail.example")
	m, err := New(config.TLS{Cert: cert, Key: key}, "", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, m.TLSConfig())
	pool := caPool(t, ca.CertPEM())
	startWatch(t, m, 10*time.Millisecond)

	before, err := dial(addr, &tls.Config{ServerName: "mail.example", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	echo(t, before, "before reload\n")

	// Rewrite both files in place with a new certificate; the watcher may
	// see the new cert with the old key in between, fail once and retry.
	_, _, newSerial := writePair(t, ca, dir, "srv", "mail.example")
	waitSerial(t, addr, "mail.example", newSerial)

	// The connection made before the reload still works, with its old
	// certificate.
	echo(t, before, "after reload\n")
	if got := before.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(oldSerial) != 0 {
		t.Fatalf("old connection's serial %x, want %x", got, oldSerial)
	}
	// A new, verified connection gets the new certificate.
	after, err := dial(addr, &tls.Config{ServerName: "mail.example", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if got := after.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(newSerial) != 0 {
		t.Fatalf("new connection's serial %x, want %x", got, newSerial)
	}
	echo(t, after, "new connection\n")
}

func TestWatchChangeDetection(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	cert, key, _ := writePair(t, ca, dir, "srv", "mail.example")
	m, err := New(config.TLS{Cert: cert, Key: key}, "", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if f := m.changedFile(); f != "" {
		t.Fatalf("changed right after load: %s", f)
	}

	// A new time stamp on the same bytes is not a change.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(cert, later, later); err != nil {
		t.Fatal(err)
	}
	if f := m.changedFile(); f != "" {
		t.Fatalf("touch counted as a change of %s", f)
	}
	// Nor the same bytes rewritten.
	data, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, key, data)
	if f := m.changedFile(); f != "" {
		t.Fatalf("identical rewrite counted as a change of %s", f)
	}
	// Different bytes are.
	writeFile(t, key, append(data, '\n'))
	if f := m.changedFile(); f != key {
		t.Fatalf("changedFile = %q, want %q", f, key)
	}
	// A vanished file is.
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(cert); err != nil {
		t.Fatal(err)
	}
	if f := m.changedFile(); f != cert {
		t.Fatalf("changedFile = %q, want %q", f, cert)
	}
	// The failed reload remembers the file as missing: no retry until it
	// comes back.
	if err := m.Reload(); err == nil {
		t.Fatal("Reload with a missing file succeeded")
	}
	if f := m.changedFile(); f != "" {
		t.Fatalf("changed again without a change: %s", f)
	}
	writePair(t, ca, dir, "srv", "mail.example")
	if f := m.changedFile(); f != cert && f != key {
		t.Fatalf("changedFile = %q, want %q or %q", f, cert, key)
	}
}

func TestReloadFailureKeepsOldSet(t *testing.T) {
	ca := newCA(t)
	otherKey, err := os.ReadFile(mustWriteKeyOnly(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	expiredPEM, expiredKey, err := ca.issue(&x509.Certificate{
		DNSNames:  []string{"mail.example"},
		NotBefore: time.Now().Add(-48 * time.Hour),
		NotAfter:  time.Now().Add(-24 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		breakIt func(t *testing.T, cert, key string)
		wantErr string
	}{
		{"garbage key", func(t *testing.T, cert, key string) {
			writeFile(t, key, []byte("not a key\n"))
		}, "no private key in PEM"},
		{"key of another certificate", func(t *testing.T, cert, key string) {
			writeFile(t, key, otherKey)
		}, "private key does not match the certificate"},
		{"truncated key", func(t *testing.T, cert, key string) {
			data, err := os.ReadFile(key)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, key, data[:len(data)/2])
		}, "no private key in PEM"},
		{"expired certificate", func(t *testing.T, cert, key string) {
			writeFile(t, cert, expiredPEM)
			writeFile(t, key, expiredKey)
		}, "expired at"},
		{"missing certificate", func(t *testing.T, cert, key string) {
			if err := os.Remove(cert); err != nil {
				t.Fatal(err)
			}
		}, "missing file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cert, key, oldSerial := writePair(t, ca, dir, "srv", "mail.example")
			m, err := New(config.TLS{Cert: cert, Key: key}, "", testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			addr := startServer(t, m.TLSConfig())

			tc.breakIt(t, cert, key)
			err = m.Reload()
			if err == nil {
				t.Fatal("Reload succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Reload error %q, want it to contain %q", err, tc.wantErr)
			}
			if got := servedSerial(t, addr, "mail.example"); got.Cmp(oldSerial) != 0 {
				t.Fatalf("after a failed reload the served serial is %x, want the old %x", got, oldSerial)
			}

			// Once fixed, a reload takes effect.
			_, _, newSerial := writePair(t, ca, dir, "srv", "mail.example")
			if err := m.Reload(); err != nil {
				t.Fatalf("Reload after the fix: %v", err)
			}
			if got := servedSerial(t, addr, "mail.example"); got.Cmp(newSerial) != 0 {
				t.Fatalf("served serial %x, want the new %x", got, newSerial)
			}
		})
	}
}

// mustWriteKeyOnly issues an unrelated pair and returns its key file.
func mustWriteKeyOnly(t *testing.T, ca *TestCA) string {
	t.Helper()
	_, key, _ := writePair(t, ca, t.TempDir(), "other", "other.example")
	return key
}

func TestSelfSigned(t *testing.T) {
	m, err := New(config.TLS{SelfSigned: true}, "Mail.Ordine.Example", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := m.CertificatePEM()
	pool := caPool(t, pemBytes)
	addr := startServer(t, m.TLSConfig())
	_, port, _ := net.SplitHostPort(addr)

	for _, serverName := range []string{"localhost", "127.0.0.1", "mail.ordine.example"} {
		t.Run(serverName, func(t *testing.T) {
			// For 127.0.0.1 the client sends no SNI and verifies the IP SAN.
			c, err := dial(net.JoinHostPort("127.0.0.1", port), &tls.Config{ServerName: serverName, RootCAs: pool})
			if err != nil {
				t.Fatalf("verified dial: %v", err)
			}
			defer c.Close()
			echo(t, c, "hello\n")
		})
	}

	b, _ := pem.Decode(pemBytes)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "mail.ordine.example"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("VerifyHostname(%q): %v", h, err)
		}
	}
	if err := leaf.VerifyHostname("other.example"); err == nil {
		t.Error("certificate also covers other.example")
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", leaf.PublicKey)
	}
	if life := leaf.NotAfter.Sub(time.Now()); life < 364*24*time.Hour || life > 366*24*time.Hour {
		t.Errorf("valid for %v more, want about a year", life)
	}
	if leaf.IsCA {
		t.Error("self-signed certificate is a CA; clients would refuse it as a leaf")
	}

	// Reload keeps the generated certificate: clients keep trusting it.
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.CertificatePEM(), pemBytes) {
		t.Error("Reload regenerated the self-signed certificate")
	}
}

func TestLoadErrors(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	good, goodKey, _ := writePair(t, ca, dir, "good", "mail.example")
	_, otherKey, _ := writePair(t, ca, dir, "other", "other.example")

	expiredPEM, expiredKeyPEM, err := ca.issue(&x509.Certificate{
		DNSNames:  []string{"old.example"},
		NotBefore: time.Now().Add(-48 * time.Hour),
		NotAfter:  time.Now().Add(-time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	expired, expiredKey := filepath.Join(dir, "expired-cert.pem"), filepath.Join(dir, "expired-key.pem")
	writeFile(t, expired, expiredPEM)
	writeFile(t, expiredKey, expiredKeyPEM)

	futurePEM, futureKeyPEM, err := ca.issue(&x509.Certificate{
		DNSNames:  []string{"future.example"},
		NotBefore: time.Now().Add(24 * time.Hour),
		NotAfter:  time.Now().Add(48 * time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	future, futureKey := filepath.Join(dir, "future-cert.pem"), filepath.Join(dir, "future-key.pem")
	writeFile(t, future, futurePEM)
	writeFile(t, futureKey, futureKeyPEM)

	notPEM := filepath.Join(dir, "notpem.pem")
	writeFile(t, notPEM, []byte("hello\n"))
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		cfg  config.TLS
		want []string // substrings of the error
	}{
		{"missing cert file", config.TLS{Cert: missing, Key: goodKey},
			[]string{`tls.cert "` + missing + `": missing file`}},
		{"missing key file", config.TLS{Cert: good, Key: missing},
			[]string{`tls.key "` + missing + `": missing file`}},
		{"both missing", config.TLS{Cert: missing, Key: missing + "2"},
			[]string{`tls.cert "` + missing + `": missing file`, `tls.key "` + missing + `2": missing file`}},
		{"key does not match cert", config.TLS{Cert: good, Key: otherKey},
			[]string{`tls.key "` + otherKey + `": private key does not match the certificate in tls.cert "` + good + `"`}},
		{"expired certificate", config.TLS{Cert: expired, Key: expiredKey},
			[]string{`tls.cert "` + expired + `": certificate for "old.example" expired at`}},
		{"not yet valid certificate", config.TLS{Cert: future, Key: futureKey},
			[]string{`tls.cert "` + future + `": certificate for "future.example" is not valid until`}},
		{"no certificate in PEM", config.TLS{Cert: notPEM, Key: goodKey},
			[]string{`tls.cert "` + notPEM + `": no certificate in PEM`}},
		{"cert and key swapped", config.TLS{Cert: goodKey, Key: good},
			[]string{`tls.cert "` + goodKey + `": no certificate in PEM (found PRIVATE KEY blocks; are cert and key swapped?)`,
				`tls.key "` + good + `": no private key in PEM`}},
		{"nothing configured", config.TLS{},
			[]string{"tls.cert and tls.key are required unless tls.self_signed is true"}},
		{"cert without key", config.TLS{Cert: good},
			[]string{"tls.key: missing (required with tls.cert)"}},
		{"self_signed with files", config.TLS{SelfSigned: true, Cert: good, Key: goodKey},
			[]string{"tls.self_signed cannot be combined with tls.cert and tls.key"}},
		{"extra pair names its index", config.TLS{Cert: good, Key: goodKey,
			Certs: []config.CertPair{{Cert: good, Key: goodKey}, {Cert: expired, Key: expiredKey}}},
			[]string{`tls.certs[1].cert "` + expired + `": certificate for "old.example" expired at`}},
		{"every problem at once", config.TLS{Cert: missing, Key: goodKey,
			Certs: []config.CertPair{{Cert: good, Key: otherKey}}},
			[]string{`tls.certs[0].key "` + otherKey + `": private key does not match`, `tls.cert "` + missing + `": missing file`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(tc.cfg, "mail.example", testLogger(t))
			if err == nil {
				t.Fatalf("New succeeded (%v), want an error", m)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n\t%s\nwant it to contain\n\t%s", err, w)
				}
			}
		})
	}
}

func TestWatchReturnsWhenContextEnds(t *testing.T) {
	m, err := New(config.TLS{SelfSigned: true}, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Watch(ctx, 0) // default interval: must still return promptly
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(ioTimeout):
		t.Fatal("Watch did not return after its context ended")
	}
}

func TestTestCA(t *testing.T) {
	ca := newCA(t)
	pool := caPool(t, ca.CertPEM())
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteFiles(dir, "imap", "imap.test", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	for _, h := range []string{"imap.test", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: pool}); err != nil {
			t.Errorf("verify %q: %v", h, err)
		}
	}
	if len(leaf.IPAddresses) != 2 || len(leaf.DNSNames) != 1 {
		t.Errorf("SANs: DNS %v, IP %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if _, _, err := ca.Issue(); err == nil {
		t.Error("Issue with no names succeeded")
	}
	// A second CA is not trusted by the first one's pool.
	other := newCA(t)
	certPEM, _, err := other.Issue("imap.test")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{DNSName: "imap.test", Roots: pool}); err == nil {
		t.Error("leaf of another CA verified")
	}
}
