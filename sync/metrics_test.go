package sync

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// TestEngineMetrics: a pass counts each message it copies and its exact
// bytes under the user's domain, and each problem by kind.
func TestEngineMetrics(t *testing.T) {
	fixtures := dovetest.LoadFixtures(t)
	seeds := corpus(fixtures, "INBOX", 0, 30)
	sizes := make([]int, len(seeds))
	for i, s := range seeds {
		sizes[i] = len(s.Body)
	}
	// The new provider takes every message but the largest.
	limit := int64(slices.Max(sizes)) - 1
	big := 0
	for _, n := range sizes {
		if int64(n) > limit {
			big++
		}
	}
	r := startRig(t, rigOptions{newProv: func(p *config.Provider) { p.MaxMessageSize = limit }})
	r.old.SeedMaildir(t, testUser, seeds)
	var wantBytes int64
	for _, n := range sizes {
		if int64(n) <= limit {
			wantBytes += int64(n)
		}
	}

	bs, err := backend.New(r.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	bs.SetMetrics(m)
	e := NewEngine(Options{Config: r.cfg, Store: r.st, Maps: r.maps, Router: r.router, Backends: bs, Log: testLogger(t), Metrics: m})
	e.Remember(testUser, r.old.Password(testUser))
	p, err := e.CopyUser(context.Background(), testUser)
	if err != nil {
		t.Fatalf("CopyUser: %v", err)
	}
	if p.MessagesDone != int64(len(seeds)-big) {
		t.Fatalf("copied %d of %d, want all but the %d too big", p.MessagesDone, len(seeds), big)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range s.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = s.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"pecgate_backfill_messages_total,domain=" + testDomain + ",source=backfill": float64(len(seeds) - big),
		"pecgate_backfill_bytes_total,domain=" + testDomain + ",source=backfill":    float64(wantBytes),
		"pecgate_backfill_errors_total,domain=" + testDomain + ",kind=oversize":     float64(big),
		"pecgate_upstream_logins_total,protocol=imap,provider=old,result=ok":        1,
		"pecgate_upstream_logins_total,protocol=imap,provider=new,result=ok":        1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	series := 0
	for key := range got {
		if strings.HasPrefix(key, "pecgate_backfill_messages_total,") {
			series++
		}
	}
	if series != 1 {
		t.Errorf("%d series of pecgate_backfill_messages_total, want 1 (no copies on demand here)", series)
	}
}
