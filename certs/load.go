package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// fileState is what a load saw of one file; the watcher compares against it.
type fileState struct {
	exists  bool
	modTime time.Time
	size    int64
	sum     [sha256.Size]byte
}

// loadPair reads, parses and validates one certificate/key pair. src is the
// config key ("tls" or "tls.certs[N]") used in errors. Both files are read,
// and recorded in seen, before anything is validated.
func loadPair(src, certFile, keyFile string, now time.Time, seen map[string]fileState) (*tls.Certificate, error) {
	certKey, keyKey := src+".cert", src+".key"
	if certFile == "" || keyFile == "" {
		var errs []error
		if certFile == "" {
			errs = append(errs, fmt.Errorf("%s: missing (required with %s)", certKey, keyKey))
		}
		if keyFile == "" {
			errs = append(errs, fmt.Errorf("%s: missing (required with %s)", keyKey, certKey))
		}
		return nil, errors.Join(errs...)
	}
	// pairErr names the file of each failure, the certificate's first.
	pairErr := func(certErr, keyErr error) error {
		var errs []error
		if certErr != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", certKey, certFile, certErr))
		}
		if keyErr != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", keyKey, keyFile, keyErr))
		}
		return errors.Join(errs...)
	}
	certPEM, certErr := readFile(certFile, seen)
	keyPEM, keyErr := readFile(keyFile, seen)
	if certErr != nil || keyErr != nil {
		return nil, pairErr(certErr, keyErr)
	}

	chain, certErr := parseChain(certPEM)
	key, keyErr := parseKey(keyPEM)
	if certErr != nil || keyErr != nil {
		return nil, pairErr(certErr, keyErr)
	}
	leaf := chain[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%s %q: private key does not match the certificate in %s %q",
			keyKey, keyFile, certKey, certFile)
	}
	for i, c := range chain {
		what := "certificate for " + describe(c)
		if i > 0 {
			what = fmt.Sprintf("chain certificate %d (%s)", i+1, c.Subject)
		}
		if now.After(c.NotAfter) {
			return nil, fmt.Errorf("%s %q: %s expired at %s",
				certKey, certFile, what, c.NotAfter.UTC().Format(time.RFC3339))
		}
		if now.Before(c.NotBefore) {
			return nil, fmt.Errorf("%s %q: %s is not valid until %s",
				certKey, certFile, what, c.NotBefore.UTC().Format(time.RFC3339))
		}
	}

	ders := make([][]byte, len(chain))
	for i, c := range chain {
		ders[i] = c.Raw
	}
	return &tls.Certificate{Certificate: ders, PrivateKey: key, Leaf: leaf}, nil
}

// readFile reads path and records its state in seen (stat taken from the open
// file before reading, so a concurrent rewrite is noticed by the next poll).
// A missing file is reported as such, without repeating the path.
func readFile(path string, seen map[string]fileState) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		seen[path] = fileState{}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("missing file: %w", err)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		seen[path] = fileState{}
		return nil, err
	}
	if fi.IsDir() {
		seen[path] = fileState{}
		return nil, errors.New("is a directory, not a PEM file")
	}
	data, err := io.ReadAll(f)
	if err != nil {
		seen[path] = fileState{}
		return nil, err
	}
	seen[path] = fileState{exists: true, modTime: fi.ModTime(), size: fi.Size(), sum: sha256.Sum256(data)}
	return data, nil
}

// parseChain returns every CERTIFICATE block of a PEM file, leaf first.
func parseChain(data []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	var other []string
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			other = append(other, b.Type)
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(chain)+1, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		if len(other) > 0 {
			return nil, fmt.Errorf("no certificate in PEM (found %s blocks; are cert and key swapped?)", other[0])
		}
		return nil, errors.New("no certificate in PEM")
	}
	return chain, nil
}

// parseKey returns the first private key of a PEM file (PKCS#8, PKCS#1 or
// SEC 1), skipping other blocks such as EC PARAMETERS or certificates.
func parseKey(data []byte) (crypto.Signer, error) {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no private key in PEM")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			if _, enc := b.Headers["Proc-Type"]; enc {
				return nil, errors.New("encrypted private keys are not supported")
			}
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			if _, enc := b.Headers["Proc-Type"]; enc {
				return nil, errors.New("encrypted private keys are not supported")
			}
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private keys are not supported")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b.Type, err)
		}
		switch k := k.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case *ecdsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
	}
}

// describe names a certificate in errors: its first name, or its subject.
func describe(c *x509.Certificate) string {
	if names := certNames(c); len(names) > 0 {
		return fmt.Sprintf("%q", names[0])
	}
	if len(c.IPAddresses) > 0 {
		return c.IPAddresses[0].String()
	}
	return c.Subject.String()
}
