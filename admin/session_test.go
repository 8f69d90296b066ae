package admin

import (
	"net/http/httptest"
	"testing"
	"time"
)

// TestLoginThrottle: failures count per address within the window; the
// process-wide backstop refuses everybody while it is full; the window
// frees both; memory holds no address whose failures left the window.
func TestLoginThrottle(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	th := newLoginThrottle(3, 5, time.Minute)
	for range 3 {
		if !th.allow("10.0.0.1", now) {
			t.Fatal("refused before 3 failures")
		}
		th.failed("10.0.0.1", now)
	}
	if th.allow("10.0.0.1", now) {
		t.Error("10.0.0.1 allowed after 3 failures within the window")
	}
	if !th.allow("10.0.0.2", now) {
		t.Error("10.0.0.2 refused for 10.0.0.1's failures")
	}
	th.failed("10.0.0.2", now.Add(10*time.Second))
	th.failed("10.0.0.3", now.Add(20*time.Second))
	if th.allow("10.0.0.4", now.Add(30*time.Second)) {
		t.Error("10.0.0.4 allowed with 5 failures in the process within the window (the backstop)")
	}
	later := now.Add(time.Minute + time.Second) // 10.0.0.1's failures have left the window
	if !th.allow("10.0.0.1", later) || !th.allow("10.0.0.4", later) {
		t.Error("refused after the failures left the window")
	}
	th.failed("10.0.0.5", now.Add(3*time.Minute))
	if len(th.fails) != 1 || len(th.all) != 1 {
		t.Errorf("after the window the throttle keeps %d addresses, %d failures; want 1, 1", len(th.fails), len(th.all))
	}
}

func TestThrottleAddr(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:5555":             "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:1":   "2001:db8:1:2::/64",
		"[::1]:80":                   "::/64",
		"[::ffff:192.0.2.7]:80":      "192.0.2.7",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		if got := throttleAddr(r); got != want {
			t.Errorf("throttleAddr(%s) = %q, want %q", remote, got, want)
		}
	}
}

func TestLocalHost(t *testing.T) {
	for _, tc := range []struct {
		host, hostname string
		want           bool
	}{
		{"127.0.0.1:8080", "", true},
		{"[::1]:8080", "", true},
		{"localhost", "", true},
		{"app.localhost:8080", "", true},
		{"pec.ordine.example:8080", "pec.ordine.example", true},
		{"PEC.Ordine.Example.", "pec.ordine.example", true},
		{"evil.example:8080", "pec.ordine.example", false},
		{"pec.ordine.example.evil.example", "pec.ordine.example", false},
		{"", "", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = tc.host
		if got := localHost(r, tc.hostname); got != tc.want {
			t.Errorf("localHost(Host %q, hostname %q) = %v, want %v", tc.host, tc.hostname, got, tc.want)
		}
	}
}
