package backend

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/config"
)

// memProvider is go-imap's in-memory server on loopback, with implicit TLS
// and STARTTLS listeners, certificates from its own test CA.
type memProvider struct {
	imaps, imap string
	caFile      string
}

func startMem(t *testing.T) *memProvider {
	t.Helper()
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, err := ca.WriteFiles(dir, "srv", "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, ca.CertPEM(), 0o600)
	mem := imapmemserver.New()
	mem.AddUser(imapmemserver.NewUser("u@example.org", "pw"))
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{pair}}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:      imap.CapSet{imap.CapIMAP4rev1: {}},
		TLSConfig: tlsCfg,
	})
	lnTLS, err := tls.Listen("tcp", "127.0.0.1:0", tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenLoopback()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lnTLS)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &memProvider{imaps: lnTLS.Addr().String(), imap: ln.Addr().String(), caFile: caFile}
}

func provider(t *testing.T, pc config.Provider) *Provider {
	t.Helper()
	p, err := NewProvider("test", &pc, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoginIMAP(t *testing.T) {
	mp := startMem(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, url string
	}{
		{"implicit TLS", "imaps://" + mp.imaps},
		{"STARTTLS", "imap://" + mp.imap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := provider(t, config.Provider{IMAP: tc.url, CA: mp.caFile})
			c, err := p.LoginIMAP(ctx, "u@example.org", "pw", nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.List("", "*", nil).Collect(); err != nil {
				t.Fatalf("LIST on the logged-in connection: %v", err)
			}
			c.Logout()

			_, err = p.LoginIMAP(ctx, "u@example.org", "wrong", nil)
			var be *Error
			if !IsAuthFailure(err) || !errors.As(err, &be) || !be.Permanent {
				t.Fatalf("wrong password: got %v, want a permanent ErrAuthFailed", err)
			}
		})
	}
}

func TestUntrustedCertificateRefused(t *testing.T) {
	mp := startMem(t)
	// No CA bundle: the test CA is not in the system roots.
	p := provider(t, config.Provider{IMAP: "imaps://" + mp.imaps})
	_, err := p.LoginIMAP(context.Background(), "u@example.org", "pw", nil)
	var be *Error
	if err == nil || !errors.As(err, &be) || !be.Permanent || IsAuthFailure(err) {
		t.Fatalf("got %v, want a permanent certificate error", err)
	}
	// The same over STARTTLS: no plaintext fallback.
	p = provider(t, config.Provider{IMAP: "imap://" + mp.imap})
	if _, err := p.LoginIMAP(context.Background(), "u@example.org", "pw", nil); err == nil {
		t.Fatal("STARTTLS with an untrusted certificate succeeded")
	}
}

func TestConnectionCap(t *testing.T) {
	mp := startMem(t)
	p := provider(t, config.Provider{IMAP: "imaps://" + mp.imaps, CA: mp.caFile, MaxConnections: 1})
	c1, err := p.DialIMAP(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := p.DialIMAP(ctx, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("second connection over a cap of 1: got %v, want ErrBusy", err)
	}
	c1.Close()
	c2, err := p.DialIMAP(context.Background(), nil)
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	c2.Close()
	c2.Close() // a second Close must not free a second slot
	c3, _ := p.DialIMAP(context.Background(), nil)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := p.DialIMAP(ctx2, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("double Close freed two slots: got %v", err)
	}
	c3.Close()
}

func TestUnreachable(t *testing.T) {
	ln, _ := listenLoopback()
	addr := ln.Addr().String()
	ln.Close()
	p := provider(t, config.Provider{IMAP: "imaps://" + addr, ConnectTimeout: config.Duration(2 * time.Second)})
	_, err := p.LoginIMAP(context.Background(), "u", "p", nil)
	if !errors.Is(err, ErrUnavailable) || IsAuthFailure(err) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
}

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
