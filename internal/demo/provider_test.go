package demo

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/pecgate/pecgate/certs"
)

func newTestCA(t *testing.T) *certs.TestCA {
	t.Helper()
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func startTestProvider(t *testing.T, name string, ca *certs.TestCA, users map[string]string) *Provider {
	t.Helper()
	p, err := StartProvider(name, ca, t.TempDir(), users)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close provider %s: %v", name, err)
		}
	})
	return p
}

// tlsConfigFor trusts only the PEM file caFile.
func tlsConfigFor(t *testing.T, caFile string) *tls.Config {
	t.Helper()
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in %s", caFile)
	}
	return &tls.Config{RootCAs: pool}
}

func dialIMAP(t *testing.T, p *Provider) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialTLS(p.IMAPAddr, &imapclient.Options{TLSConfig: tlsConfigFor(t, p.CAFile)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func loginIMAP(t *testing.T, p *Provider, user, pass string) *imapclient.Client {
	t.Helper()
	c := dialIMAP(t, p)
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("login %s on %s: %v", user, p.Name, err)
	}
	return c
}

// fetchAll returns every message of mailbox with UID, FLAGS, INTERNALDATE
// and BODY.PEEK[], in sequence order.
func fetchAll(t *testing.T, c *imapclient.Client, mailbox string) []*imapclient.FetchMessageBuffer {
	t.Helper()
	sel, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		t.Fatalf("select %q: %v", mailbox, err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	msgs, err := c.Fetch(imap.SeqSetNum(seqRange(sel.NumMessages)...), &imap.FetchOptions{
		UID:          true,
		Flags:        true,
		InternalDate: true,
		BodySection:  []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatalf("fetch %q: %v", mailbox, err)
	}
	slices.SortFunc(msgs, func(a, b *imapclient.FetchMessageBuffer) int { return int(a.SeqNum) - int(b.SeqNum) })
	return msgs
}

func seqRange(n uint32) []uint32 {
	s := make([]uint32, n)
	for i := range s {
		s[i] = uint32(i + 1)
	}
	return s
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// flagSet normalises flags for comparison: IMAP flags are case-insensitive
// and imapmemserver (beta.8) lower-cases everything it stores.
func flagSet(flags []imap.Flag) string {
	s := make([]string, len(flags))
	for i, f := range flags {
		s[i] = strings.ToLower(string(f))
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

// checkSeeded checks that user's mailboxes on p hold exactly fx: each
// message in its folder, in manifest order, with the manifest's SHA-256,
// flags and INTERNALDATE (same instant, same zone offset).
func checkSeeded(t *testing.T, c *imapclient.Client, fx []Fixture) {
	t.Helper()
	byFolder := map[string][]Fixture{}
	for _, f := range fx {
		byFolder[f.Folder] = append(byFolder[f.Folder], f)
	}
	for _, folder := range []string{MailboxInbox, MailboxSent, MailboxPratiche, MailboxCitta} {
		want := byFolder[folder]
		got := fetchAll(t, c, folder)
		if len(got) != len(want) {
			t.Errorf("%q: %d messages, want %d", folder, len(got), len(want))
			continue
		}
		for i, m := range got {
			f := want[i]
			if m.UID != imap.UID(i+1) {
				t.Errorf("%q seq %d: UID %d, want %d", folder, m.SeqNum, m.UID, i+1)
			}
			body := m.FindBodySection(&imap.FetchItemBodySection{Peek: true})
			if sum := sha256Hex(body); sum != f.SHA256 {
				t.Errorf("%q UID %d: SHA-256 %s (%d bytes), want %s of %s", folder, m.UID, sum, len(body), f.SHA256, f.File)
			}
			if g, w := flagSet(m.Flags), flagSet(f.Flags); g != w {
				t.Errorf("%q UID %d (%s): flags %q, want %q", folder, m.UID, f.File, g, w)
			}
			_, gotOff := m.InternalDate.Zone()
			_, wantOff := f.InternalDate.Zone()
			if !m.InternalDate.Equal(f.InternalDate) || gotOff != wantOff {
				t.Errorf("%q UID %d (%s): INTERNALDATE %s, want %s", folder, m.UID, f.File,
					m.InternalDate.Format(internalDateLayout), f.InternalDate.Format(internalDateLayout))
			}
		}
	}
}

func TestProviders(t *testing.T) {
	fx, err := Fixtures()
	if err != nil {
		t.Fatal(err)
	}
	ca := newTestCA(t)
	oldUsers, newUsers := map[string]string{}, map[string]string{}
	for _, u := range Users {
		oldUsers[u.Address] = u.OldPassword
		newUsers[u.Address] = u.NewPassword
	}
	old := startTestProvider(t, OldProvider, ca, oldUsers)
	nw := startTestProvider(t, NewProvider, ca, newUsers)
	for _, u := range Users {
		if err := old.Seed(u.Address); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Seed("nobody@" + Domain); err == nil {
		t.Error("Seed of an unknown user succeeded")
	}

	t.Run("login", func(t *testing.T) {
		giulia := Users[0]
		for _, tc := range []struct {
			name     string
			p        *Provider
			user     string
			password string
			ok       bool
		}{
			{"old with old password", old, giulia.Address, giulia.OldPassword, true},
			{"new with new password", nw, giulia.Address, giulia.NewPassword, true},
			{"old with new password", old, giulia.Address, giulia.NewPassword, false},
			{"new with old password", nw, giulia.Address, giulia.OldPassword, false},
			{"other user's password", old, giulia.Address, Users[1].OldPassword, false},
			{"empty password", old, giulia.Address, "", false},
			{"unknown user", old, "nobody@" + Domain, giulia.OldPassword, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dialIMAP(t, tc.p)
				err := c.Login(tc.user, tc.password).Wait()
				if tc.ok && err != nil {
					t.Fatalf("login failed: %v", err)
				}
				if !tc.ok {
					var imapErr *imap.Error
					if !errors.As(err, &imapErr) || imapErr.Type != imap.StatusResponseTypeNo {
						t.Fatalf("login: err = %v, want a NO", err)
					}
				}
			})
		}
	})

	t.Run("folders", func(t *testing.T) {
		c := loginIMAP(t, old, Users[0].Address, Users[0].OldPassword)
		list, err := c.List("", "*", nil).Collect()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range list {
			names = append(names, l.Mailbox)
			if l.Delim != '/' {
				t.Errorf("%q: delimiter %q", l.Mailbox, l.Delim)
			}
		}
		want := []string{MailboxInbox, MailboxSent, MailboxPratiche, MailboxCitta}
		slices.Sort(names)
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("LIST: %q, want %q", names, want)
		}
		subs, err := c.List("", "*", &imap.ListOptions{SelectSubscribed: true}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		if len(subs) != len(want) {
			t.Errorf("%d subscribed folders, want %d", len(subs), len(want))
		}
	})

	t.Run("seeded", func(t *testing.T) {
		for _, u := range Users {
			t.Run(u.Address, func(t *testing.T) {
				checkSeeded(t, loginIMAP(t, old, u.Address, u.OldPassword), fx)
			})
		}
	})

	t.Run("new is empty", func(t *testing.T) {
		for _, u := range Users {
			checkSeeded(t, loginIMAP(t, nw, u.Address, u.NewPassword), nil)
		}
	})
}

func dialSMTP(t *testing.T, p *Provider) *smtp.Client {
	t.Helper()
	c, err := smtp.DialTLS(p.SMTPAddr, tlsConfigFor(t, p.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func smtpCode(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

func TestSubmission(t *testing.T) {
	fx, err := Fixtures()
	if err != nil {
		t.Fatal(err)
	}
	big := fx[slices.IndexFunc(fx, func(f Fixture) bool { return f.File == "14-busta-grande-3mb.eml" })]
	const (
		alice, alicePass = "alice@pec.ordine.example", "alice-pw"
		bob, bobPass     = "bob@pec.ordine.example", "bob-pw"
	)
	p := startTestProvider(t, "old", newTestCA(t), map[string]string{alice: alicePass, bob: bobPass})

	t.Run("delivers byte for byte", func(t *testing.T) {
		// Lines that start with a dot and a bare CR inside a line: DATA
		// must undo the dot-stuffing and change nothing else.
		dotted := []byte("From: " + alice + "\r\nTo: " + bob + "\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle\rcr\r\n")
		c := dialSMTP(t, p)
		if err := c.Auth(sasl.NewPlainClient("", alice, alicePass)); err != nil {
			t.Fatal(err)
		}
		for _, msg := range [][]byte{big.Body, dotted} {
			// bob twice (once upper case) and a remote address: one copy
			// for bob, the remote one dropped.
			to := []string{bob, strings.ToUpper(bob), "someone@pec.nuovo.test"}
			if err := c.SendMail(alice, to, bytes.NewReader(msg)); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		got := fetchAll(t, loginIMAP(t, p, bob, bobPass), MailboxInbox)
		if len(got) != 2 {
			t.Fatalf("bob's INBOX has %d messages, want 2", len(got))
		}
		for i, want := range [][]byte{big.Body, dotted} {
			body := got[i].FindBodySection(&imap.FetchItemBodySection{Peek: true})
			if !bytes.Equal(body, want) {
				t.Errorf("message %d: %d bytes, SHA-256 %s; sent %d bytes, SHA-256 %s", i+1, len(body), sha256Hex(body), len(want), sha256Hex(want))
			}
		}
		if n := len(fetchAll(t, loginIMAP(t, p, alice, alicePass), MailboxInbox)); n != 0 {
			t.Errorf("the sender's INBOX has %d messages, want 0", n)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			auth sasl.Client // nil: no AUTH
			code int         // expected reply to AUTH, or to MAIL when auth is nil
		}{
			{"wrong password", sasl.NewPlainClient("", alice, bobPass), 535},
			{"unknown user", sasl.NewPlainClient("", "carol@pec.ordine.example", alicePass), 535},
			{"authorization identity of another user", sasl.NewPlainClient(bob, alice, alicePass), 535},
			{"no AUTH", nil, 502},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := dialSMTP(t, p)
				var err error
				if tc.auth != nil {
					err = c.Auth(tc.auth)
				} else {
					err = c.Mail(alice, nil)
				}
				if smtpCode(err) != tc.code {
					t.Fatalf("err = %v, want code %d", err, tc.code)
				}
				if tc.auth != nil {
					if err := c.Mail(alice, nil); smtpCode(err) != 502 {
						t.Fatalf("MAIL after a refused AUTH: err = %v, want 502", err)
					}
				}
			})
		}
	})
}

// TestProviderClose: Close ends connections that are still open (a silent
// logged-in IMAP client, an SMTP client mid-session) and returns; a
// second Close returns the same result.
func TestProviderClose(t *testing.T) {
	p, err := StartProvider("old", newTestCA(t), t.TempDir(), map[string]string{"a@b.example": "pw"})
	if err != nil {
		t.Fatal(err)
	}
	ic, err := imapclient.DialTLS(p.IMAPAddr, &imapclient.Options{TLSConfig: tlsConfigFor(t, p.CAFile)})
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login("a@b.example", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	sc, err := smtp.DialTLS(p.SMTPAddr, tlsConfigFor(t, p.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	<-ic.Closed() // the server closed the connection
	if err := sc.Noop(); err == nil {
		t.Error("SMTP connection still usable after Close")
	}
}
