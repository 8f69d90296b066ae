package proxy

// Integration tests of the submission side against real Dovecot providers
// (internal/dovetest): the gateway routes a domain in state "old" to the
// old provider's submission endpoint (implicit TLS, its own CA), and the
// message must land byte for byte in the recipient's INBOX there.

import (
	"log/slog"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
)

const smtpDoveRcpt = "mario.rossi@pec.vecchio.test"

func TestSMTPDovecot(t *testing.T) {
	old, nuovo := dovetest.StartPair(t, smtpTestUser, smtpDoveRcpt)
	fixtures := map[string][]byte{}
	for _, f := range dovetest.LoadFixtures(t) {
		fixtures[f.File] = f.Body
	}
	tt := newSMTPTestTLS(t)
	cfg := &config.Config{
		Server: config.Server{Hostname: smtpTestHost, MaxMessageSize: 8 << 20},
		Providers: map[string]*config.Provider{
			"vecchio": {Name: "vecchio", IMAP: "imaps://" + old.IMAPSAddr, SMTP: "smtps://" + old.SubmissionAddr,
				CA: old.CAFile, Auth: config.AuthPassthrough},
			"nuovo": {Name: "nuovo", IMAP: "imaps://" + nuovo.IMAPSAddr, SMTP: "smtps://" + nuovo.SubmissionAddr,
				CA: nuovo.CAFile, Auth: config.AuthPassthrough},
		},
		Domains: map[string]*config.Domain{
			smtpTestDomain: {Name: smtpTestDomain, Old: "vecchio", New: "nuovo", State: config.StateOld},
		},
	}
	logs := &smtpLogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	set, err := backend.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	pass := old.Password(smtpTestUser)
	gw := serveSMTPGateway(t, Options{Config: cfg, Backends: set, TLS: tt.server, Log: log}, logs,
		pass, nuovo.Password(smtpTestUser))

	// inbox returns the recipient's INBOX message count and UIDNEXT on old.
	inbox := func(t *testing.T) (uint32, imap.UID) {
		t.Helper()
		c := old.Dial(t, smtpDoveRcpt)
		sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		c.Logout().Wait()
		return sel.NumMessages, sel.UIDNext
	}
	// fetch returns the bytes of the message with uid in the recipient's INBOX.
	fetch := func(t *testing.T, uid imap.UID) []byte {
		t.Helper()
		c := old.Dial(t, smtpDoveRcpt)
		if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
			t.Fatal(err)
		}
		msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{
			UID:         true,
			BodySection: []*imap.FetchItemBodySection{{Peek: true}},
		}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		c.Logout().Wait()
		if len(msgs) != 1 || len(msgs[0].BodySection) != 1 {
			t.Fatalf("UID FETCH %d: %d messages", uid, len(msgs))
		}
		return msgs[0].BodySection[0].Bytes
	}

	t.Run("submit", func(t *testing.T) {
		cases := []struct {
			name     string
			startTLS bool
			mech     sasl.Client
			file     string
		}{
			{name: "465 PLAIN 8-bit headers", mech: sasl.NewPlainClient("", smtpTestUser, pass), file: "11-oggetto-8bit-header-ripiegati.eml"},
			{name: "587 LOGIN", startTLS: true, mech: sasl.NewLoginClient(smtpTestUser, pass), file: "10-non-pec-posta-inviata.eml"},
			{name: "465 3 MB envelope", mech: sasl.NewPlainClient("", smtpTestUser, pass), file: "14-busta-grande-3mb.eml"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				msg := fixtures[tc.file]
				if msg == nil {
					t.Fatalf("no fixture %s", tc.file)
				}
				n0, _ := inbox(t)
				subs0 := len(old.Submissions())
				c := dialAuthed(t, gw, tt.clientTLS, tc.startTLS, tc.mech)
				if err := c.Mail(smtpTestUser, nil); err != nil {
					t.Fatalf("MAIL: %v", err)
				}
				if err := c.Rcpt(smtpDoveRcpt, nil); err != nil {
					t.Fatalf("RCPT: %v", err)
				}
				w, err := c.Data()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Write(msg); err != nil {
					t.Fatal(err)
				}
				resp, err := w.CloseWithResponse()
				if err != nil {
					t.Fatalf("end of DATA: %v", err)
				}
				// The provider's final reply (go-smtp's default there).
				if want := "2.0.0 OK: queued"; resp.StatusText != want {
					t.Errorf("final reply %q, want %q", resp.StatusText, want)
				}
				if err := c.Quit(); err != nil {
					t.Fatal(err)
				}
				// The provider answers 250 only after saving into the INBOX.
				n1, next := inbox(t)
				if n1 != n0+1 {
					t.Fatalf("INBOX has %d messages, want %d", n1, n0+1)
				}
				if got, want := smtpSum(fetch(t, next-1)), smtpSum(msg); got != want {
					t.Errorf("INBOX message sha256 %s, sent %s", got, want)
				}
				subs := old.Submissions()
				if len(subs) != subs0+1 || subs[subs0].AuthUsername != smtpTestUser || smtpSum(subs[subs0].Data) != smtpSum(msg) {
					t.Errorf("old's submission endpoint did not record the message as sent by %s", smtpTestUser)
				}
				if n := len(nuovo.Submissions()); n != 0 {
					t.Errorf("the new provider got %d submissions while the domain is in state old", n)
				}
			})
		}
	})

	t.Run("transcripts", func(t *testing.T) {
		type step struct{ send, want string }
		cases := []struct {
			name  string
			steps []step
		}{
			{name: "wrong password", steps: []step{
				{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, pass+"x"), "535 5.7.8 Authentication failed"},
			}},
			{name: "new provider's password refused while in state old", steps: []step{
				{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, nuovo.Password(smtpTestUser)), "535 5.7.8 Authentication failed"},
			}},
			{name: "MAIL before AUTH", steps: []step{
				{"MAIL FROM:<" + smtpTestUser + ">", "530 5.7.0 Authentication required"},
			}},
			{name: "RCPT 550 passes through unchanged", steps: []step{
				{"AUTH PLAIN " + smtpPlainIR("", smtpTestUser, pass), "235 2.0.0 Authentication succeeded"},
				{"MAIL FROM:<" + smtpTestUser + ">", "250 2.0.0 Roger, accepting mail from <" + smtpTestUser + ">"},
				{"RCPT TO:<reject-x@pec.nuovo.test>", "550 5.1.1 <reject-x@pec.nuovo.test>: Recipient address rejected: test"},
			}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				subs0 := len(old.Submissions())
				c := dialSMTP(t, gw.smtps, tt.clientTLS)
				c.do("EHLO client.test", smtpEHLOTLS)
				for _, s := range tc.steps {
					c.do(s.send, s.want)
				}
				c.do("QUIT", "221 2.0.0 Bye")
				if n := len(old.Submissions()); n != subs0 {
					t.Errorf("old recorded %d new submissions", n-subs0)
				}
			})
		}
	})

	t.Run("client drops mid-DATA", func(t *testing.T) {
		for _, startTLS := range []bool{false, true} {
			name := "465"
			if startTLS {
				name = "587"
			}
			t.Run(name, func(t *testing.T) {
				n0, _ := inbox(t)
				subs0, aborted0 := len(old.Submissions()), old.AbortedData()
				var c *smtpRaw
				if startTLS {
					c = dialSMTP(t, gw.submission, nil)
					c.do("EHLO client.test", smtpEHLOPlain)
					c.startTLS(tt.clientTLS)
				} else {
					c = dialSMTP(t, gw.smtps, tt.clientTLS)
				}
				c.do("EHLO client.test", smtpEHLOTLS)
				c.login(smtpTestUser, pass)
				c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
				c.do("RCPT TO:<"+smtpDoveRcpt+">", "250 2.0.0 I'll make sure <"+smtpDoveRcpt+"> gets this")
				c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
				msg := fixtures["14-busta-grande-3mb.eml"]
				c.writeData(msg[:len(msg)/2], false)
				c.conn.Close()
				// The gateway always opens DATA upstream before reading the
				// client's message, so old sees one transfer end without
				// the final dot.
				old.WaitAbortedData(t, aborted0+1)
				if n := len(old.Submissions()); n != subs0 {
					t.Fatalf("old accepted %d messages from a client that dropped mid-DATA", n-subs0)
				}
				if n1, _ := inbox(t); n1 != n0 {
					t.Fatalf("INBOX has %d messages, had %d", n1, n0)
				}
			})
		}
	})
}
