package sync

// Batched, pipelined copy of a chunk (the back-fill's fast path).
//
// Implementation notes:
//
//   - A chunk is copied in windows of at most batchMessages messages and
//     batchBytes bytes (less under a copy rate limit: about one second of
//     it; the limits are taken per message before the window's FETCH, so
//     that old's FETCH never stalls on them). Per window: one store transaction writes every
//     message's intent (size and INTERNALDATE from the folder scan: no
//     per-message FETCH of flags or date); one UID FETCH of the window's
//     BODY.PEEK[] on old; each body literal is streamed into an APPEND on
//     new (flags and INTERNALDATE from the scan) without waiting for the
//     previous APPEND's OK; then every APPEND is waited for and the
//     mappings are recorded, and their intents deleted, in one store
//     transaction. Two commits per window instead of two per message, and
//     one round trip per window instead of several per message.
//   - The window holds the folder's map entry locked, as CopyToNew does for
//     one message: a session's copy-first write cannot copy a message of
//     the window meanwhile (no duplicate in new). Windows are kept small so
//     that sessions wait little.
//   - Old and new are two clients: APPENDs on new while old's FETCH is
//     being read are fine; nothing else is sent to old until the FETCH is
//     over (GOIMAP-NOTES).
//   - Crash safety (invariant 6): an intent is deleted only with its
//     mapping, or when the message certainly did not land (its APPEND was
//     never sent, or got a tagged NO/BAD). A crash, or a broken connection
//     with APPENDs whose outcome is unknown, leaves intents that
//     Copier.Recover resolves (at the start of each folder, and at once
//     after a broken connection mid-folder).
//   - A rejected APPEND (NO before "+") closes new's client: the window
//     stops, what was sent before is waited for and recorded, the refusal
//     is handled as today (quota stops the pass, too big is reported) and
//     the connection is replaced. Messages the window did not copy for
//     another reason (gone from old, an unexpected answer) are copied one
//     at a time with CopyToNew, which reports them as before.

import (
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/store"
)

const (
	batchMessages = 128      // messages per window
	batchBytes    = 16 << 20 // bytes per window (a larger message goes alone)
)

// windows splits chunk (ascending) into windows of at most maxMsgs
// messages and maxBytes bytes (a larger message goes alone), each still
// ascending.
func windows(chunk []*oldMsg, maxMsgs int, maxBytes int64) [][]*oldMsg {
	var out [][]*oldMsg
	start, bytes := 0, int64(0)
	for i, o := range chunk {
		if i > start && (i-start >= maxMsgs || bytes+o.Size > maxBytes) {
			out = append(out, chunk[start:i])
			start, bytes = i, 0
		}
		bytes += o.Size
	}
	if start < len(chunk) {
		out = append(out, chunk[start:])
	}
	return out
}

// windowLimits sizes the windows: batchMessages and batchBytes, or about
// one second of the copy rate limits of old and new when they are lower,
// so that a window's throttling (before its FETCH) stays short and a
// rate-limited pass copies from its start.
func (p *pass) windowLimits() (int, int64) {
	msgs, bytes := float64(batchMessages), float64(batchBytes)
	for _, name := range []string{p.route.Old, p.route.New} {
		l := p.e.limiterOf(name)
		l.mu.Lock()
		if r := l.msgs.rate; r > 0 {
			msgs = min(msgs, max(r, 1))
		}
		if r := l.bytes.rate; r > 0 {
			bytes = min(bytes, max(r, 1))
		}
		l.mu.Unlock()
	}
	return int(msgs), int64(bytes)
}

// copyChunk brings the messages of chunk into new: adopted when new has
// them, else copied in pipelined windows. It returns only errors that end
// the pass; unrecorded says some copy got no APPENDUID (to adopt later).
func (p *pass) copyChunk(f *folder, ix *adoptIndex, chunk []*oldMsg) (unrecorded bool, err error) {
	maxMsgs, maxBytes := p.windowLimits()
	for _, w := range windows(chunk, maxMsgs, maxBytes) {
		var due []*oldMsg
		for _, o := range w {
			if err := p.ctx.Err(); err != nil {
				return unrecorded, err
			}
			ok, err := p.prepare(f, ix, o)
			if err != nil {
				return unrecorded, err
			}
			if ok {
				due = append(due, o)
			}
		}
		if len(due) == 0 {
			continue
		}
		rest, noUID, err := p.copyBatch(f, due)
		unrecorded = unrecorded || noUID
		if err != nil {
			return unrecorded, err
		}
		for _, o := range rest {
			if err := p.ctx.Err(); err != nil {
				return unrecorded, err
			}
			err := p.copySingle(f, o)
			if errors.Is(err, errNoUIDPlus) {
				unrecorded = true
				continue
			}
			if err != nil {
				return unrecorded, err
			}
		}
	}
	return unrecorded, nil
}

// batchState is where one message of a window stands.
type batchState int

const (
	bsWaiting  batchState = iota // no APPEND sent: certainly not in new
	bsSent                       // APPEND sent, outcome in app
	bsRecorded                   // mapped
	bsRefused                    // APPEND got a tagged NO/BAD: not in new
	bsUnknown                    // connection broke: maybe in new (intent kept)
	bsNoUID                      // in new, no APPENDUID (intent kept)
)

type batchItem struct {
	o     *oldMsg
	state batchState
	app   *imapclient.AppendCommand
	uid   store.UID
	err   error
}

// copyBatch copies msgs of f (due, ascending, within the limits) in one
// window. It returns the messages to copy one at a time, whether a copy
// got no APPENDUID, and an error that ends the pass.
func (p *pass) copyBatch(f *folder, msgs []*oldMsg) (rest []*oldMsg, noUID bool, err error) {
	entry := f.entry
	ctx := p.saveCtx()
	oldC, newC := p.oldC, p.newC

	entry.Lock()
	locked := true
	unlock := func() {
		if locked {
			entry.Unlock()
			locked = false
		}
	}
	defer unlock()

	// What the map says now: a session may have copied or the user
	// expunged a message since prepare.
	items := make([]*batchItem, 0, len(msgs))
	byUID := make(map[store.UID]*batchItem, len(msgs))
	for _, o := range msgs {
		_, n, ok := entry.M.Lookup(o.v)
		switch {
		case !ok:
			p.notDue(o)
			continue
		case n != 0:
			p.done(o)
			continue
		}
		it := &batchItem{o: o}
		items = append(items, it)
		byUID[o.UID] = it
	}
	if len(items) == 0 {
		return nil, false, nil
	}

	// (1) Write-ahead: every copy of the window may land once the FETCH
	// starts.
	if err := p.e.maps.Store().Update(ctx, func(tx store.Tx) error {
		for _, it := range items {
			in := store.Intent{V: it.o.v, Old: it.o.UID, Size: it.o.Size, InternalDate: it.o.Date}
			if err := store.PutIntent(tx, entry.User, entry.Mailbox, in); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		p.addError(KindUpstream, f.Old, 0, fmt.Sprintf("record copy intents: %v", err))
		return nil, false, nil
	}

	// (2) One FETCH on old, each literal streamed into an APPEND on new.
	var set imap.UIDSet
	for _, it := range items {
		set.AddNum(imap.UID(it.o.UID))
	}
	body := &imap.FetchItemBodySection{Peek: true}
	cmd := oldC.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{body}})
	var failed *batchItem // the APPEND that broke new's connection
	var fetchErr error
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		var uid imap.UID
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch d := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = d.UID
			case imapclient.FetchItemDataBodySection:
				if !d.MatchCommand(body) || failed != nil {
					continue // the library skips an unread literal
				}
				it := byUID[store.UID(uid)]
				if it == nil || it.state != bsWaiting || d.Literal.Size() != it.o.Size {
					// No UID before the literal, a duplicate, or a size
					// the scan did not see: left to CopyToNew.
					continue
				}
				it.app = newC.Append(f.New, it.o.Size, &imap.AppendOptions{Flags: it.o.Flags, Time: it.o.Date})
				it.state = bsSent
				src := &readErr{r: d.Literal}
				n, err := io.Copy(it.app, src)
				if err == nil && n != it.o.Size {
					err = io.ErrUnexpectedEOF
				}
				if err != nil {
					// Inside the APPEND literal (or refused before it):
					// only dropping the connection makes sure no truncated
					// copy is stored.
					newC.Close()
					it.app.Close()
					it.err = fmt.Errorf("stream old UID %d: %w", it.o.UID, err)
					failed = it
					if src.err != nil || oldBroken(oldC) {
						// The old side broke mid-literal: imapclient's reader
						// has moved on, and reading the rest of the literal
						// (Next discards it) would race with it on the
						// connection's buffer. Stop touching the command.
						goto fetched
					}
					continue
				}
				if err := it.app.Close(); err != nil {
					newC.Close()
					it.err = fmt.Errorf("append old UID %d: %w", it.o.UID, err)
					failed = it
				}
			}
		}
	}
	fetchErr = cmd.Close()
fetched:

	// (3) Every APPEND's answer, then one transaction for the window.
	for _, it := range items {
		if it.state != bsSent {
			continue
		}
		data, err := it.app.Wait()
		switch {
		case err == nil && data.UID == 0:
			it.state = bsNoUID
			noUID = true
		case err == nil:
			it.state, it.uid = bsRecorded, store.UID(data.UID)
		default:
			var ie *imap.Error
			if errors.As(err, &ie) && (ie.Type == imap.StatusResponseTypeNo || ie.Type == imap.StatusResponseTypeBad) {
				it.state = bsRefused
			} else {
				it.state = bsUnknown
			}
			if it.err == nil || it.state == bsRefused {
				it.err = fmt.Errorf("append old UID %d: %w", it.o.UID, err)
			}
			if failed == nil {
				failed = it
			}
		}
	}
	if h := p.e.beforeRecord; h != nil {
		if err := h(); err != nil {
			return nil, noUID, err
		}
	}
	m := entry.M.Clone()
	for _, it := range items {
		if it.state == bsRecorded {
			if err := m.SetNew(it.o.v, it.uid); err != nil {
				// Cannot happen while the entry is locked; keep the intent.
				it.state, it.err = bsUnknown, fmt.Errorf("record copy of %d: %w", it.o.v, err)
			}
		}
	}
	prev := entry.M
	entry.M = m
	if err := p.e.maps.Save(ctx, entry, func(tx store.Tx) error {
		for _, it := range items {
			switch it.state {
			case bsRecorded, bsWaiting, bsRefused:
				if err := store.DeleteIntent(tx, entry.User, entry.Mailbox, it.o.v); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		entry.M = prev
		unlock()
		// The intents stay: Recover finds the copies on the next pass.
		p.addError(KindUpstream, f.Old, 0, fmt.Sprintf("record %d copies: %v", len(items), err))
		return nil, noUID, p.ctx.Err()
	}
	unlock()
	unknown := false
	for _, it := range items {
		switch it.state {
		case bsRecorded:
			p.e.metrics.BackfillCopied(p.route.Domain.Name, metrics.SourceBackfill, it.o.Size)
			p.done(it.o)
		case bsUnknown:
			unknown = true
		}
	}
	if err := p.ctx.Err(); err != nil {
		return nil, noUID, err
	}

	// A refusal or a broken connection: handled as for one message.
	if failed != nil {
		if err := p.messageFailed(f, failed.o, failed.err); err != nil {
			return nil, noUID, err
		}
	} else if fetchErr != nil {
		if closed(p.oldC) || closed(p.newC) {
			if err := p.reconnect(f); err != nil {
				return nil, noUID, err
			}
		} else {
			p.addError(KindUpstream, f.Old, 0, fmt.Sprintf("read %d messages from old: %v", len(items), fetchErr))
		}
	}
	if unknown {
		// Copies that may have landed: adopt them now, before any is
		// copied again.
		if err := p.recoverNow(f); err != nil {
			return nil, noUID, err
		}
	}
	for _, it := range items {
		switch {
		case it == failed:
			// Reported; counted when Recover found it in new.
			f.entry.Lock()
			_, n, _ := f.entry.M.Lookup(it.o.v)
			f.entry.Unlock()
			if n != 0 {
				p.done(it.o)
			}
		case it.state == bsWaiting, it.state == bsRefused, it.state == bsUnknown:
			rest = append(rest, it.o)
		}
	}
	return rest, noUID, nil
}

// recoverNow resolves the intents a broken connection left mid-folder:
// new's unmapped messages are read again and Recover adopts the copies
// among them.
func (p *pass) recoverNow(f *folder) error {
	news, err := fetchMeta(p.newC)
	if err != nil {
		if cerr := p.ctx.Err(); cerr != nil {
			return cerr
		}
		p.addError(KindUpstream, f.Old, 0, fmt.Sprintf("read new to resolve copies in flight: %v", err))
		return nil
	}
	var unknown []store.UID
	f.entry.Lock()
	for _, n := range news {
		if _, ok := f.entry.M.ByNew(n.UID); !ok {
			unknown = append(unknown, n.UID)
		}
	}
	f.entry.Unlock()
	if _, err := p.e.copier.Recover(p.saveCtx(), p.oldC, p.newC, f.entry, p.e.maps, unknown); err != nil {
		if cerr := p.ctx.Err(); cerr != nil {
			return cerr
		}
		p.addError(KindUpstream, f.Old, 0, fmt.Sprintf("resolve the copies in flight: %v", err))
	}
	return nil
}

// oldBroken reports whether the old connection is closed.
func oldBroken(c interface{ Closed() <-chan struct{} }) bool {
	select {
	case <-c.Closed():
		return true
	default:
		return false
	}
}

// readErr remembers a read error, telling a broken source from a broken
// destination in io.Copy.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}
