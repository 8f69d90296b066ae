package sync

// Adoption (DESIGN.md, Words and "Copying (sync)"): recognising that a
// message already in new is the copy of an old one, made by a provider's
// own migration tool or by a back-fill that crashed between its APPEND and
// the store transaction recording it, and mapping it instead of copying it
// again (invariant 6: no duplicate in new).
//
// Implementation notes:
//
//   - Candidates come from one UID FETCH 1:* per folder and side (UID,
//     RFC822.SIZE, INTERNALDATE, FLAGS and the Message-ID header line as
//     stored). A new message is a candidate for an old one when the sizes
//     are equal and the INTERNALDATEs or the Message-ID lines are.
//   - A candidate is adopted only when the SHA-256 of its bytes
//     (BODY.PEEK[]) equals the old message's. Nothing else decides: PEC
//     receipts share X-Riferimento-Message-ID with their envelope, and
//     providers rewrite Message-IDs, so neither header alone says two
//     messages are one.
//   - Each new message is adopted at most once, so n identical old messages
//     need n copies in new (content is a multiset, not a set).
//   - An adopted copy gets the old message's flags (UID STORE FLAGS.SILENT):
//     the map then says it is the old message, as if copied now. Its
//     INTERNALDATE cannot be set in IMAP: a copy adopted through its
//     Message-ID with another INTERNALDATE is reported (KindInternalDate),
//     not copied again.
//   - Copier's intents (copies in flight that a crash may have left in
//     new unrecorded) are resolved first with Copier.Recover, and adopting
//     a message deletes its intent in the transaction that maps it.
//   - A copy that a client session already gave a virtual UID of its own
//     (the proxy maps every unmapped new message it sees) cannot be mapped
//     to the old message any more: the map has no merge. It is not copied
//     again either (that would make a duplicate in new); it is reported
//     (KindTwin) and counts as in new.

import (
	"crypto/sha256"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/store"
)

// msgMeta is what one FETCH 1:* says about a message, on either side.
type msgMeta struct {
	UID   store.UID
	Size  int64
	Date  time.Time
	Flags []imap.Flag
	// MsgID is the Message-ID header as stored, trimmed ("" when absent):
	// raw bytes, so that a Message-ID that ENVELOPE parsing would drop still
	// counts.
	MsgID string
}

// msgIDSection is BODY.PEEK[HEADER.FIELDS (Message-ID)].
var msgIDSection = &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Message-ID"}, Peek: true}

// fetchMeta lists the messages of the mailbox selected on c, by ascending
// UID. Unsolicited FETCH responses (flag changes made by other sessions)
// that the library routes into the command are skipped.
func fetchMeta(c *backend.IMAPConn) ([]msgMeta, error) {
	cmd := c.Fetch(imap.UIDSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{
		UID: true, Flags: true, InternalDate: true, RFC822Size: true,
		BodySection: []*imap.FetchItemBodySection{msgIDSection},
	})
	byUID := map[store.UID]int{}
	var out []msgMeta
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		buf, err := msg.Collect()
		if err != nil {
			if !oldBroken(c) {
				cmd.Close()
			}
			// On a broken connection, Close would drain the command's
			// responses while imapclient's reader has moved on: the same
			// race on the connection's buffer as copyBatch avoids (seen
			// by -race in TestInterruptedPasses). Leave the command.
			return nil, err
		}
		if buf.UID == 0 || buf.InternalDate.IsZero() {
			continue
		}
		m := msgMeta{
			UID: store.UID(buf.UID), Size: buf.RFC822Size, Date: buf.InternalDate,
			Flags: settableFlags(buf.Flags),
			MsgID: strings.TrimSpace(string(buf.FindBodySection(msgIDSection))),
		}
		if i, dup := byUID[m.UID]; dup {
			out[i] = m
			continue
		}
		byUID[m.UID] = len(out)
		out = append(out, m)
	}
	if err := cmd.Close(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b msgMeta) int { return int64cmp(int64(a.UID), int64(b.UID)) })
	return out, nil
}

func int64cmp(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// settableFlags drops \Recent, which APPEND and STORE cannot set.
func settableFlags(flags []imap.Flag) []imap.Flag {
	out := make([]imap.Flag, 0, len(flags))
	for _, f := range flags {
		if !strings.EqualFold(string(f), `\Recent`) {
			out = append(out, f)
		}
	}
	return out
}

// sameFlags compares two flag sets, case-insensitively (RFC 3501 section
// 2.3.2: flags are case-insensitive).
func sameFlags(a, b []imap.Flag) bool {
	norm := func(fs []imap.Flag) []string {
		out := make([]string, 0, len(fs))
		for _, f := range settableFlags(fs) {
			out = append(out, strings.ToLower(string(f)))
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(norm(a), norm(b))
}

// hashUID returns the SHA-256 and size of the bytes of UID uid in the
// mailbox selected on c, streamed (never held in memory). ok is false when
// the mailbox has no such UID.
func hashUID(c *backend.IMAPConn, uid store.UID) (sum [32]byte, size int64, ok bool, err error) {
	sec := &imap.FetchItemBodySection{Peek: true}
	cmd := c.Fetch(imap.UIDSetNum(imap.UID(uid)), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{sec}})
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		var got imap.UID
		var s [32]byte
		var n int64
		var body bool
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				got = it.UID
			case imapclient.FetchItemDataBodySection:
				if it.Literal == nil || !it.MatchCommand(sec) {
					continue
				}
				h := sha256.New()
				n, err = io.Copy(h, it.Literal)
				if err == nil && n != it.Literal.Size() {
					err = io.ErrUnexpectedEOF
				}
				if err != nil {
					// Inside a literal: the connection cannot be trusted.
					c.Close()
					cmd.Close()
					return sum, 0, false, fmt.Errorf("read UID %d: %w", uid, err)
				}
				h.Sum(s[:0])
				body = true
			}
		}
		if body && got == imap.UID(uid) {
			sum, size, ok = s, n, true
		}
	}
	if err := cmd.Close(); err != nil {
		return sum, 0, false, fmt.Errorf("read UID %d: %w", uid, err)
	}
	return sum, size, ok, nil
}

// newMsg is a message in new that may be the copy of an old one.
type newMsg struct {
	msgMeta
	// twin is the virtual UID this message already has with no old side
	// (a session saw it first); 0 when it is unmapped.
	twin   store.UID
	used   bool // adopted, or found gone
	hashed bool
	sum    [32]byte
}

// adoptIndex finds candidates among a folder's new messages.
type adoptIndex struct {
	bySize map[int64][]*newMsg
}

func newAdoptIndex(msgs []*newMsg) *adoptIndex {
	ix := &adoptIndex{bySize: map[int64][]*newMsg{}}
	for _, m := range msgs {
		ix.bySize[m.Size] = append(ix.bySize[m.Size], m)
	}
	return ix
}

// candidates returns the unused new messages that may be copies of o:
// equal size and equal INTERNALDATE or Message-ID line; unmapped ones
// before twins, equal INTERNALDATE first.
func (ix *adoptIndex) candidates(o *msgMeta) []*newMsg {
	var out []*newMsg
	for _, m := range ix.bySize[o.Size] {
		if m.used {
			continue
		}
		if m.Date.Equal(o.Date) || (o.MsgID != "" && m.MsgID == o.MsgID) {
			out = append(out, m)
		}
	}
	rank := func(m *newMsg) int {
		r := 0
		if m.twin != 0 {
			r += 2
		}
		if !m.Date.Equal(o.Date) {
			r++
		}
		return r
	}
	slices.SortStableFunc(out, func(a, b *newMsg) int { return rank(a) - rank(b) })
	return out
}

// adoptResult is what adopt did with an old message.
type adoptResult int

const (
	adoptNone    adoptResult = iota // no copy in new: copy it
	adoptMapped                     // a copy in new is now mapped to it
	adoptTwin                       // a copy in new has a virtual UID of its own
	adoptSettled                    // copied or expunged meanwhile: nothing to do
)

// adopt looks for a copy of old message o of f among new's messages and
// maps it. f's old and new mailboxes are selected on the pass's
// connections, new read-write.
func (p *pass) adopt(f *folder, ix *adoptIndex, o *oldMsg) (adoptResult, error) {
	cands := ix.candidates(&o.msgMeta)
	if len(cands) == 0 {
		return adoptNone, nil
	}
	if err := p.e.throttle(p.ctx, []string{p.route.Old}, o.Size); err != nil {
		return adoptNone, err
	}
	oldSum, _, ok, err := hashUID(p.oldC, o.UID)
	if err != nil {
		return adoptNone, fmt.Errorf("hash old UID %d: %w", o.UID, err)
	}
	if !ok {
		return adoptNone, nil // gone from old: the copy will say so
	}
	for _, c := range cands {
		if !c.hashed {
			if err := p.e.throttle(p.ctx, []string{p.route.New}, c.Size); err != nil {
				return adoptNone, err
			}
			sum, _, ok, err := hashUID(p.newC, c.UID)
			if err != nil {
				return adoptNone, fmt.Errorf("hash new UID %d: %w", c.UID, err)
			}
			if !ok {
				c.used = true // expunged from new meanwhile
				continue
			}
			c.sum, c.hashed = sum, true
		}
		if c.sum != oldSum {
			continue
		}
		res, err := p.claim(f, o, c)
		if err != nil || res != adoptNone {
			return res, err
		}
	}
	return adoptNone, nil
}

// claim maps o to its copy c, under f's map lock, unless the map changed
// meanwhile.
func (p *pass) claim(f *folder, o *oldMsg, c *newMsg) (adoptResult, error) {
	e := f.entry
	e.Lock()
	_, n, ok := e.M.Lookup(o.v)
	w, mapped := e.M.ByNew(c.UID)
	var wOld store.UID
	if mapped {
		wOld, _, _ = e.M.Lookup(w)
	}
	e.Unlock()
	switch {
	case !ok || n != 0:
		return adoptSettled, nil
	case mapped && wOld != 0:
		c.used = true // the copy of another old message with the same bytes
		return adoptNone, nil
	case !mapped && c.twin != 0:
		c.used = true // the session's message was expunged meanwhile
		return adoptNone, nil
	case mapped:
		c.used = true
		p.addError(KindTwin, f.Old, o.v, fmt.Sprintf("already in new as new UID %d, which a client saw first as message %d: not copied again; clients see both until the flip to new", c.UID, w))
		return adoptTwin, nil
	}
	if !sameFlags(c.Flags, o.Flags) {
		err := p.newC.Store(imap.UIDSetNum(imap.UID(c.UID)), &imap.StoreFlags{Op: imap.StoreFlagsSet, Silent: true, Flags: o.Flags}, nil).Close()
		if err != nil {
			return adoptNone, fmt.Errorf("set the flags of new UID %d: %w", c.UID, err)
		}
	}
	e.Lock()
	defer e.Unlock()
	if _, n, ok := e.M.Lookup(o.v); !ok || n != 0 {
		return adoptSettled, nil
	}
	m := e.M.Clone()
	if err := m.SetNew(o.v, c.UID); err != nil {
		// n was mapped between the two locks: leave it.
		c.used = true
		return adoptNone, nil
	}
	prev := e.M
	e.M = m
	// The copy in flight a crash left behind (Copier's intent), if any, is
	// resolved by the same transaction.
	err := p.e.maps.Save(p.saveCtx(), e, func(tx store.Tx) error { return store.DeleteIntent(tx, e.User, e.Mailbox, o.v) })
	if err != nil {
		e.M = prev
		return adoptNone, fmt.Errorf("record adoption of %d: %w", o.v, err)
	}
	c.used = true
	p.log.Debug("adopted a copy already in new", "mailbox", f.Old, "v", o.v, "new_uid", c.UID)
	if !c.Date.Equal(o.Date) {
		p.addError(KindInternalDate, f.Old, o.v, fmt.Sprintf("adopted new UID %d, a copy with the same bytes but INTERNALDATE %s instead of %s (IMAP cannot change it)",
			c.UID, c.Date.UTC().Format(time.RFC3339), o.Date.UTC().Format(time.RFC3339)))
	}
	return adoptMapped, nil
}
