package admin

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

const historyConfig = `
[server]
imaps = ""
imap = ""
smtps = ""
submission = ""
admin = ""

[providers.oldp]
imap = "imaps://old.test"
smtp = "smtps://old.test"

[providers.newp]
imap = "imaps://new.test"
smtp = "smtps://new.test"

[domains."a.test"]
old = "oldp"
new = "newp"
state = "migrating"

[domains."b.test"]
old = "oldp"
new = "newp"
state = "migrating"
`

// historyFixture is a History on a bbolt store with a clock the test
// moves.
type historyFixture struct {
	h   *History
	db  *bolt.DB
	now time.Time
}

func newHistoryFixture(t *testing.T) *historyFixture {
	t.Helper()
	cfg, err := config.Parse([]byte(historyConfig), "history.toml")
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	r, err := store.NewRouter(context.Background(), cfg, db)
	if err != nil {
		t.Fatal(err)
	}
	f := &historyFixture{db: db, now: time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)}
	f.h = NewHistory(HistoryOptions{Router: r, Store: db})
	f.h.now = func() time.Time { return f.now }
	return f
}

// set writes user's done counts.
func (f *historyFixture) set(t *testing.T, user string, messages, bytes int64) {
	t.Helper()
	err := f.db.Update(context.Background(), func(tx store.Tx) error {
		return store.PutProgress(tx, &store.Progress{User: user, State: PhaseCopying, MessagesDone: messages, MessagesTotal: 1000, BytesDone: bytes, BytesTotal: 1 << 30, Updated: f.now})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (f *historyFixture) sample(t *testing.T, after time.Duration) {
	t.Helper()
	f.now = f.now.Add(after)
	if err := f.h.sample(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (f *historyFixture) series(t *testing.T) map[string][]HistoryPoint {
	t.Helper()
	s, err := f.h.Series(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type histGain struct {
	messages, bytes int64
	live            bool
}

func histGainsOf(pts []HistoryPoint) []histGain {
	var out []histGain
	for _, p := range pts {
		out = append(out, histGain{p.Messages, p.Bytes, p.Live})
	}
	return out
}

func histSameGains(a, b []histGain) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestHistoryGains(t *testing.T) {
	f := newHistoryFixture(t)
	if s := f.series(t); len(s) != 0 {
		t.Fatalf("series before the first sample: %+v", s)
	}
	f.set(t, "anna@a.test", 100, 1000) // copied before the gateway started
	f.sample(t, 0)                     // baseline
	if s := f.series(t); len(s) != 0 {
		t.Fatalf("series right after the baseline: %+v", s)
	}

	f.set(t, "anna@a.test", 160, 1600)
	f.set(t, "bruno@a.test", 5, 50) // a record that appeared since
	f.set(t, "carla@b.test", 0, 0)
	f.set(t, "dario@x.test", 999, 999) // domain not served
	f.sample(t, 30*time.Second)

	f.set(t, "anna@a.test", 40, 400) // counted again: lower
	f.sample(t, 30*time.Second)

	f.set(t, "anna@a.test", 70, 700)
	f.now = f.now.Add(10 * time.Second) // live interval, not a sample
	s := f.series(t)
	if want := []histGain{{65, 650, false}, {0, 0, false}, {30, 300, true}}; !histSameGains(histGainsOf(s["a.test"]), want) {
		t.Errorf("a.test gains %+v, want %+v", histGainsOf(s["a.test"]), want)
	}
	if want := []histGain{{0, 0, false}, {0, 0, false}, {0, 0, true}}; !histSameGains(histGainsOf(s["b.test"]), want) {
		t.Errorf("b.test gains %+v, want %+v (an idle domain has zero bars, not none)", histGainsOf(s["b.test"]), want)
	}
	if _, ok := s["x.test"]; ok {
		t.Error("a domain not served has a series")
	}
	if p := s["a.test"][0]; p.MessagesPerMinute() != 130 || p.BytesPerSecond() != 650.0/30 {
		t.Errorf("first interval: %v msg/min, %v B/s; want 130 and %v", p.MessagesPerMinute(), p.BytesPerSecond(), 650.0/30)
	}
}

func TestHistoryWindow(t *testing.T) {
	f := newHistoryFixture(t)
	f.set(t, "anna@a.test", 0, 0)
	f.sample(t, 0)
	for i := 1; i <= 150; i++ { // 75 minutes of samples, 30 s apart
		f.set(t, "anna@a.test", int64(i), int64(i))
		f.sample(t, 30*time.Second)
	}
	pts := f.series(t)["a.test"]
	if len(pts) != 120 {
		t.Fatalf("%d intervals kept, want the last hour's 120", len(pts))
	}
	if first := pts[0]; !first.From.Equal(f.now.Add(-time.Hour)) {
		t.Errorf("oldest interval starts %v, want an hour before now (%v)", first.From, f.now.Add(-time.Hour))
	}
}

func TestHistoryRunStops(t *testing.T) {
	f := newHistoryFixture(t)
	f.h.now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.h.Run(ctx) }()
	// Run takes its first sample at once: the baseline.
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.h.mu.Lock()
		started := !f.h.baseAt.IsZero()
		f.h.mu.Unlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run took no sample")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestRenderChart(t *testing.T) {
	now := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	t.Run("empty", func(t *testing.T) {
		svg, note := renderChart(nil, now, time.Hour, 30*time.Second)
		if !strings.Contains(string(svg), "no sample yet") || strings.Contains(string(svg), "<rect") || note != chartEmptyNote {
			t.Errorf("empty chart %s / %q", svg, note)
		}
	})
	t.Run("bars", func(t *testing.T) {
		pts := []HistoryPoint{
			{From: now.Add(-90 * time.Minute), To: now.Add(-89 * time.Minute), Messages: 999}, // outside the window
			{From: now.Add(-2 * time.Minute), To: now.Add(-time.Minute), Messages: 600, Bytes: 6_000_000},
			{From: now.Add(-time.Minute), To: now, Messages: 3, Live: true},
		}
		svg, note := renderChart(pts, now, time.Hour, 30*time.Second)
		s := string(svg)
		if n := strings.Count(s, `<rect class="bar`); n != 2 {
			t.Errorf("%d bars, want 2 (the one before the window left out):\n%s", n, s)
		}
		if !strings.Contains(s, `class="bar live"`) || !strings.Contains(s, "600 messages, 6.0 MB (600 msg/min)") {
			t.Errorf("bars lack the live class or the interval's title:\n%s", s)
		}
		// The y axis tops at a round number above the peak.
		if !strings.Contains(s, `text-anchor="end">1k</text>`) {
			t.Errorf("y axis does not top at 1k:\n%s", s)
		}
		if !strings.HasPrefix(note, "603 messages (6.0 MB) copied in the last 2 min; peak 600 msg/min.") {
			t.Errorf("note %q", note)
		}
	})
}
