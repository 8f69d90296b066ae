package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The tests drive Map with a tiny script language, one statement per ';':
//
//	set V N [= ok|unknown|gone|mapped]   SetNew
//	addold O = V                          AddOld
//	addnew N = V                          AddNew
//	expunge V                             Expunge
//	lookup V = OLD NEW | !                Lookup
//	byold O = V | !                       ByOld
//	bynew N = V | !                       ByNew
//	gone V = true|false                   IsGone
//
// A set without "=" must succeed.
func runMapScript(t *testing.T, m *Map, script string) {
	t.Helper()
	for stmt := range strings.SplitSeq(script, ";") {
		stmt = strings.TrimSpace(stmt)
		if stmt == "" {
			continue
		}
		lhs, want, hasWant := strings.Cut(stmt, "=")
		f := strings.Fields(lhs)
		want = strings.TrimSpace(want)
		arg := func(i int) UID {
			t.Helper()
			x, err := strconv.ParseUint(f[i], 10, 32)
			if err != nil {
				t.Fatalf("%q: %v", stmt, err)
			}
			return UID(x)
		}
		var got string
		switch f[0] {
		case "set":
			err := m.SetNew(arg(1), arg(2))
			switch {
			case err == nil:
				got = "ok"
			case errors.Is(err, ErrUIDUnknown):
				got = "unknown"
			case errors.Is(err, ErrUIDGone):
				got = "gone"
			case errors.Is(err, ErrUIDMapped):
				got = "mapped"
			default:
				got = err.Error()
			}
			if !hasWant {
				want = "ok"
			}
		case "addold":
			got = fmt.Sprint(m.AddOld(arg(1)))
		case "addnew":
			got = fmt.Sprint(m.AddNew(arg(1)))
		case "expunge":
			m.Expunge(arg(1))
		case "lookup":
			o, n, ok := m.Lookup(arg(1))
			got = fmt.Sprint(o, " ", n)
			if !ok {
				got = "!"
			}
		case "byold", "bynew":
			fn := m.ByOld
			if f[0] == "bynew" {
				fn = m.ByNew
			}
			v, ok := fn(arg(1))
			got = fmt.Sprint(v)
			if !ok {
				got = "!"
			}
		case "gone":
			got = fmt.Sprint(m.IsGone(arg(1)))
		default:
			t.Fatalf("bad statement %q", stmt)
		}
		if (hasWant || f[0] == "set") && got != want {
			t.Fatalf("%s: got %s, want %s\nruns %v gone %v next %d", stmt, got, want, m.Runs, m.Gone, m.Next)
		}
		checkMap(t, m)
	}
}

func TestMapOps(t *testing.T) {
	tests := []struct {
		name   string
		frozen UID
		script string
		runs   []Run
		gone   []Range
		next   UID // 0: frozen
	}{
		{
			name: "fresh map: identity below frozen", frozen: 10,
			script: "lookup 0 = !; lookup 1 = 1 0; lookup 9 = 9 0; lookup 10 = !; lookup 4294967295 = !;" +
				"byold 0 = !; byold 1 = 1; byold 9 = 9; byold 10 = !; bynew 1 = !; gone 3 = false",
		},
		{
			name: "frozen 0 starts Next at 1", frozen: 0,
			script: "lookup 0 = !; lookup 1 = !; byold 1 = !; addnew 7 = 1; lookup 1 = 0 7",
			runs:   []Run{{1, 1, 0, 7}}, next: 2,
		},
		{
			name: "copy in old order with consecutive APPENDUIDs is one run", frozen: 100,
			script: "set 1 500; set 2 501; set 3 502; set 4 503;" +
				"lookup 3 = 3 502; byold 3 = 3; bynew 502 = 3; bynew 504 = !; bynew 499 = !; lookup 5 = 5 0",
			runs: []Run{{1, 4, 1, 500}},
		},
		{
			name: "copy in reverse order merges too", frozen: 100,
			script: "set 4 503; set 3 502; set 2 501; set 1 500",
			runs:   []Run{{1, 4, 1, 500}},
		},
		{
			name: "filling a hole merges three runs into one", frozen: 100,
			script: "set 1 500; set 2 501; set 4 503; set 3 502",
			runs:   []Run{{1, 4, 1, 500}},
		},
		{
			name: "a gap in old UIDs starts a run", frozen: 100,
			script: "set 1 500; set 2 501; set 5 502; set 6 503; lookup 3 = 3 0; bynew 502 = 5",
			runs:   []Run{{1, 2, 1, 500}, {5, 2, 5, 502}},
		},
		{
			name: "APPENDUID numbering restarting starts a run", frozen: 100,
			script: "set 1 500; set 2 501; set 3 900; set 4 901; bynew 501 = 2; bynew 900 = 3; bynew 502 = !",
			runs:   []Run{{1, 2, 1, 500}, {3, 2, 3, 900}},
		},
		{
			name: "set errors", frozen: 10,
			script: "set 0 5 = unknown; set 1 0 = unknown; set 10 5 = unknown; set 11 5 = unknown;" +
				"set 1 5; set 1 5 = mapped; set 1 6 = mapped; set 2 5 = mapped;" +
				"expunge 3; set 3 7 = gone; addnew 20 = 10; set 10 21 = mapped; set 4 20 = mapped;" +
				"expunge 1; set 5 5 = mapped; set 6 6",
			runs: []Run{{1, 1, 1, 5}, {6, 1, 6, 6}, {10, 1, 0, 20}},
			gone: []Range{{1, 1}, {3, 3}}, next: 11,
		},
		{
			name: "addold assigns Next, merges consecutive, is idempotent", frozen: 10,
			script: "addold 10 = 10; addold 11 = 11; addold 11 = 11; addold 10 = 10; addold 15 = 12; addold 16 = 13;" +
				"lookup 12 = 15 0; byold 15 = 12; byold 12 = !; byold 13 = !; lookup 14 = !",
			runs: []Run{{10, 2, 10, 0}, {12, 2, 15, 0}}, next: 14,
		},
		{
			name: "addold below frozen is the identity and creates nothing", frozen: 10,
			script: "addold 3 = 3; addold 9 = 9; addold 0 = 0; set 3 50; addold 3 = 3",
			runs:   []Run{{3, 1, 3, 50}},
		},
		{
			name: "addold out of order", frozen: 10,
			script: "addold 20 = 10; addold 12 = 11; addold 21 = 12; byold 20 = 10; byold 21 = 12; byold 12 = 11",
			runs:   []Run{{10, 1, 20, 0}, {11, 1, 12, 0}, {12, 1, 21, 0}}, next: 13,
		},
		{
			name: "set splits an old-only run", frozen: 10,
			script: "addold 10 = 10; addold 11 = 11; addold 12 = 12; addold 13 = 13; addold 14 = 14; set 12 500;" +
				"lookup 11 = 11 0; lookup 12 = 12 500; lookup 13 = 13 0; bynew 500 = 12; byold 13 = 13",
			runs: []Run{{10, 2, 10, 0}, {12, 1, 12, 500}, {13, 2, 13, 0}}, next: 15,
		},
		{
			name: "copying after-freeze old messages merges with the identity run", frozen: 10,
			script: "set 8 100; set 9 101; addold 10 = 10; addold 11 = 11; set 10 102; set 11 103",
			runs:   []Run{{8, 4, 8, 100}}, next: 12,
		},
		{
			name: "set at the start and the end of an old-only run", frozen: 10,
			script: "addold 30 = 10; addold 31 = 11; addold 32 = 12; set 10 7; set 12 9; set 11 8",
			runs:   []Run{{10, 3, 30, 7}}, next: 13,
		},
		{
			name: "addnew assigns Next, merges consecutive, is idempotent", frozen: 5,
			script: "addnew 40 = 5; addnew 41 = 6; addnew 40 = 5; addnew 0 = 0; addnew 43 = 7;" +
				"lookup 6 = 0 41; bynew 41 = 6; byold 41 = !; set 6 99 = mapped",
			runs: []Run{{5, 2, 0, 40}, {7, 1, 0, 43}}, next: 8,
		},
		{
			name: "addnew of a copied message returns its virtual UID", frozen: 5,
			script: "set 2 40; addnew 40 = 2; addnew 41 = 5",
			runs:   []Run{{2, 1, 2, 40}, {5, 1, 0, 41}}, next: 6,
		},
		{
			name: "interleaved addold and addnew do not merge", frozen: 5,
			script: "addold 5 = 5; addnew 6 = 6; addold 6 = 7; addnew 7 = 8",
			runs:   []Run{{5, 1, 5, 0}, {6, 1, 0, 6}, {7, 1, 6, 0}, {8, 1, 0, 7}}, next: 9,
		},
		{
			name: "expunge hides a message on every side, for good", frozen: 10,
			script: "set 2 50; expunge 2; expunge 2; lookup 2 = !; byold 2 = !; bynew 50 = !; gone 2 = true;" +
				"addold 2 = 2; addnew 50 = 2; set 2 51 = gone; set 3 50 = mapped;" +
				"expunge 4; lookup 4 = !; byold 4 = !; addold 4 = 4; set 4 60 = gone;" +
				"addold 10 = 10; expunge 10; addold 10 = 10; addnew 70 = 11; expunge 11; addnew 70 = 11; bynew 70 = !; lookup 11 = !",
			runs: []Run{{2, 1, 2, 50}, {10, 1, 10, 0}, {11, 1, 0, 70}},
			gone: []Range{{2, 2}, {4, 4}, {10, 11}}, next: 12,
		},
		{
			name: "expunged ranges merge", frozen: 20,
			script: "expunge 3; expunge 5; expunge 4; expunge 8; expunge 7; expunge 1; expunge 10; expunge 9; gone 6 = false; gone 9 = true",
			gone:   []Range{{1, 1}, {3, 5}, {7, 10}},
		},
		{
			name: "expunge of 0 or of unassigned UIDs is ignored", frozen: 5,
			script: "expunge 0; expunge 5; expunge 4294967295; addnew 9 = 5; lookup 5 = 0 9",
			runs:   []Run{{5, 1, 0, 9}}, next: 6,
		},
		{
			name: "UIDs at the top of the range", frozen: math.MaxUint32 - 2,
			script: "addold 4294967293 = 4294967293; addnew 4294967295 = 4294967294; addnew 1 = 0;" +
				"set 4294967293 4294967294; lookup 4294967293 = 4294967293 4294967294; bynew 4294967295 = 4294967294;" +
				"set 4294967292 4294967293; byold 4294967292 = 4294967292; lookup 4294967294 = 0 4294967295",
			runs: []Run{{math.MaxUint32 - 3, 2, math.MaxUint32 - 3, math.MaxUint32 - 2}, {math.MaxUint32 - 1, 1, 0, math.MaxUint32}},
			next: math.MaxUint32,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMap(7, tt.frozen)
			runMapScript(t, m, tt.script)
			next := tt.next
			if next == 0 {
				next = max(tt.frozen, 1)
			}
			if !slices.Equal(m.Runs, tt.runs) || !slices.Equal(m.Gone, tt.gone) || m.Next != next {
				t.Fatalf("got runs %v gone %v next %d\nwant runs %v gone %v next %d", m.Runs, m.Gone, m.Next, tt.runs, tt.gone, next)
			}
			if m.Len() != len(tt.runs) {
				t.Fatalf("Len %d, want %d", m.Len(), len(tt.runs))
			}
			mapRoundTrip(t, m)
		})
	}
}

// mapRoundTrip checks that m survives MarshalBinary and UnmarshalBinary, and
// returns the copy.
func mapRoundTrip(t testing.TB, m *Map) *Map {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var c Map
	if err := c.UnmarshalBinary(b); err != nil {
		t.Fatalf("unmarshal %x: %v", b, err)
	}
	checkMap(t, &c)
	if !reflect.DeepEqual(mapDurable(m), mapDurable(&c)) {
		t.Fatalf("round trip: got %+v, want %+v", mapDurable(&c), mapDurable(m))
	}
	b2, err := c.MarshalBinary()
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("re-marshal: %x, %v; want %x", b2, err, b)
	}
	return &c
}

// mapDurable returns m's exported state, empty slices as nil.
func mapDurable(m *Map) Map {
	d := *m
	d.ix = nil
	if len(d.Runs) == 0 {
		d.Runs = nil
	}
	if len(d.Gone) == 0 {
		d.Gone = nil
	}
	return d
}

// checkMap checks m's invariants with code independent of validate (and
// validate too): runs sorted, non-overlapping, non-empty and merged; every
// virtual UID in [Frozen, Next) in a run; the old side the identity below
// Frozen; old and new sides injective; Gone sorted, merged, within
// [1, Next); the indexes, if built, equal to freshly built ones.
func checkMap(t testing.TB, m *Map) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("map invariant: "+format+"\nruns %v\ngone %v\nfrozen %d next %d", append(args, m.Runs, m.Gone, m.Frozen, m.Next)...)
	}
	if err := m.validate(); err != nil {
		fail("validate: %v", err)
	}
	if m.Next < 1 || m.Frozen > m.Next {
		fail("frozen/next")
	}
	var total uint64
	for i, r := range m.Runs {
		end := uint64(r.V) + uint64(r.N)
		if r.N == 0 || r.V == 0 || end > uint64(m.Next) || (r.Old == 0 && r.New == 0) {
			fail("run %d bad", i)
		}
		if r.V < m.Frozen && r.Old != r.V {
			fail("run %d below frozen not identity", i)
		}
		if i > 0 {
			p := m.Runs[i-1]
			pend := uint64(p.V) + uint64(p.N)
			if pend > uint64(r.V) {
				fail("runs %d, %d unsorted or overlapping", i-1, i)
			}
			if pend == uint64(r.V) &&
				(p.Old == 0) == (r.Old == 0) && (p.Old == 0 || uint64(p.Old)+uint64(p.N) == uint64(r.Old)) &&
				(p.New == 0) == (r.New == 0) && (p.New == 0 || uint64(p.New)+uint64(p.N) == uint64(r.New)) {
				fail("runs %d, %d not merged", i-1, i)
			}
			if pend < uint64(r.V) && uint64(r.V) > uint64(max(m.Frozen, 1)) {
				fail("hole before run %d", i)
			}
		}
		total += uint64(r.N)
	}
	if total <= 1<<16 {
		// Per UID: injective sides, identity below Frozen.
		olds, news := map[UID]UID{}, map[UID]UID{}
		for _, r := range m.Runs {
			for k := range r.N {
				v := r.V + k
				if r.Old != 0 {
					o := r.Old + k
					if w, dup := olds[o]; dup {
						fail("old %d mapped by %d and %d", o, w, v)
					}
					if o < m.Frozen && o != v {
						fail("old %d below frozen mapped by %d", o, v)
					}
					olds[o] = v
				}
				if r.New != 0 {
					n := r.New + k
					if w, dup := news[n]; dup {
						fail("new %d mapped by %d and %d", n, w, v)
					}
					news[n] = v
				}
			}
		}
	}
	for i, g := range m.Gone {
		if g.Lo == 0 || g.Hi < g.Lo || g.Hi >= m.Next || (i > 0 && uint64(m.Gone[i-1].Hi)+1 >= uint64(g.Lo)) {
			fail("gone range %d", i)
		}
	}
	if m.ix != nil {
		want := buildMapIndex(m.Runs)
		if !slices.Equal(m.ix.old, want.old) || !slices.Equal(m.ix.new, want.new) {
			fail("stale index: old %v new %v, want %v %v", m.ix.old, m.ix.new, want.old, want.new)
		}
	}
}

func TestMapClone(t *testing.T) {
	m := NewMap(1, 10)
	runMapScript(t, m, "set 1 100; addold 10 = 10; addnew 7 = 11; expunge 3")
	c := m.Clone()
	runMapScript(t, c, "set 2 101; set 10 102; addnew 8 = 12; expunge 4")
	runMapScript(t, m, "lookup 2 = 2 0; lookup 10 = 10 0; bynew 101 = !; bynew 102 = !; bynew 8 = !; gone 4 = false; lookup 4 = 4 0")
	runMapScript(t, c, "lookup 2 = 2 101; bynew 102 = 10; gone 4 = true; gone 3 = true")
	if m.Next != 12 || c.Next != 13 || len(m.Runs) != 3 {
		t.Fatalf("m %+v c %+v", m, c)
	}
	// A map without indexes (built as a literal) clones and builds them.
	lit := &Map{UIDValidity: 1, Frozen: 10, Next: 12, Runs: []Run{{1, 2, 1, 100}, {10, 2, 0, 50}}}
	c = lit.Clone()
	runMapScript(t, c, "bynew 101 = 2; bynew 51 = 11; byold 2 = 2; set 3 102; lookup 3 = 3 102")
	if lit.ix != nil || len(lit.Runs) != 2 {
		t.Fatal("clone changed the original")
	}
}

func TestMapLiteralBuildsIndexLazily(t *testing.T) {
	m := &Map{UIDValidity: 1, Frozen: 10, Next: 13, Runs: []Run{{1, 2, 1, 100}, {5, 1, 5, 102}, {10, 3, 20, 0}}, Gone: []Range{{5, 5}}}
	runMapScript(t, m, "bynew 101 = 2; bynew 102 = !; byold 21 = 11; byold 5 = !; lookup 11 = 21 0; set 11 300; bynew 300 = 11; addold 22 = 12; addold 23 = 13")
	mapRoundTrip(t, m)
}

func TestMapMarshalCompact(t *testing.T) {
	// 100,000 messages copied in old UID order with consecutive APPENDUIDs.
	m := NewMap(1700000000, 100001)
	m.NewUIDValidity = 1800000000
	for v := UID(1); v <= 100000; v++ {
		if err := m.SetNew(v, v+41); err != nil {
			t.Fatal(err)
		}
	}
	if m.Len() != 1 {
		t.Fatalf("%d runs", m.Len())
	}
	c := mapRoundTrip(t, m)
	b, _ := m.MarshalBinary()
	if len(b) > 32 {
		t.Fatalf("%d bytes: %x", len(b), b)
	}
	t.Logf("100,000 messages in one run: %d bytes", len(b))
	runMapScript(t, c, "lookup 500 = 500 541; bynew 541 = 500; byold 100000 = 100000; bynew 100041 = 100000; bynew 100042 = !")
}

func TestMapMarshalFormat(t *testing.T) {
	m := NewMap(300, 10)
	m.NewUIDValidity = 2
	runMapScript(t, m, "set 1 5; set 2 6; set 4 7; addold 12 = 10; addnew 3 = 11; expunge 2; expunge 3; expunge 11")
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		1,          // version
		0xac, 0x02, // UIDValidity 300
		2,          // NewUIDValidity
		10,         // Frozen
		2,          // Next-Frozen: Next 12
		4,          // runs
		0, 1, 1, 9, // V 1+0, N 1+1, old = V, new = 1 + mapUnzigzag(8) = 5
		1, 0, 1, 1, // V 3+1, N 1, old = V, new = 7 (sideContinues)
		5, 0, 5, 0, // V 5+5, N 1, old = V + mapUnzigzag(4) = 12, no new
		0, 0, 0, 10, // V 11, N 1, no old, new = 8 + mapUnzigzag(9) = 3
		2,    // gone ranges
		1, 1, // 1+1 .. 2+1
		6, 0, // 5+6 .. 11
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("got  % x\nwant % x", b, want)
	}
	mapRoundTrip(t, m)
}

func TestMapUnmarshalRejects(t *testing.T) {
	// enc encodes without validation, to build invalid maps; Next is
	// frozen+extra.
	enc := func(runs []Run, gone []Range, frozen, extra UID) []byte {
		b := []byte{1, 0, 0}
		b = appendUvarints(b, uint64(frozen), uint64(extra), uint64(len(runs)))
		end, newEnd := int64(1), int64(1)
		for _, r := range runs {
			b = appendUvarints(b, uint64(int64(r.V)-end), uint64(r.N-1))
			var code uint64
			if r.Old != 0 {
				code = mapZigzag(int64(r.Old)-int64(r.V)) + 1
			}
			b = appendUvarints(b, code)
			code = 0
			if r.New != 0 {
				code = mapZigzag(int64(r.New)-newEnd) + 1
				newEnd = int64(r.New) + int64(r.N)
			}
			b = appendUvarints(b, code)
			end = int64(r.V) + int64(r.N)
		}
		b = appendUvarints(b, uint64(len(gone)))
		lowest := uint64(1)
		for _, g := range gone {
			b = appendUvarints(b, uint64(g.Lo)-lowest, uint64(g.Hi-g.Lo))
			lowest = uint64(g.Hi) + 2
		}
		return b
	}
	good := enc([]Run{{1, 2, 1, 5}, {10, 1, 0, 9}}, []Range{{3, 4}}, 10, 1)
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"version 0", []byte{0}},
		{"version 2", append([]byte{2}, good[1:]...)},
		{"truncated", good[:len(good)-1]},
		{"trailing byte", append(slices.Clone(good), 0)},
		{"non-minimal varint", []byte{1, 0x80, 0x00, 0, 0, 1, 0, 0}},
		{"varint overflow", []byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"UIDValidity beyond 32 bits", []byte{1, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 1, 0, 0}},
		{"next beyond 32 bits", enc(nil, nil, math.MaxUint32, 1)},
		{"next 0", enc(nil, nil, 0, 0)},
		{"huge run count", []byte{1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0}},
		{"run length 2^32", []byte{1, 0, 0, 10, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1, 0}},
		{"run maps nothing", enc([]Run{{1, 1, 0, 0}}, nil, 10, 0)},
		{"run beyond next", enc([]Run{{9, 2, 9, 1}}, nil, 10, 0)},
		{"hole above frozen", enc([]Run{{10, 1, 10, 0}, {12, 1, 0, 5}}, nil, 10, 3)},
		{"no run above frozen", enc(nil, nil, 10, 1)},
		{"unmerged runs", enc([]Run{{1, 1, 1, 5}, {2, 1, 2, 6}}, nil, 10, 0)},
		{"unmerged new-only runs", enc([]Run{{10, 1, 0, 5}, {11, 1, 0, 6}}, nil, 10, 2)},
		{"old not identity below frozen", enc([]Run{{1, 1, 2, 5}}, nil, 10, 0)},
		{"old below frozen mapped above", enc([]Run{{10, 1, 3, 0}}, nil, 10, 1)},
		{"new mapped twice", enc([]Run{{1, 2, 1, 5}, {4, 1, 4, 6}}, nil, 10, 0)},
		{"old mapped twice", enc([]Run{{10, 2, 20, 0}, {12, 1, 0, 3}, {13, 1, 21, 0}}, nil, 10, 4)},
		{"old side beyond 2^32", enc([]Run{{10, 2, math.MaxUint32, 0}}, nil, 10, 2)},
		{"new side 0 by delta", []byte{1, 0, 0, 10, 0, 1, 0, 0, 1, 2, 0}},
		{"gone beyond next", enc(nil, []Range{{9, 10}}, 10, 0)},
		{"gone range beyond 2^32", []byte{1, 0, 0, 10, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMap(5, 5)
			runMapScript(t, m, "set 1 1; addnew 9 = 5")
			before := mapDurable(m)
			err := m.UnmarshalBinary(tt.b)
			if !errors.Is(err, ErrMapCorrupt) {
				t.Fatalf("% x: err %v, map %+v", tt.b, err, mapDurable(m))
			}
			if !reflect.DeepEqual(mapDurable(m), before) {
				t.Fatal("failed unmarshal changed the map")
			}
		})
	}
	var m Map
	if err := m.UnmarshalBinary(good); err != nil {
		t.Fatalf("good: %v", err)
	}
	runMapScript(t, &m, "lookup 2 = 2 6; gone 3 = true; bynew 9 = 10")
}

func appendUvarints(b []byte, xs ...uint64) []byte {
	for _, x := range xs {
		b = binary.AppendUvarint(b, x)
	}
	return b
}

func TestMapMarshalRefusesInvalid(t *testing.T) {
	for _, m := range []*Map{
		{Next: 0},
		{Frozen: 5, Next: 4},
		{Frozen: 5, Next: 7, Runs: []Run{{5, 1, 5, 0}}},
		{Frozen: 5, Next: 6, Runs: []Run{{5, 1, 5, 0}}, Gone: []Range{{3, 2}}},
		{Frozen: 5, Next: 5, Runs: []Run{{2, 1, 2, 3}, {1, 1, 1, 9}}},
	} {
		if _, err := m.MarshalBinary(); !errors.Is(err, ErrMapCorrupt) {
			t.Errorf("%+v: %v", m, err)
		}
	}
}

// mapModel is the naive UID map the fuzz and random tests compare Map with.
type mapModel struct {
	frozen, next   UID
	old, new       map[UID]UID // virtual -> old (at or above frozen), virtual -> new
	revOld, revNew map[UID]UID
	gone           map[UID]bool
}

func newMapModel(frozen UID) *mapModel {
	return &mapModel{
		frozen: frozen, next: max(frozen, 1),
		old: map[UID]UID{}, new: map[UID]UID{}, revOld: map[UID]UID{}, revNew: map[UID]UID{},
		gone: map[UID]bool{},
	}
}

func (md *mapModel) lookup(v UID) (UID, UID, bool) {
	if v == 0 || v >= md.next || md.gone[v] {
		return 0, 0, false
	}
	o := md.old[v]
	if v < md.frozen {
		o = v
	}
	return o, md.new[v], true
}

// resolveOld ignores gone.
func (md *mapModel) resolveOld(o UID) (UID, bool) {
	if o == 0 {
		return 0, false
	}
	if o < md.frozen {
		return o, true
	}
	v, ok := md.revOld[o]
	return v, ok
}

func (md *mapModel) byOld(o UID) (UID, bool) {
	v, ok := md.resolveOld(o)
	if !ok || md.gone[v] {
		return 0, false
	}
	return v, true
}

func (md *mapModel) byNew(n UID) (UID, bool) {
	v, ok := md.revNew[n]
	if !ok || md.gone[v] {
		return 0, false
	}
	return v, true
}

func (md *mapModel) setNew(v, n UID) error {
	switch {
	case n == 0 || v == 0 || v >= md.next:
		return ErrUIDUnknown
	case md.gone[v]:
		return ErrUIDGone
	case md.new[v] != 0:
		return ErrUIDMapped
	}
	if _, ok := md.revNew[n]; ok {
		return ErrUIDMapped
	}
	md.new[v], md.revNew[n] = n, v
	return nil
}

func (md *mapModel) addOld(o UID) UID {
	if o == 0 {
		return 0
	}
	if v, ok := md.resolveOld(o); ok {
		return v
	}
	if md.next == math.MaxUint32 {
		return 0
	}
	v := md.next
	md.next++
	md.old[v], md.revOld[o] = o, v
	return v
}

func (md *mapModel) addNew(n UID) UID {
	if n == 0 {
		return 0
	}
	if v, ok := md.revNew[n]; ok {
		return v
	}
	if md.next == math.MaxUint32 {
		return 0
	}
	v := md.next
	md.next++
	md.new[v], md.revNew[n] = n, v
	return v
}

func (md *mapModel) expunge(v UID) {
	if v != 0 && v < md.next {
		md.gone[v] = true
	}
}

// Operations of the model tests.
const (
	opSetNew    = iota // SetNew(a, b)
	opAddOld           // AddOld(a)
	opAddNew           // AddNew(b)
	opExpunge          // Expunge(a)
	opLookup           // Lookup(a)
	opByOld            // ByOld(a)
	opByNew            // ByNew(b)
	opCopyRun          // SetNew(a+i, b+i) for i < k: a back-fill batch
	opAddOldRun        // AddOld(a+i) for i < k
	opClone            // continue on a Clone; check that changing the original leaves it alone
	opRoundTrip        // continue on MarshalBinary -> UnmarshalBinary
	opDropIndex        // forget the indexes: the next use builds them
	numOps
)

type mapOp struct {
	kind    int
	a, b, k UID
}

func (o mapOp) String() string {
	name := [...]string{"SetNew", "AddOld", "AddNew", "Expunge", "Lookup", "ByOld", "ByNew", "CopyRun", "AddOldRun", "Clone", "RoundTrip", "DropIndex"}[o.kind]
	return fmt.Sprintf("%s(a=%d b=%d k=%d)", name, o.a, o.b, o.k)
}

// mapHarness applies operations to a Map and a mapModel and compares them.
type mapHarness struct {
	t     testing.TB
	m     *Map
	md    *mapModel
	seen  map[UID]bool // UIDs worth comparing at the end
	step  int
	check bool // checkMap after every change
}

func newMapHarness(t testing.TB, uidValidity uint32, frozen UID) *mapHarness {
	h := &mapHarness{t: t, m: NewMap(uidValidity, frozen), md: newMapModel(frozen), seen: map[UID]bool{}, check: true}
	h.see(0, frozen, math.MaxUint32)
	return h
}

func (h *mapHarness) see(us ...UID) {
	for _, u := range us {
		h.seen[u] = true
		h.seen[u+1] = true
		h.seen[u-1] = true
	}
}

func (h *mapHarness) fail(o mapOp, format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf("step %d %v: "+format+"\nruns %v\ngone %v\nfrozen %d next %d", append(append([]any{h.step, o}, args...), h.m.Runs, h.m.Gone, h.m.Frozen, h.m.Next)...)
}

func sameMapErr(got, want error) bool {
	if want == nil {
		return got == nil
	}
	return errors.Is(got, want)
}

func (h *mapHarness) do(o mapOp) {
	h.t.Helper()
	h.step++
	m, md := h.m, h.md
	h.see(o.a, o.b)
	changed := true
	switch o.kind {
	case opSetNew:
		if got, want := m.SetNew(o.a, o.b), md.setNew(o.a, o.b); !sameMapErr(got, want) {
			h.fail(o, "got %v, want %v", got, want)
		}
	case opAddOld:
		if got, want := m.AddOld(o.a), md.addOld(o.a); got != want {
			h.fail(o, "got %d, want %d", got, want)
		}
	case opAddNew:
		if got, want := m.AddNew(o.b), md.addNew(o.b); got != want {
			h.fail(o, "got %d, want %d", got, want)
		}
	case opExpunge:
		m.Expunge(o.a)
		md.expunge(o.a)
	case opCopyRun, opAddOldRun:
		for i := range o.k {
			a, b := uint64(o.a)+uint64(i), uint64(o.b)+uint64(i)
			if a > math.MaxUint32 || b > math.MaxUint32 {
				break
			}
			h.see(UID(a), UID(b))
			if o.kind == opCopyRun {
				if got, want := m.SetNew(UID(a), UID(b)), md.setNew(UID(a), UID(b)); !sameMapErr(got, want) {
					h.fail(o, "SetNew(%d, %d): got %v, want %v", a, b, got, want)
				}
			} else if got, want := m.AddOld(UID(a)), md.addOld(UID(a)); got != want {
				h.fail(o, "AddOld(%d): got %d, want %d", a, got, want)
			}
		}
	case opClone:
		c := m.Clone()
		before := mapDurable(c)
		m.Expunge(1)
		m.AddNew(math.MaxUint32 - 7)
		m.SetNew(m.Frozen-1, math.MaxUint32-9)
		if !reflect.DeepEqual(mapDurable(c), before) {
			h.fail(o, "changing the original changed the clone")
		}
		h.m = c
	case opRoundTrip:
		h.m = mapRoundTrip(h.t, m)
	case opDropIndex:
		m.ix = nil
	default:
		changed = false
		h.query(o)
	}
	if changed && h.check {
		checkMap(h.t, h.m)
	}
}

func (h *mapHarness) query(o mapOp) {
	h.t.Helper()
	m, md := h.m, h.md
	switch o.kind {
	case opLookup:
		go1, gn, gok := m.Lookup(o.a)
		wo, wn, wok := md.lookup(o.a)
		if go1 != wo || gn != wn || gok != wok {
			h.fail(o, "got %d %d %v, want %d %d %v", go1, gn, gok, wo, wn, wok)
		}
		if m.IsGone(o.a) != md.gone[o.a] {
			h.fail(o, "IsGone %v", m.IsGone(o.a))
		}
	case opByOld:
		gv, gok := m.ByOld(o.a)
		wv, wok := md.byOld(o.a)
		if gv != wv || gok != wok {
			h.fail(o, "got %d %v, want %d %v", gv, gok, wv, wok)
		}
	case opByNew:
		gv, gok := m.ByNew(o.b)
		wv, wok := md.byNew(o.b)
		if gv != wv || gok != wok {
			h.fail(o, "got %d %v, want %d %v", gv, gok, wv, wok)
		}
	}
}

// finish compares every UID seen, checks the invariants, then compares
// again after a round trip through the encoding.
func (h *mapHarness) finish() {
	h.t.Helper()
	for _, u := range h.md.old {
		h.see(u)
	}
	for v, u := range h.md.new {
		h.see(u, v)
	}
	h.see(h.md.next)
	us := make([]UID, 0, len(h.seen))
	for u := range h.seen {
		us = append(us, u)
	}
	slices.Sort(us)
	compare := func() {
		h.t.Helper()
		if h.m.Next != h.md.next {
			h.fail(mapOp{}, "next %d, want %d", h.m.Next, h.md.next)
		}
		checkMap(h.t, h.m)
		for _, u := range us {
			for _, k := range []int{opLookup, opByOld, opByNew} {
				h.query(mapOp{kind: k, a: u, b: u})
			}
		}
		var gone []UID
		for _, g := range h.m.Gone {
			for v := uint64(g.Lo); v <= uint64(g.Hi); v++ {
				gone = append(gone, UID(v))
			}
		}
		if len(gone) != len(h.md.gone) {
			h.fail(mapOp{}, "%d gone, want %d", len(gone), len(h.md.gone))
		}
		for _, v := range gone {
			if !h.md.gone[v] {
				h.fail(mapOp{}, "%d gone, want not", v)
			}
		}
	}
	compare()
	h.m = mapRoundTrip(h.t, h.m)
	compare()
}

// TestMapModelRandom runs 100,000 random operations, most of them a
// back-fill in old UID order, against the model.
func TestMapModelRandom(t *testing.T) {
	for _, seed := range []uint64{1} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x9ec9a7e))
			const frozen = 3000
			h := newMapHarness(t, 42, frozen)
			h.check = false
			cursor, next := UID(1), UID(1000)
			uid := func(n int) UID { return UID(rng.IntN(n)) }
			for i := range 100_000 {
				var o mapOp
				switch p := rng.IntN(100); {
				case p < 35: // the back-fill: next old UID, next APPENDUID
					if rng.IntN(50) == 0 {
						cursor += uid(20) // a gap in old UIDs
					}
					if rng.IntN(200) == 0 {
						next += uid(5000) // APPENDUID numbering restarts
					}
					if cursor >= h.m.Next {
						cursor = 1 + uid(int(h.m.Next))
					}
					o = mapOp{kind: opSetNew, a: cursor, b: next}
					cursor++
					next++
				case p < 38:
					o = mapOp{kind: opCopyRun, a: 1 + uid(int(h.m.Next)), b: uid(40000), k: uid(30)}
				case p < 43:
					o = mapOp{kind: opSetNew, a: uid(int(h.m.Next) + 10), b: uid(40000)}
				case p < 50:
					o = mapOp{kind: opAddOld, a: frozen - 100 + uid(20000)}
				case p < 52:
					o = mapOp{kind: opAddOldRun, a: frozen + uid(20000), k: uid(20)}
				case p < 60:
					if rng.IntN(2) == 0 {
						o = mapOp{kind: opAddNew, b: next}
						next++
					} else {
						o = mapOp{kind: opAddNew, b: uid(40000)}
					}
				case p < 65:
					o = mapOp{kind: opExpunge, a: uid(int(h.m.Next) + 10)}
				case p < 75:
					o = mapOp{kind: opLookup, a: uid(int(h.m.Next) + 10)}
				case p < 85:
					o = mapOp{kind: opByOld, a: uid(frozen + 20000)}
				case p < 99 || rng.IntN(10) != 0:
					o = mapOp{kind: opByNew, b: uid(45000)}
				default: // 0.1%
					o = mapOp{kind: []int{opClone, opRoundTrip, opDropIndex}[rng.IntN(3)]}
				}
				h.do(o)
				if i%20000 == 0 {
					checkMap(t, h.m)
				}
			}
			h.finish()
			t.Logf("%d runs, %d gone ranges, next %d", h.m.Len(), len(h.m.Gone), h.m.Next)
		})
	}
}
