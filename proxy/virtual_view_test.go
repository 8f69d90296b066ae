package proxy

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/pecgate/pecgate/store"
)

// TestMergeSorted checks the view's merge of what old and new serve
// against sorting the concatenation, on sorted, unsorted, overlapping and
// empty inputs.
func TestMergeSorted(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	list := func(n, span int, sorted bool) []store.UID {
		out := make([]store.UID, n)
		for i := range out {
			out[i] = store.UID(r.IntN(span) + 1)
		}
		if sorted {
			slices.Sort(out)
		}
		return out
	}
	cases := [][2][]store.UID{
		{nil, nil},
		{{1, 2, 3}, nil},
		{nil, {5, 4}},
		{{1, 2, 3, 50001}, {50002, 50003}},
		{{1, 3, 5}, {2, 3, 4, 6}},
		{{7, 7, 8}, {7}},
	}
	for range 200 {
		cases = append(cases, [2][]store.UID{list(r.IntN(60), 80, r.IntN(4) != 0), list(r.IntN(10), 80, r.IntN(2) == 0)})
	}
	for _, c := range cases {
		want := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(c[0]), c[1]...))))
		got := mergeSorted(slices.Clone(c[0]), slices.Clone(c[1]))
		if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("mergeSorted(%v, %v) = %v, want %v", c[0], c[1], got, want)
		}
	}
}
