package store

// Operations on the run-based UID map (DESIGN.md "UID map").
//
// Implementation notes:
//
//   - A virtual UID v is known when 0 < v < Next. Every v in
//     [max(Frozen, 1), Next) is covered by a run (AddOld and AddNew create
//     one); v < Frozen without a run is old UID v and nothing else
//     (invariant 1: the virtual UIDs are the old provider's).
//   - Runs are canonical: sorted by V, non-overlapping, and no two adjacent
//     runs can merge (consecutive V, and on each side either both absent or
//     consecutive). So the state has one representation and one encoding,
//     and copying in old UID order with consecutive APPENDUIDs (RFC 4315
//     section 3) extends one run instead of adding runs.
//   - A run whose V or Old is below Frozen has Old == V: below Frozen the
//     old side is the identity, explicit or not, so old UIDs map to at most
//     one virtual UID. The old and new sides are injective: no two runs
//     cover the same old UID or the same new UID. (The operations never
//     make an old-only run below Frozen, which says what no run says;
//     UnmarshalBinary accepts one all the same.)
//   - Expunge does not remove runs: the runs of an expunged virtual UID keep
//     saying which old and new UIDs it was, so that AddOld and AddNew refuse
//     to give them a new virtual UID (the old provider is never written, so
//     the old message stays there). Gone overlays the runs.
//   - Lookup binary-searches Runs by V. ByOld and ByNew binary-search
//     reverse indexes of the runs sorted by Old and by New. The indexes are
//     not serialised: UnmarshalBinary builds them (it has to sort to check
//     that the sides are injective), NewMap starts them empty, Clone copies
//     them, and a Map made any other way builds them on first use. Every
//     change keeps them up to date (O(log runs) plus a memmove) rather than
//     dropping them: SetNew needs the new-side index to refuse a new UID
//     that is taken, so dropping it on every change would make a back-fill
//     O(runs log runs) per message.
//   - IMAP UIDs are non-zero 32-bit numbers (RFC 9051 section 2.3.1.1);
//     0 means "none" here. UID arithmetic at the top of the range is done
//     in 64 bits.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// Errors of Map.SetNew and Map.UnmarshalBinary.
var (
	// ErrUIDUnknown means the virtual UID is 0 or was never assigned
	// (>= Next), or the new UID given is 0.
	ErrUIDUnknown = errors.New("store: UID not in map")
	// ErrUIDGone means the virtual UID was expunged by the user.
	ErrUIDGone = errors.New("store: UID expunged")
	// ErrUIDMapped means the virtual UID already has a new UID, or the new
	// UID already belongs to a virtual UID (expunged or not).
	ErrUIDMapped = errors.New("store: UID already mapped")
	// ErrMapCorrupt wraps every error of UnmarshalBinary and MarshalBinary
	// about the map's content.
	ErrMapCorrupt = errors.New("store: corrupt UID map")
)

// mapVersion is the first byte of MarshalBinary's encoding.
const mapVersion = 1

// mapIndex holds the reverse indexes of a Map: one entry per run that has
// the side, sorted by key (the run's Old, or its New), keys unique.
type mapIndex struct {
	old, new entrySlice
}

// ixEntry says that key..key+n-1 are virtual UIDs v..v+n-1.
type ixEntry struct{ key, v, n UID }

// NewMap returns the map of a mailbox that leaves state old now: virtual
// UIDVALIDITY uidValidity (the old provider's), frozen the old provider's
// UIDNEXT. Next starts at frozen, or 1 when frozen is 0.
func NewMap(uidValidity uint32, frozen UID) *Map {
	return &Map{
		UIDValidity: uidValidity,
		Frozen:      frozen,
		Next:        max(frozen, 1),
		ix:          &mapIndex{},
	}
}

// Lookup returns the old and new UIDs of virtual UID v; either is 0 when
// that side does not hold the message. ok is false when v is 0, was never
// assigned, or was expunged. A v below Frozen that was never copied is old
// UID v.
func (m *Map) Lookup(v UID) (old, new UID, ok bool) {
	if v == 0 || v >= m.Next || m.IsGone(v) {
		return 0, 0, false
	}
	if i := m.find(v); i >= 0 {
		r := m.Runs[i]
		off := v - r.V
		if r.Old != 0 {
			old = r.Old + off
		}
		if r.New != 0 {
			new = r.New + off
		}
		return old, new, true
	}
	if v < m.Frozen {
		return v, 0, true
	}
	return 0, 0, false
}

// ByOld returns the virtual UID of old UID old. An old UID below Frozen is
// its own virtual UID; others are found through the runs. ok is false when
// old is unknown (AddOld assigns it) or its virtual UID was expunged.
func (m *Map) ByOld(old UID) (v UID, ok bool) {
	v, ok = m.resolveOld(old)
	if !ok || m.IsGone(v) {
		return 0, false
	}
	return v, true
}

// ByNew returns the virtual UID of new UID n. ok is false when n is unknown
// (SetNew or AddNew maps it) or its virtual UID was expunged.
func (m *Map) ByNew(n UID) (v UID, ok bool) {
	v, ok = m.index().new.lookup(n)
	if !ok || m.IsGone(v) {
		return 0, false
	}
	return v, true
}

// SetNew records that the message of virtual UID v, known through old and
// not yet in new, has been copied to new UID n (APPENDUID, RFC 4315). It
// extends the run of v-1 when that run maps to n-1. It returns an error
// wrapping ErrUIDUnknown when v or n is 0 or v was never assigned,
// ErrUIDGone when v was expunged, and ErrUIDMapped when v already has a new
// UID (even n itself: a replay must check Lookup first) or n already
// belongs to a virtual UID. On error the map is unchanged.
func (m *Map) SetNew(v, n UID) error {
	switch {
	case n == 0 || v == 0 || v >= m.Next:
		return fmt.Errorf("store: set new UID of %d to %d: %w", v, n, ErrUIDUnknown)
	case m.IsGone(v):
		return fmt.Errorf("store: set new UID of %d to %d: %w", v, n, ErrUIDGone)
	}
	i := m.find(v)
	if i >= 0 && m.Runs[i].New != 0 {
		return fmt.Errorf("store: set new UID of %d to %d: %w (has %d)", v, n, ErrUIDMapped, m.Runs[i].New+(v-m.Runs[i].V))
	}
	if i < 0 && v >= m.Frozen {
		// Unreachable in a valid map: [Frozen, Next) is covered.
		return fmt.Errorf("store: set new UID of %d to %d: %w", v, n, ErrUIDUnknown)
	}
	if w, ok := m.index().new.lookup(n); ok {
		return fmt.Errorf("store: set new UID of %d to %d: %w (virtual %d)", v, n, ErrUIDMapped, w)
	}
	if i < 0 {
		// Identity below Frozen, not yet copied.
		m.put(m.insertPos(v), Run{V: v, N: 1, Old: v, New: n})
		return nil
	}
	// Split the old-only run r around v. Replace first, then insert, so
	// that no index key is ever held twice.
	r := m.Runs[i]
	off := v - r.V
	m.setRun(i, Run{V: v, N: 1, Old: r.Old + off, New: n})
	if off > 0 {
		m.insertRun(i, Run{V: r.V, N: off, Old: r.Old})
		i++
	}
	if rest := r.N - off - 1; rest > 0 {
		m.insertRun(i+1, Run{V: v + 1, N: rest, Old: r.Old + off + 1})
	}
	m.mergeAround(i)
	return nil
}

// AddOld returns the virtual UID of old UID old, assigning Next to an old
// UID at or above Frozen seen for the first time (a message that reached
// the old provider after the freeze). It is idempotent: an old UID already
// mapped, or below Frozen, returns its virtual UID, even when that was
// expunged (callers check IsGone: the message stays hidden, it never gets
// another virtual UID). It returns 0 when old is 0 and when the virtual
// UID space is exhausted (Next is 2^32-1).
func (m *Map) AddOld(old UID) UID {
	if old == 0 {
		return 0
	}
	if v, ok := m.resolveOld(old); ok {
		return v
	}
	return m.add(Run{N: 1, Old: old})
}

// AddNew returns the virtual UID of new UID n, assigning Next to a message
// that exists only in new (delivered or appended after the freeze). It is
// idempotent like AddOld: a mapped n returns its virtual UID, expunged or
// not (check IsGone). It returns 0 when n is 0 and when the virtual UID
// space is exhausted.
func (m *Map) AddNew(n UID) UID {
	if n == 0 {
		return 0
	}
	if v, ok := m.index().new.lookup(n); ok {
		return v
	}
	return m.add(Run{N: 1, New: n})
}

// add assigns Next to the one-message run r.
func (m *Map) add(r Run) UID {
	if m.Next == math.MaxUint32 {
		return 0
	}
	r.V = m.Next
	m.Next++
	m.put(len(m.Runs), r)
	return r.V
}

// put adds the one-message run r, which covers no virtual UID in a run, at
// index at of Runs, merged with its neighbours. The common case of a
// back-fill, r continuing the run before it, changes no index key.
func (m *Map) put(at int, r Run) {
	if at > 0 && canMerge(m.Runs[at-1], r) {
		p := m.Runs[at-1]
		p.N++
		m.setRun(at-1, p)
		m.mergeAround(at - 1)
		return
	}
	m.insertRun(at, r)
	m.mergeAround(at)
}

// Expunge marks virtual UID v expunged by the user: Lookup, ByOld and ByNew
// no longer report it, IsGone does, and AddOld and AddNew keep returning it
// instead of giving its messages another virtual UID. It is idempotent; a v that is 0 or was never
// assigned is ignored.
func (m *Map) Expunge(v UID) {
	if v == 0 || v >= m.Next {
		return
	}
	g := m.Gone
	i := m.gonePos(v)
	if i < len(g) && g[i].Lo <= v {
		return
	}
	left := i > 0 && g[i-1].Hi+1 == v
	right := i < len(g) && g[i].Lo == v+1
	switch {
	case left && right:
		g[i-1].Hi = g[i].Hi
		m.Gone = slices.Delete(g, i, i+1)
	case left:
		g[i-1].Hi = v
	case right:
		g[i].Lo = v
	default:
		m.Gone = slices.Insert(g, i, Range{v, v})
	}
}

// IsGone reports whether virtual UID v was expunged.
func (m *Map) IsGone(v UID) bool {
	i := m.gonePos(v)
	return i < len(m.Gone) && m.Gone[i].Lo <= v
}

// gonePos returns the index of the first range of Gone with Hi >= v.
func (m *Map) gonePos(v UID) int {
	g := m.Gone
	lo, hi := 0, len(g)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if g[h].Hi < v {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return lo
}

// Clone returns a deep copy of m, indexes included.
func (m *Map) Clone() *Map {
	c := *m
	c.Runs = slices.Clone(m.Runs)
	c.Gone = slices.Clone(m.Gone)
	if m.ix != nil {
		c.ix = &mapIndex{old: slices.Clone(m.ix.old), new: slices.Clone(m.ix.new)}
	}
	return &c
}

// Len returns the number of runs.
func (m *Map) Len() int { return len(m.Runs) }

// find returns the index of the run covering v, or -1.
func (m *Map) find(v UID) int {
	i := m.insertPos(v) - 1
	if i >= 0 && v-m.Runs[i].V < m.Runs[i].N {
		return i
	}
	return -1
}

// insertPos returns the index of the first run with V > v.
func (m *Map) insertPos(v UID) int {
	rs := m.Runs
	lo, hi := 0, len(rs)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if rs[h].V <= v {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return lo
}

// resolveOld returns the virtual UID of old UID old, expunged or not.
func (m *Map) resolveOld(old UID) (UID, bool) {
	if old == 0 {
		return 0, false
	}
	if old < m.Frozen && m.find(old) < 0 {
		return old, true
	}
	return m.index().old.lookup(old)
}

// index returns m's reverse indexes, building them if m has none.
func (m *Map) index() *mapIndex {
	if m.ix == nil {
		m.ix = buildMapIndex(m.Runs)
	}
	return m.ix
}

func buildMapIndex(runs []Run) *mapIndex {
	ix := &mapIndex{}
	for _, r := range runs {
		if r.Old != 0 {
			ix.old = append(ix.old, ixEntry{r.Old, r.V, r.N})
		}
		if r.New != 0 {
			ix.new = append(ix.new, ixEntry{r.New, r.V, r.N})
		}
	}
	cmp := func(a, b ixEntry) int {
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return 0
	}
	slices.SortFunc(ix.old, cmp)
	slices.SortFunc(ix.new, cmp)
	return ix
}

// entrySlice is one reverse index.
type entrySlice []ixEntry

// lookup returns the virtual UID of key u.
func (x entrySlice) lookup(u UID) (UID, bool) {
	if u == 0 {
		return 0, false
	}
	lo, hi := 0, len(x) // find the last entry with key <= u
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if x[h].key <= u {
			lo = h + 1
		} else {
			hi = h
		}
	}
	if lo == 0 {
		return 0, false
	}
	e := x[lo-1]
	if u-e.key >= e.n {
		return 0, false
	}
	return e.v + (u - e.key), true
}

// pos returns the index of the first entry with key >= key.
func (x entrySlice) pos(key UID) int {
	lo, hi := 0, len(x)
	for lo < hi {
		h := int(uint(lo+hi) >> 1)
		if x[h].key < key {
			lo = h + 1
		} else {
			hi = h
		}
	}
	return lo
}

// update replaces entry before with after in x; a zero key means none.
func (x entrySlice) update(before, after ixEntry) entrySlice {
	if before == after {
		return x
	}
	if before.key != 0 && before.key == after.key {
		if j := x.pos(before.key); j < len(x) && x[j].key == before.key {
			x[j] = after
		}
		return x
	}
	if before.key != 0 {
		if j := x.pos(before.key); j < len(x) && x[j].key == before.key {
			x = slices.Delete(x, j, j+1)
		}
	}
	if after.key != 0 {
		x = slices.Insert(x, x.pos(after.key), after)
	}
	return x
}

func oldEntry(r Run) ixEntry {
	if r.Old == 0 {
		return ixEntry{}
	}
	return ixEntry{r.Old, r.V, r.N}
}

func newEntry(r Run) ixEntry {
	if r.New == 0 {
		return ixEntry{}
	}
	return ixEntry{r.New, r.V, r.N}
}

// reindex updates the indexes, if built, for a run changing from before to
// after (the zero Run is no run).
func (m *Map) reindex(before, after Run) {
	if m.ix == nil {
		return
	}
	m.ix.old = m.ix.old.update(oldEntry(before), oldEntry(after))
	m.ix.new = m.ix.new.update(newEntry(before), newEntry(after))
}

func (m *Map) setRun(i int, r Run) {
	m.reindex(m.Runs[i], r)
	m.Runs[i] = r
}

func (m *Map) insertRun(i int, r Run) {
	m.reindex(Run{}, r)
	m.Runs = slices.Insert(m.Runs, i, r)
}

func (m *Map) deleteRun(i int) {
	m.reindex(m.Runs[i], Run{})
	m.Runs = slices.Delete(m.Runs, i, i+1)
}

// mergeAround merges run i with its neighbours where they continue each
// other. In a canonical map only they can have become mergeable: a merged
// run starts like its left part and ends like its right part.
func (m *Map) mergeAround(i int) {
	if i+1 < len(m.Runs) && canMerge(m.Runs[i], m.Runs[i+1]) {
		a := m.Runs[i]
		a.N += m.Runs[i+1].N
		m.deleteRun(i + 1)
		m.setRun(i, a)
	}
	if i > 0 && canMerge(m.Runs[i-1], m.Runs[i]) {
		a := m.Runs[i-1]
		a.N += m.Runs[i].N
		m.deleteRun(i)
		m.setRun(i-1, a)
	}
}

// canMerge reports whether run b sideContinues run a on every side.
func canMerge(a, b Run) bool {
	return uint64(a.V)+uint64(a.N) == uint64(b.V) &&
		sideContinues(a.Old, b.Old, a.N) && sideContinues(a.New, b.New, a.N)
}

func sideContinues(x, y, n UID) bool {
	if x == 0 || y == 0 {
		return x == y
	}
	return uint64(x)+uint64(n) == uint64(y)
}

// validate checks everything the implementation notes promise, so that
// MarshalBinary never writes what UnmarshalBinary refuses.
func (m *Map) validate() error {
	if m.Next == 0 || m.Frozen > m.Next {
		return fmt.Errorf("%w: frozen %d, next %d", ErrMapCorrupt, m.Frozen, m.Next)
	}
	covered := uint64(max(m.Frozen, 1)) // [covered, Next) must be in runs
	end := uint64(1)                    // end of the previous run
	for i, r := range m.Runs {
		v, n := uint64(r.V), uint64(r.N)
		switch {
		case r.V == 0 || r.N == 0 || v < end:
			return fmt.Errorf("%w: run %d (%d+%d) overlaps or is empty", ErrMapCorrupt, i, r.V, r.N)
		case v+n > uint64(m.Next):
			return fmt.Errorf("%w: run %d (%d+%d) beyond next %d", ErrMapCorrupt, i, r.V, r.N, m.Next)
		case r.Old == 0 && r.New == 0:
			return fmt.Errorf("%w: run %d maps nothing", ErrMapCorrupt, i)
		case uint64(r.Old)+n-1 > math.MaxUint32 || uint64(r.New)+n-1 > math.MaxUint32:
			return fmt.Errorf("%w: run %d beyond 2^32", ErrMapCorrupt, i)
		case (r.V < m.Frozen || (r.Old != 0 && r.Old < m.Frozen)) && r.Old != r.V:
			return fmt.Errorf("%w: run %d maps %d to old %d below frozen", ErrMapCorrupt, i, r.V, r.Old)
		case max(end, covered) < v:
			return fmt.Errorf("%w: virtual UIDs %d..%d in no run", ErrMapCorrupt, max(end, covered), v-1)
		case i > 0 && canMerge(m.Runs[i-1], r):
			return fmt.Errorf("%w: runs %d and %d not merged", ErrMapCorrupt, i-1, i)
		}
		end = v + n
	}
	if max(end, covered) < uint64(m.Next) {
		return fmt.Errorf("%w: virtual UIDs %d..%d in no run", ErrMapCorrupt, max(end, covered), m.Next-1)
	}
	ix := m.ix
	if ix == nil {
		ix = buildMapIndex(m.Runs)
	}
	for side, x := range [2]entrySlice{ix.old, ix.new} {
		for j := 1; j < len(x); j++ {
			if uint64(x[j-1].key)+uint64(x[j-1].n) > uint64(x[j].key) {
				return fmt.Errorf("%w: %s UID %d mapped twice", ErrMapCorrupt, [2]string{"old", "new"}[side], x[j].key)
			}
		}
	}
	next := uint64(1) // lowest Lo allowed: ranges are merged
	for i, g := range m.Gone {
		if uint64(g.Lo) < next || g.Hi < g.Lo || g.Hi >= m.Next {
			return fmt.Errorf("%w: gone range %d (%d-%d)", ErrMapCorrupt, i, g.Lo, g.Hi)
		}
		next = uint64(g.Hi) + 2
	}
	return nil
}

// MarshalBinary encodes m: the version byte 1, then uvarints:
//
//	UIDValidity NewUIDValidity Frozen Next-Frozen
//	len(Runs), then per run:
//	  V-end            end: the previous run's V+N, first 1
//	  N-1
//	  old              0: no old side; else mapZigzag(Old-V)+1 (identity: 1)
//	  new              0: no new side; else mapZigzag(New-newEnd)+1, newEnd:
//	                   New+N of the previous run with a new side, first 1
//	len(Gone), then per range: Lo-lowest (lowest: previous Hi+2, first 1), Hi-Lo
//
// A mailbox copied in old UID order with consecutive APPENDUIDs is one run:
// about 25 bytes whatever its size. It fails, wrapping ErrMapCorrupt, when m
// breaks the map's invariants (see the implementation notes).
func (m *Map) MarshalBinary() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 32+8*len(m.Runs)+6*len(m.Gone))
	b = append(b, mapVersion)
	b = binary.AppendUvarint(b, uint64(m.UIDValidity))
	b = binary.AppendUvarint(b, uint64(m.NewUIDValidity))
	b = binary.AppendUvarint(b, uint64(m.Frozen))
	b = binary.AppendUvarint(b, uint64(m.Next-m.Frozen))
	b = binary.AppendUvarint(b, uint64(len(m.Runs)))
	end, newEnd := int64(1), int64(1)
	for _, r := range m.Runs {
		b = binary.AppendUvarint(b, uint64(int64(r.V)-end))
		b = binary.AppendUvarint(b, uint64(r.N-1))
		var code uint64
		if r.Old != 0 {
			code = mapZigzag(int64(r.Old)-int64(r.V)) + 1
		}
		b = binary.AppendUvarint(b, code)
		code = 0
		if r.New != 0 {
			code = mapZigzag(int64(r.New)-newEnd) + 1
			newEnd = int64(r.New) + int64(r.N)
		}
		b = binary.AppendUvarint(b, code)
		end = int64(r.V) + int64(r.N)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Gone)))
	lowest := uint64(1)
	for _, g := range m.Gone {
		b = binary.AppendUvarint(b, uint64(g.Lo)-lowest)
		b = binary.AppendUvarint(b, uint64(g.Hi-g.Lo))
		lowest = uint64(g.Hi) + 2
	}
	return b, nil
}

// UnmarshalBinary replaces m with the map encoded in b by MarshalBinary.
// It accepts only what MarshalBinary writes (one encoding per map, varints
// minimal, no trailing bytes) and returns an error wrapping ErrMapCorrupt
// for anything else, leaving m unchanged.
func (m *Map) UnmarshalBinary(b []byte) error {
	d := mapDecoder{b: b}
	if len(b) == 0 || b[0] != mapVersion {
		if len(b) == 0 {
			return fmt.Errorf("%w: empty", ErrMapCorrupt)
		}
		return fmt.Errorf("%w: unknown version %d", ErrMapCorrupt, b[0])
	}
	d.b = b[1:]
	var out Map
	out.UIDValidity = d.u32()
	out.NewUIDValidity = d.u32()
	out.Frozen = d.u32()
	out.Next = d.u32add(uint64(out.Frozen), d.uvarint())
	nruns := d.count(4)
	if nruns > 0 {
		out.Runs = make([]Run, 0, nruns)
	}
	end, newEnd := uint64(1), int64(1)
	for range nruns {
		v := d.u32add(end, d.uvarint())
		n := d.u32add(1, d.uvarint())
		r := Run{V: v, N: n}
		if code := d.uvarint(); code != 0 {
			r.Old = d.side(int64(v), code)
		}
		if code := d.uvarint(); code != 0 {
			r.New = d.side(newEnd, code)
			newEnd = int64(r.New) + int64(n)
		}
		if d.err != nil {
			return d.err
		}
		out.Runs = append(out.Runs, r)
		end = uint64(v) + uint64(n)
	}
	ngone := d.count(2)
	if ngone > 0 {
		out.Gone = make([]Range, 0, ngone)
	}
	lowest := uint64(1)
	for range ngone {
		lo := d.u32add(lowest, d.uvarint())
		hi := d.u32add(uint64(lo), d.uvarint())
		if d.err != nil {
			return d.err
		}
		out.Gone = append(out.Gone, Range{lo, hi})
		lowest = uint64(hi) + 2
	}
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMapCorrupt, len(d.b))
	}
	out.ix = buildMapIndex(out.Runs)
	if err := out.validate(); err != nil {
		return err
	}
	*m = out
	return nil
}

// mapDecoder reads uvarints; after the first error every read returns 0 and
// the error stays.
type mapDecoder struct {
	b   []byte
	err error
}

func (d *mapDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{ErrMapCorrupt}, args...)...)
	}
}

func (d *mapDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	switch {
	case n == 0:
		d.fail("truncated")
		return 0
	case n < 0 || n != mapUvarintLen(x):
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return x
}

func mapUvarintLen(x uint64) int {
	n := 1
	for ; x >= 0x80; x >>= 7 {
		n++
	}
	return n
}

func (d *mapDecoder) u32() uint32 { return d.u32add(0, d.uvarint()) }

// u32add returns base+x, failing when it does not fit 32 bits.
func (d *mapDecoder) u32add(base, x uint64) uint32 {
	if d.err != nil {
		return 0
	}
	if x > math.MaxUint32 || base+x > math.MaxUint32 {
		d.fail("value beyond 2^32")
		return 0
	}
	return uint32(base + x)
}

// count reads a length whose items take at least min bytes each.
func (d *mapDecoder) count(min int) int {
	x := d.uvarint()
	if d.err == nil && x > uint64(len(d.b)/min) {
		d.fail("count %d too large", x)
		return 0
	}
	return int(x)
}

// side decodes a run side: base + mapUnzigzag(code-1), which must be a UID.
func (d *mapDecoder) side(base int64, code uint64) UID {
	x := base + mapUnzigzag(code-1)
	if d.err == nil && (x < 1 || x > math.MaxUint32 || code-1 > 1<<34) {
		d.fail("UID out of range")
		return 0
	}
	return UID(x)
}

func mapZigzag(x int64) uint64   { return uint64(x<<1) ^ uint64(x>>63) }
func mapUnzigzag(x uint64) int64 { return int64(x>>1) ^ -int64(x&1) }
