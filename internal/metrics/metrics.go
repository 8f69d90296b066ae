// Package metrics holds pecgate's Prometheus collectors. New registers them
// on the registry it is given (never on the global one), so one process,
// a test for instance, can run several gateways, each with its own
// registry. Every method is safe on a nil *Metrics and then does nothing:
// code and tests that pass no metrics keep working.
//
// The metrics and their label values:
//
//	pecgate_sessions{protocol,state}                 gauge: open client sessions
//	    protocol: imap | smtp
//	    state: none (not logged in yet) | old | migrating | new
//	pecgate_sessions_started_total{protocol}         client sessions accepted
//	pecgate_auth_failures_total{protocol,reason}     client logins refused
//	    reason: bad_password (the provider or the pinned verifier refused it)
//	          | unknown_domain (no such domain served; nothing dialled)
//	          | throttled (too many failures; the provider was not asked)
//	          | upstream_unavailable (the provider could not be reached)
//	          | bad_identity (SMTP: an authorization identity other than the user)
//	pecgate_upstream_dials_total{provider,protocol}  connections opened to a provider (imap | smtp)
//	pecgate_upstream_logins_total{provider,protocol,result}
//	    result: ok | refused (the credentials) | error (the provider failed during login)
//	pecgate_upstream_errors_total{provider,kind}     provider failures
//	    kind: connect (TCP) | tls (handshake, certificate, STARTTLS)
//	        | greeting (no greeting, EHLO failed) | busy (connection cap reached)
//	        | login (broke or timed out during login) | broken (a session's
//	          connection broke mid-command)
//	pecgate_imap_commands_total{command}             IMAP commands served
//	pecgate_imap_command_duration_seconds{command}   their latency (IDLE is counted, not timed)
//	    command: the lower-case IMAP command: login, select, examine, create,
//	      delete, rename, subscribe, unsubscribe, list, status, append, idle,
//	      expunge, search, fetch, store, copy, move, namespace, unselect
//	      (UID variants count under the plain name)
//	pecgate_smtp_submissions_total{result}           messages submitted (one per DATA/BDAT)
//	    result: delivered (the provider accepted it) | rejected (the provider
//	          refused it, or it was over the size limit) | failed (the provider
//	          connection broke) | aborted (the client cut the message short)
//	pecgate_backfill_messages_total{domain,source}   messages copied old -> new
//	pecgate_backfill_bytes_total{domain,source}      their bytes
//	    source: backfill (the background engine) | on_demand (a session's
//	          write to a message not yet in new)
//	pecgate_backfill_errors_total{domain,kind}       copy problems, by the engine's
//	    error kinds (sync.Kind*: upstream, quota, oversize, folder, auth, ...),
//	    and on_demand (a session's copy failed; the back-fill retries it)
package metrics

import (
	gosync "sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values shared by the callers.
const (
	ProtocolIMAP = "imap"
	ProtocolSMTP = "smtp"

	StateNone = "none" // a session not logged in yet

	ReasonBadPassword         = "bad_password"
	ReasonUnknownDomain       = "unknown_domain"
	ReasonThrottled           = "throttled"
	ReasonUpstreamUnavailable = "upstream_unavailable"
	ReasonBadIdentity         = "bad_identity"

	LoginOK      = "ok"
	LoginRefused = "refused"
	LoginError   = "error"

	ErrConnect  = "connect"
	ErrTLS      = "tls"
	ErrGreeting = "greeting"
	ErrBusy     = "busy"
	ErrLogin    = "login"
	ErrBroken   = "broken"

	SubmissionDelivered = "delivered"
	SubmissionRejected  = "rejected"
	SubmissionFailed    = "failed"
	SubmissionAborted   = "aborted"

	SourceBackfill = "backfill"
	SourceOnDemand = "on_demand"

	KindOnDemand = "on_demand" // pecgate_backfill_errors_total: a session's copy failed
)

// Metrics holds the collectors. The zero value is not usable; a nil
// *Metrics is, and records nothing.
type Metrics struct {
	sessions         *prometheus.GaugeVec
	sessionsStarted  *prometheus.CounterVec
	authFailures     *prometheus.CounterVec
	upstreamDials    *prometheus.CounterVec
	upstreamLogins   *prometheus.CounterVec
	upstreamErrors   *prometheus.CounterVec
	imapCommands     *prometheus.CounterVec
	imapDuration     *prometheus.HistogramVec
	smtpSubmissions  *prometheus.CounterVec
	backfillMessages *prometheus.CounterVec
	backfillBytes    *prometheus.CounterVec
	backfillErrors   *prometheus.CounterVec
}

// commandBuckets are the IMAP latency buckets, in seconds: from a cached
// answer (a millisecond) to a large FETCH or APPEND streamed from a slow
// provider (minutes).
var commandBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// New makes the collectors and registers them on reg; nil reg registers
// them nowhere (they still count). It panics if reg already holds
// pecgate's metrics: give each gateway its own registry.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pecgate_sessions", Help: "Open client sessions by protocol and the migration state they serve (none: not logged in yet).",
		}, []string{"protocol", "state"}),
		sessionsStarted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_sessions_started_total", Help: "Client sessions accepted, by protocol.",
		}, []string{"protocol"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_auth_failures_total", Help: "Client logins refused, by protocol and reason.",
		}, []string{"protocol", "reason"}),
		upstreamDials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_upstream_dials_total", Help: "Connections opened to upstream providers.",
		}, []string{"provider", "protocol"}),
		upstreamLogins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_upstream_logins_total", Help: "Logins to upstream providers, by result (ok, refused, error).",
		}, []string{"provider", "protocol", "result"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_upstream_errors_total", Help: "Upstream provider failures, by kind.",
		}, []string{"provider", "kind"}),
		imapCommands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_imap_commands_total", Help: "IMAP commands served, by command.",
		}, []string{"command"}),
		imapDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pecgate_imap_command_duration_seconds", Help: "Time to serve an IMAP command (IDLE excluded).",
			Buckets: commandBuckets,
		}, []string{"command"}),
		smtpSubmissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_smtp_submissions_total", Help: "Messages submitted over SMTP, by result.",
		}, []string{"result"}),
		backfillMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_backfill_messages_total", Help: "Messages copied from the old provider to the new, by domain and source.",
		}, []string{"domain", "source"}),
		backfillBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_backfill_bytes_total", Help: "Bytes of the messages copied from the old provider to the new, by domain and source.",
		}, []string{"domain", "source"}),
		backfillErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pecgate_backfill_errors_total", Help: "Back-fill problems, by domain and kind.",
		}, []string{"domain", "kind"}),
	}
	// Series known in advance start at zero, so a rate() has a base and a
	// dashboard shows them before the first event.
	for _, p := range []string{ProtocolIMAP, ProtocolSMTP} {
		m.sessionsStarted.WithLabelValues(p)
		for _, s := range []string{StateNone, "old", "migrating", "new"} {
			m.sessions.WithLabelValues(p, s)
		}
		for _, r := range []string{ReasonBadPassword, ReasonUnknownDomain, ReasonThrottled, ReasonUpstreamUnavailable} {
			m.authFailures.WithLabelValues(p, r)
		}
	}
	for _, r := range []string{SubmissionDelivered, SubmissionRejected, SubmissionFailed, SubmissionAborted} {
		m.smtpSubmissions.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.sessions, m.sessionsStarted, m.authFailures,
			m.upstreamDials, m.upstreamLogins, m.upstreamErrors,
			m.imapCommands, m.imapDuration, m.smtpSubmissions,
			m.backfillMessages, m.backfillBytes, m.backfillErrors)
	}
	return m
}

// Session follows one client session in pecgate_sessions. Its methods are
// safe on nil and for concurrent use.
type Session struct {
	m        *Metrics
	protocol string
	mu       gosync.Mutex
	state    string
	ended    bool
}

// SessionStarted counts a new session of protocol (ProtocolIMAP or
// ProtocolSMTP), open and not logged in (StateNone), until End. On a nil
// *Metrics it returns nil, which is a valid *Session.
func (m *Metrics) SessionStarted(protocol string) *Session {
	if m == nil {
		return nil
	}
	m.sessionsStarted.WithLabelValues(protocol).Inc()
	m.sessions.WithLabelValues(protocol, StateNone).Inc()
	return &Session{m: m, protocol: protocol, state: StateNone}
}

// SetState moves the session to state (old, migrating, new; "" means
// StateNone): at login, and at a flip applied to the live session.
func (s *Session) SetState(state string) {
	if s == nil {
		return
	}
	if state == "" {
		state = StateNone
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.state == state {
		return
	}
	s.m.sessions.WithLabelValues(s.protocol, s.state).Dec()
	s.m.sessions.WithLabelValues(s.protocol, state).Inc()
	s.state = state
}

// End closes the session; later calls do nothing.
func (s *Session) End() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	s.m.sessions.WithLabelValues(s.protocol, s.state).Dec()
}

// AuthFailure counts a client login refused for reason (Reason*).
func (m *Metrics) AuthFailure(protocol, reason string) {
	if m == nil {
		return
	}
	m.authFailures.WithLabelValues(protocol, reason).Inc()
}

// UpstreamDial counts a connection opened (attempted) to provider.
func (m *Metrics) UpstreamDial(provider, protocol string) {
	if m == nil {
		return
	}
	m.upstreamDials.WithLabelValues(provider, protocol).Inc()
}

// UpstreamLogin counts a login to provider with its result (LoginOK,
// LoginRefused, LoginError).
func (m *Metrics) UpstreamLogin(provider, protocol, result string) {
	if m == nil {
		return
	}
	m.upstreamLogins.WithLabelValues(provider, protocol, result).Inc()
}

// UpstreamError counts a failure of provider of kind (Err*).
func (m *Metrics) UpstreamError(provider, kind string) {
	if m == nil {
		return
	}
	m.upstreamErrors.WithLabelValues(provider, kind).Inc()
}

// IMAPCommand counts command (lower case) and returns the function that
// observes its duration when the command ends: defer
// m.IMAPCommand("fetch")(). IDLE is counted and not timed (its length is
// the client's choice).
func (m *Metrics) IMAPCommand(command string) (done func()) {
	if m == nil {
		return func() {}
	}
	m.imapCommands.WithLabelValues(command).Inc()
	if command == "idle" {
		return func() {}
	}
	start := time.Now()
	h := m.imapDuration.WithLabelValues(command)
	return func() { h.Observe(time.Since(start).Seconds()) }
}

// SMTPSubmission counts one message submitted, by result (Submission*).
func (m *Metrics) SMTPSubmission(result string) {
	if m == nil {
		return
	}
	m.smtpSubmissions.WithLabelValues(result).Inc()
}

// BackfillCopied counts one message of size bytes copied old -> new for
// domain, by source (SourceBackfill, SourceOnDemand).
func (m *Metrics) BackfillCopied(domain, source string, size int64) {
	if m == nil {
		return
	}
	m.backfillMessages.WithLabelValues(domain, source).Inc()
	if size > 0 {
		m.backfillBytes.WithLabelValues(domain, source).Add(float64(size))
	}
}

// BackfillError counts a back-fill problem of kind for domain.
func (m *Metrics) BackfillError(domain, kind string) {
	if m == nil {
		return
	}
	m.backfillErrors.WithLabelValues(domain, kind).Inc()
}
