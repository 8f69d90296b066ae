package dovetest

import (
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// TestLayoutFS: with LayoutFS a folder name may hold "." (as
// "Fatture 2023.01" on a provider whose storage allows it), and mail can be
// delivered there; a Maildir++ server with delimiter "/" refuses that name,
// which is the refusal pecgate's preflight must find on a new provider.
func TestLayoutFS(t *testing.T) {
	const user, name = "alice@pec.vecchio.test", "Fatture 2023.01"
	fs := Start(t, Options{Name: "fs", Delimiter: "/", Layout: LayoutFS, Users: []User{{Address: user}}})
	pp := Start(t, Options{Name: "pp", Delimiter: "/", Users: []User{{Address: user}}})

	fs.CreateMailbox(t, user, "Archivio/"+name)
	fs.Deliver(t, user, "Archivio/"+name, []byte("Subject: x\r\n\r\nbody\r\n"))
	c := fs.Dial(t, user)
	st, err := c.Status("Archivio/"+name, &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || st.NumMessages == nil || *st.NumMessages != 1 {
		t.Fatalf("STATUS %q on the fs layout: %+v, %v; want 1 message", "Archivio/"+name, st, err)
	}
	if err := fs.seedMaildir(user, nil); err == nil || !strings.Contains(err.Error(), "Maildir++ only") {
		t.Errorf("SeedMaildir on LayoutFS: %v, want a refusal", err)
	}

	err = pp.Dial(t, user).Create(name, nil).Wait()
	if err == nil || !strings.Contains(err.Error(), "Character not allowed in mailbox name: '.'") {
		t.Fatalf("CREATE %q on Maildir++ with delimiter /: %v want Dovecot's refusal", name, err)
	}

	for _, o := range []Options{{Layout: "lfs"}, {Layout: LayoutFS, Delimiter: "."}} {
		s := &Server{Delimiter: o.Delimiter, Layout: o.Layout}
		if s.Delimiter == "" {
			s.Delimiter = "."
		}
		if err := s.checkOptions(o); err == nil {
			t.Errorf("checkOptions(%+v) accepted", o)
		}
	}
}

// TestUserExtra: passdb extra fields refuse a login the way providers do
// for accounts with IMAP disabled or two-factor login on: Dovecot answers
// NO [CONTACTADMIN] with the reason, only when the password is right.
func TestUserExtra(t *testing.T) {
	s := Start(t, Options{Name: "extra", Users: []User{
		{Address: "off@pec.vecchio.test", Extra: "nologin"},
		{Address: "otp@pec.vecchio.test", Extra: "nologin reason=Two-factor-authentication-is-on,-use-an-app-password"},
	}})
	for _, tc := range []struct{ user, want string }{
		{"off@pec.vecchio.test", "NO [CONTACTADMIN] Login disabled for this user"},
		{"otp@pec.vecchio.test", "NO [CONTACTADMIN] Two-factor-authentication-is-on,-use-an-app-password"},
	} {
		c, err := imapclient.DialTLS(s.IMAPSAddr, &imapclient.Options{TLSConfig: s.TLSConfig()})
		if err != nil {
			t.Fatal(err)
		}
		err = c.Login(tc.user, s.Password(tc.user)).Wait()
		c.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("login %s: %v, want %q", tc.user, err, tc.want)
		}
	}
	if err := (&Server{Delimiter: "."}).checkOptions(Options{Users: []User{{Address: "a@b.test", Extra: "x:y"}}}); err == nil {
		t.Error("an extra field with ':' was accepted")
	}
}
