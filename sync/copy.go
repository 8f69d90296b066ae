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

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/store"
)

// Copier copies single messages; it is safe for concurrent use.
type Copier struct{}

// errNoUIDPlus: the new provider gave no APPENDUID; finding the copy by
// content is for the background engine.
var errNoUIDPlus = errors.New("sync: the new provider did not return APPENDUID (UIDPLUS)")

// CopyToNew copies old UID oldUID of the mailbox selected on oldC to
// newMailbox through newC and records virtual v -> new UID in entry's map.
// The message is streamed: FETCH's literal feeds APPEND's.
//
// If the map already says v is in new (another session copied it
// meanwhile), nothing is copied and that UID is returned.
func (Copier) CopyToNew(ctx context.Context, oldC, newC *backend.IMAPConn, entry *store.MapEntry, maps *store.MapCache, newMailbox string, v, oldUID store.UID) (store.UID, error) {
	// One copier per (user, mailbox) at a time: two sessions writing to
	// the same uncopied message must not both append it.
	entry.Lock()
	defer entry.Unlock()
	if _, n, ok := entry.M.Lookup(v); ok && n != 0 {
		return n, nil
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
	app := newC.Append(newMailbox, lit.Size(), &imap.AppendOptions{Flags: flags, Time: meta[0].InternalDate})
	n, err := io.Copy(app, lit)
	if err == nil && n != lit.Size() {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		// Inside the APPEND literal: only dropping the connection makes sure
		// no truncated copy is stored.
		newC.Close()
		app.Close()
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
	if err := maps.Save(ctx, entry, nil); err != nil {
		entry.M = prev
		return 0, fmt.Errorf("record copy of %d: %w", v, err)
	}
	return store.UID(data.UID), nil
}
