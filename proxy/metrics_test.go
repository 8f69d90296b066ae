package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"net"
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
