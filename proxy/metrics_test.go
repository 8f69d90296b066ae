package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/certs"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestIMAPMetricsMem: sessions move through the gauge by state and leave
// it at their end; commands are counted and timed; refused logins are
// counted by reason. Several clients at once, under -race.
func TestIMAPMetricsMem(t *testing.T) {
	ca, err := certs.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	const user, pass = "giulia.verdi@pec.ordine.example", "s3cret"
	up := startMemUpstream(t, ca, user, pass)
	cfg := oneProviderConfig("imaps://"+up.addr, up.caFile, "pec.ordine.example")
	for name, p := range cfg.Providers {
		p.Name = name
	}
	for name, d := range cfg.Domains {
		d.Name = name
	}
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	bs.SetMetrics(m)
	certPEM, keyPEM, err := ca.Issue("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewIMAP(Options{Config: cfg, Backends: bs, Log: testLogger(t), Metrics: m,
		TLS: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln)
	t.Cleanup(func() { srv.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())
	dial := func() *imapclient.Client {
		c, err := imapclient.DialTLS(ln.Addr().String(), &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, s := range mf.GetMetric() {
				if metricHasLabels(s, labels) {
					switch {
					case s.Counter != nil:
						return s.GetCounter().GetValue()
					case s.Gauge != nil:
						return s.GetGauge().GetValue()
					case s.Histogram != nil:
						return float64(s.GetHistogram().GetSampleCount())
					}
				}
			}
		}
		return 0
	}
	sessions := func(state string) float64 {
		return value("pecgate_sessions", map[string]string{"protocol": "imap", "state": state})
	}
	waitSessions := func(state string, want float64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for sessions(state) != want {
			if time.Now().After(deadline) {
				t.Fatalf("pecgate_sessions{imap,%s} = %v, want %v", state, sessions(state), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	const n = 3
	var clients []*imapclient.Client
	for range n {
		clients = append(clients, dial())
	}
	waitSessions("none", n)
	done := make(chan error, n)
	for _, c := range clients {
		go func() {
			if err := c.Login(user, pass).Wait(); err != nil {
				done <- err
				return
			}
			if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
				done <- err
				return
			}
			_, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true}).Collect()
			done <- err
		}()
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := sessions("old"); got != n {
		t.Errorf("sessions in state old = %v, want %d", got, n)
	}
	if got := sessions("none"); got != 0 {
		t.Errorf("sessions not logged in = %v after the logins, want 0", got)
	}
	for cmd, want := range map[string]float64{"login": n, "examine": n, "fetch": n, "select": 0} {
		if got := value("pecgate_imap_commands_total", map[string]string{"command": cmd}); got != want {
			t.Errorf("pecgate_imap_commands_total{%s} = %v, want %v", cmd, got, want)
		}
	}
	if got := value("pecgate_imap_command_duration_seconds", map[string]string{"command": "fetch"}); got != n {
		t.Errorf("fetch latency observations = %v, want %d", got, n)
	}
	if got := value("pecgate_upstream_logins_total", map[string]string{"provider": "old", "protocol": "imap", "result": "ok"}); got != n {
		t.Errorf("upstream logins ok = %v, want %d", got, n)
	}

	bad := dial()
	if bad.Login(user, "wrong").Wait() == nil {
		t.Fatal("wrong password accepted")
	}
	if bad.Login("someone@elsewhere.example", pass).Wait() == nil {
		t.Fatal("unknown domain accepted")
	}
	for reason, want := range map[string]float64{"bad_password": 1, "unknown_domain": 1, "throttled": 0} {
		if got := value("pecgate_auth_failures_total", map[string]string{"protocol": "imap", "reason": reason}); got != want {
			t.Errorf("auth failures %s = %v, want %v", reason, got, want)
		}
	}
	if got := value("pecgate_upstream_logins_total", map[string]string{"provider": "old", "protocol": "imap", "result": "refused"}); got != 1 {
		t.Errorf("upstream logins refused = %v, want 1", got)
	}

	for _, c := range append(clients, bad) {
		c.Logout().Wait()
		c.Close()
	}
	waitSessions("old", 0)
	waitSessions("none", 0)
	if got := value("pecgate_sessions_started_total", map[string]string{"protocol": "imap"}); got != n+1 {
		t.Errorf("sessions started = %v, want %d", got, n+1)
	}
}

func metricHasLabels(m *dto.Metric, labels map[string]string) bool {
	if len(m.GetLabel()) != len(labels) {
		return false
	}
	for _, l := range m.GetLabel() {
		if labels[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

// TestSMTPMetrics: each submission is counted by its outcome (delivered,
// rejected as too big, aborted by the client), refused logins by reason,
// and the session is in the gauge by state until its connection ends.
func TestSMTPMetrics(t *testing.T) {
	tt := newSMTPTestTLS(t)
	up := startSMTPProvider(t, tt, smtpUpOptions{})
	cfg := smtpTestConfig("smtps://"+up.addr, tt.caFile, smtpGWOptions{providerMax: 64 << 10})
	set, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	set.SetMetrics(m)
	logs := &smtpLogBuffer{}
	gw := serveSMTPGateway(t, Options{Config: cfg, Backends: set, TLS: tt.server, Log: slog.New(slog.NewJSONHandler(logs, nil)), Metrics: m}, logs)
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			for _, s := range mf.GetMetric() {
				if mf.GetName() == name && metricHasLabels(s, labels) {
					return s.GetCounter().GetValue() + s.GetGauge().GetValue()
				}
			}
		}
		return 0
	}
	waitValue := func(name string, labels map[string]string, want float64) {
		t.Helper()
		deadline := time.Now().Add(smtpWait)
		for value(name, labels) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s%v = %v, want %v", name, labels, value(name, labels), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	submissions := func(result string) float64 {
		return value("pecgate_smtp_submissions_total", map[string]string{"result": result})
	}

	c := dialSMTP(t, gw.smtps, tt.clientTLS)
	c.do("EHLO client.test", smtpEHLOTLS)
	waitValue("pecgate_sessions", map[string]string{"protocol": "smtp", "state": "none"}, 1)
	c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+smtpTestUser+"\x00wrong")))
	if r := c.reply(); !strings.HasPrefix(r, "535") {
		t.Fatalf("AUTH with a wrong password: %q", r)
	}
	c.login(smtpTestUser, smtpTestPass)
	if got := value("pecgate_sessions", map[string]string{"protocol": "smtp", "state": "old"}); got != 1 {
		t.Errorf("SMTP sessions in state old = %v after AUTH, want 1", got)
	}
	send := func(size int, wantReply string) {
		t.Helper()
		c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
		c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
		c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
		c.writeData(smtpGenMessage(size, false), true)
		if got := c.reply(); got != wantReply {
			t.Fatalf("end of DATA: %q, want %q", got, wantReply)
		}
	}
	send(1000, "250 2.0.0 Ok: queued as Q1")
	send(100<<10, "552 5.3.4 Max message size exceeded")
	if d, r := submissions("delivered"), submissions("rejected"); d != 1 || r != 1 {
		t.Errorf("submissions: %v delivered, %v rejected; want 1 and 1", d, r)
	}
	// The client goes away in the middle of a message.
	c.do("MAIL FROM:<"+smtpTestUser+">", "250 2.0.0 Roger, accepting mail from <"+smtpTestUser+">")
	c.do("RCPT TO:<"+smtpTestRcpt+">", "250 2.0.0 I'll make sure <"+smtpTestRcpt+"> gets this")
	c.do("DATA", "354 Go ahead. End your data with <CR><LF>.<CR><LF>")
	c.writeData(smtpGenMessage(32<<10, false), false)
	c.conn.Close()
	waitValue("pecgate_smtp_submissions_total", map[string]string{"result": "aborted"}, 1)
	waitValue("pecgate_sessions", map[string]string{"protocol": "smtp", "state": "old"}, 0)
	if got := submissions("failed"); got != 0 {
		t.Errorf("submissions failed = %v, want 0", got)
	}
	for reason, want := range map[string]float64{"bad_password": 1, "unknown_domain": 0} {
		if got := value("pecgate_auth_failures_total", map[string]string{"protocol": "smtp", "reason": reason}); got != want {
			t.Errorf("SMTP auth failures %s = %v, want %v", reason, got, want)
		}
	}
	if got := value("pecgate_upstream_logins_total", map[string]string{"provider": "vecchio", "protocol": "smtp", "result": "refused"}); got != 1 {
		t.Errorf("upstream SMTP logins refused = %v, want 1", got)
	}
	// One JSON line for the session's start and one for its end, the end
	// naming the member.
	var starts, ends int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l map[string]any
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line not JSON: %v: %s", err, line)
		}
		switch l["msg"] {
		case "session start":
			starts++
			if l["cid"] == nil || l["proto"] != "smtp" {
				t.Errorf("session start without cid or proto: %s", line)
			}
		case "session end":
			ends++
			if l["cid"] == nil || l["user"] != smtpTestUser || l["domain"] != smtpTestDomain || l["provider"] != "vecchio" {
				t.Errorf("session end without cid, user, domain or provider: %s", line)
			}
		}
	}
	if starts != 1 || ends != 1 {
		t.Errorf("%d session start and %d session end lines, want 1 and 1:\n%s", starts, ends, logs)
	}
}
