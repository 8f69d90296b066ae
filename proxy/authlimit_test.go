package proxy

import (
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

func TestAuthLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewAuthLimiter()
	l.now = func() time.Time { return now }
	for i := 0; i < 5; i++ {
		if !l.Allowed("10.0.0.1", "a@x") {
			t.Fatalf("refused after %d failures, want 5 allowed", i)
		}
		l.Failed("10.0.0.1", "A@x")
	}
	if l.Allowed("10.0.0.2", "a@x") {
		t.Fatal("sixth attempt for the account allowed (from another IP)")
	}
	if !l.Allowed("10.0.0.1", "b@x") {
		t.Fatal("another account from the same IP refused after 5 failures (IP limit is 10)")
	}
	for i := 0; i < 5; i++ {
		l.Failed("10.0.0.1", "b@x")
	}
	if l.Allowed("10.0.0.1", "c@x") {
		t.Fatal("IP with 10 failures still allowed")
	}
	now = now.Add(5*time.Minute + time.Second)
	if !l.Allowed("10.0.0.1", "a@x") {
		t.Fatal("still refused after the window")
	}
	l.Failed("10.0.0.3", "d@x")
	l.Succeeded("D@x")
	if got := len(l.fails[userKey("d@x")]); got != 0 {
		t.Fatalf("success kept %d failures of the account", got)
	}
}

func TestIMAPDovecotThrottlesWrongPasswords(t *testing.T) {
	old, gw := dovecotGateway(t)
	c := gw.dial(t, nil)
	for i := 0; i < 5; i++ {
		wantCode(t, c.Login(testUser, "wrong").Wait(), imap.ResponseCodeAuthenticationFailed)
	}
	// Even the right password is refused now, without reaching Dovecot.
	err := c.Login(testUser, old.Password(testUser)).Wait()
	wantCode(t, err, imap.ResponseCodeAuthenticationFailed)
	if err.(*imap.Error).Text != errThrottled.Text {
		t.Fatalf("got %q, want the throttling message", err.(*imap.Error).Text)
	}
	// Other members are not affected.
	gw.login(t, "mario.rossi@pec.ordine.example", old.Password("mario.rossi@pec.ordine.example"), nil)
}
