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
//   - Wrong tokens (on the form or in an Authorization header) are
//     limited to loginFailures per loginWindow per client address
//     (throttleAddr), and loginFailuresAll per loginWindow for the whole
//     process as a backstop against guessing from many addresses; the
//     others are answered 429 without being compared. Everybody on the
//     gateway's own machine shares the loopback address: there, the API
//     (/api/, what pecgate status and curl use) still takes the token
//     while the page is throttled.
//   - Unless admin.allow_non_loopback, the page answers only requests that
//     name the gateway by IP address, localhost or [server] hostname
//     (localHost): against DNS rebinding, where an attacker's site re-points
//     its name at 127.0.0.1 and so becomes "same origin" with the page.
//   - Signing, CSRF tokens and revocation are session.go's, shared with the
//     member page; so are the throttle and localHost, used here only.

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	opCookie         = "pecgate_admin"
	sessionTTL       = 12 * time.Hour
	loginFailures    = 10  // wrong tokens per client address per loginWindow
	loginFailuresAll = 100 // wrong tokens per process per loginWindow
	loginWindow      = time.Minute
)

// opSessions signs and checks operator sessions.
type opSessions struct {
	*sessionKeys
	throttle *loginThrottle
}

func newOpSessions() *opSessions {
	return &opSessions{sessionKeys: newSessionKeys(), throttle: newLoginThrottle(loginFailures, loginFailuresAll, loginWindow)}
}

// issue returns a new session cookie's value.
func (o *opSessions) issue() string {
	exp := strconv.FormatInt(o.now().Add(sessionTTL).Unix(), 10)
	sid := o.newID()
	return "v1." + exp + "." + sid + "." + o.mac64("session", exp, sid)
}

// check returns the session ID of a valid cookie value, or "".
func (o *opSessions) check(v string) string {
	sid, _ := o.parse(v)
	return sid
}

// parse returns the session ID and the expiry of a valid cookie value, or "".
func (o *opSessions) parse(v string) (string, time.Time) {
	f := strings.Split(v, ".")
	if len(f) != 4 || f[0] != "v1" {
		return "", time.Time{}
	}
	if !hmac.Equal([]byte(f[3]), []byte(o.mac64("session", f[1], f[2]))) {
		return "", time.Time{}
	}
	exp, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || o.now().Unix() >= exp || o.isRevoked(f[2]) {
		return "", time.Time{}
	}
	return f[2], time.Unix(exp, 0)
}

// revokeCookie forgets the session of cookie value v.
func (o *opSessions) revokeCookie(v string) {
	if sid, exp := o.parse(v); sid != "" {
		o.revoke(sid, exp)
	}
}

// allowLogin reports whether another token from r's address may be
// compared now.
func (o *opSessions) allowLogin(r *http.Request) bool {
	return o.throttle.allow(throttleAddr(r), o.now())
}

// failed counts a wrong token from r's address.
func (o *opSessions) failed(r *http.Request) {
	o.throttle.failed(throttleAddr(r), o.now())
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
// cookie; neither gives !ok(). A wrong bearer token counts as a failed
// login of r's address, and a throttled address's bearer token is not
// compared, as on the form: else the header would be a way around the
// throttle.
func (p *statusPage) opAuthOf(r *http.Request) opAuth { return p.authOf(r, true) }

// authOf is opAuthOf; count false does not count a wrong bearer token
// (for a second look at a request already counted).
func (p *statusPage) authOf(r *http.Request, count bool) opAuth {
	if scheme, token, found := strings.Cut(r.Header.Get("Authorization"), " "); found && strings.EqualFold(scheme, "Bearer") {
		switch {
		case !p.sessions.allowLogin(r):
		case p.s.tokenOK(token):
			return opAuth{bearer: true}
		case count:
			p.sessions.failed(r)
			p.s.Log.Warn("admin page: wrong bearer token", "remote", r.RemoteAddr)
		}
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

// opSafeNext returns next when it is a path on this host, else "/". A
// browser drops tabs and newlines from a URL, so "/\t/evil.example" would
// be "//evil.example", another host: any control character is refused.
func opSafeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.ContainsRune(next, '\\') ||
		strings.IndexFunc(next, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
		return "/"
	}
	if u, err := url.Parse(next); err != nil || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return next
}
