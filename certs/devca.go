package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Lifetimes of what a TestCA makes.
const (
	testCALifetime   = 10 * 365 * 24 * time.Hour
	testLeafLifetime = 365 * 24 * time.Hour
)

// TestCA is a throwaway certificate authority for tests and development:
// upstream servers (Dovecot) and client-facing listeners get leaves from
// Issue or WriteFiles, and their clients trust CertPEM. Everything is ECDSA
// P-256 and lives in memory until written. A TestCA is safe for concurrent
// use. Never use it in production: its key is not protected.
type TestCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

// NewTestCA generates a CA certificate and key, valid from an hour ago for
// ten years.
func NewTestCA() (*TestCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "pecgate test CA " + fmt.Sprintf("%032x", serial)[:8],
			Organization: []string{"pecgate test"},
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(testCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create test CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &TestCA{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// CertPEM returns the CA certificate in PEM, for clients' root pools (or a
// Dovecot ssl_client_ca_file). The caller owns the returned slice.
func (ca *TestCA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Issue makes a server leaf certificate for names, each a DNS name (wildcards
// allowed) or an IP address, and returns it (the leaf only, not the CA) and
// its PKCS#8 key in PEM. The first name is also the subject CN. The leaf is
// valid from an hour ago for one year, for server and client authentication.
func (ca *TestCA) Issue(names ...string) (certPEM, keyPEM []byte, err error) {
	tmpl, err := leafTemplate(names)
	if err != nil {
		return nil, nil, err
	}
	return ca.issue(tmpl)
}

// WriteFiles issues a leaf for names like Issue and writes it to
// dir/base-cert.pem (mode 0644) and its key to dir/base-key.pem (mode 0600),
// each replaced atomically (write to a temporary file, then rename), so a
// watcher never sees half a file. It returns the two paths.
func (ca *TestCA) WriteFiles(dir, base string, names ...string) (certFile, keyFile string, err error) {
	certPEM, keyPEM, err := ca.Issue(names...)
	if err != nil {
		return "", "", err
	}
	certFile = filepath.Join(dir, base+"-cert.pem")
	keyFile = filepath.Join(dir, base+"-key.pem")
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	if err := writeAtomic(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// leafTemplate builds the template Issue signs.
func leafTemplate(names []string) (*x509.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("issue: no names given")
	}
	tmpl := &x509.Certificate{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			return nil, errors.New("issue: empty name")
		}
		if ip := net.ParseIP(n); ip != nil {
			if v4 := ip.To4(); v4 != nil {
				ip = v4
			}
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if first := strings.TrimSpace(names[0]); len(first) <= 64 { // RFC 5280 ub-common-name
		tmpl.Subject.CommonName = first
	}
	return tmpl, nil
}

// issue signs tmpl with a fresh P-256 key. It fills the serial number, the
// key usages, and the validity when tmpl leaves them zero; tests set the
// validity to make expired or not-yet-valid certificates.
func (ca *TestCA) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	t := *tmpl
	if t.SerialNumber == nil {
		if t.SerialNumber, err = randomSerial(); err != nil {
			return nil, nil, err
		}
	}
	now := time.Now()
	if t.NotBefore.IsZero() {
		t.NotBefore = now.Add(-time.Hour)
	}
	if t.NotAfter.IsZero() {
		t.NotAfter = now.Add(testLeafLifetime)
	}
	if t.KeyUsage == 0 {
		t.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if t.ExtKeyUsage == nil {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	t.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, &t, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}

// writeAtomic writes data to a temporary file next to path and renames it
// over path.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
