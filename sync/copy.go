// Package sync copies mail from the old provider to the new one: byte for
// byte, with flags and INTERNALDATE, reading old with BODY.PEEK only and
// writing new with APPEND (never SMTP: a PEC submission is a new legal
// transaction). Each copy's mapping is recorded in the same store
// transaction that ends the copy (invariant 6).
//
// This file is the minimal synchronous copy used by writes during
// migration (copy first, then act on new); the background engine builds on
// it.
package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/store"
)

// Copier copies single messages; it is safe for concurrent use. The zero
// value counts nothing.
type Copier struct {
	// Metrics counts each message copied, by the domain of the map's user;
	// nil: none.
	Metrics *metrics.Metrics
	// Source labels the copies in Metrics: "" is metrics.SourceOnDemand
	// (a session's copy); the engine's copier says metrics.SourceBackfill.
	Source string
}

// errNoUIDPlus: the new provider gave no APPENDUID; finding the copy by
// content is for the background engine.
var errNoUIDPlus = errors.New("sync: the new provider did not return APPENDUID (UIDPLUS)")

// CopyToNew copies old UID oldUID of the mailbox selected on oldC to
// newMailbox through newC and records virtual v -> new UID in entry's map.
// The message is streamed: FETCH's literal feeds APPEND's.
//
// If the map already says v is in new (another session copied it
// meanwhile), nothing is copied and that UID is returned.
func (c Copier) CopyToNew(ctx context.Context, oldC, newC *backend.IMAPConn, entry *store.MapEntry, maps *store.MapCache, newMailbox string, v, oldUID store.UID) (store.UID, error) {
	// One copier per (user, mailbox) at a time: two sessions writing to
	// the same uncopied message must not both append it.
	entry.Lock()
	defer entry.Unlock()
	_, have, ok := entry.M.Lookup(v)
	if !ok {
		return 0, fmt.Errorf("message %d was expunged or is unknown: not copied", v)
	}
	if have != 0 {
		return have, nil
	}
	uid := imap.UIDSetNum(imap.UID(oldUID))
	meta, err := oldC.Fetch(uid, &imap.FetchOptions{UID: true, Flags: true, InternalDate: true, RFC822Size: true}).Collect()
	if err != nil {
		return 0, fmt.Errorf("read flags of old UID %d: %w", oldUID, err)
	}
	if len(meta) != 1 {
		return 0, fmt.Errorf("old UID %d is gone from the old provider", oldUID)
	}
	flags := make([]imap.Flag, 0, len(meta[0].Flags))
	for _, f := range meta[0].Flags {
		if !strings.EqualFold(string(f), `\Recent`) { // \Recent cannot be set by APPEND
			flags = append(flags, f)
		}
	}
	body := &imap.FetchItemBodySection{Peek: true}
	cmd := oldC.Fetch(uid, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}})
	defer cmd.Close()
	msg := cmd.Next()
	if msg == nil {
		return 0, fmt.Errorf("old UID %d: no body returned: %w", oldUID, cmd.Close())
	}
	var lit imap.LiteralReader
	for item := msg.Next(); item != nil; item = msg.Next() {
		if b, ok := item.(imapclient.FetchItemDataBodySection); ok && b.MatchCommand(body) {
			lit = b.Literal
			break
		}
	}
	if lit == nil {
		return 0, fmt.Errorf("old UID %d: no BODY[] in the answer", oldUID)
	}
	// Write-ahead: a crash between the APPEND and its record must leave a
	// trace, so the copy is adopted later instead of showing twice or being
	// copied again (invariant 6). Recover resolves intents.
	intent := store.Intent{V: v, Old: oldUID, Size: lit.Size(), InternalDate: meta[0].InternalDate}
	if err := maps.Store().Update(ctx, func(tx store.Tx) error {
		return store.PutIntent(tx, entry.User, entry.Mailbox, intent)
	}); err != nil {
		return 0, fmt.Errorf("record copy intent of %d: %w", v, err)
	}
	app := newC.Append(newMailbox, lit.Size(), &imap.AppendOptions{Flags: flags, Time: meta[0].InternalDate})
	src := &readErr{r: lit}
	n, err := io.Copy(app, src)
	if err == nil && n != lit.Size() {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		// Inside the APPEND literal: only dropping the connection makes sure
		// no truncated copy is stored.
		newC.Close()
		app.Close()
		if src.err != nil {
			// Old broke mid-literal: close it (Close waits for imapclient's
			// reader to stop) before the deferred cmd.Close discards the
			// rest, or both would read the connection's buffer at once.
			oldC.Close()
		}
		return 0, fmt.Errorf("stream old UID %d: %w", oldUID, err)
	}
	if err := app.Close(); err != nil {
		return 0, fmt.Errorf("append old UID %d: %w", oldUID, err)
	}
	data, err := app.Wait()
	if err != nil {
		return 0, fmt.Errorf("append old UID %d: %w", oldUID, err)
	}
	if data.UID == 0 {
		return 0, errNoUIDPlus
	}
	m := entry.M.Clone()
	if err := m.SetNew(v, store.UID(data.UID)); err != nil {
		return 0, fmt.Errorf("record copy of %d: %w", v, err)
	}
	prev := entry.M
	entry.M = m
	if err := maps.Save(ctx, entry, func(tx store.Tx) error {
		return store.DeleteIntent(tx, entry.User, entry.Mailbox, v)
	}); err != nil {
		entry.M = prev
		return 0, fmt.Errorf("record copy of %d: %w", v, err)
	}
	source := c.Source
	if source == "" {
		source = metrics.SourceOnDemand
	}
	c.Metrics.BackfillCopied(domainOf(entry.User), source, lit.Size())
	return store.UID(data.UID), nil
}

// Recover resolves the copies in flight of entry's mailbox left by a crash:
// each intent whose copy is among unknown (new UIDs no map entry names)
// with the same size and INTERNALDATE and the same SHA-256 as the old
// message is adopted (v -> new UID); the others are forgotten, and the
// message stays to be copied. oldC and newC have the mailbox selected.
// It returns the new UIDs adopted. The caller holds no lock on entry.
func (Copier) Recover(ctx context.Context, oldC, newC *backend.IMAPConn, entry *store.MapEntry, maps *store.MapCache, unknown []store.UID) ([]store.UID, error) {
	var intents []store.Intent
	if err := maps.Store().View(ctx, func(tx store.Tx) error {
		var err error
		intents, err = store.ListIntents(tx, entry.User, entry.Mailbox)
		return err
	}); err != nil || len(intents) == 0 {
		return nil, err
	}
	type meta struct {
		size int64
		date time.Time
	}
	cands := map[store.UID]meta{}
	if len(unknown) > 0 {
		var set imap.UIDSet
		for _, n := range unknown {
			set.AddNum(imap.UID(n))
		}
		msgs, err := newC.Fetch(set, &imap.FetchOptions{UID: true, RFC822Size: true, InternalDate: true}).Collect()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			cands[store.UID(m.UID)] = meta{m.RFC822Size, m.InternalDate}
		}
	}
	var adopted []store.UID
	entry.Lock()
	defer entry.Unlock()
	for _, in := range intents {
		var match store.UID
		if oldC != nil {
			for n, m := range cands {
				if m.size != in.Size || !m.date.Equal(in.InternalDate) {
					continue
				}
				same, err := sameBytes(oldC, newC, in.Old, n)
				if err != nil {
					return adopted, err
				}
				if same {
					match = n
					break
				}
			}
		}
		m := entry.M.Clone()
		if match != 0 {
			if _, n, ok := m.Lookup(in.V); !ok || n != 0 || m.SetNew(in.V, match) != nil {
				match = 0
			}
		}
		prev := entry.M
		entry.M = m
		if err := maps.Save(ctx, entry, func(tx store.Tx) error {
			return store.DeleteIntent(tx, entry.User, entry.Mailbox, in.V)
		}); err != nil {
			entry.M = prev
			return adopted, err
		}
		if match != 0 {
			delete(cands, match)
			adopted = append(adopted, match)
		}
	}
	return adopted, nil
}

// sameBytes compares the SHA-256 of old UID o and new UID n, streaming
// (hashUID, shared with adoption). A UID gone from either side is no match.
func sameBytes(oldC, newC *backend.IMAPConn, o, n store.UID) (bool, error) {
	h1, _, ok1, err := hashUID(oldC, o)
	if err != nil || !ok1 {
		return false, err
	}
	h2, _, ok2, err := hashUID(newC, n)
	if err != nil || !ok2 {
		return false, err
	}
	return h1 == h2, nil
}

// domainOf is the lower-cased domain of an address, the metrics' label.
func domainOf(user string) string {
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		return strings.ToLower(user[i+1:])
	}
	return ""
}
