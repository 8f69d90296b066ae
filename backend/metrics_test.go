package backend

import (
	"context"
	"testing"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// TestProviderMetrics: dials, logins by result and failures by kind are
// counted on the registry the provider was given.
func TestProviderMetrics(t *testing.T) {
	mp := startMem(t)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	p := provider(t, config.Provider{IMAP: "imaps://" + mp.imaps, CA: mp.caFile, MaxConnections: 1})
	p.SetMetrics(m)
	ctx := context.Background()

	c, err := p.LoginIMAP(ctx, "u@example.org", "pw", nil)
	if err != nil {
		t.Fatal(err)
	}
	busy, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := p.DialIMAP(busy, nil); err == nil {
		t.Fatal("a second connection over a cap of 1 succeeded")
	}
	c.Logout()
	if _, err := p.LoginIMAP(ctx, "u@example.org", "wrong", nil); !IsAuthFailure(err) {
		t.Fatalf("wrong password: %v", err)
	}

	ln, _ := listenLoopback()
	dead := ln.Addr().String()
	ln.Close()
	gone := provider(t, config.Provider{IMAP: "imaps://" + dead, ConnectTimeout: config.Duration(2 * time.Second)})
	gone.Name = "gone"
	set := &Set{providers: map[string]*Provider{"gone": gone}}
	set.SetMetrics(m)
	if _, err := gone.LoginIMAP(ctx, "u", "p", nil); err == nil {
		t.Fatal("login to a closed port succeeded")
	}

	for _, tc := range []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		// Two logins and the capped dial that never dialled (busy).
		{"dials", "pecgate_upstream_dials_total", map[string]string{"provider": "test", "protocol": "imap"}, 2},
		{"ok", "pecgate_upstream_logins_total", map[string]string{"provider": "test", "protocol": "imap", "result": "ok"}, 1},
		{"refused", "pecgate_upstream_logins_total", map[string]string{"provider": "test", "protocol": "imap", "result": "refused"}, 1},
		{"busy", "pecgate_upstream_errors_total", map[string]string{"provider": "test", "kind": "busy"}, 1},
		{"gone dialled", "pecgate_upstream_dials_total", map[string]string{"provider": "gone", "protocol": "imap"}, 1},
		{"gone connect", "pecgate_upstream_errors_total", map[string]string{"provider": "gone", "kind": "connect"}, 1},
	} {
		if got := gatheredValue(t, reg, tc.metric, tc.labels); got != tc.want {
			t.Errorf("%s: %s%v = %v, want %v", tc.name, tc.metric, tc.labels, got, tc.want)
		}
	}
	// A refusal is the member's, not the provider's failure.
	if got := gatheredValue(t, reg, "pecgate_upstream_errors_total", map[string]string{"provider": "test", "kind": "login"}); got != 0 {
		t.Errorf("a refused password counted as an upstream login error (%v)", got)
	}
}

// gatheredValue returns the value of the series of name with exactly
// labels in reg, 0 when absent.
func gatheredValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}
