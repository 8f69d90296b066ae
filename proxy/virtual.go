package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/internal/metrics"
	"github.com/pecgate/pecgate/store"
)

// vmail is the virtual mailbox view of a session whose user is in state
// migrating (old and new) or new (new only): one UIDVALIDITY, one UID space
// from the user's UID map (store.Map), built from one or two upstream
// mailboxes (invariants 1, 3, 4).
//
// Sequence numbers are positions in view, the sorted virtual UIDs the
// client was last told about. Each side keeps its upstream sequence ->
// UID list, so upstream FETCH responses are placed by their sequence
// number whatever the order of their items.
//
// Writes: the old side is only ever EXAMINEd and read with BODY.PEEK; a
// write (STORE, EXPUNGE, COPY, MOVE) to a message not yet in new copies it
// first (CopyToNew), then acts on new.
type vmail struct {
	s        *imapSession
	old, new *vside // old is nil in state new
	entry    *store.MapEntry
	mailbox  string // the client's (old's) name
	readOnly bool
	view     []store.UID
	dirty    bool // an upstream reported a change: resync at the next Poll
}

type vside struct {
	name    string // "old" / "new"
	c       *backend.IMAPConn
	mailbox string
	uids    []store.UID // upstream sequence order
	delim   rune
}

func (sd *vside) seqOf(uid store.UID) uint32 {
	i, ok := slices.BinarySearch(sd.uids, uid)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// searchAll lists the side's UIDs in sequence order. A NOOP first: Dovecot
// answers SEARCH from the session's view, which does not yet include what
// another connection (a copy, the back-fill) just appended.
func (sd *vside) searchAll() ([]store.UID, error) {
	if err := sd.c.Noop().Wait(); err != nil {
		return nil, err
	}
	return sd.search()
}

// search lists the side's UIDs in sequence order, as the connection's
// view has them (no NOOP).
func (sd *vside) search() ([]store.UID, error) {
	data, err := sd.c.UIDSearch(&imap.SearchCriteria{}, &imap.SearchOptions{ReturnAll: true}).Wait()
	if err != nil {
		return nil, err
	}
	set, _ := data.All.(imap.UIDSet)
	return uidsOf(set), nil
}

// uidsOf expands a UID set into sorted, distinct UIDs, without the
// intermediate lists of imap.UIDSet.Nums.
func uidsOf(set imap.UIDSet) []store.UID {
	n := 0
	for _, r := range set {
		if r.Start == 0 || r.Stop == 0 {
			continue // "*" has no meaning in a search result
		}
		lo, hi := min(r.Start, r.Stop), max(r.Start, r.Stop)
		n += int(hi-lo) + 1
	}
	out := make([]store.UID, 0, n)
	for _, r := range set {
		if r.Start == 0 || r.Stop == 0 {
			continue
		}
		lo, hi := min(r.Start, r.Stop), max(r.Start, r.Stop)
		for u := lo; ; u++ {
			out = append(out, store.UID(u))
			if u == hi {
				break
			}
		}
	}
	for i := 1; i < len(out); i++ {
		if out[i] <= out[i-1] {
			slices.Sort(out)
			return slices.Compact(out)
		}
	}
	return out
}

// vcache is what a session remembers of its upstream connections between
// commands, to spare a large mailbox's work at every SELECT.
//
// oldChanges and newChanges count the EXISTS and EXPUNGE responses each
// side's connection received (clientOptions); nil for a connection whose
// handler does not count (one opened in state old and flipped live). old
// is old's UID list as last searched, valid while old's connection keeps
// the same mailbox EXAMINEd and has reported no EXISTS or EXPUNGE since:
// old is only ever read through the gateway, so its list changes only by
// deliveries and other clients' expunges, and IMAP tells a session of
// both (the NOOP before each use makes Dovecot report them).
//
// exam is what old's last EXAMINE reported. While the connection has
// reported no change since, the session's view of old is the one that
// EXAMINE described, and the list another session found under the same
// UIDVALIDITY, UIDNEXT and EXISTS (store.OldList, in the map's cache
// entry) is this session's list too: a new session spares the search.
type vcache struct {
	oldChanges, newChanges *atomic.Uint64
	old                    *sideList
	exam                   *examState
}

// sideList is one side's UID list (sequence order) and what it was
// taken under.
type sideList struct {
	c       *backend.IMAPConn
	mailbox string
	changes uint64 // the connection's change count when the list was taken
	uids    []store.UID
}

// examState is an EXAMINE of old: its status and the connection's change
// count right after it.
type examState struct {
	c                            *backend.IMAPConn
	mailbox                      string
	changes                      uint64
	uidValidity, uidNext, exists uint32
}

// oldSource names the old provider, for store.OldList.
func (s *imapSession) oldSource() string {
	if s.route == nil || s.route.Old == nil {
		return ""
	}
	return s.route.Old.Name
}

// examined records a new EXAMINE of mailbox on old's connection c.
func (s *imapSession) examined(c *backend.IMAPConn, mailbox string, data *imap.SelectData) {
	s.oldExamined, s.oldSelData = mailbox, data
	s.vc.old, s.vc.exam = nil, nil
	if w := s.vc.oldChanges; w != nil && data != nil {
		s.vc.exam = &examState{c: c, mailbox: mailbox, changes: w.Load(),
			uidValidity: data.UIDValidity, uidNext: uint32(data.UIDNext), exists: data.NumMessages}
	}
}

// oldList returns old's UID list in sequence order: the session's cached
// one when old's connection reported no change since it was taken, the
// one another session found under the same EXAMINE status (vcache), or a
// new UID SEARCH. The caller must not modify the list.
func (v *vmail) oldList() ([]store.UID, error) {
	s, sd := v.s, v.old
	w := s.vc.oldChanges
	if w == nil {
		return sd.searchAll()
	}
	// Let Dovecot report what changed since (searchAll NOOPs too).
	if err := sd.c.Noop().Wait(); err != nil {
		return nil, err
	}
	current := s.oldExamined == sd.mailbox
	if l := s.vc.old; l != nil && l.c == sd.c && l.mailbox == sd.mailbox && current && w.Load() == l.changes {
		return l.uids, nil
	}
	s.vc.old = nil
	// Taken after the NOOP: a change reported during the SEARCH makes the
	// next call search again.
	changes := w.Load()
	ex := s.vc.exam
	asExamined := current && ex != nil && ex.c == sd.c && ex.mailbox == sd.mailbox && ex.changes == changes && v.entry != nil
	var uids []store.UID
	if asExamined {
		v.entry.Lock()
		shared := v.entry.Old
		v.entry.Unlock()
		if shared.Matches(s.oldSource(), ex.uidValidity, ex.uidNext, ex.exists) {
			uids = shared.UIDs()
		}
	}
	if uids == nil {
		var err error
		if uids, err = sd.search(); err != nil {
			return nil, err
		}
		if asExamined && w.Load() == changes {
			if l := store.NewOldList(s.oldSource(), ex.uidValidity, ex.uidNext, ex.exists, uids); l != nil {
				v.entry.Lock()
				v.entry.Old = l
				v.entry.Unlock()
			}
		}
	}
	if current {
		s.vc.old = &sideList{c: sd.c, mailbox: sd.mailbox, changes: changes, uids: uids}
	}
	return uids, nil
}

// newName maps a client (old) mailbox name to the new provider's: by
// special-use role first (old's \Sent is new's \Sent, whatever each calls
// it), then by name with the hierarchy delimiter converted.
func (s *imapSession) newName(mailbox string) string {
	s.needRoles(mailbox)
	if n, ok := s.roleNew[mailbox]; ok {
		return n
	}
	return backend.ConvertName(mailbox, s.oldDelim, s.newDelim)
}

// oldName maps a new provider's name back to the client's.
func (s *imapSession) oldName(mailbox string) string {
	s.needRoles(mailbox)
	if o, ok := s.roleOld[mailbox]; ok {
		return o
	}
	if s.oldDelim == 0 || s.newDelim == 0 || s.oldDelim == s.newDelim {
		return mailbox
	}
	return strings.ReplaceAll(mailbox, string(s.newDelim), string(s.oldDelim))
}

// mapFor returns the map entry of mailbox, creating the map when the
// mailbox first leaves state old: frozen at old's UIDNEXT (identity with
// old's UIDs), or, without an old side, at 1.
func (s *imapSession) mapFor(ctx context.Context, mailbox string) (*store.MapEntry, error) {
	e, err := s.srv.opts.Maps.Get(ctx, s.route.User, mailbox)
	if err != nil {
		return nil, err
	}
	e.Lock()
	defer e.Unlock()
	if e.M != nil {
		return e, nil
	}
	var m *store.Map
	if oldC := s.oldSide(); oldC != nil {
		st, err := oldC.Status(mailbox, &imap.StatusOptions{UIDNext: true, UIDValidity: true}).Wait()
		switch {
		case err == nil:
			m = store.NewMap(st.UIDValidity, store.UID(st.UIDNext))
		case !isNonExistent(err):
			return nil, s.checkOld(err)
		}
	}
	if m == nil {
		// A folder that exists only in new (made during the migration):
		// its virtual UIDs start at 1 under a UIDVALIDITY of our own.
		m = store.NewMap(uint32(time.Now().Unix()), 1)
	}
	e.M = m
	if err := s.srv.opts.Maps.Save(ctx, e, nil); err != nil {
		e.M = nil
		return nil, err
	}
	return e, nil
}

// selectVirtual opens mailbox on both sides and builds the view.
func (s *imapSession) selectVirtual(mailbox string, readOnly bool) (*imap.SelectData, error) {
	ctx := context.Background()
	v := &vmail{s: s, mailbox: mailbox, readOnly: readOnly}
	var oldSel *imap.SelectData
	if s.oldUp != nil {
		// EXAMINE: old is only ever read (invariant 4). Dovecot takes tens
		// of milliseconds to re-open a large mailbox, and old's does not
		// change under a read-only session but for deliveries and other
		// clients' expunges, which the NOOP in refresh picks up: a mailbox
		// already examined stays so, across UNSELECT too (vUnselect).
		if s.oldExamined == mailbox && s.oldSelData != nil {
			oldSel = s.oldSelData
		} else {
			s.oldExamined, s.vc.old, s.vc.exam = "", nil, nil
			var err error
			oldSel, err = s.oldUp.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
			if err != nil {
				return nil, s.checkOld(err)
			}
			s.examined(s.oldUp, mailbox, oldSel)
		}
		v.old = &vside{name: "old", c: s.oldUp, mailbox: mailbox}
	}
	newMbox := s.newName(mailbox)
	newSel, err := s.newUp.Select(newMbox, &imap.SelectOptions{ReadOnly: readOnly}).Wait()
	if err != nil && oldSel != nil && isNonExistent(err) {
		// The folder exists in old only: make it in new (folder map).
		// The back-fill may be making it at this very moment.
		if cerr := s.newUp.Create(newMbox, nil).Wait(); cerr != nil && !isAlreadyExists(cerr) {
			return nil, s.checkNew(cerr)
		}
		newSel, err = s.newUp.Select(newMbox, &imap.SelectOptions{ReadOnly: readOnly}).Wait()
	}
	if err != nil {
		return nil, s.checkNew(err)
	}
	v.new = &vside{name: "new", c: s.newUp, mailbox: newMbox}
	if v.entry, err = s.mapFor(ctx, mailbox); err != nil {
		return nil, err
	}
	if err := v.refresh(ctx); err != nil {
		return nil, err
	}
	v.entry.Lock()
	data := &imap.SelectData{
		Flags:          newSel.Flags,
		PermanentFlags: newSel.PermanentFlags,
		NumMessages:    uint32(len(v.view)),
		UIDValidity:    v.entry.M.UIDValidity,
		UIDNext:        imap.UID(v.entry.M.Next),
	}
	v.entry.Unlock()
	if readOnly {
		data.PermanentFlags = nil
	}
	if oldSel != nil {
		data.Flags = unionFlags(oldSel.Flags, newSel.Flags)
	}
	s.vm = v
	return data, nil
}

func isNonExistent(err error) bool {
	var imapErr *imap.Error
	return errors.As(err, &imapErr) && (imapErr.Code == imap.ResponseCodeNonExistent || imapErr.Code == imap.ResponseCodeTryCreate ||
		strings.Contains(strings.ToLower(imapErr.Text), "doesn't exist"))
}

func isAlreadyExists(err error) bool {
	var imapErr *imap.Error
	return errors.As(err, &imapErr) && imapErr.Code == imap.ResponseCodeAlreadyExists
}

func unionFlags(a, b []imap.Flag) []imap.Flag {
	out := slices.Clone(a)
	for _, f := range b {
		if !slices.ContainsFunc(out, func(g imap.Flag) bool { return strings.EqualFold(string(f), string(g)) }) {
			out = append(out, f)
		}
	}
	return out
}

// refresh re-reads both sides' UID lists and recomputes view, assigning
// virtual UIDs to messages seen for the first time. It does not tell the
// client: see resync.
func (v *vmail) refresh(ctx context.Context) error {
	var oldUIDs []store.UID
	if v.old != nil {
		var err error
		if oldUIDs, err = v.oldList(); err != nil {
			return v.s.checkOld(err)
		}
	}
	newUIDs, err := v.new.searchAll()
	if err != nil {
		return v.s.checkNew(err)
	}
	if err := v.recover(ctx, newUIDs); err != nil {
		return err
	}
	v.entry.Lock()
	defer v.entry.Unlock()
	m := v.entry.M
	before := m.Next
	var maxNew store.UID
	if len(newUIDs) > 0 {
		maxNew = newUIDs[len(newUIDs)-1]
	}
	changed := false
	// What new serves, then what old serves: each is usually sorted
	// already, and merging them is cheaper than sorting 50,000 UIDs.
	var fromNew []store.UID
	view := make([]store.UID, 0, len(oldUIDs)+len(newUIDs))
	for _, n := range newUIDs {
		vu, ok := v.s.byW(m, n)
		if !ok {
			// Unknown, or expunged by the user (AddNew then returns the
			// existing, gone, virtual UID).
			vu = v.s.addW(m, n)
			changed = true
		}
		if vu == 0 || m.IsGone(vu) {
			continue
		}
		fromNew = append(fromNew, vu)
	}
	// Below the freeze, an old UID is its own virtual UID unless a run
	// (copied) or a gone range (expunged) covers it: walk both sorted
	// lists alongside the sorted old UIDs instead of three lookups each
	// (a 50,000-message SELECT spends its time here otherwise).
	ri, gi := 0, 0
	for _, o := range oldUIDs {
		if o >= m.Frozen {
			break
		}
		for ri < len(m.Runs) && m.Runs[ri].V+m.Runs[ri].N <= o {
			ri++
		}
		for gi < len(m.Gone) && m.Gone[gi].Hi < o {
			gi++
		}
		if gi < len(m.Gone) && m.Gone[gi].Lo <= o {
			continue // expunged by the user during migrating
		}
		if ri < len(m.Runs) && m.Runs[ri].V <= o {
			r := m.Runs[ri]
			if r.Old != 0 && r.New != 0 && r.New+(o-r.V) <= maxNew {
				continue // copied: new holds it
			}
			if r.Old == 0 || r.Old+(o-r.V) != o {
				// Unusual shape: let the general path decide.
				goto general
			}
		}
		view = append(view, o)
		continue
	general:
		if vu, ok := m.ByOld(o); ok && !m.IsGone(vu) {
			if _, n, _ := m.Lookup(vu); n == 0 || n > maxNew {
				view = append(view, vu)
			}
		}
	}
	for _, o := range oldUIDs {
		if o < m.Frozen {
			continue
		}
		vu, ok := m.ByOld(o)
		if !ok {
			if o < m.Frozen {
				continue // expunged by the user during migrating
			}
			vu = m.AddOld(o)
			changed = true
		}
		if m.IsGone(vu) {
			continue
		}
		if _, n, _ := m.Lookup(vu); n != 0 && n <= maxNew {
			// Copied: new holds it and says whether it still exists. A copy
			// above what new's list shows was made by another connection
			// this instant: the message is still there, keep it.
			continue
		}
		view = append(view, vu)
	}
	view = mergeSorted(view, fromNew)
	if changed || m.Next != before {
		if err := v.s.srv.opts.Maps.Save(ctx, v.entry, nil); err != nil {
			return err
		}
	}
	if v.old != nil {
		v.old.uids = oldUIDs
	}
	v.new.uids = newUIDs
	v.view = view
	return nil
}

// mergeSorted returns the sorted union of a and b, without duplicates. It
// sorts a and b in place when they are not sorted.
func mergeSorted(a, b []store.UID) []store.UID {
	for _, l := range [][]store.UID{a, b} {
		if !slices.IsSorted(l) {
			slices.Sort(l)
		}
	}
	if len(b) == 0 {
		return slices.Compact(a)
	}
	out := make([]store.UID, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		var u store.UID
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			u, i = a[i], i+1
		case i == len(a) || b[j] < a[i]:
			u, j = b[j], j+1
		default: // equal
			u, i, j = a[i], i+1, j+1
		}
		if n := len(out); n == 0 || out[n-1] != u {
			out = append(out, u)
		}
	}
	return out
}

// resync refreshes and tells the client what changed: EXPUNGE for
// messages gone (highest sequence first), then EXISTS.
func (v *vmail) resync(w *imapserver.UpdateWriter) error {
	prev := v.view
	if err := v.refresh(context.Background()); err != nil {
		return err
	}
	v.dirty = false
	cur := v.view
	// Expunges, from the highest sequence down so earlier numbers hold.
	for i := len(prev) - 1; i >= 0; i-- {
		if _, ok := slices.BinarySearch(cur, prev[i]); !ok {
			if err := w.WriteExpunge(uint32(i + 1)); err != nil {
				return err
			}
		}
	}
	// Virtual UIDs only grow, so what is new sorts after what stays.
	kept := 0
	for _, u := range prev {
		if _, ok := slices.BinarySearch(cur, u); ok {
			kept++
		}
	}
	if len(cur) != kept || len(prev) != kept {
		return w.WriteNumMessages(uint32(len(cur)))
	}
	return nil
}

// seqOf is the client's sequence number of virtual UID u, or 0.
func (v *vmail) seqOf(u store.UID) uint32 {
	i, ok := slices.BinarySearch(v.view, u)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// resolve turns a client's sequence or UID set into virtual UIDs, in
// ascending order; "*" is the last message.
func (v *vmail) resolve(numSet imap.NumSet) []store.UID {
	var out []store.UID
	switch set := numSet.(type) {
	case imap.SeqSet:
		n := uint32(len(v.view))
		for _, r := range set {
			lo, hi := starOr(r.Start, n), starOr(r.Stop, n)
			if lo > hi {
				lo, hi = hi, lo
			}
			for seq := lo; seq <= hi && seq <= n; seq++ {
				if seq >= 1 {
					out = append(out, v.view[seq-1])
				}
			}
		}
	case imap.UIDSet:
		var max uint32
		if len(v.view) > 0 {
			max = v.view[len(v.view)-1]
		}
		for _, r := range set {
			lo, hi := starOr(uint32(r.Start), max), starOr(uint32(r.Stop), max)
			if lo > hi {
				lo, hi = hi, lo
			}
			i, _ := slices.BinarySearch(v.view, lo)
			for ; i < len(v.view) && v.view[i] <= hi; i++ {
				out = append(out, v.view[i])
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func starOr(n, star uint32) uint32 {
	if n == 0 {
		return star
	}
	return n
}

// split sorts virtual UIDs by the side that serves them: new when the
// message was copied, old otherwise. The maps go side UID -> virtual.
func (v *vmail) split(vs []store.UID) (oldU, newU map[store.UID]store.UID) {
	oldP, newP := v.splitPairs(vs)
	oldU, newU = make(map[store.UID]store.UID, len(oldP)), make(map[store.UID]store.UID, len(newP))
	for _, p := range oldP {
		oldU[p.side] = p.v
	}
	for _, p := range newP {
		newU[p.side] = p.v
	}
	return oldU, newU
}

// sidePair is a message one side serves: its UID there and its virtual UID.
type sidePair struct{ side, v store.UID }

// splitPairs is split as lists sorted by side UID, one UID once: what a
// FETCH of the whole mailbox walks without a map per message.
func (v *vmail) splitPairs(vs []store.UID) (oldP, newP []sidePair) {
	v.entry.Lock()
	for _, u := range vs {
		o, n, ok := v.entry.M.Lookup(u)
		if v.s.wIsOld {
			n, o = o, 0 // old is the only, writable, side
		}
		if n != 0 && o != 0 && v.old != nil {
			// Copied by another connection (the back-fill) since this
			// session last looked at new: new's view here does not hold
			// it yet, old still does, with the same bytes.
			if _, seen := slices.BinarySearch(v.new.uids, n); !seen {
				n = 0
			}
		}
		switch {
		case !ok:
		case n != 0:
			newP = append(newP, sidePair{side: n, v: u})
		case o != 0 && v.old != nil:
			oldP = append(oldP, sidePair{side: o, v: u})
		}
	}
	v.entry.Unlock()
	return sortPairs(oldP), sortPairs(newP)
}

func sortPairs(ps []sidePair) []sidePair {
	bySide := func(a, b sidePair) int { return cmp.Compare(a.side, b.side) }
	if !slices.IsSortedFunc(ps, bySide) {
		slices.SortStableFunc(ps, bySide)
	}
	return slices.CompactFunc(ps, func(a, b sidePair) bool { return a.side == b.side })
}

// find returns the virtual UID of side UID su in ps (sorted by side),
// trying index hint first (answers come in UID order), and the index to
// try next.
func find(ps []sidePair, su store.UID, hint int) (store.UID, int) {
	if hint < len(ps) && ps[hint].side == su {
		return ps[hint].v, hint + 1
	}
	i, ok := slices.BinarySearchFunc(ps, su, func(p sidePair, u store.UID) int { return cmp.Compare(p.side, u) })
	if !ok {
		return 0, hint
	}
	return ps[i].v, i + 1
}

// pairSet is the UID set of ps's side UIDs (sorted), as ranges.
func pairSet(ps []sidePair) imap.UIDSet {
	var s imap.UIDSet
	for _, p := range ps {
		u := imap.UID(p.side)
		if n := len(s); n > 0 && s[n-1].Stop+1 == u {
			s[n-1].Stop = u
			continue
		}
		s = append(s, imap.UIDRange{Start: u, Stop: u})
	}
	return s
}

func uidSetOf(m map[store.UID]store.UID) imap.UIDSet {
	ps := make([]sidePair, 0, len(m))
	for u := range m {
		ps = append(ps, sidePair{side: u})
	}
	return pairSet(sortPairs(ps))
}

// fetch implements FETCH on the view: each side is asked for its
// messages by UID and the answers are renumbered.
func (v *vmail) fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	oldP, newP := v.splitPairs(v.resolve(numSet))
	opts := *options
	opts.UID = true
	for _, part := range []struct {
		sd    *vside
		pairs []sidePair
	}{{v.old, oldP}, {v.new, newP}} {
		if len(part.pairs) == 0 {
			continue
		}
		cmd := part.sd.c.Fetch(pairSet(part.pairs), &opts)
		next := 0
		for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
			// Place the answer by its UID (Dovecot sends it first), which
			// stays right whatever the upstream's sequence numbers did
			// meanwhile; by sequence number only when the UID comes later.
			var vu store.UID
			first := msg.Next()
			if u, ok := first.(imapclient.FetchItemDataUID); ok {
				vu, next = find(part.pairs, store.UID(u.UID), next)
				first = nil
			} else if int(msg.SeqNum) <= len(part.sd.uids) && msg.SeqNum > 0 {
				vu, next = find(part.pairs, part.sd.uids[msg.SeqNum-1], next)
			}
			seq := v.seqOf(vu)
			if seq == 0 {
				// Not a message we asked for (an unsolicited flag change
				// routed here): skip it whole.
				msg.Collect()
				continue
			}
			if err := v.s.relayMessageAs(w, msg, first, options, seq, vu); err != nil {
				part.sd.c.Close()
				cmd.Close()
				return err
			}
		}
		if err := cmd.Close(); err != nil {
			return v.s.check(err)
		}
	}
	if len(oldP) > 0 && !v.readOnly && setsSeen(options) {
		// A non-PEEK body fetch sets \Seen; old is never written, so the
		// messages read from old are copied and flagged in new.
		vs := make([]store.UID, 0, len(oldP))
		for _, p := range oldP {
			vs = append(vs, p.v)
		}
		byV, err := v.ensureCopied(context.Background(), vs)
		if err != nil {
			return err
		}
		var set imap.UIDSet
		for _, n := range byV {
			set.AddNum(imap.UID(n))
		}
		if err := v.new.c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
			return v.s.check(err)
		}
	} else if len(oldP) > 0 && len(oldP) <= copyOnReadMax && readsWholeMessage(options) && v.s.srv.opts.Copier != nil {
		// Copy-on-read: the member opened messages that are still only in
		// old; they were streamed from old at once, and are copied now,
		// ahead of the back-fill. A bulk read (a client's first sync) is
		// left to the back-fill rather than doubling its time.
		vs := make([]store.UID, 0, len(oldP))
		for _, p := range oldP {
			vs = append(vs, p.v)
		}
		if _, err := v.ensureCopied(context.Background(), vs); err != nil {
			v.s.log.Warn("copy-on-read failed; the back-fill will retry", "mailbox", v.mailbox, "err", err)
		}
	}
	return nil
}

// copyOnReadMax is how many old-only messages one FETCH may copy on read.
const copyOnReadMax = 8

// readsWholeMessage reports whether a FETCH reads a whole message
// (BODY[], BODY.PEEK[], RFC822), as a client opening it does.
func readsWholeMessage(o *imap.FetchOptions) bool {
	for _, b := range o.BodySection {
		if b.Specifier == imap.PartSpecifierNone && len(b.Part) == 0 && b.Partial == nil {
			return true
		}
	}
	return false
}

// setsSeen reports whether a FETCH sets \Seen (a body section without PEEK).
func setsSeen(o *imap.FetchOptions) bool {
	for _, b := range o.BodySection {
		if !b.Peek {
			return true
		}
	}
	for _, b := range o.BinarySection {
		if !b.Peek {
			return true
		}
	}
	return false
}

// ensureCopied copies every old-only message of vs to new (a write is
// about to act on it) and returns the new UIDs, virtual -> new.
func (v *vmail) ensureCopied(ctx context.Context, vs []store.UID) (map[store.UID]store.UID, error) {
	oldU, newU := v.split(vs)
	out := map[store.UID]store.UID{}
	for n, u := range newU {
		out[u] = n
	}
	if len(oldU) == 0 {
		return out, nil
	}
	olds := make([]store.UID, 0, len(oldU))
	for o := range oldU {
		olds = append(olds, o)
	}
	slices.Sort(olds)
	for _, o := range olds {
		u := oldU[o]
		n, err := v.s.srv.opts.Copier.CopyToNew(ctx, v.old.c, v.new.c, v.entry, v.s.srv.opts.Maps, v.new.mailbox, u, o)
		if err != nil {
			v.s.log.Warn("copy to the new provider failed", "mailbox", v.mailbox, "v", u, "err", err)
			v.s.srv.opts.Metrics.BackfillError(v.s.route.Domain.Name, metrics.KindOnDemand)
			return nil, fmt.Errorf("copy of message %d to the new provider: %w", u, err)
		}
		out[u] = n
	}
	// A message another connection copied is not in this session's view
	// of new until it syncs: let Dovecot catch up (searchAll NOOPs first)
	// and keep new's sequence list equal to its view.
	uids, err := v.new.searchAll()
	if err != nil {
		return nil, v.s.check(err)
	}
	v.new.uids = uids
	return out, nil
}

func (v *vmail) store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	if v.readOnly {
		return errReadOnly
	}
	ctx := context.Background()
	vs := v.resolve(numSet)
	byV, err := v.ensureCopied(ctx, vs)
	if err != nil {
		return err
	}
	if len(byV) == 0 {
		return nil
	}
	rev := map[store.UID]store.UID{}
	var set imap.UIDSet
	for u, n := range byV {
		rev[n] = u
		set.AddNum(imap.UID(n))
	}
	cmd := v.new.c.Store(set, flags, options)
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		buf, err := msg.Collect()
		if err != nil {
			cmd.Close()
			return v.s.check(err)
		}
		u := rev[store.UID(buf.UID)]
		if u == 0 && int(buf.SeqNum) <= len(v.new.uids) && buf.SeqNum > 0 {
			u = rev[v.new.uids[buf.SeqNum-1]]
		}
		seq := v.seqOf(u)
		if seq == 0 || buf.Flags == nil {
			continue
		}
		rw := w.CreateMessage(seq)
		rw.WriteUID(imap.UID(u))
		rw.WriteFlags(buf.Flags)
		if err := rw.Close(); err != nil {
			cmd.Close()
			return err
		}
	}
	return v.s.check(cmd.Close())
}

// expunge removes the view's \Deleted messages (in new; old-only messages
// cannot carry a \Deleted set through the gateway) and records them gone.
func (v *vmail) expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	if v.readOnly {
		return errReadOnly
	}
	res, err := v.new.c.UIDSearch(&imap.SearchCriteria{Flag: []imap.Flag{imap.FlagDeleted}}, nil).Wait()
	if err != nil {
		return v.s.check(err)
	}
	var target imap.UIDSet
	var gone []store.UID
	v.entry.Lock()
	for _, n := range res.AllUIDs() {
		u, ok := v.s.byW(v.entry.M, store.UID(n))
		if !ok || (uids != nil && !uids.Contains(imap.UID(u))) {
			continue
		}
		target.AddNum(n)
		gone = append(gone, u)
	}
	v.entry.Unlock()
	if len(gone) == 0 {
		return nil
	}
	return v.remove(target, gone, func(seq uint32) error { return w.WriteExpunge(seq) })
}

// remove UID EXPUNGEs target in new, marks the virtual UIDs gone in the
// map and tells the client, highest sequence first.
func (v *vmail) remove(target imap.UIDSet, gone []store.UID, tell func(seq uint32) error) error {
	ctx := context.Background()
	v.entry.Lock()
	for _, u := range gone {
		v.entry.M.Expunge(u)
	}
	err := v.s.srv.opts.Maps.Save(ctx, v.entry, nil)
	v.entry.Unlock()
	if err != nil {
		return err
	}
	if err := v.new.c.UIDExpunge(target).Close(); err != nil {
		return v.s.check(err)
	}
	slices.Sort(gone)
	for i := len(gone) - 1; i >= 0; i-- {
		seq := v.seqOf(gone[i])
		if seq == 0 {
			continue
		}
		v.view = slices.Delete(v.view, int(seq-1), int(seq))
		if err := tell(seq); err != nil {
			return err
		}
	}
	if nu, err := v.new.searchAll(); err == nil {
		v.new.uids = nu
	}
	return nil
}

// copyTo copies messages to dest (a client name) in new, giving them
// virtual UIDs in dest's map.
func (v *vmail) copyTo(numSet imap.NumSet, dest string) (*imap.CopyData, []store.UID, imap.UIDSet, error) {
	ctx := context.Background()
	vs := v.resolve(numSet)
	byV, err := v.ensureCopied(ctx, vs)
	if err != nil {
		return nil, nil, nil, err
	}
	if len(byV) == 0 {
		return nil, nil, nil, nil
	}
	src := make([]store.UID, 0, len(byV))
	for u := range byV {
		src = append(src, u)
	}
	slices.Sort(src)
	var set imap.UIDSet
	for _, u := range src {
		set.AddNum(imap.UID(byV[u]))
	}
	destEntry, err := v.s.mapFor(ctx, dest)
	if err != nil {
		return nil, nil, nil, err
	}
	data, err := v.new.c.Copy(set, v.s.newName(dest)).Wait()
	if err != nil {
		return nil, nil, nil, v.s.check(err)
	}
	var out *imap.CopyData
	if data != nil && data.DestUIDs != nil {
		srcN, _ := data.SourceUIDs.Nums()
		dstN, _ := data.DestUIDs.Nums()
		destEntry.Lock()
		var vsrc, vdst imap.UIDSet
		for i := range srcN {
			if i >= len(dstN) {
				break
			}
			du := v.s.addW(destEntry.M, store.UID(dstN[i]))
			vdst.AddNum(imap.UID(du))
			vsrc.AddNum(imap.UID(v.viewOfNew(store.UID(srcN[i]))))
		}
		err := v.s.srv.opts.Maps.Save(ctx, destEntry, nil)
		out = &imap.CopyData{UIDValidity: destEntry.M.UIDValidity, SourceUIDs: vsrc, DestUIDs: vdst}
		destEntry.Unlock()
		if err != nil {
			return nil, nil, nil, err
		}
	}
	return out, src, set, nil
}

func (v *vmail) viewOfNew(n store.UID) store.UID {
	v.entry.Lock()
	defer v.entry.Unlock()
	u, _ := v.s.byW(v.entry.M, n)
	return u
}

// search evaluates criteria on each side (sequence and UID sets
// translated to that side's UIDs) and merges the answers in virtual terms.
func (v *vmail) search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	all := v.view
	var hits []store.UID
	if onlySets(criteria) {
		// ALL, or sequence/UID sets only: the view answers, no upstream
		// round trip (mbsync and phones ask UID SEARCH ALL, or 1:*, a lot).
		hits = slices.Clone(all)
		for _, s := range criteria.SeqNum {
			hits = intersect(hits, v.resolve(s))
		}
		for _, s := range criteria.UID {
			hits = intersect(hits, v.resolve(s))
		}
		return v.searchData(kind, hits), nil
	}
	oldU, newU := v.split(all)
	for _, sd := range []*vside{v.old, v.new} {
		if sd == nil {
			continue
		}
		serves := newU
		if sd == v.old {
			serves = oldU
		}
		if len(serves) == 0 {
			continue
		}
		toSide := map[store.UID]store.UID{}
		for su, vu := range serves {
			toSide[vu] = su
		}
		c := v.translate(*criteria, toSide)
		// Restrict to the messages this side serves for the view.
		c.UID = append(c.UID, uidSetOf(serves))
		res, err := sd.c.UIDSearch(&c, nil).Wait()
		if err != nil {
			return nil, v.s.check(err)
		}
		for _, su := range res.AllUIDs() {
			if vu, ok := serves[store.UID(su)]; ok {
				hits = append(hits, vu)
			}
		}
	}
	slices.Sort(hits)
	return v.searchData(kind, hits), nil
}

// onlySets reports whether c has no criterion but sequence and UID sets.
func onlySets(c *imap.SearchCriteria) bool {
	rest := *c
	rest.SeqNum, rest.UID = nil, nil
	return reflect.DeepEqual(rest, imap.SearchCriteria{})
}

// intersect keeps the elements of a (sorted) that are in b (sorted).
func intersect(a, b []store.UID) []store.UID {
	out := a[:0]
	for _, u := range a {
		if _, ok := slices.BinarySearch(b, u); ok {
			out = append(out, u)
		}
	}
	return out
}

// searchData renders sorted virtual UIDs as the client asked: UIDs or
// sequence numbers, with ESEARCH's MIN, MAX and COUNT.
func (v *vmail) searchData(kind imapserver.NumKind, hits []store.UID) *imap.SearchData {
	data := &imap.SearchData{}
	if kind == imapserver.NumKindUID {
		var set imap.UIDSet
		for _, u := range hits {
			set.AddNum(imap.UID(u))
		}
		data.All = set
	} else {
		var set imap.SeqSet
		for _, u := range hits {
			set.AddNum(v.seqOf(u))
		}
		data.All = set
	}
	fillESearch(data, kind)
	return data
}

// translate rewrites the client's sequence and UID sets into one side's
// UIDs (toSide: virtual -> side UID), recursively.
func (v *vmail) translate(c imap.SearchCriteria, toSide map[store.UID]store.UID) imap.SearchCriteria {
	conv := func(vs []store.UID) imap.UIDSet {
		var s imap.UIDSet
		for _, u := range vs {
			if su, ok := toSide[u]; ok {
				s.AddNum(imap.UID(su))
			}
		}
		if len(s) == 0 {
			s.AddNum(imap.UID(^uint32(0) - 1)) // matches nothing
		}
		return s
	}
	var uids []imap.UIDSet
	for _, s := range c.SeqNum {
		uids = append(uids, conv(v.resolve(s)))
	}
	for _, s := range c.UID {
		uids = append(uids, conv(v.resolve(s)))
	}
	c.SeqNum, c.UID = nil, uids
	if len(c.Not) > 0 {
		not := make([]imap.SearchCriteria, len(c.Not))
		for i := range c.Not {
			not[i] = v.translate(c.Not[i], toSide)
		}
		c.Not = not
	}
	if len(c.Or) > 0 {
		or := make([][2]imap.SearchCriteria, len(c.Or))
		for i := range c.Or {
			or[i] = [2]imap.SearchCriteria{v.translate(c.Or[i][0], toSide), v.translate(c.Or[i][1], toSide)}
		}
		c.Or = or
	}
	return c
}

// relayMessageAs relays one upstream FETCH response under the client's
// sequence number seq and virtual UID u.
func (s *imapSession) relayMessageAs(w *imapserver.FetchWriter, msg *imapclient.FetchMessageData, first imapclient.FetchItemData, options *imap.FetchOptions, seq uint32, u store.UID) error {
	rw := w.CreateMessage(seq)
	rw.WriteUID(imap.UID(u))
	item := first
	if item == nil {
		item = msg.Next()
	}
	for ; item != nil; item = msg.Next() {
		if _, isUID := item.(imapclient.FetchItemDataUID); isUID {
			continue
		}
		if err := relayItem(rw, item, options); err != nil {
			return err
		}
	}
	return rw.Close()
}

// appendVirtual appends to new and gives the message the next virtual UID.
func (s *imapSession) appendVirtual(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	ctx := context.Background()
	entry, err := s.mapFor(ctx, mailbox)
	if err != nil {
		return nil, err
	}
	cmd := s.newUp.Append(s.newName(mailbox), r.Size(), options)
	n, copyErr := io.Copy(cmd, r)
	if copyErr == nil && n != r.Size() {
		copyErr = io.ErrUnexpectedEOF
	}
	if copyErr != nil {
		s.newUp.Close()
		cmd.Close()
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "APPEND aborted: message incomplete, nothing stored"}
	}
	if err := cmd.Close(); err != nil {
		return nil, s.checkNew(err)
	}
	data, err := cmd.Wait()
	if err != nil {
		return nil, s.checkNew(err)
	}
	if data.UID == 0 {
		// Without APPENDUID the next refresh finds the message anyway.
		return &imap.AppendData{}, nil
	}
	entry.Lock()
	defer entry.Unlock()
	u := s.addW(entry.M, store.UID(data.UID))
	if err := s.srv.opts.Maps.Save(ctx, entry, nil); err != nil {
		return nil, err
	}
	return &imap.AppendData{UID: imap.UID(u), UIDValidity: entry.M.UIDValidity}, nil
}

// statusVirtual answers STATUS from the view of mailbox.
func (s *imapSession) statusVirtual(mailbox string, options *imap.StatusOptions) (*imap.StatusData, error) {
	ctx := context.Background()
	v := &vmail{s: s, mailbox: mailbox}
	if s.oldUp != nil {
		// STATUS on old needs no SELECT; the lists need one: use a
		// throw-away view only when counts are asked.
		v.old = &vside{name: "old", c: s.oldUp, mailbox: mailbox}
	}
	v.new = &vside{name: "new", c: s.newUp, mailbox: s.newName(mailbox)}
	entry, err := s.mapFor(ctx, mailbox)
	if err != nil {
		return nil, err
	}
	v.entry = entry
	data := &imap.StatusData{Mailbox: mailbox}
	entry.Lock()
	data.UIDValidity, data.UIDNext = entry.M.UIDValidity, imap.UID(entry.M.Next)
	entry.Unlock()
	if options.NumMessages || options.NumUnseen || options.NumRecent || options.NumDeleted || options.Size {
		// Counting needs each side's UID lists: EXAMINE both (old is
		// read-only anyway), then restore the selected mailbox.
		if err := s.withExamined(v, func() error { return v.refresh(ctx) }); err != nil {
			return nil, err
		}
		n := uint32(len(v.view))
		var zero uint32
		data.NumMessages, data.NumRecent = &n, &zero
		if options.NumUnseen || options.NumDeleted {
			var unseen, deleted uint32
			err := s.withExamined(v, func() error {
				res, err := v.search(imapserver.NumKindUID, &imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}}, nil)
				if err != nil {
					return err
				}
				unseen = res.Count
				res, err = v.search(imapserver.NumKindUID, &imap.SearchCriteria{Flag: []imap.Flag{imap.FlagDeleted}}, nil)
				deleted = res.Count
				return err
			})
			if err != nil {
				return nil, err
			}
			data.NumUnseen, data.NumDeleted = &unseen, &deleted
		}
		if options.Size {
			var size int64
			data.Size = &size
		}
	}
	if options.AppendLimit {
		l := s.AppendLimit()
		data.AppendLimit = &l
	}
	return data, nil
}

// withExamined runs f with v's mailbox EXAMINEd on both sides, then puts
// back the session's selected mailbox, if any.
func (s *imapSession) withExamined(v *vmail, f func() error) error {
	s.oldExamined, s.vc.old, s.vc.exam = "", nil, nil
	for _, sd := range []*vside{v.old, v.new} {
		if sd == nil {
			continue
		}
		if _, err := sd.c.Select(sd.mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
			return s.check(err)
		}
	}
	err := f()
	if cur := s.vm; cur != nil {
		for _, sd := range []*vside{cur.old, cur.new} {
			if sd == nil {
				continue
			}
			ro := sd == cur.old || cur.readOnly
			data, rerr := sd.c.Select(sd.mailbox, &imap.SelectOptions{ReadOnly: ro}).Wait()
			if rerr != nil && err == nil {
				err = s.check(rerr)
			}
			if rerr == nil && sd == cur.old {
				s.examined(sd.c, sd.mailbox, data)
			}
		}
	} else {
		for _, sd := range []*vside{v.old, v.new} {
			if sd != nil {
				sd.c.Unselect().Wait()
			}
		}
	}
	return err
}

// needRoles pairs the special-use folders (mapRoles) the first time a
// name other than INBOX, which has no role, needs them. Not at login: a
// LIST of the folders makes Dovecot's every later SELECT or EXAMINE in the
// session cost tens of milliseconds on a 50,000-message mailbox (measured:
// 0.7 ms without, 40-50 ms after any LIST "" "*"), and a phone that
// reconnects to SELECT INBOX and IDLE never needs the roles.
func (s *imapSession) needRoles(mailbox string) {
	if s.roleNew == nil && !strings.EqualFold(mailbox, "INBOX") {
		s.mapRoles(context.Background())
	}
}

// mapRoles pairs old's and new's special-use folders by role and records
// the pairs in the user's folder map.
func (s *imapSession) mapRoles(ctx context.Context) {
	s.roleNew, s.roleOld = map[string]string{}, map[string]string{}
	if s.oldUp == nil {
		// State new: the pairs recorded while old was there still hold.
		st := s.srv.opts.Maps.Store()
		st.View(ctx, func(tx store.Tx) error {
			fm, err := store.GetFolderMap(tx, s.route.User)
			if err != nil {
				return nil
			}
			for _, f := range fm.Folders {
				if f.SpecialUse != "" && f.New != "" {
					s.roleNew[f.Old], s.roleOld[f.New] = f.New, f.Old
				}
			}
			return nil
		})
		return
	}
	roles := func(c *backend.IMAPConn) map[imap.MailboxAttr]string {
		out := map[imap.MailboxAttr]string{}
		list, err := c.List("", "*", &imap.ListOptions{ReturnSpecialUse: true}).Collect()
		if err != nil {
			return out
		}
		for _, l := range list {
			for _, a := range l.Attrs {
				if slices.Contains(backend.SpecialUse, a) {
					if _, dup := out[a]; !dup {
						out[a] = l.Mailbox
					}
				}
			}
		}
		return out
	}
	oldRoles, newRoles := roles(s.oldUp), roles(s.newUp)
	var pairs []store.Folder
	for _, a := range backend.SpecialUse {
		o, n := oldRoles[a], newRoles[a]
		if o == "" || n == "" {
			continue
		}
		s.roleNew[o], s.roleOld[n] = n, o
		pairs = append(pairs, store.Folder{Old: o, New: n, SpecialUse: string(a)})
	}
	if len(pairs) == 0 {
		return
	}
	err := s.srv.opts.Maps.Store().Update(ctx, func(tx store.Tx) error {
		fm, err := store.GetFolderMap(tx, s.route.User)
		if errors.Is(err, store.ErrNotFound) {
			fm, err = &store.FolderMap{OldDelim: string(s.oldDelim), NewDelim: string(s.newDelim)}, nil
		}
		if err != nil {
			return err
		}
		for _, p := range pairs {
			if i := slices.IndexFunc(fm.Folders, func(f store.Folder) bool { return f.Old == p.Old }); i >= 0 {
				if fm.Folders[i].New == "" && !fm.Folders[i].Created {
					continue // deleted by the user
				}
				fm.Folders[i] = p
			} else {
				fm.Folders = append(fm.Folders, p)
			}
		}
		return store.PutFolderMap(tx, s.route.User, fm)
	})
	if err != nil {
		s.log.Warn("cannot record the folder map", "err", err)
	}
}

// recover adopts copies a crash left in new unrecorded, before refresh
// could take them for new arrivals (invariant 6).
func (v *vmail) recover(ctx context.Context, newUIDs []store.UID) error {
	copier := v.s.srv.opts.Copier
	if copier == nil || v.s.wIsOld {
		return nil
	}
	v.entry.Lock()
	var unknown []store.UID
	for _, n := range newUIDs {
		if _, ok := v.entry.M.ByNew(n); !ok && !v.knownGone(n) {
			unknown = append(unknown, n)
		}
	}
	v.entry.Unlock()
	if len(unknown) == 0 {
		return nil
	}
	var oldC *backend.IMAPConn
	if v.old != nil {
		oldC = v.old.c
	}
	adopted, err := copier.Recover(ctx, oldC, v.new.c, v.entry, v.s.srv.opts.Maps, unknown)
	if len(adopted) > 0 {
		v.s.log.Info("adopted copies left by an interrupted copy", "mailbox", v.mailbox, "count", len(adopted))
	}
	return err
}

// knownGone reports whether new UID n belongs to an expunged message (the
// map keeps its run). The caller holds the entry lock.
func (v *vmail) knownGone(n store.UID) bool {
	for _, r := range v.entry.M.Runs {
		if r.New != 0 && n >= r.New && n < r.New+r.N {
			return true
		}
	}
	return false
}

// oldSide is the connection to the old provider in virtual mode, or nil in
// state new.
func (s *imapSession) oldSide() *backend.IMAPConn {
	if s.wIsOld {
		return s.newUp
	}
	return s.oldUp
}

// byW and addW look up and add a UID of the writable side: new's, or, in
// state old once a mailbox has a map (after a rollback), old's.
func (s *imapSession) byW(m *store.Map, u store.UID) (store.UID, bool) {
	if s.wIsOld {
		return m.ByOld(u)
	}
	return m.ByNew(u)
}

func (s *imapSession) addW(m *store.Map, u store.UID) store.UID {
	if s.wIsOld {
		return m.AddOld(u)
	}
	return m.AddNew(u)
}
