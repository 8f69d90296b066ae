package admin

// Operator sessions of the status page (issue 5, item 2).
//
// Implementation notes:
//
//   - The page shows member addresses and can flip a domain, so it needs
//     the admin token like the API. A browser cannot send a bearer token by
//     itself: GET / without a session answers a form that asks for the
//     token, and POST /login with the right one sets a session cookie.
//   - The cookie is "v1.EXPIRY.ID.MAC": EXPIRY a Unix time, ID 16 random
//     bytes, MAC the HMAC-SHA256 of the rest under a key drawn at random
//     when the handler is built (a restart logs everybody out). HttpOnly,
//     SameSite=Strict, Path=/, Secure when the request came over TLS;
//     sessionTTL long. Logging out forgets the ID until its expiry.
//   - Every state-changing POST made with the cookie carries a CSRF token,
//     the HMAC of the session's ID under the same key, in a hidden form
//     field; and a POST whose Origin header names another host is refused.
//     A request with the bearer token ("Authorization: Bearer") passes
//     without cookie and CSRF token (a browser never adds that header on its
//     own).
//   - Wrong tokens are limited to loginFailures per loginWindow per
//     process; the others are answered 429 without being compared.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	gosync "sync"
	"time"
)

const (
	opCookie      = "pecgate_admin"
	sessionTTL    = 12 * time.Hour
	loginFailures = 10
	loginWindow   = time.Minute
)

// opSessions signs and checks operator sessions.
type opSessions struct {
	key [32]byte
	now func() time.Time

	mu      gosync.Mutex
	revoked map[string]time.Time // session ID -> its expiry
	fails   []time.Time          // wrong tokens within loginWindow
}

func newOpSessions() *opSessions {
	o := &opSessions{now: time.Now, revoked: map[string]time.Time{}}
	if _, err := rand.Read(o.key[:]); err != nil {
		panic(fmt.Sprintf("admin: no randomness for the session key: %v", err))
	}
	return o
}

func (o *opSessions) mac(parts ...string) string {
	m := hmac.New(sha256.New, o.key[:])
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// issue returns a new session cookie's value.
func (o *opSessions) issue() string {
	var id [16]byte
	rand.Read(id[:])
	exp := strconv.FormatInt(o.now().Add(sessionTTL).Unix(), 10)
	sid := hex.EncodeToString(id[:])
	return "v1." + exp + "." + sid + "." + o.mac("session", exp, sid)
}

// check returns the session ID of a valid cookie value, or "".
func (o *opSessions) check(v string) string {
	f := strings.Split(v, ".")
	if len(f) != 4 || f[0] != "v1" {
		return ""
	}
	if !hmac.Equal([]byte(f[3]), []byte(o.mac("session", f[1], f[2]))) {
		return ""
	}
	exp, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || o.now().Unix() >= exp {
		return ""
	}
	o.mu.Lock()
	_, gone := o.revoked[f[2]]
	o.mu.Unlock()
	if gone {
		return ""
	}
	return f[2]
}

// revoke forgets the session of cookie value v.
func (o *opSessions) revoke(v string) {
	sid := o.check(v)
	if sid == "" {
		return
	}
	exp, _ := strconv.ParseInt(strings.Split(v, ".")[1], 10, 64)
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	for id, e := range o.revoked {
		if now.After(e) {
			delete(o.revoked, id)
		}
	}
	o.revoked[sid] = time.Unix(exp, 0)
}

// csrf returns the CSRF token of session sid.
func (o *opSessions) csrf(sid string) string { return o.mac("csrf", sid) }

// allowLogin reports whether another token may be compared now.
func (o *opSessions) allowLogin() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	cut := o.now().Add(-loginWindow)
	i := 0
	for i < len(o.fails) && o.fails[i].Before(cut) {
		i++
	}
	o.fails = o.fails[i:]
	return len(o.fails) < loginFailures
}

func (o *opSessions) failed() {
	o.mu.Lock()
	o.fails = append(o.fails, o.now())
	o.mu.Unlock()
}

// opAuth is how a page request is authorised.
type opAuth struct {
	sid    string // the session's ID; "" with the bearer token
	bearer bool
}

func (a opAuth) ok() bool { return a.bearer || a.sid != "" }

// tokenOK compares a token with the admin token in constant time.
func (s *server) tokenOK(token string) bool {
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return s.Token != "" && subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

// opAuthOf returns how r is authorised: the bearer token, or a session
// cookie; neither gives !ok().
func (p *statusPage) opAuthOf(r *http.Request) opAuth {
	if scheme, token, found := strings.Cut(r.Header.Get("Authorization"), " "); found && strings.EqualFold(scheme, "Bearer") && p.s.tokenOK(token) {
		return opAuth{bearer: true}
	}
	if c, err := r.Cookie(opCookie); err == nil {
		return opAuth{sid: p.sessions.check(c.Value)}
	}
	return opAuth{}
}

// opSameOrigin reports whether a POST's Origin header, when present, names
// the host it was sent to.
func opSameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

func setOpCookie(w http.ResponseWriter, r *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: opCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
}

// opSafeNext returns next when it is a path on this host, else "/".
func opSafeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/"
	}
	return next
}
