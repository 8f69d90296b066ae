package admin

// The copy history behind the status page's chart (issue 5, item 2).
//
// Implementation notes:
//
//   - A History samples the store's progress records every Every (30 s by
//     default) and keeps, per served domain, how many messages and bytes
//     its members' records gained between two samples, for the last
//     Window (an hour by default). Memory only: a restart starts an empty
//     chart.
//   - A member's gain is its MessagesDone (BytesDone) now minus at the
//     previous sample. A record that went down (a pass counted the mail
//     again and found fewer in new, e.g. after a UIDVALIDITY change) gains
//     nothing; one that appeared since the previous sample gains all it
//     has. The first sample is only the baseline.
//   - The page shows the stored intervals plus a live one, from the last
//     sample to the moment of the request (Series), so a freshly started
//     gateway shows its first minute too.
//   - Run is the only goroutine; its caller owns it (STYLE rule 6).

import (
	"context"
	"fmt"
	"log/slog"
	gosync "sync"
	"time"

	"github.com/pecgate/pecgate/store"
)

// Defaults of HistoryOptions.
const (
	DefaultHistoryEvery  = 30 * time.Second
	DefaultHistoryWindow = time.Hour
)

// HistoryOptions configure a History.
type HistoryOptions struct {
	// Router says which domain each user belongs to. Required.
	Router *store.Router
	// Store holds the back-fill's progress records. Required.
	Store store.Store
	// Every is the sampling interval. Zero or negative means
	// DefaultHistoryEvery (30 s).
	Every time.Duration
	// Window is how far back samples are kept. Zero or negative means
	// DefaultHistoryWindow (an hour).
	Window time.Duration
	// Log receives a line when a sample cannot be read. nil discards it.
	Log *slog.Logger
}

// History keeps, per domain, the messages and bytes copied in each
// sampling interval of the last hour: the status page's chart
// (Options.History). Run takes the samples. It is safe for concurrent use.
type History struct {
	opts HistoryOptions
	now  func() time.Time

	mu     gosync.Mutex
	base   map[string]histCopied // user -> done counts at baseAt
	baseAt time.Time             // zero until the first sample
	points map[string][]HistoryPoint
}

// histCopied is a user's done counts.
type histCopied struct {
	domain          string
	messages, bytes int64
}

// HistoryPoint is what a domain's members copied between From and To.
type HistoryPoint struct {
	From, To time.Time
	Messages int64
	Bytes    int64
	// Live is true for the interval still open: from the last sample to
	// the moment Series was asked.
	Live bool
}

// MessagesPerMinute is the interval's copy rate.
func (p HistoryPoint) MessagesPerMinute() float64 {
	m := p.To.Sub(p.From).Minutes()
	if m <= 0 {
		return 0
	}
	return float64(p.Messages) / m
}

// BytesPerSecond is the interval's byte rate.
func (p HistoryPoint) BytesPerSecond() float64 {
	s := p.To.Sub(p.From).Seconds()
	if s <= 0 {
		return 0
	}
	return float64(p.Bytes) / s
}

// NewHistory returns an empty History. It panics when opts.Router or
// opts.Store is nil.
func NewHistory(opts HistoryOptions) *History {
	if opts.Router == nil || opts.Store == nil {
		panic("admin: NewHistory needs a Router and a Store")
	}
	if opts.Every <= 0 {
		opts.Every = DefaultHistoryEvery
	}
	if opts.Window <= 0 {
		opts.Window = DefaultHistoryWindow
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &History{opts: opts, now: time.Now, points: map[string][]HistoryPoint{}}
}

// Every returns the sampling interval.
func (h *History) Every() time.Duration { return h.opts.Every }

// Window returns how far back the samples go.
func (h *History) Window() time.Duration { return h.opts.Window }

// Run takes a sample at once, then one every Every, until ctx ends; then
// it returns nil. A sample that cannot be read is logged and skipped (the
// next interval then spans both).
func (h *History) Run(ctx context.Context) error {
	t := time.NewTicker(h.opts.Every)
	defer t.Stop()
	for {
		if err := h.sample(ctx); err != nil && ctx.Err() == nil {
			h.opts.Log.Warn("copy history: sample failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// read returns every progress record's done counts, by user, with the
// user's domain; users of domains not served are left out.
func (h *History) read(ctx context.Context) (map[string]histCopied, error) {
	out := map[string]histCopied{}
	err := h.opts.Store.View(ctx, func(tx store.Tx) error {
		list, err := store.ListProgress(tx)
		if err != nil {
			return err
		}
		for _, p := range list {
			rt := h.opts.Router.Route(p.User)
			if rt == nil {
				continue
			}
			out[store.CanonicalUser(p.User)] = histCopied{domain: rt.Domain.Name, messages: p.MessagesDone, bytes: p.BytesDone}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the copy progress: %w", err)
	}
	return out, nil
}

// gains returns, per served domain, what cur gained over base.
func (h *History) gains(base, cur map[string]histCopied) map[string]histCopied {
	out := map[string]histCopied{}
	for _, d := range h.opts.Router.Domains() {
		out[d.Name] = histCopied{domain: d.Name}
	}
	for u, c := range cur {
		g, ok := out[c.domain]
		if !ok {
			continue
		}
		b, seen := base[u]
		switch {
		case !seen:
			g.messages += max(c.messages, 0)
			g.bytes += max(c.bytes, 0)
		default:
			g.messages += max(c.messages-b.messages, 0)
			g.bytes += max(c.bytes-b.bytes, 0)
		}
		out[c.domain] = g
	}
	return out
}

// sample reads the records and closes the interval since the previous
// sample.
func (h *History) sample(ctx context.Context) error {
	cur, err := h.read(ctx)
	if err != nil {
		return err
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.baseAt.IsZero() && now.After(h.baseAt) {
		for name, g := range h.gains(h.base, cur) {
			h.points[name] = append(h.points[name], HistoryPoint{From: h.baseAt, To: now, Messages: g.messages, Bytes: g.bytes})
		}
	}
	h.base, h.baseAt = cur, now
	cutoff := now.Add(-h.opts.Window)
	for name, pts := range h.points {
		i := 0
		for i < len(pts) && !pts[i].To.After(cutoff) {
			i++
		}
		if i == len(pts) {
			delete(h.points, name)
			continue
		}
		h.points[name] = pts[i:]
	}
	return nil
}

// Series returns each served domain's intervals of the last Window, oldest
// first, ending with a Live one from the last sample to now (when at least
// a second has passed); none before the first sample.
func (h *History) Series(ctx context.Context) (map[string][]HistoryPoint, error) {
	cur, err := h.read(ctx)
	if err != nil {
		return nil, err
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]HistoryPoint{}
	cutoff := now.Add(-h.opts.Window)
	for name, pts := range h.points {
		for _, p := range pts {
			if p.To.After(cutoff) {
				out[name] = append(out[name], p)
			}
		}
	}
	if h.baseAt.IsZero() || now.Sub(h.baseAt) < time.Second {
		return out, nil
	}
	for name, g := range h.gains(h.base, cur) {
		out[name] = append(out[name], HistoryPoint{From: h.baseAt, To: now, Messages: g.messages, Bytes: g.bytes, Live: true})
	}
	return out, nil
}
