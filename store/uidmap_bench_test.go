package store

import (
	"math/rand/v2"
	gosync "sync"
	"testing"
)

// benchMessages is the size of the benchmark mailbox.
const benchMessages = 1_000_000

// buildMigration builds the map of a realistic migration of a mailbox of
// benchMessages messages: old UIDs ascending with gaps (messages deleted
// long before), copied in old UID order with consecutive APPENDUIDs, the
// new provider's UID numbering jumping three times (a recreated mailbox, a
// UIDNEXT bump), messages delivered to new during the copy (new-only, they
// take new UIDs between the copies), messages reaching old after the freeze
// (assigned, then copied), messages expunged by the user before and after
// their copy. It returns the map and the highest new UID.
func buildMigration(seed uint64) (*Map, UID) {
	rng := rand.New(rand.NewPCG(seed, 0xbacf111))
	olds := make([]UID, 0, benchMessages)
	o := UID(0)
	for len(olds) < benchMessages {
		o++
		if rng.IntN(1000) == 0 {
			o += UID(1 + rng.IntN(100))
		}
		olds = append(olds, o)
	}
	frozen := o + 1
	m := NewMap(1700000000, frozen)
	m.NewUIDValidity = 1800000000
	n := UID(1)
	late := UID(0) // old UIDs from frozen on, after the freeze
	var lateVs []UID
	for i, o := range olds {
		if i%(benchMessages/4) == benchMessages/8 {
			n += 100_000 // APPENDUID numbering restarts higher
		}
		if rng.IntN(2000) == 0 {
			m.AddNew(n) // delivered to new during the copy
			n++
		}
		if rng.IntN(5000) == 0 {
			lateVs = append(lateVs, m.AddOld(frozen+late))
			late++
		}
		if rng.IntN(2000) == 0 {
			m.Expunge(o) // expunged before its copy: never copied
			continue
		}
		if err := m.SetNew(o, n); err != nil {
			panic(err)
		}
		n++
	}
	for _, v := range lateVs {
		if err := m.SetNew(v, n); err != nil {
			panic(err)
		}
		n++
	}
	for range benchMessages / 200 {
		m.Expunge(1 + UID(rng.IntN(int(m.Next-1))))
	}
	return m, n - 1
}

var uidmapBench = struct {
	gosync.Once
	m      *Map
	maxNew UID
	size   int
}{}

func uidmapBenchMap(b *testing.B) *Map {
	uidmapBench.Do(func() {
		uidmapBench.m, uidmapBench.maxNew = buildMigration(1)
		enc, err := uidmapBench.m.MarshalBinary()
		if err != nil {
			panic(err)
		}
		uidmapBench.size = len(enc)
	})
	return uidmapBench.m
}

func reportUIDMap(b *testing.B) {
	b.ReportMetric(float64(uidmapBench.size), "map-bytes")
	b.ReportMetric(float64(uidmapBench.m.Len()), "runs")
	b.ReportMetric(float64(len(uidmapBench.m.Gone)), "gone-ranges")
}

// randomUIDs returns 1<<16 UIDs in [1, hi].
func randomUIDs(hi UID) []UID {
	rng := rand.New(rand.NewPCG(2, 3))
	us := make([]UID, 1<<16)
	for i := range us {
		us[i] = 1 + UID(rng.IntN(int(hi)))
	}
	return us
}

var uidmapSink UID

func BenchmarkLookup(b *testing.B) {
	m := uidmapBenchMap(b)
	vs := randomUIDs(m.Next - 1)
	i := 0
	for b.Loop() {
		o, n, _ := m.Lookup(vs[i&(len(vs)-1)])
		uidmapSink += o + n
		i++
	}
	reportUIDMap(b)
}

func BenchmarkByNew(b *testing.B) {
	m := uidmapBenchMap(b)
	ns := randomUIDs(uidmapBench.maxNew)
	i := 0
	for b.Loop() {
		v, _ := m.ByNew(ns[i&(len(ns)-1)])
		uidmapSink += v
		i++
	}
	reportUIDMap(b)
}

func BenchmarkByOld(b *testing.B) {
	m := uidmapBenchMap(b)
	os := randomUIDs(m.Frozen + 200)
	i := 0
	for b.Loop() {
		v, _ := m.ByOld(os[i&(len(os)-1)])
		uidmapSink += v
		i++
	}
	reportUIDMap(b)
}

func BenchmarkMarshal(b *testing.B) {
	m := uidmapBenchMap(b)
	for b.Loop() {
		if _, err := m.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
	reportUIDMap(b)
}

func BenchmarkUnmarshal(b *testing.B) {
	enc, err := uidmapBenchMap(b).MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var m Map
		if err := m.UnmarshalBinary(enc); err != nil {
			b.Fatal(err)
		}
	}
	reportUIDMap(b)
}

// BenchmarkMigration builds the whole map, one SetNew (and a few AddNew,
// AddOld, Expunge) per message; ns/msg is the back-fill's cost per copy.
func BenchmarkMigration(b *testing.B) {
	uidmapBenchMap(b)
	for b.Loop() {
		buildMigration(1)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchMessages, "ns/msg")
	reportUIDMap(b)
}
