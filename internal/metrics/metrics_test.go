package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestNilSafe: every method of a nil *Metrics and a nil *Session is a
// no-op, so code given no metrics runs unchanged.
func TestNilSafe(t *testing.T) {
	var m *Metrics
	s := m.SessionStarted(ProtocolIMAP)
	if s != nil {
		t.Fatalf("nil Metrics gave a non-nil Session")
	}
	s.SetState("old")
	s.End()
	m.AuthFailure(ProtocolIMAP, ReasonBadPassword)
	m.UpstreamDial("p", ProtocolIMAP)
	m.UpstreamLogin("p", ProtocolIMAP, LoginOK)
	m.UpstreamError("p", ErrConnect)
	m.IMAPCommand("fetch")()
	m.SMTPSubmission(SubmissionDelivered)
	m.BackfillCopied("d", SourceBackfill, 10)
	m.BackfillError("d", "upstream")
}

// TestSessionsGauge follows sessions through login, a flip and their end.
func TestSessionsGauge(t *testing.T) {
	m := New(prometheus.NewRegistry())
	gauge := func(proto, state string) float64 {
		return testutil.ToFloat64(m.sessions.WithLabelValues(proto, state))
	}
	a := m.SessionStarted(ProtocolIMAP)
	b := m.SessionStarted(ProtocolIMAP)
	c := m.SessionStarted(ProtocolSMTP)
	if got := gauge(ProtocolIMAP, StateNone); got != 2 {
		t.Errorf("imap none = %v after two starts, want 2", got)
	}
	a.SetState("old")
	b.SetState("migrating")
	c.SetState("migrating")
	a.SetState("migrating") // a flip old -> migrating
	a.SetState("migrating") // repeated: no change
	if got := gauge(ProtocolIMAP, "migrating"); got != 2 {
		t.Errorf("imap migrating = %v, want 2", got)
	}
	if got := gauge(ProtocolIMAP, "old"); got != 0 {
		t.Errorf("imap old = %v after the flip, want 0", got)
	}
	if got := gauge(ProtocolIMAP, StateNone); got != 0 {
		t.Errorf("imap none = %v after the logins, want 0", got)
	}
	a.End()
	a.End() // twice: counted once
	a.SetState("new")
	b.End()
	c.End()
	for _, p := range []string{ProtocolIMAP, ProtocolSMTP} {
		for _, s := range []string{StateNone, "old", "migrating", "new"} {
			if got := gauge(p, s); got != 0 {
				t.Errorf("%s %s = %v after every session ended, want 0", p, s, got)
			}
		}
	}
	if got := testutil.ToFloat64(m.sessionsStarted.WithLabelValues(ProtocolIMAP)); got != 2 {
		t.Errorf("imap sessions started = %v, want 2", got)
	}
}

// TestExposition: the metrics come out under their documented names and
// labels in the text format, on the registry given; a second registry in
// the same process holds its own counts.
func TestExposition(t *testing.T) {
	reg1, reg2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	m1, m2 := New(reg1), New(reg2)
	m1.AuthFailure(ProtocolSMTP, ReasonThrottled)
	m1.UpstreamDial("aruba", ProtocolIMAP)
	m1.UpstreamLogin("aruba", ProtocolIMAP, LoginRefused)
	m1.UpstreamError("aruba", ErrTLS)
	m1.IMAPCommand("fetch")()
	m1.IMAPCommand("idle")()
	m1.SMTPSubmission(SubmissionDelivered)
	m1.BackfillCopied("pec.ordine.example", SourceBackfill, 1234)
	m1.BackfillCopied("pec.ordine.example", SourceBackfill, 66)
	m1.BackfillError("pec.ordine.example", "quota")
	m2.SMTPSubmission(SubmissionAborted)

	want := `
# HELP pecgate_auth_failures_total Client logins refused, by protocol and reason.
# TYPE pecgate_auth_failures_total counter
pecgate_auth_failures_total{protocol="imap",reason="bad_password"} 0
pecgate_auth_failures_total{protocol="imap",reason="throttled"} 0
pecgate_auth_failures_total{protocol="imap",reason="unknown_domain"} 0
pecgate_auth_failures_total{protocol="imap",reason="upstream_unavailable"} 0
pecgate_auth_failures_total{protocol="smtp",reason="bad_password"} 0
pecgate_auth_failures_total{protocol="smtp",reason="throttled"} 1
pecgate_auth_failures_total{protocol="smtp",reason="unknown_domain"} 0
pecgate_auth_failures_total{protocol="smtp",reason="upstream_unavailable"} 0
# HELP pecgate_backfill_bytes_total Bytes of the messages copied from the old provider to the new, by domain and source.
# TYPE pecgate_backfill_bytes_total counter
pecgate_backfill_bytes_total{domain="pec.ordine.example",source="backfill"} 1300
# HELP pecgate_backfill_errors_total Back-fill problems, by domain and kind.
# TYPE pecgate_backfill_errors_total counter
pecgate_backfill_errors_total{domain="pec.ordine.example",kind="quota"} 1
# HELP pecgate_backfill_messages_total Messages copied from the old provider to the new, by domain and source.
# TYPE pecgate_backfill_messages_total counter
pecgate_backfill_messages_total{domain="pec.ordine.example",source="backfill"} 2
# HELP pecgate_imap_commands_total IMAP commands served, by command.
# TYPE pecgate_imap_commands_total counter
pecgate_imap_commands_total{command="fetch"} 1
pecgate_imap_commands_total{command="idle"} 1
# HELP pecgate_smtp_submissions_total Messages submitted over SMTP, by result.
# TYPE pecgate_smtp_submissions_total counter
pecgate_smtp_submissions_total{result="aborted"} 0
pecgate_smtp_submissions_total{result="delivered"} 1
pecgate_smtp_submissions_total{result="failed"} 0
pecgate_smtp_submissions_total{result="rejected"} 0
# HELP pecgate_upstream_dials_total Connections opened to upstream providers.
# TYPE pecgate_upstream_dials_total counter
pecgate_upstream_dials_total{protocol="imap",provider="aruba"} 1
# HELP pecgate_upstream_errors_total Upstream provider failures, by kind.
# TYPE pecgate_upstream_errors_total counter
pecgate_upstream_errors_total{kind="tls",provider="aruba"} 1
# HELP pecgate_upstream_logins_total Logins to upstream providers, by result (ok, refused, error).
# TYPE pecgate_upstream_logins_total counter
pecgate_upstream_logins_total{protocol="imap",provider="aruba",result="refused"} 1
`
	names := []string{"pecgate_auth_failures_total", "pecgate_backfill_bytes_total", "pecgate_backfill_errors_total",
		"pecgate_backfill_messages_total", "pecgate_imap_commands_total", "pecgate_smtp_submissions_total",
		"pecgate_upstream_dials_total", "pecgate_upstream_errors_total", "pecgate_upstream_logins_total"}
	if err := testutil.GatherAndCompare(reg1, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// IDLE is counted, not timed: one observation, fetch's.
	if n := testutil.CollectAndCount(m1.imapDuration); n != 1 {
		t.Errorf("duration histograms = %d series, want 1 (fetch only)", n)
	}
	if got := testutil.ToFloat64(m2.smtpSubmissions.WithLabelValues(SubmissionDelivered)); got != 0 {
		t.Errorf("the second registry's delivered = %v: the gateways share counters", got)
	}
	if got := testutil.ToFloat64(m2.smtpSubmissions.WithLabelValues(SubmissionAborted)); got != 1 {
		t.Errorf("the second registry's aborted = %v, want 1", got)
	}
}

// TestRegisterTwicePanics: one registry per gateway; a second New on the
// same registry is a programming error, said at once.
func TestRegisterTwicePanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	defer func() {
		if recover() == nil {
			t.Error("a second New on the same registry did not panic")
		}
	}()
	New(reg)
}
