package certs

import (
	"context"
	"crypto/sha256"
	"maps"
	"os"
	"slices"
	"time"
)

// DefaultWatchInterval is the polling interval Watch uses when given zero or
// a negative interval.
const DefaultWatchInterval = 10 * time.Second

// Watch polls the configured files every interval and calls Reload when one
// of them changed since the last load (by Reload, New or Watch itself). A
// change is a file appearing or vanishing, or a different modification time
// or size confirmed by a different SHA-256 of the content, so touching a file
// or rewriting identical bytes reloads nothing. A failed reload keeps the
// previous certificates and is retried only when a file changes again.
//
// Watch blocks until ctx is done and then returns; the caller owns ctx and
// the goroutine. Zero or negative interval means DefaultWatchInterval.
func (m *Manager) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if file := m.changedFile(); file != "" {
			m.log.Info("tls file changed; reloading", "file", file)
			_ = m.Reload() // logs its own error
		}
	}
}

// changedFile returns the first configured file that differs from what the
// last load read, or "".
func (m *Manager) changedFile() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, path := range slices.Sorted(maps.Keys(m.seen)) {
		old := m.seen[path]
		fi, err := os.Stat(path)
		if err != nil || fi.IsDir() {
			if old.exists {
				return path
			}
			continue
		}
		if !old.exists {
			return path
		}
		if fi.ModTime().Equal(old.modTime) && fi.Size() == old.size {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return path
		}
		if sha256.Sum256(data) != old.sum {
			return path
		}
		// Same bytes with a new time stamp: remember it, reload nothing.
		old.modTime, old.size = fi.ModTime(), fi.Size()
		m.seen[path] = old
	}
	return ""
}
