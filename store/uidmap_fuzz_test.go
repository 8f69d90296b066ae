package store

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"
)

// Fuzz input of FuzzMap:
//
//	byte 0: Frozen: bit 7 set: 2^32-1 - (bits 0-5), else bits 0-5
//	        (virtual and old UID arguments are bits 0-6 of a byte, plus
//	        2^32-128 when bit 7 is set, to reach the top of the UID space)
//	byte 1: bit 7 set: new UID arguments are 2^32-128 + bits 0-6 of a
//	        byte, else bits 0-6; the byte is also the UIDVALIDITY
//	then operations: one byte, the kind modulo numOps, then its arguments,
//	one byte each: SetNew a b, AddOld a, AddNew b, Expunge a, Lookup a,
//	ByOld a, ByNew b, CopyRun a b k, AddOldRun a k (k modulo 32); Clone,
//	RoundTrip and DropIndex take none. Missing bytes are 0.
const maxMapFuzzOps = 1000

func decodeMapOps(t testing.TB, data []byte) (*mapHarness, []mapOp) {
	byteAt := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	h0, h1 := byteAt(), byteAt()
	frozen, vbase := UID(h0&0x3f), UID(0)
	if h0&0x80 != 0 {
		frozen, vbase = math.MaxUint32-UID(h0&0x3f), math.MaxUint32-127
	}
	nbase := UID(0)
	if h1&0x80 != 0 {
		nbase = math.MaxUint32 - 127
	}
	va := func() UID { return vbase + UID(byteAt()&0x7f) }
	na := func() UID { return nbase + UID(byteAt()&0x7f) }
	var ops []mapOp
	for len(data) > 0 && len(ops) < maxMapFuzzOps {
		o := mapOp{kind: int(byteAt()) % numOps}
		switch o.kind {
		case opSetNew:
			o.a, o.b = va(), na()
		case opAddOld, opExpunge, opLookup, opByOld:
			o.a = va()
		case opAddNew, opByNew:
			o.b = na()
		case opCopyRun:
			o.a, o.b, o.k = va(), na(), UID(byteAt()%32)
		case opAddOldRun:
			o.a, o.k = va(), UID(byteAt()%32)
		}
		ops = append(ops, o)
	}
	return newMapHarness(t, uint32(h1), frozen), ops
}

// encodeMapOps is the inverse of decodeMapOps, for seeds (arguments
// relative to the bases).
func encodeMapOps(h0, h1 byte, ops ...mapOp) []byte {
	b := []byte{h0, h1}
	for _, o := range ops {
		b = append(b, byte(o.kind))
		switch o.kind {
		case opSetNew:
			b = append(b, byte(o.a), byte(o.b))
		case opAddOld, opExpunge, opLookup, opByOld:
			b = append(b, byte(o.a))
		case opAddNew, opByNew:
			b = append(b, byte(o.b))
		case opCopyRun:
			b = append(b, byte(o.a), byte(o.b), byte(o.k))
		case opAddOldRun:
			b = append(b, byte(o.a), byte(o.k))
		}
	}
	return b
}

// mapFuzzSeeds are meaningful scenarios: header bytes and operations.
var mapFuzzSeeds = [][]byte{
	// Back-fill in old UID order with consecutive APPENDUIDs: one run.
	encodeMapOps(20, 1, mapOp{kind: opCopyRun, a: 1, b: 5, k: 19}, mapOp{kind: opAddOldRun, a: 20, k: 5},
		mapOp{kind: opCopyRun, a: 20, b: 24, k: 5}, mapOp{kind: opByNew, b: 10}, mapOp{kind: opByOld, a: 22}),
	// Copy in reverse order and out of order; APPENDUID numbering restarts.
	encodeMapOps(10, 2, mapOp{kind: opSetNew, a: 5, b: 9}, mapOp{kind: opSetNew, a: 4, b: 8}, mapOp{kind: opSetNew, a: 2, b: 6},
		mapOp{kind: opSetNew, a: 3, b: 7}, mapOp{kind: opSetNew, a: 6, b: 40}, mapOp{kind: opSetNew, a: 7, b: 41}, mapOp{kind: opLookup, a: 3}),
	// Old messages after the freeze, copied out of order: runs split and merge.
	encodeMapOps(8, 3, mapOp{kind: opAddOldRun, a: 8, k: 10}, mapOp{kind: opSetNew, a: 12, b: 50}, mapOp{kind: opSetNew, a: 11, b: 49},
		mapOp{kind: opSetNew, a: 13, b: 51}, mapOp{kind: opSetNew, a: 8, b: 46}, mapOp{kind: opAddOld, a: 30}, mapOp{kind: opAddOld, a: 9}),
	// New-only arrivals interleaved with the back-fill.
	encodeMapOps(6, 4, mapOp{kind: opSetNew, a: 1, b: 10}, mapOp{kind: opAddNew, b: 11}, mapOp{kind: opSetNew, a: 2, b: 12},
		mapOp{kind: opAddNew, b: 13}, mapOp{kind: opAddNew, b: 14}, mapOp{kind: opAddNew, b: 12}, mapOp{kind: opByNew, b: 14}),
	// Expunged messages never come back, from either side.
	encodeMapOps(10, 5, mapOp{kind: opSetNew, a: 3, b: 7}, mapOp{kind: opExpunge, a: 3}, mapOp{kind: opAddOld, a: 3},
		mapOp{kind: opAddNew, b: 7}, mapOp{kind: opSetNew, a: 3, b: 8}, mapOp{kind: opSetNew, a: 4, b: 7}, mapOp{kind: opExpunge, a: 4},
		mapOp{kind: opExpunge, a: 2}, mapOp{kind: opAddOld, a: 12}, mapOp{kind: opExpunge, a: 10}, mapOp{kind: opAddOld, a: 12}, mapOp{kind: opByOld, a: 4}),
	// Clones, round trips and dropped indexes in the middle of changes.
	encodeMapOps(12, 6, mapOp{kind: opCopyRun, a: 1, b: 1, k: 5}, mapOp{kind: opClone}, mapOp{kind: opAddOldRun, a: 12, k: 3},
		mapOp{kind: opRoundTrip}, mapOp{kind: opSetNew, a: 13, b: 6}, mapOp{kind: opDropIndex}, mapOp{kind: opSetNew, a: 14, b: 7}, mapOp{kind: opByNew, b: 7}),
	// The top of the UID space, until it is exhausted.
	encodeMapOps(0x82, 0x80, mapOp{kind: opAddOld, a: 126}, mapOp{kind: opAddNew, b: 127}, mapOp{kind: opAddNew, b: 1},
		mapOp{kind: opSetNew, a: 125, b: 126}, mapOp{kind: opSetNew, a: 124, b: 125}, mapOp{kind: opCopyRun, a: 120, b: 120, k: 8}, mapOp{kind: opLookup, a: 127}),
	// Frozen 0: everything is assigned.
	encodeMapOps(0, 7, mapOp{kind: opAddOld, a: 1}, mapOp{kind: opAddOld, a: 2}, mapOp{kind: opSetNew, a: 1, b: 3}, mapOp{kind: opAddNew, b: 4}),
}

// FuzzMap applies a sequence of operations to a Map and to a naive model,
// comparing every result, checking the invariants after each change, and at
// the end comparing every UID involved before and after a round trip
// through MarshalBinary and UnmarshalBinary.
func FuzzMap(f *testing.F) {
	for _, s := range mapFuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, ops := decodeMapOps(t, data)
		for _, o := range ops {
			h.do(o)
		}
		h.finish()
	})
}

// FuzzUnmarshal checks that UnmarshalBinary never panics, leaves the map
// alone when it refuses, and accepts only maps that keep the invariants and
// encode back to the same bytes, whose lookups agree with each other and
// that still take changes.
func FuzzUnmarshal(f *testing.F) {
	for _, s := range mapFuzzSeeds {
		h, ops := decodeMapOps(f, s)
		for _, o := range ops {
			h.do(o)
		}
		b, err := h.m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 0xac, 0x02, 2, 10, 2, 4, 0, 1, 1, 9, 1, 0, 1, 1, 5, 0, 5, 0, 0, 0, 0, 10, 2, 1, 1, 6, 0})
	f.Add([]byte{1, 0, 0, 10, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m := NewMap(5, 5)
		if err := m.SetNew(1, 1); err != nil {
			t.Fatal(err)
		}
		before := mapDurable(m)
		if err := m.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrMapCorrupt) {
				t.Fatalf("error %v does not wrap ErrMapCorrupt", err)
			}
			if !reflect.DeepEqual(mapDurable(m), before) {
				t.Fatal("a refused encoding changed the map")
			}
			return
		}
		checkMap(t, m)
		b2, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("re-marshal: % x, %v; want % x", b2, err, b)
		}
		// Lookups agree with each other at both ends of every run.
		for _, r := range m.Runs {
			for _, v := range []UID{r.V, r.V + r.N - 1} {
				o, n, ok := m.Lookup(v)
				if ok == m.IsGone(v) {
					t.Fatalf("Lookup(%d) ok %v, gone %v", v, ok, m.IsGone(v))
				}
				if !ok {
					continue
				}
				if w, ok := m.ByOld(o); o != 0 && (!ok || w != v) {
					t.Fatalf("Lookup(%d) old %d, ByOld %d %v", v, o, w, ok)
				}
				if w, ok := m.ByNew(n); n != 0 && (!ok || w != v) {
					t.Fatalf("Lookup(%d) new %d, ByNew %d %v", v, n, w, ok)
				}
			}
		}
		// The decoded map takes changes; its clone does, alone.
		snap := mapDurable(m.Clone())
		c := m.Clone()
		c.AddNew(math.MaxUint32)
		c.AddOld(math.MaxUint32 - 1)
		for v := range UID(4) {
			c.SetNew(m.Frozen-v, math.MaxUint32-2-v)
		}
		c.Expunge(m.Next - 1)
		checkMap(t, c)
		mapRoundTrip(t, c)
		if !reflect.DeepEqual(mapDurable(m), snap) {
			t.Fatal("changing a clone changed the original")
		}
	})
}
