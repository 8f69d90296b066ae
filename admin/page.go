package admin

// The operator status page at / (issue 5, item 2).
//
// Routes (besides those admin.go lists):
//
//	GET  /                              the status page; without a session a form asking for the admin token
//	POST /login                         token=TOKEN[&next=/path]: sets the session cookie (page_session.go), 303
//	POST /logout                        csrf=…: ends the session, 303 to /
//	GET  /domains/{domain}/flip?state=S what changing the domain's state to S would do, and a form to confirm it
//	POST /domains/{domain}/flip         csrf=…&state=S[&force=1&confirm=DOMAIN]: changes it (store.Router), 303 to /
//	GET  /assets/status.css, /assets/status.js   the page's stylesheet and script; no token
//	GET  /api/v1/domains/{domain}/preview?state=S  the same preview as JSON (FlipPreview), behind the bearer token
//
// The page reads everything the API reads (domainDoc, fillProgress) and
// changes state only through store.Router, like PUT
// /api/v1/domains/{domain}; every change is logged by logChange. It works
// without JavaScript (plain links and forms); status.js only refreshes it
// in place every few seconds. Page errors are HTML pages with the status
// and message of the JSON Error the API would answer. Responses carry a
// Content-Security-Policy that allows nothing but this origin's own
// stylesheet, script and forms.

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
)

//go:embed web/status.html web/status.css web/status.js
var statusFS embed.FS

var statusTemplates = template.Must(template.New("status").Funcs(template.FuncMap{
	"num":   pageNum,
	"int64": func(n int) int64 { return int64(n) },
	"size":  pageSize,
}).ParseFS(statusFS, "web/status.html"))

// maxProblemRows bounds the problems the page lists per domain; `pecgate
// status DOMAIN` and the API list them all.
const maxProblemRows = 100

// statusCSP is the Content-Security-Policy of every page.
const statusCSP = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// FlipPreview is what changing a domain's state would do: GET
// /api/v1/domains/{domain}/preview?state=S, and the page's flip control.
// It is computed by store.Router.PreviewDomain, under the rules and with
// the count that PUT /api/v1/domains/{domain} then applies.
type FlipPreview struct {
	Domain string `json:"domain"`
	// From is the domain's state now, To the one asked for.
	From string `json:"from"`
	To   string `json:"to"`
	// Allowed is true when the PUT without force would succeed.
	Allowed bool `json:"allowed"`
	// Reason says why not, when not Allowed.
	Reason string `json:"reason,omitempty"`
	// Uncopied is how many messages are not yet in new: what a change to
	// new, forced or not, would leave behind (0 when nothing would); -1
	// when nobody can count them.
	Uncopied int `json:"uncopied"`
	// Forceable is true when not Allowed but the same PUT with "force":
	// true would succeed.
	Forceable bool `json:"forceable"`
}

// statusPage serves the page's routes.
type statusPage struct {
	s        *server
	sessions *opSessions
}

// routePage registers the status page and its assets on mux.
func (s *server) routePage(mux *http.ServeMux) {
	p := &statusPage{s: s, sessions: newOpSessions()}
	mux.Handle("GET /{$}", p.serve(p.getPage))
	mux.Handle("/{$}", p.notAllowed("GET"))
	mux.Handle("POST /login", p.serve(p.postLogin))
	mux.Handle("/login", p.notAllowed("POST"))
	mux.Handle("POST /logout", p.serve(p.postLogout))
	mux.Handle("/logout", p.notAllowed("POST"))
	mux.Handle("GET /domains/{domain}/flip", p.serve(p.getFlip))
	mux.Handle("POST /domains/{domain}/flip", p.serve(p.postFlip))
	mux.Handle("/domains/{domain}/flip", p.notAllowed("GET, POST"))
	mux.Handle("GET /assets/status.css", pageAsset("web/status.css", "text/css; charset=utf-8"))
	mux.Handle("GET /assets/status.js", pageAsset("web/status.js", "text/javascript; charset=utf-8"))
}

// routePageAPI registers the API routes the status page needs beyond the
// contract's (under /api/v1, behind the token).
func (s *server) routePageAPI(api *http.ServeMux) {
	api.Handle("GET /api/v1/domains/{domain}/preview", s.serve(s.getPreview))
	api.Handle("/api/v1/domains/{domain}/preview", s.notAllowed("GET"))
}

func pageAsset(name, contentType string) http.Handler {
	data, err := statusFS.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Write(data)
	})
}

func (s *server) getPreview(w http.ResponseWriter, r *http.Request) error {
	state := r.URL.Query().Get("state")
	if state == "" {
		return errorf(http.StatusBadRequest, "the query needs ?state=old|migrating|new")
	}
	fp, err := s.flipPreview(r.Context(), r.PathValue("domain"), state)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, fp)
}

// flipPreview says what changing domain to state would do. Bad input and
// an unknown domain are errors; a change the rules or the config refuse is
// a preview that is not Allowed.
func (s *server) flipPreview(ctx context.Context, domain, state string) (*FlipPreview, error) {
	p, err := s.Router.PreviewDomain(ctx, domain, state)
	switch {
	case errors.Is(err, store.ErrBadState), errors.Is(err, store.ErrUnknownDomain):
		return nil, err
	case err != nil:
		ds, derr := s.Router.Domain(domain)
		if derr != nil {
			return nil, derr
		}
		fp := &FlipPreview{Domain: ds.Name, From: ds.State, To: state, Reason: strings.TrimPrefix(err.Error(), "store: ")}
		if !errors.Is(err, store.ErrNoNewProvider) {
			// Only the count of the messages left can fail: a forced
			// change goes through without it.
			fp.Uncopied, fp.Forceable = -1, true
			s.Log.Warn("flip preview: messages left uncounted", "domain", ds.Name, "state", state, "err", err)
		}
		return fp, nil
	}
	fp := &FlipPreview{Domain: p.Name, From: p.From, To: p.To, Allowed: p.Refused == nil, Uncopied: p.Uncopied}
	if p.Refused != nil {
		fp.Reason, fp.Forceable = p.Refused.Reason, true
	}
	return fp, nil
}

// notAllowed answers 405 as a page with the way back: a person who opens
// /login or /logout by hand gets a page, not a JSON document.
func (p *statusPage) notAllowed(allow string) http.Handler {
	return p.serve(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Allow", allow)
		return errorf(http.StatusMethodNotAllowed, "%s does not answer %s (only %s): use the buttons of the status page.", r.URL.Path, r.Method, allow)
	})
}

// serve renders the error h returns as an HTML page.
func (p *statusPage) serve(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", statusCSP)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "same-origin") // "no-referrer" would make the browser send "Origin: null"
		w.Header().Set("X-Frame-Options", "DENY")
		if !p.hostOK(r) {
			p.s.Log.Warn("admin page: request for a foreign host name refused", "host", r.Host, "remote", r.RemoteAddr)
			p.render(w, http.StatusMisdirectedRequest, "message", opMessageView{opPageBase: opPageBase{Title: "Wrong address", Now: time.Now().UTC()}, Status: http.StatusMisdirectedRequest,
				Message: "This page answers only at the gateway's own addresses: an IP address such as http://127.0.0.1:PORT/ (an SSH tunnel works), localhost, or the [server] hostname of its configuration. A proxy in front of it must pass one of those as the Host header."})
			return
		}
		if err := h(w, r); err != nil {
			p.fail(w, r, err)
		}
	})
}

// hostOK reports whether r names the gateway as a page may be reached:
// any name when the admin listener may listen beyond loopback
// (admin.allow_non_loopback), else localHost's.
func (p *statusPage) hostOK(r *http.Request) bool {
	c := p.s.Config
	if c != nil && c.Admin.AllowNonLoopback {
		return true
	}
	hostname := ""
	if c != nil {
		hostname = c.Server.Hostname
	}
	return localHost(r, hostname)
}

func (p *statusPage) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := toError(err)
	if e.Status >= 500 {
		p.s.Log.Error("admin page request failed", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
	}
	v := opMessageView{opPageBase: opPageBase{Title: http.StatusText(e.Status)}, Status: e.Status, Message: e.Message}
	if a := p.authOf(r, false); a.ok() {
		v.opPageBase = p.base(a, v.Title)
	}
	p.render(w, e.Status, "message", v)
}

// render executes template name into w with status.
func (p *statusPage) render(w http.ResponseWriter, status int, name string, data any) error {
	var buf bytes.Buffer
	if err := statusTemplates.ExecuteTemplate(&buf, name, data); err != nil {
		p.s.Log.Error("render the status page", "template", name, "err", err)
		http.Error(w, "internal error (see the gateway's log)", http.StatusInternalServerError)
		return nil
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes()) // an error here is a client gone away: nothing to answer
	return nil
}

// opPageBase is what every page's frame shows.
type opPageBase struct {
	Title    string
	LoggedIn bool   // a session or the bearer token; the frame shows Log out for a session
	Session  bool   // a session cookie (Log out makes sense)
	CSRF     string // the session's CSRF token; "" with the bearer token
	Now      time.Time
}

func (p *statusPage) base(a opAuth, title string) opPageBase {
	b := opPageBase{Title: title, LoggedIn: a.ok(), Session: a.sid != "", Now: time.Now().UTC()}
	if a.sid != "" {
		b.CSRF = p.sessions.csrf(a.sid)
	}
	return b
}

// opLoginView is the token form.
type opLoginView struct {
	opPageBase
	Next    string
	Message string // why the form is shown again; "" the first time
	// ClearText is set when the form would send the token in clear text
	// over the network (plain HTTP from another machine, with
	// admin.allow_non_loopback): the form says so.
	ClearText bool
}

// showLogin answers the token form with status. The form returns to the
// page the operator was on: the one asked for, the one a wrong token was
// meant to open, or the confirmation of a flip whose session ended.
func (p *statusPage) showLogin(w http.ResponseWriter, r *http.Request, status int, msg string) error {
	next := "/"
	switch {
	case r.Method == http.MethodGet:
		next = r.URL.RequestURI()
	case r.URL.Path == "/login":
		next = r.PostForm.Get("next")
	case r.PathValue("domain") != "":
		next = "/domains/" + url.PathEscape(r.PathValue("domain")) + "/flip"
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if r.ParseForm() == nil && r.PostForm.Get("state") != "" {
			next += "?state=" + url.QueryEscape(r.PostForm.Get("state"))
		}
	}
	next = opSafeNext(next)
	return p.render(w, status, "login", opLoginView{opPageBase: opPageBase{Title: "Log in", Now: time.Now().UTC()}, Next: next, Message: msg, ClearText: insecure(r)})
}

// checkPost refuses a state-changing POST from another origin, or made
// with the session cookie but without its CSRF token. It parses the form.
func (p *statusPage) checkPost(w http.ResponseWriter, r *http.Request, a opAuth) error {
	if !opSameOrigin(r) {
		return errorf(http.StatusForbidden, "cross-origin request refused: open the page from the gateway's own address")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		return errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	if a.bearer {
		return nil
	}
	if !p.sessions.csrfOK(a.sid, r.PostForm.Get("csrf")) {
		return errorf(http.StatusForbidden, "the form's security token is missing or stale: reload the page and try again")
	}
	return nil
}

func (p *statusPage) postLogin(w http.ResponseWriter, r *http.Request) error {
	if !opSameOrigin(r) {
		return errorf(http.StatusForbidden, "cross-origin request refused: open the page from the gateway's own address")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		return errorf(http.StatusBadRequest, "bad form: %v", err)
	}
	if p.s.Token == "" {
		return p.showLogin(w, r, http.StatusUnauthorized, "This gateway has no admin token: put one in the file [admin] token_file names and restart it.")
	}
	if !p.sessions.allowLogin(r) {
		p.s.Log.Warn("admin page login throttled", "remote", r.RemoteAddr)
		return p.showLogin(w, r, http.StatusTooManyRequests, "Too many wrong tokens from this address: wait a minute, then try again. Meanwhile pecgate status and the other commands keep working with the token.")
	}
	if !p.s.tokenOK(r.PostForm.Get("token")) {
		p.sessions.failed(r)
		p.s.Log.Warn("admin page login refused: wrong token", "remote", r.RemoteAddr)
		return p.showLogin(w, r, http.StatusUnauthorized, "Wrong token. It is the content of the file [admin] token_file names in the gateway's configuration.")
	}
	setOpCookie(w, r, p.sessions.issue(), int(sessionTTL/time.Second))
	p.s.Log.Info("admin page login", "remote", r.RemoteAddr)
	http.Redirect(w, r, opSafeNext(r.PostForm.Get("next")), http.StatusSeeOther)
	return nil
}

func (p *statusPage) postLogout(w http.ResponseWriter, r *http.Request) error {
	a := p.opAuthOf(r)
	if a.ok() {
		if err := p.checkPost(w, r, a); err != nil {
			return err
		}
	}
	if c, err := r.Cookie(opCookie); err == nil {
		p.sessions.revokeCookie(c.Value)
	}
	setOpCookie(w, r, "", -1)
	http.Redirect(w, r, "/", http.StatusSeeOther)
	return nil
}

// opStatusView is the status page.
type opStatusView struct {
	opPageBase
	// Changed is the domain a flip just changed (?changed=), with its
	// state now; "" otherwise.
	Changed, ChangedState string
	Domains               []opDomainView
	// Every and Window describe the chart's sampling; zero without History.
	Every, Window string
}

// opDomainView is one domain's section.
type opDomainView struct {
	Domain
	ID string // the section's HTML id
	// HasProgress is false when the gateway keeps no progress.
	HasProgress bool
	Phases      []opPhaseView
	MsgPct      float64 // 0..100
	BytePct     float64
	Rate        string // "" when unknown
	ByteRate    string
	ETA         string // "" when unknown
	ETAWhy      string // why ETA is unknown
	Chart       template.HTML
	ChartNote   string
	Problems    []opProblemRow
	MoreProblem int // problems not listed
	Flips       []opFlipOption
	NoNew       bool // no new provider: no flip but to old
	// Idle is true for a domain with nothing to show but its state: in
	// state old, no member known.
	Idle bool
	// Measuring is true while members copy but the rate is not measured
	// yet.
	Measuring bool
}

type opPhaseView struct {
	Phase, Label string
	Count        int
	Pct          float64 // share of the members, for the stacked bar
	X            float64 // the stacked bar segment's left edge, 0..100
}

// opProblemRow is one kind of problem of one member.
type opProblemRow struct {
	User, Phase string
	Title       string // what kind of problem, for a person
	Severity    string // "error" or "warn"
	Count       int
	Detail      string // the last message
	Action      string // what to do
}

type opFlipOption struct {
	To, Label, Hint string
	Danger          bool
}

var pagePhaseLabels = map[string]string{
	PhaseCopying:    "Copying",
	PhaseDone:       "Done",
	PhaseIncomplete: "Incomplete",
	PhaseQuota:      "Quota full",
	PhaseNeedsLogin: "Waiting for login",
	PhaseFailed:     "Failed",
	PhaseNotStarted: "Not started",
}

func (p *statusPage) getPage(w http.ResponseWriter, r *http.Request) error {
	a := p.opAuthOf(r)
	if !a.ok() {
		return p.showLogin(w, r, http.StatusOK, "")
	}
	v := opStatusView{opPageBase: p.base(a, "Migration status")}
	list := []Domain{}
	for _, d := range p.s.Router.Domains() {
		list = append(list, domainDoc(d))
	}
	if err := p.s.fillProgress(r.Context(), list, true); err != nil {
		return err
	}
	var series map[string][]HistoryPoint
	if h := p.s.History; h != nil {
		var err error
		if series, err = h.Series(r.Context()); err != nil {
			return err
		}
		v.Every, v.Window = pageDur(h.Every()), pageDur(h.Window())
	}
	for _, d := range list {
		dv := opDomainView{Domain: d, ID: "d-" + d.Name, NoNew: d.New == ""}
		if pr := d.Progress; pr != nil {
			dv.HasProgress = true
			dv.Idle = d.State == config.StateOld && pr.MembersTotal == 0
			opFillProgressView(&dv, pr, p.s.appPasswords)
		}
		if p.s.History != nil {
			dv.Chart, dv.ChartNote = renderChart(series[d.Name], v.Now, p.s.History.Window(), p.s.History.Every())
		}
		dv.Flips = opFlipOptions(d)
		v.Domains = append(v.Domains, dv)
		if c := r.URL.Query().Get("changed"); c == d.Name {
			v.Changed, v.ChangedState = d.Name, d.State
		}
	}
	return p.render(w, http.StatusOK, "page", v)
}

func opFillProgressView(dv *opDomainView, pr *DomainProgress, appPasswords func(provider string) bool) {
	x := 0.0
	for _, ph := range Phases() {
		n := pr.Members[ph]
		pv := opPhaseView{Phase: ph, Label: pagePhaseLabels[ph], Count: n, X: x}
		if pr.MembersTotal > 0 {
			pv.Pct = 100 * float64(n) / float64(pr.MembersTotal)
		}
		x += pv.Pct
		dv.Phases = append(dv.Phases, pv)
	}
	dv.MsgPct = pagePct(pr.MessagesDone, pr.MessagesTotal)
	dv.BytePct = pagePct(pr.BytesDone, pr.BytesTotal)
	if pr.MessagesPerSecond != nil {
		dv.Rate = pageRate(*pr.MessagesPerSecond)
		dv.ByteRate = pageSize(int64(math.Round(deref(pr.BytesPerSecond)))) + "/s"
	} else {
		dv.Measuring = pr.Members[PhaseCopying] > 0
	}
	switch {
	case pr.ETASeconds != nil && *pr.ETASeconds == 0:
		dv.ETA = "done"
	case pr.ETASeconds != nil:
		dv.ETA = pageETA(*pr.ETASeconds)
	case pr.Settled():
		dv.ETA = "done"
	case dv.State != config.StateMigrating:
		dv.ETAWhy = "the copy runs in state migrating"
	case pr.Members[PhaseNotStarted]+pr.Members[PhaseNeedsLogin]+pr.Members[PhaseQuota] > 0:
		var why []string
		for _, c := range []struct {
			phase, one, many string
		}{
			{PhaseQuota, "1 member out of quota", "%d members out of quota"},
			{PhaseNeedsLogin, "1 member waiting for a login", "%d members waiting for a login"},
			{PhaseNotStarted, "1 member not started", "%d members not started"},
		} {
			if n := pr.Members[c.phase]; n > 0 {
				why = append(why, pagePlural(n, c.one, fmt.Sprintf(c.many, n)))
			}
		}
		dv.ETAWhy = "unknown while " + strings.Join(why, ", ")
	default:
		dv.ETAWhy = "measured between two readings while messages move"
	}
	for _, mp := range pr.Problems {
		for _, row := range opProblemRows(mp, appPasswords) {
			if len(dv.Problems) >= maxProblemRows {
				dv.MoreProblem++
				continue
			}
			dv.Problems = append(dv.Problems, row)
		}
	}
}

// opProblemRows says what each of a member's problems is and what to do;
// appPasswords says whether a provider wants app passwords with two-factor
// login (config.Provider.AppPasswords).
func opProblemRows(mp MemberProblem, appPasswords func(provider string) bool) []opProblemRow {
	var rows []opProblemRow
	for _, k := range mp.Kinds {
		title, sev, action := opProblemAdvice(k.Kind, k.Message, k.Hint, appPasswords)
		rows = append(rows, opProblemRow{User: mp.User, Phase: mp.Phase, Title: title, Severity: sev, Count: k.Count, Detail: pageShorten(k.Message, 240), Action: action})
	}
	if len(rows) == 0 {
		switch mp.Phase {
		case PhaseFailed:
			rows = append(rows, opProblemRow{User: mp.User, Phase: mp.Phase, Title: "Copy failed", Severity: "error",
				Action: "The copy is retried by itself; the gateway's log says why it failed."})
		case PhaseIncomplete:
			rows = append(rows, opProblemRow{User: mp.User, Phase: mp.Phase, Title: "Copy incomplete", Severity: "warn",
				Action: "A pass ended with messages left; the next pass retries them."})
		}
	}
	return rows
}

// opAppPasswordSuspected reports whether a refused login looks like
// two-factor login wanting an app password: the refusal carries the hint
// backend adds for providers with app_passwords (a passthrough or vault
// login), or a master or vault login was refused by such a provider.
func opAppPasswordSuspected(msg string, appPasswords func(provider string) bool) bool {
	m := strings.ToLower(msg)
	if strings.Contains(m, "app password") || strings.Contains(m, "two-factor") {
		return true
	}
	provider, op := opProviderOf(msg)
	return provider != "" && appPasswords != nil && appPasswords(provider) &&
		(strings.HasPrefix(op, "master ") || strings.HasPrefix(op, "vault "))
}

// opProblemAdvice returns a title, a severity and what to do about a problem
// of kind with message msg; hint is progress.go's.
func opProblemAdvice(kind, msg, hint string, appPasswords func(provider string) bool) (title, severity, action string) {
	provider, _ := opProviderOf(msg)
	at := ""
	if provider != "" {
		at = " at " + provider
	}
	switch kind {
	case "needs-login":
		return "Waiting for the member's login", "warn",
			"The member must log in once through pecgate (any mail client set to the gateway): the copy needs their password, which this provider (passthrough) does not let pecgate keep."
	case "auth":
		switch {
		case opAppPasswordSuspected(msg, appPasswords):
			action = "The login" + at + " was refused and the account probably has two-factor login, which wants an app password. Have the member create one in the provider's webmail and store it as their credential (member page, or pecgate vault import), or turn two-factor login off for IMAP."
			if _, op := opProviderOf(msg); strings.HasPrefix(op, "master ") {
				action += " First rule out the master login itself: [providers] master_user and master_password_file."
			}
			return "Two-factor / app password suspected", "error", action + " The copy retries within the hour."
		case strings.Contains(strings.ToLower(msg), "no vault credentials"), strings.Contains(strings.ToLower(msg), "empty username or password"):
			return "No credentials in the vault", "error",
				"Import the member's username and password" + at + " with pecgate vault import (or the member sets them on the member page). The copy retries within the hour."
		}
		const retry = " The copy retries within the hour; pecgate never retries a refused password at once (no lock-outs)."
		switch _, op := opProviderOf(msg); {
		case strings.HasPrefix(op, "master "):
			return "Login refused", "error", "The provider" + opOrThe(provider) + " refused pecgate's master login for this member: check [providers] master_user and master_password_file, and that the account exists there." + retry
		case strings.HasPrefix(op, "vault "):
			return "Login refused", "error", "The provider" + opOrThe(provider) + " refused the member's credentials from the vault: import current ones with pecgate vault import (or the member sets them on the member page)." + retry
		}
		return "Login refused", "error", "The provider" + opOrThe(provider) + " refused the member's password, which may have changed: the copy waits for the member's next login through pecgate." + retry
	case "no-credential":
		return "No credentials in the vault", "error",
			"Import the member's username and password" + at + " with pecgate vault import, or the member sets them on the member page (/me): the copy starts again as soon as they are saved there, else within the hour."
	case "quota":
		return "New mailbox full", "error",
			"Raise the member's quota at the new provider (or have old mail deleted); the copy resumes by itself within 30 minutes."
	case "oversize":
		return "Message over the size limit", "warn",
			"The message is larger than the new provider accepts and stays on old only: ask the new provider to raise the limit, or have the member save it before the old mailbox closes."
	case "upstream":
		return "Provider error", "warn",
			"The provider" + opOrThe(provider) + " failed or refused a command; the copy retries by itself. If it persists, check the provider's status and the gateway's log."
	case "folder":
		return "Folder refused by new", "warn",
			"The new provider refused to create or subscribe a folder: check its folder-name rules; the messages of that folder wait until it exists."
	}
	if hint == "" {
		hint = "See the gateway's log for the details."
	}
	return kind, "warn", strings.ToUpper(hint[:1]) + hint[1:]
}

// opProviderOf returns the provider and the step a backend error names
// ("NAME master login: ..."), or "" when msg is not one.
func opProviderOf(msg string) (provider, op string) {
	head, _, ok := strings.Cut(msg, ":")
	if !ok {
		return "", ""
	}
	f := strings.Fields(head)
	if len(f) < 2 || len(f) > 4 {
		return "", ""
	}
	for _, w := range f[1:] {
		if strings.ToLower(w) != w || strings.ContainsAny(w, "()[]") {
			return "", ""
		}
	}
	return f[0], strings.Join(f[1:], " ")
}

func opOrThe(provider string) string {
	if provider == "" {
		return ""
	}
	return " (" + provider + ")"
}

// appPasswords reports whether provider is configured as wanting app
// passwords with two-factor login (app_passwords, the aruba preset).
func (s *server) appPasswords(provider string) bool {
	if s.Config == nil {
		return false
	}
	p := s.Config.Providers[provider]
	return p != nil && p.AppPasswords
}

// opFlipOptions are the changes the page offers for d: those the rules
// allow, plus migrating -> new, which the preview explains.
func opFlipOptions(d Domain) []opFlipOption {
	if d.New == "" {
		return nil
	}
	switch d.State {
	case config.StateOld:
		return []opFlipOption{{To: config.StateMigrating, Label: "Start migration", Hint: "old → migrating: copy every mailbox to " + d.New}}
	case config.StateMigrating:
		return []opFlipOption{
			{To: config.StateNew, Label: "Complete: flip to new", Hint: "migrating → new: serve everyone from " + d.New},
			{To: config.StateOld, Label: "Roll back to old", Hint: "migrating → old: serve everyone from " + d.Old + " again", Danger: true},
		}
	case config.StateNew:
		return []opFlipOption{{To: config.StateMigrating, Label: "Back to migrating", Hint: "new → migrating: serve both again"}}
	}
	return nil
}

// opPreviewView is the confirmation page of a flip.
type opPreviewView struct {
	opPageBase
	FlipPreview
	Old, New string
	Effects  []string
	// Force is set when only a forced change goes through: the form then
	// asks for the domain's name.
	Force   bool
	Left    string // what a change to new leaves behind, in words; "" when nothing
	Message string // why the form is shown again
}

func (p *statusPage) getFlip(w http.ResponseWriter, r *http.Request) error {
	a := p.opAuthOf(r)
	if !a.ok() {
		return p.showLogin(w, r, http.StatusUnauthorized, "Log in to change a domain's state.")
	}
	state := r.URL.Query().Get("state")
	if state == "" {
		return errorf(http.StatusBadRequest, "say which state: ?state=old, migrating or new")
	}
	return p.showPreview(w, r, a, http.StatusOK, state, "")
}

func (p *statusPage) showPreview(w http.ResponseWriter, r *http.Request, a opAuth, status int, state, msg string) error {
	fp, err := p.s.flipPreview(r.Context(), r.PathValue("domain"), state)
	if err != nil {
		return err
	}
	ds, err := p.s.Router.Domain(fp.Domain)
	if err != nil {
		return err
	}
	v := opPreviewView{opPageBase: p.base(a, "Change "+fp.Domain), FlipPreview: *fp, Old: ds.Old, New: ds.New, Message: msg}
	v.Force = !fp.Allowed && fp.Forceable
	v.Effects = opFlipEffects(fp.From, fp.To, ds.Old, ds.New)
	if fp.To == config.StateNew {
		switch {
		case fp.Uncopied < 0:
			v.Left = "Nobody can count the messages not yet in " + ds.New + ": an unknown number would be left behind on " + ds.Old + "."
		case fp.Uncopied > 0:
			v.Left = pageNum(int64(fp.Uncopied)) + pagePlural(fp.Uncopied, " message is", " messages are") + " not yet in " + ds.New +
				". Flipping now leaves " + pagePlural(fp.Uncopied, "it", "them") + " behind on " + ds.Old + ": members will no longer see " + pagePlural(fp.Uncopied, "it", "them") + " through pecgate."
		}
	}
	return p.render(w, status, "preview", v)
}

// opFlipEffects says, for a person, what changing from -> to does.
func opFlipEffects(from, to, old, nw string) []string {
	switch {
	case from == to:
		return []string{"The domain is already in state " + to + ": nothing changes."}
	case to == config.StateMigrating && from == config.StateOld:
		return []string{
			"Clients keep their UIDs: pecgate freezes what they know and serves the union of " + old + " and " + nw + ".",
			"The back-fill starts copying every member's mail from " + old + " to " + nw + " in the background, byte for byte.",
			"Connected sessions follow the change; nobody is disconnected. From now on pecgate only reads from " + old + ".",
		}
	case to == config.StateMigrating && from == config.StateNew:
		return []string{"Clients are served the union of " + old + " and " + nw + " again; the back-fill resumes."}
	case to == config.StateNew:
		return []string{
			"Every member of the domain is served from " + nw + " only; " + old + " is no longer used.",
			"Connected sessions follow the change; nobody is disconnected.",
		}
	case to == config.StateOld && from == config.StateMigrating:
		return []string{
			"Rollback: every member is served from " + old + " again, which pecgate never wrote to.",
			"Changes made during the migration (flags, moves, new messages in " + nw + ") are no longer shown; the copies in " + nw + " stay there.",
		}
	case to == config.StateOld:
		return []string{"Mail that arrived in " + nw + " since the flip, and the changes made there, disappear from view."}
	}
	return nil
}

func (p *statusPage) postFlip(w http.ResponseWriter, r *http.Request) error {
	a := p.opAuthOf(r)
	if !a.ok() {
		return p.showLogin(w, r, http.StatusUnauthorized, "Your session ended: log in again, then repeat the change.")
	}
	if err := p.checkPost(w, r, a); err != nil {
		return err
	}
	name, state := r.PathValue("domain"), r.PostForm.Get("state")
	if state == "" {
		return errorf(http.StatusBadRequest, "the form has no state: go back to the status page and use its buttons")
	}
	force := r.PostForm.Get("force") == "1"
	if force && !strings.EqualFold(strings.TrimSpace(r.PostForm.Get("confirm")), name) {
		return p.showPreview(w, r, a, http.StatusBadRequest, state, "To force the change, type the domain's name exactly.")
	}
	c, err := p.s.Router.SetDomain(r.Context(), name, state, force)
	p.s.logChange(r, "domain", name, state, c, err)
	var re *store.RefusedError
	if errors.As(err, &re) {
		// Refused since the preview (more messages to copy): say so.
		return p.showPreview(w, r, a, http.StatusConflict, state, "Refused: "+re.Reason+". Review the change again.")
	}
	if err != nil {
		return err
	}
	http.Redirect(w, r, "/?changed="+url.QueryEscape(c.Name)+"#d-"+url.PathEscape(c.Name), http.StatusSeeOther)
	return nil
}

// opMessageView is an error page.
type opMessageView struct {
	opPageBase
	Status  int
	Message string
}

// Formatting, for people (English, the digits grouped).

func pageNum(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func pageSize(n int64) string {
	const unit = 1000
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	f, i := float64(n), 0
	units := []string{"kB", "MB", "GB", "TB", "PB"}
	for f /= unit; f >= unit && i < len(units)-1; f /= unit {
		i++
	}
	if f < 10 {
		return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i]
	}
	return strconv.FormatFloat(f, 'f', 0, 64) + " " + units[i]
}

func pagePct(done, total int64) float64 {
	if total <= 0 {
		return 0
	}
	return math.Min(100, 100*float64(done)/float64(total))
}

func pageRate(perSec float64) string {
	switch {
	case perSec >= 10:
		return strconv.FormatFloat(perSec, 'f', 0, 64) + " msg/s"
	case perSec >= 1:
		return strconv.FormatFloat(perSec, 'f', 1, 64) + " msg/s"
	}
	return strconv.FormatFloat(perSec*60, 'f', 1, 64) + " msg/min"
}

func pageETA(sec int64) string {
	d := time.Duration(sec) * time.Second
	switch {
	case d < time.Minute:
		return "under a minute"
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()+0.5))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h %02d min", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24+0.5))
}

func pageDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0 s"
	case d == time.Minute:
		return "minute"
	case d%time.Hour == 0:
		return pagePlural(int(d/time.Hour), "hour", strconv.Itoa(int(d/time.Hour))+" hours")
	case d%time.Minute == 0:
		return strconv.Itoa(int(d/time.Minute)) + " min"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + " s"
}

func pagePlural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func pageShorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !pageRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func pageRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// PreviewDomain asks what changing a domain to state would do (GET
// /api/v1/domains/{domain}/preview), changing nothing: what `pecgate
// route` can show before it asks for confirmation.
func (c *Client) PreviewDomain(ctx context.Context, name, state string) (*FlipPreview, error) {
	p := new(FlipPreview)
	path := "/api/v1/domains/" + url.PathEscape(name) + "/preview?state=" + url.QueryEscape(state)
	if err := c.do(ctx, http.MethodGet, path, nil, p); err != nil {
		return nil, err
	}
	return p, nil
}
