package admin

// What the status page's operator sessions (page_session.go) and the
// member page's sessions (member.go) share, so that signing, CSRF tokens,
// revocation and login throttling are written once. Each page keeps its
// own cookie format and its own key: a member cookie is never an operator
// cookie.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"strings"
	gosync "sync"
	"time"
)

// sessionKeys signs a page's session cookies and CSRF tokens under a key
// drawn at random when it is made (a restart logs everybody out), and
// remembers the session IDs revoked before their expiry.
type sessionKeys struct {
	key [32]byte
	now func() time.Time

	mu      gosync.Mutex
	revoked map[string]time.Time // session ID -> its expiry
}

func newSessionKeys() *sessionKeys {
	k := &sessionKeys{now: time.Now, revoked: map[string]time.Time{}}
	rand.Read(k.key[:]) // never fails (crypto/rand, Go 1.24+)
	return k
}

// mac returns the HMAC-SHA256 of parts, each ended by a NUL byte so that
// no two lists of parts sign alike.
func (k *sessionKeys) mac(parts ...string) []byte {
	h := hmac.New(sha256.New, k.key[:])
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return h.Sum(nil)
}

// mac64 is mac in unpadded base64url.
func (k *sessionKeys) mac64(parts ...string) string {
	return base64.RawURLEncoding.EncodeToString(k.mac(parts...))
}

// newID returns a new session ID: 16 random bytes in hex.
func (k *sessionKeys) newID() string {
	var id [16]byte
	rand.Read(id[:])
	return hex.EncodeToString(id[:])
}

// csrf returns the CSRF token of session id.
func (k *sessionKeys) csrf(id string) string { return k.mac64("csrf", id) }

// csrfOK reports, in constant time, whether got is session id's CSRF
// token; an empty one never is.
func (k *sessionKeys) csrfOK(id, got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(k.csrf(id))) == 1
}

// revoke ends session id, which would expire at exp, before its expiry;
// the IDs whose expiry has passed are forgotten.
func (k *sessionKeys) revoke(id string, exp time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	for i, e := range k.revoked {
		if !now.Before(e) {
			delete(k.revoked, i)
		}
	}
	k.revoked[id] = exp
}

// isRevoked reports whether session id was revoked.
func (k *sessionKeys) isRevoked(id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, gone := k.revoked[id]
	return gone
}

// loginThrottle counts failed logins per client address within a window:
// an address with perAddr failures in the window is refused until the
// oldest one leaves it, and, as a backstop against guessing from many
// addresses at once, every address is refused while the whole process
// has global failures in the window. It keeps at most global failures,
// so its memory is bounded whatever the callers send.
type loginThrottle struct {
	perAddr, global int
	window          time.Duration

	mu    gosync.Mutex
	fails map[string][]time.Time // address -> its failures within window, oldest first
	all   []time.Time            // every failure within window, oldest first
}

func newLoginThrottle(perAddr, global int, window time.Duration) *loginThrottle {
	return &loginThrottle{perAddr: perAddr, global: global, window: window, fails: map[string][]time.Time{}}
}

// prune drops the failures older than the window; t.mu is held.
func (t *loginThrottle) prune(now time.Time) {
	cut := now.Add(-t.window)
	t.all = dropBefore(t.all, cut)
	for a, f := range t.fails {
		if f = dropBefore(f, cut); len(f) == 0 {
			delete(t.fails, a)
		} else {
			t.fails[a] = f
		}
	}
}

func dropBefore(ts []time.Time, cut time.Time) []time.Time {
	i := 0
	for i < len(ts) && !ts[i].After(cut) {
		i++
	}
	return ts[i:]
}

// allow reports whether a login from addr may be tried at now.
func (t *loginThrottle) allow(addr string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.prune(now)
	return len(t.all) < t.global && len(t.fails[addr]) < t.perAddr
}

// failed counts a failed login from addr at now.
func (t *loginThrottle) failed(addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.prune(now)
	t.all = append(t.all, now)
	t.fails[addr] = append(t.fails[addr], now)
}

// throttleAddr is the address r's failed logins count against: its
// remote IP (never a forwarding header, which anyone can send), an IPv6
// one reduced to its /64, the block one machine usually has.
func throttleAddr(r *http.Request) string {
	addr := clientIP(r)
	ip := net.ParseIP(addr)
	if ip == nil {
		return addr
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// clientIP is the request's remote IP, for the limiter. Forwarding headers
// are not trusted: anyone could send them.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// localHost reports whether the Host header of r names the machine
// directly: an IP address, localhost or a name under .localhost, or
// hostname (the gateway's [server] hostname; "" for none). A page on a
// loopback listener refuses other names: a web site whose name the
// attacker re-points at 127.0.0.1 (DNS rebinding) would otherwise be
// "same origin" with it in the operator's browser.
func localHost(r *http.Request, hostname string) bool {
	h := r.Host
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
	switch {
	case h == "":
		return false
	case net.ParseIP(h) != nil, h == "localhost", strings.HasSuffix(h, ".localhost"):
		return true
	}
	return hostname != "" && h == strings.TrimSuffix(strings.ToLower(hostname), ".")
}
