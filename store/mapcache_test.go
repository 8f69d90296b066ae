package store

import (
	"slices"
	"testing"
)

// TestOldList checks the shared list of old's UIDs: it gives back what it
// was given, serves only the EXAMINE status it was taken under, and is
// refused where it could not serve.
func TestOldList(t *testing.T) {
	uids := []UID{1, 2, 3, 7, 9, 10, 11, 50000}
	l := NewOldList("aruba", 777, 50001, uint32(len(uids)), uids)
	if l == nil {
		t.Fatal("NewOldList refused a valid list")
	}
	if got := l.UIDs(); !slices.Equal(got, uids) {
		t.Fatalf("UIDs() = %v, want %v", got, uids)
	}
	if len(l.ranges) != 4 {
		t.Errorf("held as %d ranges %v, want 4 (1-3, 7, 9-11, 50000)", len(l.ranges), l.ranges)
	}
	l.UIDs()[0] = 99 // a new slice each time: the caller may change it
	if got := l.UIDs(); !slices.Equal(got, uids) {
		t.Fatalf("UIDs() = %v after a caller changed a returned slice, want %v", got, uids)
	}
	if !l.Matches("aruba", 777, 50001, 8) {
		t.Fatal("does not match the status it was taken under")
	}
	for _, c := range [][3]uint32{{778, 50001, 8}, {777, 50002, 8}, {777, 50001, 7}, {777, 0, 8}} {
		if l.Matches("aruba", c[0], c[1], c[2]) {
			t.Errorf("matches UIDVALIDITY %d UIDNEXT %d EXISTS %d, taken under 777 50001 8", c[0], c[1], c[2])
		}
	}
	if l.Matches("infocert", 777, 50001, 8) {
		t.Error("matches the same status at another provider")
	}
	var none *OldList
	if none.Matches("aruba", 777, 50001, 8) {
		t.Error("a nil list matches")
	}
	if e := NewOldList("aruba", 1, 5, 0, nil); e == nil || len(e.UIDs()) != 0 || !e.Matches("aruba", 1, 5, 0) {
		t.Errorf("empty mailbox: %+v", e)
	}

	for name, c := range map[string]struct {
		next, exists uint32
		uids         []UID
	}{
		"no UIDNEXT":          {0, 2, []UID{1, 2}},
		"count is not EXISTS": {9, 3, []UID{1, 2}},
		"unsorted":            {9, 2, []UID{2, 1}},
		"duplicate":           {9, 2, []UID{2, 2}},
		"UID at UIDNEXT":      {9, 2, []UID{1, 9}},
		"UID 0":               {9, 2, []UID{0, 1}},
	} {
		if l := NewOldList("aruba", 1, c.next, c.exists, c.uids); l != nil {
			t.Errorf("%s: NewOldList accepted %v (UIDNEXT %d, EXISTS %d)", name, c.uids, c.next, c.exists)
		}
	}

	// Every other UID: more ranges than kept.
	var sparse []UID
	for u := UID(1); len(sparse) <= oldListMaxRanges; u += 2 {
		sparse = append(sparse, u)
	}
	if l := NewOldList("aruba", 1, sparse[len(sparse)-1]+1, uint32(len(sparse)), sparse); l != nil {
		t.Errorf("a list of %d ranges was kept (at most %d)", len(sparse), oldListMaxRanges)
	}
	if l := NewOldList("aruba", 1, sparse[len(sparse)-2]+1, uint32(len(sparse)-1), sparse[:len(sparse)-1]); l == nil || !slices.Equal(l.UIDs(), sparse[:len(sparse)-1]) {
		t.Errorf("a list of %d ranges was refused or changed", oldListMaxRanges)
	}
}
