package admin

// The member self-service page at /me (issue 5, item 3).
//
// A member logs in with their PEC address and password, checked by
// Options.MemberAuth exactly as an IMAP login through the gateway (same
// throttling, same providers), and sees their own mailbox: the phase of
// the move, messages copied out of the total, the ETA, the folders with
// what was copied into each, and the problems in plain Italian and
// English with what to do. Where the new provider uses vault credentials
// (Options.Credentials), the member can set them; they are stored only
// after the new provider accepted them in a real login.
//
// Routes:
//
//	GET  /me             the login form, or the member's page when logged in
//	POST /me/login       address, password, csrf -> 303 to /me, or the form with why not
//	POST /me/logout      csrf -> 303 to /me
//	POST /me/credential  username, password, csrf -> 303 to /me, which says they were saved; or the page with why not
//
// Implementation notes:
//
//   - The session is a cookie, not server state: "pecgate_member" holds
//     the expiry, a random session id, flags and the address, signed with
//     HMAC-SHA256 under a key drawn at random when the handler is made, so
//     a restart logs everyone out. It is HttpOnly, SameSite=Strict, Path
//     /me, Secure when the request came over TLS, and expires after
//     memberSessionTTL from the login (not sliding). A visitor who is not
//     logged in gets a session with no address, so that the login form
//     too carries a CSRF token; a login issues a new session id (no
//     session fixation). Logging out revokes the id until it would have
//     expired anyway.
//   - Every POST carries a CSRF token, HMAC of the session id under the
//     same key, compared in constant time. Signing, CSRF tokens and
//     revocation are session.go's, shared with the status page (each page
//     with its own key).
//   - The address shown and read is the session's, never one from the
//     URL or a form: no request can name another member.
//   - Passwords travel only over TLS, or over loopback (the admin
//     listener is plain HTTP): a clear-text request from another machine
//     gets a page that says to use https, and no form.
//   - Every answer is HTML that works without JavaScript; every text is
//     there in Italian and in English. Errors say what to do, never which
//     of address or password was wrong.

import (
	"bytes"
	"context"
	"crypto/hmac"
	_ "embed"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/mutf7"
	"github.com/pecgate/pecgate/store"
)

// MemberAuth checks a member's login on the member page.
type MemberAuth interface {
	// CheckLogin authenticates user with password, ip being the client's
	// address, as an IMAP login through the gateway would, counting
	// failures in the limiter the IMAP and SMTP servers share. It returns
	// nil, or an error wrapping one of ErrMemberThrottled,
	// ErrMemberRefused, ErrMemberUnavailable or ErrMemberNewCredential
	// (the member is logged in then); any other error is an internal
	// failure.
	CheckLogin(ctx context.Context, ip, user, password string) error
}

// CredentialSetter sets a member's vault credentials for their new
// provider.
type CredentialSetter interface {
	// NewProviderUsesVault reports whether user's domain has a new
	// provider with auth = "vault".
	NewProviderUsesVault(user string) bool
	// SetCredential logs in to user's new provider as username with
	// password and, only when that provider accepts them, stores them in
	// the vault. It returns nil, or an error wrapping ErrMemberRefused (the
	// provider refused them; nothing stored), ErrMemberThrottled (too many
	// refusals lately; nothing tried) or ErrMemberUnavailable; any other
	// error is an internal failure.
	SetCredential(ctx context.Context, ip, user, username, password string) error
}

// Errors MemberAuth and CredentialSetter implementations return (wrapped).
var (
	ErrMemberThrottled     = errors.New("admin: too many failed attempts; wait and retry")
	ErrMemberRefused       = errors.New("admin: wrong address or password")
	ErrMemberUnavailable   = errors.New("admin: the mail provider is unavailable")
	ErrMemberNewCredential = errors.New("admin: password right, but the new provider's vault credentials are missing or refused")
)

// memberSessionTTL is how long a member session lasts from the login.
const memberSessionTTL = 30 * time.Minute

// memberCookie is the session cookie's name.
const memberCookie = "pecgate_member"

// maxMemberForm bounds a member page form.
const maxMemberForm = 16 << 10

//go:embed member.html
var memberHTML string

var memberTemplate = template.Must(template.New("member").Parse(memberHTML))

// memberPage serves /me.
type memberPage struct {
	s *server
	*sessionKeys
}

func newMemberPage(s *server) *memberPage {
	return &memberPage{s: s, sessionKeys: newSessionKeys()}
}

// routeMember registers the member page on mux, when Options.MemberAuth
// is set.
func (s *server) routeMember(mux *http.ServeMux) {
	if s.MemberAuth == nil {
		return
	}
	newMemberPage(s).routes(mux)
}

func (m *memberPage) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /me", m.getMe)
	mux.HandleFunc("POST /me/login", m.postLogin)
	mux.HandleFunc("POST /me/logout", m.postLogout)
	mux.HandleFunc("POST /me/credential", m.postCredential)
	mux.HandleFunc("/me", m.notAllowed("GET"))
	for _, p := range []string{"/me/login", "/me/logout", "/me/credential"} {
		mux.HandleFunc(p, m.notAllowed("POST"))
	}
	mux.HandleFunc("/me/", m.notFound)
}

// NewMember returns a handler serving only the member page (/me and
// below; everything else 404), for a listener of its own. It panics when
// opts.Router or opts.MemberAuth is nil.
func NewMember(opts Options) http.Handler {
	if opts.MemberAuth == nil {
		panic("admin: NewMember without MemberAuth")
	}
	if opts.Router == nil {
		panic("admin: nil Router")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &server{Options: opts, rates: newRates()}
	mux := http.NewServeMux()
	m := newMemberPage(s)
	m.routes(mux)
	mux.Handle("GET /{$}", http.RedirectHandler("/me", http.StatusSeeOther))
	mux.HandleFunc("/", m.notFound)
	return mux
}

// session is a decoded session cookie.
type session struct {
	exp   time.Time
	id    string // 32 hex digits
	flags byte
	user  string // "" before the login
}

// Session flags.
const (
	flagNeedsCredential = 1 // the login found the new provider's vault credentials missing or refused
	// flagSaved says the credentials were just saved: the next GET /me
	// says so once. The form's answer is a redirect (post/redirect/get),
	// so that reloading the page does not send the credentials again.
	flagSaved = 2
)

// encode returns the cookie value of ses: base64url(payload).base64url(mac).
func (m *memberPage) encode(ses *session) string {
	payload := binary.BigEndian.AppendUint64(nil, uint64(ses.exp.Unix()))
	payload = append(payload, ses.id...)
	payload = append(payload, ses.flags)
	payload = append(payload, ses.user...)
	b64 := base64.RawURLEncoding.EncodeToString(payload)
	return b64 + "." + m.mac64("session", b64)
}

// session returns r's valid session: signed by this process, not
// expired, not revoked; nil otherwise.
func (m *memberPage) session(r *http.Request) *session {
	c, err := r.Cookie(memberCookie)
	if err != nil {
		return nil
	}
	b64, sig, ok := strings.Cut(c.Value, ".")
	if !ok {
		return nil
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, m.mac("session", b64)) {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(payload) < 8+32+1 {
		return nil
	}
	ses := &session{
		exp:   time.Unix(int64(binary.BigEndian.Uint64(payload)), 0),
		id:    string(payload[8:40]),
		flags: payload[40],
		user:  string(payload[41:]),
	}
	if !m.now().Before(ses.exp) {
		return nil
	}
	if m.isRevoked(ses.id) {
		return nil
	}
	return ses
}

// newSession returns a fresh session of user ("" before the login).
func (m *memberPage) newSession(user string) *session {
	return &session{exp: m.now().Add(memberSessionTTL).Truncate(time.Second), id: m.newID(), user: user}
}

// setCookie sends ses as the session cookie.
func (m *memberPage) setCookie(w http.ResponseWriter, r *http.Request, ses *session) {
	http.SetCookie(w, &http.Cookie{
		Name: memberCookie, Value: m.encode(ses), Path: "/me",
		MaxAge: max(int(ses.exp.Sub(m.now()).Seconds()), 1), Expires: ses.exp,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
}

func (m *memberPage) clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: memberCookie, Value: "", Path: "/me", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

// checkCSRF reports whether the form's token is ses's.
func (m *memberPage) checkCSRF(r *http.Request, ses *session) bool {
	return m.csrfOK(ses.id, r.PostFormValue("csrf"))
}

// end revokes ses before its expiry.
func (m *memberPage) end(ses *session) { m.revoke(ses.id, ses.exp) }

// text is a sentence in both languages.
type text struct{ IT, EN string }

// flash is a message shown at the top of a page.
type flash struct {
	OK bool // a success; else a problem
	// Credential is set on the outcome of the credential form: a problem
	// then shows the form open, to try again.
	Credential bool
	text
}

// memberView is what member.html renders.
type memberView struct {
	CSRF     string
	Flash    *flash
	Address  string // the login form's address, kept after a refusal
	LoggedIn bool
	User     string
	// NoStartLink drops the link back to /me from a page without a form:
	// the clear-text refusal, where that link leads back to it.
	NoStartLink bool

	Phase    text
	Safe     bool // the old mailbox is only read: say so
	Progress *UserProgress
	Counted  bool // totals known
	Percent  int
	ETA      *text
	Updated  string
	Folders  []folderView
	Problems []problemView

	NeedsCredential bool // the login found the vault's credentials missing or refused
	Vault           bool // show the credential form
	// CredentialOpen shows the credential form open: the credentials are
	// missing or were refused; else it is folded under a summary, so that
	// a member whose copy runs does not think there is more to do.
	CredentialOpen bool
}

type folderView struct {
	Name   string
	Role   *text
	Copied int64
	Mapped bool // the folder has a UID map: Copied is known
	// Total is the folder's messages that belong in new, as the last copy
	// pass counted them (Counted); Done the copied ones it counted.
	Total, Done int64
	Counted     bool
}

type problemView struct {
	What, Do text
	Count    int
	Detail   string // the last one's technical text
}

// render writes the page of v with status.
func (m *memberPage) render(w http.ResponseWriter, r *http.Request, status int, v *memberView) {
	var buf bytes.Buffer
	if err := memberTemplate.Execute(&buf, v); err != nil {
		m.s.Log.Error("render the member page", "err", err)
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString("<!doctype html><title>Errore / Error</title><p>Errore interno: riprovi più tardi. / Internal error: please retry later.</p>")
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// loginForm renders the login form for the anonymous session ses (a
// fresh one when nil), with f.
func (m *memberPage) loginForm(w http.ResponseWriter, r *http.Request, status int, ses *session, address string, f *flash) {
	if ses == nil || ses.user != "" {
		ses = m.newSession("")
	}
	m.setCookie(w, r, ses)
	m.render(w, r, status, &memberView{CSRF: m.csrf(ses.id), Flash: f, Address: address})
}

// stale answers a POST without a valid session or CSRF token: 403 and
// the page of the session the browser has, which stays as it was (a
// forged request logs nobody out).
func (m *memberPage) stale(w http.ResponseWriter, r *http.Request, ses *session) {
	if ses != nil && ses.user != "" {
		m.memberPageFor(w, r, http.StatusForbidden, ses, msgExpired)
		return
	}
	m.loginForm(w, r, http.StatusForbidden, ses, "", msgExpired)
}

func (m *memberPage) notAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		m.render(w, r, http.StatusMethodNotAllowed, &memberView{Flash: &flash{text: text{
			"Operazione non consentita. Torni alla pagina iniziale.", "Method not allowed. Go back to the start page."}}})
	}
}

func (m *memberPage) notFound(w http.ResponseWriter, r *http.Request) {
	m.render(w, r, http.StatusNotFound, &memberView{Flash: &flash{text: text{
		"Pagina inesistente.", "No such page."}}})
}

var (
	msgExpired = &flash{text: text{
		"La sessione è scaduta o la pagina era vecchia: ripeta l'operazione.",
		"Your session expired or the page was stale: please do it again."}}
	msgThrottled = &flash{text: text{
		"Troppi tentativi non riusciti. Per proteggere la sua casella attenda almeno 5 minuti, poi riprovi con la password giusta.",
		"Too many failed attempts. To protect your mailbox, wait at least 5 minutes, then try again with the right password."}}
	msgRefused = &flash{text: text{
		"Indirizzo o password non corretti. Usi l'indirizzo PEC completo e la password con cui legge la posta.",
		"Wrong address or password. Use your full PEC address and the password you read your mail with."}}
	msgUnavailable = &flash{text: text{
		"Il gestore della posta non risponde in questo momento. Riprovi tra qualche minuto.",
		"The mail provider does not answer right now. Please try again in a few minutes."}}
	msgInternal = &flash{text: text{
		"Si è verificato un errore interno. Riprovi più tardi; se si ripete, avvisi l'assistenza del suo Ordine.",
		"An internal error occurred. Please try again later; if it happens again, tell your Order's IT support."}}
)

// insecure reports whether r came in clear text from another machine:
// then no password may be typed into the page (the admin listener is
// plain HTTP; a TLS-terminating proxy on the same machine is fine).
func insecure(r *http.Request) bool {
	if r.TLS != nil {
		return false
	}
	ip := net.ParseIP(clientIP(r))
	return ip == nil || !ip.IsLoopback()
}

var msgSaved = &flash{OK: true, Credential: true, text: text{
	"Il nuovo gestore ha accettato le credenziali, che sono state salvate in modo cifrato. Non deve fare altro.",
	"The new provider accepted the credentials; they are stored encrypted. You need do nothing else."}}

var msgInsecure = &flash{text: text{
	"Questa pagina va aperta solo con un collegamento protetto (https). Usi l'indirizzo che le ha dato l'assistenza del suo Ordine.",
	"This page must be opened over a secure connection (https) only. Use the address your Order's IT support gave you."}}

func (m *memberPage) getMe(w http.ResponseWriter, r *http.Request) {
	if insecure(r) {
		m.render(w, r, http.StatusForbidden, &memberView{Flash: msgInsecure, NoStartLink: true})
		return
	}
	ses := m.session(r)
	if ses == nil || ses.user == "" {
		m.loginForm(w, r, http.StatusOK, ses, "", nil)
		return
	}
	var f *flash
	if ses.flags&flagSaved != 0 {
		f = msgSaved
		ses.flags &^= flagSaved
		m.setCookie(w, r, ses)
	}
	m.memberPageFor(w, r, http.StatusOK, ses, f)
}

// readForm parses a bounded POST form; false when it is not one.
func readForm(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxMemberForm)
	return r.ParseForm() == nil
}

func (m *memberPage) postLogin(w http.ResponseWriter, r *http.Request) {
	if insecure(r) {
		m.render(w, r, http.StatusForbidden, &memberView{Flash: msgInsecure, NoStartLink: true})
		return
	}
	ses := m.session(r)
	if !readForm(w, r) || ses == nil || !m.checkCSRF(r, ses) {
		m.stale(w, r, ses)
		return
	}
	address := strings.TrimSpace(r.PostFormValue("address"))
	password := r.PostFormValue("password")
	if address == "" || password == "" || len(address) > 320 || strings.ContainsAny(address, "\x00\r\n") {
		m.loginForm(w, r, http.StatusBadRequest, ses, address, &flash{text: text{
			"Scriva l'indirizzo PEC completo e la password.", "Enter your full PEC address and your password."}})
		return
	}
	ip := clientIP(r)
	err := m.s.MemberAuth.CheckLogin(r.Context(), ip, address, password)
	var flags byte
	switch {
	case err == nil:
	case errors.Is(err, ErrMemberNewCredential):
		flags = flagNeedsCredential
	case errors.Is(err, ErrMemberThrottled):
		m.s.Log.Warn("member login refused", "user", address, "reason", "throttled", "remote", ip)
		m.loginForm(w, r, http.StatusTooManyRequests, ses, address, msgThrottled)
		return
	case errors.Is(err, ErrMemberRefused):
		m.s.Log.Info("member login refused", "user", address, "reason", "refused", "remote", ip)
		m.loginForm(w, r, http.StatusUnauthorized, ses, address, msgRefused)
		return
	case errors.Is(err, ErrMemberUnavailable):
		m.s.Log.Warn("member login failed", "user", address, "reason", "provider unavailable", "remote", ip, "err", err)
		m.loginForm(w, r, http.StatusServiceUnavailable, ses, address, msgUnavailable)
		return
	default:
		m.s.Log.Error("member login failed", "user", address, "remote", ip, "err", err)
		m.loginForm(w, r, http.StatusInternalServerError, ses, address, msgInternal)
		return
	}
	m.end(ses)
	nses := m.newSession(store.CanonicalUser(address))
	nses.flags = flags
	m.setCookie(w, r, nses)
	m.s.Log.Info("member logged in", "user", nses.user, "remote", ip, "needs_credential", flags&flagNeedsCredential != 0)
	http.Redirect(w, r, "/me", http.StatusSeeOther)
}

func (m *memberPage) postLogout(w http.ResponseWriter, r *http.Request) {
	if insecure(r) {
		m.render(w, r, http.StatusForbidden, &memberView{Flash: msgInsecure, NoStartLink: true})
		return
	}
	ses := m.session(r)
	if !readForm(w, r) || ses == nil || !m.checkCSRF(r, ses) {
		m.stale(w, r, ses)
		return
	}
	m.end(ses)
	m.clearCookie(w, r)
	if ses.user != "" {
		m.s.Log.Info("member logged out", "user", ses.user, "remote", clientIP(r))
	}
	http.Redirect(w, r, "/me", http.StatusSeeOther)
}

func (m *memberPage) postCredential(w http.ResponseWriter, r *http.Request) {
	if insecure(r) {
		m.render(w, r, http.StatusForbidden, &memberView{Flash: msgInsecure, NoStartLink: true})
		return
	}
	ses := m.session(r)
	if !readForm(w, r) || ses == nil || ses.user == "" || !m.checkCSRF(r, ses) {
		m.stale(w, r, ses)
		return
	}
	cs := m.s.Credentials
	if cs == nil || !cs.NewProviderUsesVault(ses.user) {
		m.memberPageFor(w, r, http.StatusNotFound, ses, &flash{Credential: true, text: text{
			"Per la sua casella non serve inserire credenziali del nuovo gestore.",
			"Your mailbox needs no credentials for the new provider."}})
		return
	}
	username := strings.TrimSpace(r.PostFormValue("username"))
	password := r.PostFormValue("password")
	if username == "" || password == "" || len(username) > 320 || len(password) > 1024 ||
		strings.ContainsAny(username, "\x00\r\n") || strings.ContainsAny(password, "\x00\r\n") {
		m.memberPageFor(w, r, http.StatusBadRequest, ses, &flash{Credential: true, text: text{
			"Scriva il nome utente e la password del nuovo gestore.",
			"Enter the username and the password of the new provider."}})
		return
	}
	ip := clientIP(r)
	err := cs.SetCredential(r.Context(), ip, ses.user, username, password)
	switch {
	case err == nil:
		m.s.Log.Info("member set vault credentials", "user", ses.user, "remote", ip)
		ses.flags = ses.flags&^flagNeedsCredential | flagSaved
		m.setCookie(w, r, ses)
		http.Redirect(w, r, "/me", http.StatusSeeOther)
	case errors.Is(err, ErrMemberRefused):
		m.s.Log.Info("member vault credentials refused", "user", ses.user, "remote", ip)
		m.memberPageFor(w, r, http.StatusBadRequest, ses, &flash{Credential: true, text: text{
			"Il nuovo gestore ha rifiutato nome utente o password: non è stato salvato nulla. Controlli i dati ricevuti dal nuovo gestore (spesso il nome utente non è l'indirizzo PEC) e riprovi.",
			"The new provider refused the username or password: nothing was stored. Check the details the new provider gave you (the username is often not the PEC address) and try again."}})
	case errors.Is(err, ErrMemberThrottled):
		m.memberPageFor(w, r, http.StatusTooManyRequests, ses, &flash{Credential: true, text: text{
			"Troppi tentativi non riusciti: per non far bloccare la nuova casella attenda almeno 5 minuti prima di riprovare.",
			"Too many failed attempts: so that the new mailbox is not locked, wait at least 5 minutes before trying again."}})
	case errors.Is(err, ErrMemberUnavailable):
		m.s.Log.Warn("member vault credentials not checked", "user", ses.user, "reason", "provider unavailable", "err", err)
		m.memberPageFor(w, r, http.StatusServiceUnavailable, ses, &flash{Credential: true, text: text{
			"Il nuovo gestore non risponde: non è stato salvato nulla. Riprovi tra qualche minuto.",
			"The new provider does not answer: nothing was stored. Please try again in a few minutes."}})
	default:
		m.s.Log.Error("member vault credentials failed", "user", ses.user, "err", err)
		m.memberPageFor(w, r, http.StatusInternalServerError, ses, msgInternal)
	}
}

// memberPageFor renders the page of ses's member.
func (m *memberPage) memberPageFor(w http.ResponseWriter, r *http.Request, status int, ses *session, f *flash) {
	v, err := m.view(r.Context(), ses)
	if err != nil {
		m.s.Log.Error("member page", "user", ses.user, "err", err)
		v = &memberView{LoggedIn: true, User: ses.user, CSRF: m.csrf(ses.id)}
		f, status = msgInternal, http.StatusInternalServerError
	}
	v.Flash = f
	if f != nil && f.Credential && !f.OK {
		v.CredentialOpen = v.Vault
	}
	m.render(w, r, status, v)
}

// view gathers what the member's page shows: only ses.user's records.
func (m *memberPage) view(ctx context.Context, ses *session) (*memberView, error) {
	user := ses.user
	v := &memberView{LoggedIn: true, User: user, CSRF: m.csrf(ses.id), NeedsCredential: ses.flags&flagNeedsCredential != 0}
	rt := m.s.Router.Route(user)
	if rt == nil {
		v.Phase = text{"Il suo indirizzo non è più gestito da questo servizio. Chieda all'assistenza del suo Ordine.",
			"Your address is no longer handled by this service. Ask your Order's IT support."}
		return v, nil
	}
	if cs := m.s.Credentials; cs != nil && cs.NewProviderUsesVault(user) {
		v.Vault = true
	}
	var prog *store.Progress
	var fm *store.FolderMap
	maps := map[string]*store.Map{}
	if m.s.Store != nil {
		err := m.s.Store.View(ctx, func(tx store.Tx) error {
			var err error
			prog, err = store.GetProgress(tx, user)
			if errors.Is(err, store.ErrNotFound) {
				prog, err = nil, nil
			}
			if err != nil {
				return err
			}
			fm, err = store.GetFolderMap(tx, user)
			if errors.Is(err, store.ErrNotFound) {
				fm, err = nil, nil
			}
			if err != nil {
				return err
			}
			names, err := store.ListMaps(tx, user)
			if err != nil {
				return err
			}
			for _, n := range names {
				if maps[n], err = store.GetMap(tx, user, n); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read the progress of %s: %w", user, err)
		}
	}
	if prog != nil {
		v.Progress = m.s.userDoc(prog)
		v.Counted = v.Progress.Counted()
		if v.Counted && v.Progress.MessagesTotal > 0 {
			v.Percent = int(min(100, v.Progress.MessagesDone*100/v.Progress.MessagesTotal))
		} else if v.Counted {
			v.Percent = 100
		}
		if e := v.Progress.ETASeconds; e != nil && v.Progress.MessagesDone < v.Progress.MessagesTotal {
			t := etaText(time.Duration(*e) * time.Second)
			v.ETA = &t
		}
		v.Updated = prog.Updated.Local().Format("02/01/2006 15:04")
		v.Problems = problemViews(v.Progress.Errors)
	}
	v.Phase, v.Safe = phaseText(rt, v.Progress)
	v.CredentialOpen = v.Vault && v.NeedsCredential
	if v.Vault && v.Progress != nil {
		v.CredentialOpen = v.CredentialOpen || slices.ContainsFunc(v.Progress.Errors, func(e ProgressError) bool {
			return e.Kind == "no-credential" || e.Kind == "auth"
		})
		if rt.State == config.StateMigrating && v.Progress.State != PhaseDone && slices.ContainsFunc(v.Progress.Errors, func(e ProgressError) bool {
			return e.Kind == "no-credential"
		}) {
			// It does not retry its way out of this: the member must act.
			v.Phase = text{"La copia è ferma: servono le credenziali del nuovo gestore. Le inserisca nel modulo qui sotto; poi la copia riparte da sola.",
				"The copy is stopped: it needs the new provider's credentials. Enter them in the form below; the copy then starts again by itself."}
		}
	}
	v.Folders = folderViews(fm, maps, prog)
	return v, nil
}

// phaseText says in plain words where the member's move is.
func phaseText(rt *store.Route, p *UserProgress) (text, bool) {
	switch rt.State {
	case config.StateOld:
		return text{"La sua casella non è ancora in trasloco verso il nuovo gestore. Non deve fare nulla: continui a usare la posta come sempre.",
			"Your mailbox has not started moving to the new provider yet. You need do nothing: keep using your mail as usual."}, false
	case config.StateNew:
		return text{"Il trasloco è concluso: la sua posta è presso il nuovo gestore. Continui a usare la posta come sempre, con la stessa password.",
			"The move is complete: your mail is at the new provider. Keep using your mail as usual, with the same password."}, false
	}
	phase := PhaseNotStarted
	if p != nil {
		switch {
		case p.State != "":
			phase = p.State
		case p.Counted():
			phase = PhaseCopying
		}
	}
	switch phase {
	case PhaseCopying:
		return text{"La sua posta viene copiata ora verso il nuovo gestore. Può continuare a usarla normalmente: vede sempre tutti i suoi messaggi.",
			"Your mail is being copied to the new provider now. You can keep using it as usual: you always see all your messages."}, true
	case PhaseDone:
		return text{"Tutta la sua posta è stata copiata presso il nuovo gestore. Non deve fare nulla.",
			"All your mail has been copied to the new provider. You need do nothing."}, true
	case PhaseIncomplete:
		return text{"La copia si è fermata con alcuni messaggi ancora da copiare (vedi sotto). La copia riprova da sola.",
			"The copy stopped with some messages still to copy (see below). It retries by itself."}, true
	case PhaseQuota:
		return text{"La copia è ferma: la nuova casella non ha spazio sufficiente. L'assistenza del suo Ordine deve aumentarlo.",
			"The copy is stopped: the new mailbox has not enough room. Your Order's IT support must enlarge it."}, true
	case PhaseNeedsLogin:
		return text{"La copia aspettava la sua password: accedere a questa pagina (o leggere la posta con il suo programma) basta, e la copia riprende da sola.",
			"The copy was waiting for your password: logging in to this page (or reading your mail with your mail program) is enough, and the copy resumes by itself."}, true
	case PhaseFailed:
		return text{"L'ultimo tentativo di copia non è riuscito (vedi sotto). La copia riprova da sola.",
			"The last copy attempt failed (see below). It retries by itself."}, true
	}
	return text{"La copia della sua posta verso il nuovo gestore comincerà a breve. Non deve fare nulla.",
		"Copying your mail to the new provider will start shortly. You need do nothing."}, true
}

// problemTexts say, per problem kind, what happened and what to do.
var problemTexts = map[string][2]text{
	"needs-login": {
		{"La copia aveva bisogno della sua password.", "The copy needed your password."},
		{"Nulla: averla inserita qui basta. Se il servizio viene riavviato prima della fine della copia, potrà esserle chiesto di accedere di nuovo.",
			"Nothing: entering it here is enough. If the service restarts before the copy ends, you may be asked to log in again."}},
	"no-credential": {
		{"Mancano le credenziali del nuovo gestore: senza di esse la posta non può essere copiata.",
			"The new provider's credentials are missing: without them your mail cannot be copied."},
		{"Inserisca il nome utente e la password ricevuti dal nuovo gestore nel modulo \"Credenziali del nuovo gestore\" qui sotto: la copia riparte appena sono salvate. Se il modulo non c'è, avvisi l'assistenza del suo Ordine.",
			"Enter the username and password the new provider gave you in the \"New provider's credentials\" form below: the copy starts again as soon as they are saved. If the form is not there, tell your Order's IT support."}},
	"auth": {
		{"Un gestore ha rifiutato l'accesso usato per la copia.", "A provider refused the login used for copying."},
		{"Se qui sotto c'è il modulo per le credenziali del nuovo gestore, le inserisca; altrimenti avvisi l'assistenza del suo Ordine. Con Aruba e l'accesso a due fattori serve una \"password per app\".",
			"If the form for the new provider's credentials is below, fill it in; otherwise tell your Order's IT support. With Aruba and two-factor login an \"app password\" is needed."}},
	"quota": {
		{"La nuova casella non ha spazio sufficiente.", "The new mailbox has not enough room."},
		{"Avvisi l'assistenza del suo Ordine, che deve aumentare lo spazio. Nessun messaggio va perso: restano tutti presso il vecchio gestore.",
			"Tell your Order's IT support, who must enlarge it. No message is lost: they all stay at the old provider."}},
	"oversize": {
		{"Un messaggio è più grande di quanto il nuovo gestore accetti.", "A message is larger than the new provider accepts."},
		{"Il messaggio resta presso il vecchio gestore. Avvisi l'assistenza del suo Ordine se le serve conservarlo.",
			"The message stays at the old provider. Tell your Order's IT support if you need to keep it."}},
	"upstream": {
		{"Un gestore non ha risposto o ha dato un errore.", "A provider did not answer or gave an error."},
		{"Nulla: la copia riprova da sola.", "Nothing: the copy retries by itself."}},
	"folder": {
		{"Una cartella non è stata creata presso il nuovo gestore.", "A folder could not be created at the new provider."},
		{"Avvisi l'assistenza del suo Ordine: forse il nome della cartella non è accettato dal nuovo gestore.",
			"Tell your Order's IT support: the new provider may not accept the folder's name."}},
}

var otherProblem = [2]text{
	{"Un problema tecnico durante la copia.", "A technical problem while copying."},
	{"Nulla: l'assistenza del suo Ordine lo vede nei registri del servizio.", "Nothing: your Order's IT support sees it in the service's logs."}}

// problemViews groups errs by kind, in the order first met.
func problemViews(errs []ProgressError) []problemView {
	var out []problemView
	var kinds []string
	for _, e := range errs {
		i := slices.Index(kinds, e.Kind)
		if i < 0 {
			t, ok := problemTexts[e.Kind]
			if !ok {
				t = otherProblem
			}
			kinds = append(kinds, e.Kind)
			out = append(out, problemView{What: t[0], Do: t[1]})
			i = len(out) - 1
		}
		out[i].Count++
		out[i].Detail = e.Message
		if e.Mailbox != "" {
			out[i].Detail = mutf7.Decode(e.Mailbox) + ": " + e.Message
		}
	}
	return out
}

// roles names the special-use folders (RFC 6154) in both languages.
var roles = map[string]text{
	`\Sent`:    {"posta inviata", "sent mail"},
	`\Drafts`:  {"bozze", "drafts"},
	`\Trash`:   {"cestino", "trash"},
	`\Junk`:    {"posta indesiderata", "junk"},
	`\Archive`: {"archivio", "archive"},
}

// folderViews lists the member's folders, INBOX first: those of the
// folder map and those with a UID map, with the messages copied to new
// (known for those with a UID map), and the copy pass's counts of each
// folder when prog has them.
func folderViews(fm *store.FolderMap, maps map[string]*store.Map, prog *store.Progress) []folderView {
	seen := map[string]*folderView{}
	var names []string
	add := func(name string) *folderView {
		key := store.CanonicalMailbox(name)
		if f := seen[key]; f != nil {
			return f
		}
		f := &folderView{Name: mutf7.Decode(key)}
		seen[key] = f
		names = append(names, key)
		return f
	}
	if fm != nil {
		for _, f := range fm.Folders {
			fv := add(f.Old)
			if t, ok := roles[f.SpecialUse]; ok {
				fv.Role = &t
			}
		}
	}
	for name, mp := range maps {
		f := add(name)
		f.Copied, f.Mapped = copiedIn(mp), true
	}
	if prog != nil {
		for _, fp := range prog.Folders {
			f := add(fp.Name)
			f.Total, f.Done, f.Counted = fp.MessagesTotal, fp.MessagesDone, true
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == "INBOX":
			return -1
		case b == "INBOX":
			return 1
		}
		return strings.Compare(seen[a].Name, seen[b].Name)
	})
	out := make([]folderView, 0, len(names))
	for _, n := range names {
		out = append(out, *seen[n])
	}
	return out
}

// copiedIn counts the messages of m copied from old to new (both sides
// known) and not expunged since.
func copiedIn(m *store.Map) int64 {
	var n int64
	for _, r := range m.Runs {
		if r.Old == 0 || r.New == 0 || r.N == 0 {
			continue
		}
		n += int64(r.N)
		lo, hi := uint64(r.V), uint64(r.V)+uint64(r.N)-1
		for _, g := range m.Gone {
			a, b := max(lo, uint64(g.Lo)), min(hi, uint64(g.Hi))
			if a <= b {
				n -= int64(b - a + 1)
			}
		}
	}
	return n
}

// etaText says d in words: minutes (rounded up) under two hours, then
// hours, then days (rounded to the nearest).
func etaText(d time.Duration) text {
	mins := int64((d + time.Minute - 1) / time.Minute)
	switch {
	case mins <= 1:
		return text{"circa un minuto", "about a minute"}
	case mins < 120:
		return text{"circa " + strconv.FormatInt(mins, 10) + " minuti", "about " + strconv.FormatInt(mins, 10) + " minutes"}
	case mins < 48*60:
		h := (mins + 30) / 60
		return text{"circa " + strconv.FormatInt(h, 10) + " ore", "about " + strconv.FormatInt(h, 10) + " hours"}
	}
	days := (mins + 12*60) / (24 * 60)
	return text{"circa " + strconv.FormatInt(days, 10) + " giorni", "about " + strconv.FormatInt(days, 10) + " days"}
}
