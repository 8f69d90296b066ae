package proxy

import (
	"strings"
	gosync "sync"
	"time"
)

// AuthLimiter throttles failed logins, per client IP and per account,
// shared by IMAP and SMTP. A throttled attempt is refused without asking
// the provider: PEC providers lock an account after a few wrong passwords,
// and a member's legal mailbox must not be locked because a phone keeps an
// old password.
//
// The zero value is not usable; use NewAuthLimiter.
type AuthLimiter struct {
	// PerIP and PerUser are the failures allowed in Window before further
	// attempts are refused until the window has passed since the oldest.
	PerIP, PerUser int
	Window         time.Duration
	now            func() time.Time

	mu    gosync.Mutex
	fails map[string][]time.Time
}

// NewAuthLimiter returns a limiter allowing 10 failures per IP and 5 per
// account in 5 minutes.
func NewAuthLimiter() *AuthLimiter {
	return &AuthLimiter{PerIP: 10, PerUser: 5, Window: 5 * time.Minute, now: time.Now, fails: make(map[string][]time.Time)}
}

func ipKey(ip string) string     { return "ip " + ip }
func userKey(user string) string { return "user " + strings.ToLower(user) }

// Allowed reports whether a login attempt from ip for user may proceed.
func (l *AuthLimiter) Allowed(ip, user string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recent(ipKey(ip))) < l.PerIP && len(l.recent(userKey(user))) < l.PerUser
}

// Failed records a refused login.
func (l *AuthLimiter) Failed(ip, user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()
	for _, k := range []string{ipKey(ip), userKey(user)} {
		l.fails[k] = append(l.recent(k), t)
	}
	if len(l.fails) > 100000 {
		l.prune()
	}
}

// Succeeded forgets the account's failures (not the IP's).
func (l *AuthLimiter) Succeeded(user string) {
	l.mu.Lock()
	delete(l.fails, userKey(user))
	l.mu.Unlock()
}

// recent drops expired entries of k and returns the rest. Callers hold mu.
func (l *AuthLimiter) recent(k string) []time.Time {
	list := l.fails[k]
	cut := l.now().Add(-l.Window)
	i := 0
	for i < len(list) && list[i].Before(cut) {
		i++
	}
	if i == len(list) {
		delete(l.fails, k)
		return nil
	}
	list = list[i:]
	l.fails[k] = list
	return list
}

func (l *AuthLimiter) prune() {
	for k := range l.fails {
		l.recent(k)
	}
}
