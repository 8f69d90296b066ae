// Package storetest is the conformance suite every store.Store passes
// (STYLE rule 11): store/bolt runs it on a bbolt file, store/pg on a real
// PostgreSQL. A backend's test calls Run; everything a store must do for
// the typed accessors and for invariant 6 is checked here, so a new
// backend that passes can replace another.
//
// The contract checked, beyond the doc comments of store.Store and
// store.Tx:
//
//   - Get on a missing key or bucket returns (nil, nil); ForEach on a
//     missing bucket calls nothing; Delete of a missing key or in a missing
//     bucket succeeds. A present empty value is a non-nil empty slice.
//   - An empty key is refused by Put.
//   - ForEach visits keys with the prefix in ascending byte order (keys are
//     arbitrary bytes, NUL and 0xff included), stops at and returns fn's
//     first error, and lets fn Put and Delete in the same transaction.
//   - An Update sees its own writes; an Update whose fn returns an error or
//     panics leaves nothing behind.
//   - Put and Delete in a View fail.
//   - Concurrent Updates are serialised: no lost update.
//   - Values are copied: neither the slice given to Put nor one returned by
//     Get or ForEach is shared with the store.
//   - A done ctx stops View and Update before fn runs.
//   - A Tx used after its View or Update returned fails.
//   - What was committed is there after reopening (when Run has reopen).
//   - Every typed accessor round-trips, with users matched
//     case-insensitively and INBOX in any case.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	gosync "sync"
	"testing"
	"time"

	"github.com/pecgate/pecgate/store"
)

// Run runs the suite. open returns a new, empty store and registers with
// t.Cleanup whatever removes its data; the suite closes every store it gets.
//
// reopen, when not nil, gets a store the suite has just closed and returns
// a new store on the same data (the same directory, the same database), as
// a gateway restart would. When reopen is nil, the persistence tests are
// skipped.
func Run(t *testing.T, open func(t *testing.T) store.Store, reopen func(t *testing.T, closed store.Store) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *harness)
	}{
		{"Missing", testMissing},
		{"PutGetDelete", testPutGetDelete},
		{"EmptyValue", testEmptyValue},
		{"EmptyKey", testEmptyKey},
		{"BucketsIndependent", testBucketsIndependent},
		{"ForEachPrefixOrder", testForEachPrefixOrder},
		{"ForEachStops", testForEachStops},
		{"ForEachManyKeys", testForEachManyKeys},
		{"ForEachWhileWriting", testForEachWhileWriting},
		{"ReadYourWrites", testReadYourWrites},
		{"UpdateRollback", testUpdateRollback},
		{"UpdatePanicRollback", testUpdatePanicRollback},
		{"ViewCannotWrite", testViewCannotWrite},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"ValuesCopied", testValuesCopied},
		{"ContextDone", testContextDone},
		{"TxAfterEnd", testTxAfterEnd},
		{"Reopen", testReopen},
		{"Overrides", testOverrides},
		{"Maps", testMaps},
		{"FolderMap", testFolderMap},
		{"Pending", testPending},
		{"Progress", testProgress},
		{"AccessorsReopen", testAccessorsReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &harness{t: t, reopenFn: reopen, s: open(t)}
			t.Cleanup(h.close)
			tc.fn(t, h)
		})
	}
}

// harness holds the store of one test, swapped by reopen.
type harness struct {
	t        *testing.T
	reopenFn func(t *testing.T, closed store.Store) store.Store
	s        store.Store
}

func (h *harness) close() {
	if h.s == nil {
		return
	}
	if err := h.s.Close(); err != nil {
		h.t.Errorf("Close: %v", err)
	}
	h.s = nil
}

// reopen closes the store and opens it again; it skips the test when the
// backend gave Run no reopen.
func (h *harness) reopen() {
	h.t.Helper()
	if h.reopenFn == nil {
		h.t.Skip("storetest: no reopen function given to Run")
	}
	old := h.s
	h.close()
	h.s = h.reopenFn(h.t, old)
	if h.s == nil {
		h.t.Fatal("reopen returned a nil store")
	}
}

func (h *harness) update(fn func(store.Tx) error) {
	h.t.Helper()
	if err := h.s.Update(context.Background(), fn); err != nil {
		h.t.Fatalf("Update: %v", err)
	}
}

func (h *harness) view(fn func(store.Tx) error) {
	h.t.Helper()
	if err := h.s.View(context.Background(), fn); err != nil {
		h.t.Fatalf("View: %v", err)
	}
}

func (h *harness) put(bucket, key, value string) {
	h.t.Helper()
	h.update(func(tx store.Tx) error { return tx.Put(bucket, key, []byte(value)) })
}

// get returns the committed value of key, or nil.
func (h *harness) get(bucket, key string) []byte {
	h.t.Helper()
	var v []byte
	h.view(func(tx store.Tx) error {
		var err error
		v, err = tx.Get(bucket, key)
		return err
	})
	return v
}

func (h *harness) wantValue(bucket, key, want string) {
	h.t.Helper()
	got := h.get(bucket, key)
	if got == nil {
		h.t.Fatalf("%s/%q: absent, want %q", bucket, key, want)
	}
	if string(got) != want {
		h.t.Fatalf("%s/%q = %q, want %q", bucket, key, got, want)
	}
}

func (h *harness) wantAbsent(bucket, key string) {
	h.t.Helper()
	if got := h.get(bucket, key); got != nil {
		h.t.Fatalf("%s/%q = %q, want absent", bucket, key, got)
	}
}

// keys returns the committed keys of bucket with prefix, in ForEach order.
func (h *harness) keys(bucket, prefix string) []string {
	h.t.Helper()
	var ks []string
	h.view(func(tx store.Tx) error {
		return tx.ForEach(bucket, prefix, func(k string, _ []byte) error {
			ks = append(ks, k)
			return nil
		})
	})
	return ks
}

var errBoom = errors.New("storetest: boom")

func testMissing(t *testing.T, h *harness) {
	check := func(tx store.Tx) error {
		v, err := tx.Get("nobucket", "k")
		if err != nil || v != nil {
			t.Errorf("Get on a missing bucket = %q, %v; want nil, nil", v, err)
		}
		err = tx.ForEach("nobucket", "", func(k string, _ []byte) error {
			t.Errorf("ForEach on a missing bucket visited %q", k)
			return nil
		})
		if err != nil {
			t.Errorf("ForEach on a missing bucket: %v", err)
		}
		return nil
	}
	h.view(check)
	h.update(check)
	h.update(func(tx store.Tx) error {
		if err := tx.Delete("nobucket", "k"); err != nil {
			t.Errorf("Delete in a missing bucket: %v", err)
		}
		return nil
	})
	h.put("b", "k", "v")
	h.wantAbsent("b", "other")
	h.update(func(tx store.Tx) error {
		if err := tx.Delete("b", "other"); err != nil {
			t.Errorf("Delete of a missing key: %v", err)
		}
		return nil
	})
	h.wantValue("b", "k", "v")
}

func testPutGetDelete(t *testing.T, h *harness) {
	h.put("b", "k", "v1")
	h.wantValue("b", "k", "v1")
	h.put("b", "k", "v2")
	h.wantValue("b", "k", "v2")
	h.put("b", "k2", "w")
	h.update(func(tx store.Tx) error { return tx.Delete("b", "k") })
	h.wantAbsent("b", "k")
	h.wantValue("b", "k2", "w")
	if ks := h.keys("b", ""); !reflect.DeepEqual(ks, []string{"k2"}) {
		t.Fatalf("keys after Delete = %q, want [k2]", ks)
	}
	// A 1 MiB value round-trips.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	h.update(func(tx store.Tx) error { return tx.Put("b", "big", big) })
	if got := h.get("b", "big"); !bytes.Equal(got, big) {
		t.Fatalf("1 MiB value: got %d bytes back, not the same", len(got))
	}
}

func testEmptyValue(t *testing.T, h *harness) {
	h.update(func(tx store.Tx) error {
		if err := tx.Put("b", "empty", []byte{}); err != nil {
			return err
		}
		return tx.Put("b", "nil", nil)
	})
	for _, k := range []string{"empty", "nil"} {
		v := h.get("b", k)
		if v == nil || len(v) != 0 {
			t.Errorf("Get(%q) = %#v, want a non-nil empty slice", k, v)
		}
	}
	if ks := h.keys("b", ""); !reflect.DeepEqual(ks, []string{"empty", "nil"}) {
		t.Errorf("ForEach keys = %q, want [empty nil]", ks)
	}
}

func testEmptyKey(t *testing.T, h *harness) {
	err := h.s.Update(context.Background(), func(tx store.Tx) error {
		return tx.Put("b", "", []byte("v"))
	})
	if err == nil {
		t.Fatal("Put with an empty key succeeded")
	}
	// Every call refuses an empty key or bucket name, in a View and in an
	// Update, and nothing is written.
	ctx := context.Background()
	for _, run := range []func(context.Context, func(store.Tx) error) error{h.s.View, h.s.Update} {
		_ = run(ctx, func(tx store.Tx) error {
			if _, err := tx.Get("b", ""); err == nil {
				t.Error("Get with an empty key succeeded")
			}
			if err := tx.Delete("b", ""); err == nil {
				t.Error("Delete with an empty key succeeded")
			}
			if _, err := tx.Get("", "k"); err == nil {
				t.Error("Get with an empty bucket succeeded")
			}
			if err := tx.Put("", "k", []byte("v")); err == nil {
				t.Error("Put with an empty bucket succeeded")
			}
			if err := tx.Delete("", "k"); err == nil {
				t.Error("Delete with an empty bucket succeeded")
			}
			if err := tx.ForEach("", "", func(string, []byte) error { return nil }); err == nil {
				t.Error("ForEach with an empty bucket succeeded")
			}
			return nil
		})
	}
	if ks := h.keys("b", ""); len(ks) != 0 {
		t.Errorf("keys of b after refused writes = %q, want none", ks)
	}
}

func testBucketsIndependent(t *testing.T, h *harness) {
	h.put("b1", "k", "one")
	h.put("b2", "k", "two")
	h.wantValue("b1", "k", "one")
	h.wantValue("b2", "k", "two")
	h.update(func(tx store.Tx) error { return tx.Delete("b1", "k") })
	h.wantAbsent("b1", "k")
	h.wantValue("b2", "k", "two")
	// A bucket whose name is a prefix of another's shares nothing with it.
	h.put("b", "k", "short")
	if ks := h.keys("b", ""); !reflect.DeepEqual(ks, []string{"k"}) {
		t.Fatalf("keys of b = %q, want [k]", ks)
	}
}

func testForEachPrefixOrder(t *testing.T, h *harness) {
	keys := []string{
		"b", "a", "ab", "a\x00", "a\x00x", "a\xff", "aa", "A", "\xff", "\x00", "a/b", "ba",
	}
	h.update(func(tx store.Tx) error {
		for i, k := range keys {
			if err := tx.Put("b", k, []byte(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		return nil
	})
	cases := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"\x00", "A", "a", "a\x00", "a\x00x", "a/b", "aa", "ab", "a\xff", "b", "ba", "\xff"}},
		{"a", []string{"a", "a\x00", "a\x00x", "a/b", "aa", "ab", "a\xff"}},
		{"a\x00", []string{"a\x00", "a\x00x"}},
		{"b", []string{"b", "ba"}},
		{"\xff", []string{"\xff"}},
		{"c", nil},
		{"abc", nil},
	}
	for _, c := range cases {
		var got []string
		h.view(func(tx store.Tx) error {
			return tx.ForEach("b", c.prefix, func(k string, v []byte) error {
				got = append(got, k)
				// The value belongs to the key.
				i, err := strconv.Atoi(string(v))
				if err != nil || keys[i] != k {
					t.Errorf("ForEach: key %q came with value %q", k, v)
				}
				return nil
			})
		})
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("ForEach prefix %q = %q, want %q", c.prefix, got, c.want)
		}
	}
}

func testForEachStops(t *testing.T, h *harness) {
	h.update(func(tx store.Tx) error {
		for _, k := range []string{"a", "b", "c", "d"} {
			if err := tx.Put("b", k, []byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
	var seen []string
	err := h.s.View(context.Background(), func(tx store.Tx) error {
		return tx.ForEach("b", "", func(k string, _ []byte) error {
			seen = append(seen, k)
			if k == "b" {
				return fmt.Errorf("stop at %s: %w", k, errBoom)
			}
			return nil
		})
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("View = %v, want fn's error", err)
	}
	if !reflect.DeepEqual(seen, []string{"a", "b"}) {
		t.Fatalf("visited %q, want [a b]", seen)
	}
}

// testForEachManyKeys crosses any batch or page size a backend uses.
func testForEachManyKeys(t *testing.T, h *harness) {
	const n = 3000
	h.update(func(tx store.Tx) error {
		for i := range n {
			if err := tx.Put("b", fmt.Sprintf("p\x00%05d", i), []byte(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		// Neighbours on both sides of the prefix.
		if err := tx.Put("b", "o", []byte("x")); err != nil {
			return err
		}
		return tx.Put("b", "p\x01", []byte("x"))
	})
	i := 0
	h.view(func(tx store.Tx) error {
		return tx.ForEach("b", "p\x00", func(k string, v []byte) error {
			if want := fmt.Sprintf("p\x00%05d", i); k != want || string(v) != strconv.Itoa(i) {
				return fmt.Errorf("entry %d: %q=%q, want %q=%d", i, k, v, want, i)
			}
			i++
			return nil
		})
	})
	if i != n {
		t.Fatalf("ForEach visited %d keys, want %d", i, n)
	}
}

func testForEachWhileWriting(t *testing.T, h *harness) {
	const n = 600
	h.update(func(tx store.Tx) error {
		for i := range n {
			if err := tx.Put("b", fmt.Sprintf("k%04d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	// Delete every visited key and rewrite an earlier one: nothing is
	// skipped, and the writes stick.
	visited := 0
	h.update(func(tx store.Tx) error {
		return tx.ForEach("b", "k", func(k string, _ []byte) error {
			visited++
			if err := tx.Delete("b", k); err != nil {
				return err
			}
			return tx.Put("b", "a-"+k, []byte("moved"))
		})
	})
	if visited != n {
		t.Fatalf("ForEach deleting as it went visited %d keys, want %d", visited, n)
	}
	if ks := h.keys("b", "k"); len(ks) != 0 {
		t.Fatalf("%d keys left after deleting all", len(ks))
	}
	if ks := h.keys("b", "a-"); len(ks) != n {
		t.Fatalf("%d rewritten keys, want %d", len(ks), n)
	}
}

func testReadYourWrites(t *testing.T, h *harness) {
	h.put("b", "old", "1")
	h.update(func(tx store.Tx) error {
		if err := tx.Put("b", "new", []byte("2")); err != nil {
			return err
		}
		if err := tx.Delete("b", "old"); err != nil {
			return err
		}
		if err := tx.Put("fresh", "k", []byte("3")); err != nil {
			return err
		}
		if v, err := tx.Get("b", "new"); err != nil || string(v) != "2" {
			t.Errorf("Get of an uncommitted Put = %q, %v", v, err)
		}
		if v, err := tx.Get("b", "old"); err != nil || v != nil {
			t.Errorf("Get of an uncommitted Delete = %q, %v", v, err)
		}
		if v, err := tx.Get("fresh", "k"); err != nil || string(v) != "3" {
			t.Errorf("Get in a bucket made in this tx = %q, %v", v, err)
		}
		var ks []string
		err := tx.ForEach("b", "", func(k string, _ []byte) error {
			ks = append(ks, k)
			return nil
		})
		if err != nil || !reflect.DeepEqual(ks, []string{"new"}) {
			t.Errorf("ForEach in the tx = %q, %v; want [new]", ks, err)
		}
		return nil
	})
}

func testUpdateRollback(t *testing.T, h *harness) {
	h.put("b", "keep", "1")
	h.put("b", "change", "1")
	err := h.s.Update(context.Background(), func(tx store.Tx) error {
		for _, op := range []error{
			tx.Put("b", "added", []byte("x")),
			tx.Put("b", "change", []byte("2")),
			tx.Delete("b", "keep"),
			tx.Put("newbucket", "k", []byte("x")),
		} {
			if op != nil {
				return op
			}
		}
		return fmt.Errorf("after writing: %w", errBoom)
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	h.wantValue("b", "keep", "1")
	h.wantValue("b", "change", "1")
	h.wantAbsent("b", "added")
	h.wantAbsent("newbucket", "k")
	if ks := h.keys("newbucket", ""); len(ks) != 0 {
		t.Fatalf("rolled-back bucket has keys %q", ks)
	}
	// The store still works.
	h.put("b", "after", "1")
	h.wantValue("b", "after", "1")
}

func testUpdatePanicRollback(t *testing.T, h *harness) {
	h.put("b", "k", "1")
	func() {
		defer func() {
			if r := recover(); r != errBoom {
				t.Fatalf("recovered %v, want fn's panic", r)
			}
		}()
		_ = h.s.Update(context.Background(), func(tx store.Tx) error {
			if err := tx.Put("b", "k", []byte("2")); err != nil {
				return err
			}
			panic(errBoom)
		})
		t.Fatal("Update returned after fn panicked")
	}()
	h.wantValue("b", "k", "1")
	// The writer lock was released.
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.s.Update(context.Background(), func(tx store.Tx) error { return tx.Put("b", "k", []byte("3")) })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Update after a panicking Update did not finish in 10s")
	}
	h.wantValue("b", "k", "3")
}

func testViewCannotWrite(t *testing.T, h *harness) {
	h.put("b", "k", "1")
	for _, c := range []struct {
		name string
		op   func(store.Tx) error
	}{
		{"Put", func(tx store.Tx) error { return tx.Put("b", "k", []byte("2")) }},
		{"PutNewKey", func(tx store.Tx) error { return tx.Put("b", "k2", []byte("2")) }},
		{"PutNewBucket", func(tx store.Tx) error { return tx.Put("nb", "k", []byte("2")) }},
		{"Delete", func(tx store.Tx) error { return tx.Delete("b", "k") }},
		{"DeleteMissingBucket", func(tx store.Tx) error { return tx.Delete("nb", "k") }},
	} {
		var opErr error
		_ = h.s.View(context.Background(), func(tx store.Tx) error {
			opErr = c.op(tx)
			return nil // the View itself must not turn the write into a commit
		})
		if opErr == nil {
			t.Errorf("%s in a View succeeded", c.name)
		}
	}
	h.wantValue("b", "k", "1")
	h.wantAbsent("b", "k2")
	h.wantAbsent("nb", "k")
}

func testConcurrentUpdates(t *testing.T, h *harness) {
	const workers, each = 16, 25
	var wg gosync.WaitGroup
	errc := make(chan error, workers*2)
	for range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range each {
				err := h.s.Update(context.Background(), func(tx store.Tx) error {
					v, err := tx.Get("b", "counter")
					if err != nil {
						return err
					}
					n := 0
					if v != nil {
						if n, err = strconv.Atoi(string(v)); err != nil {
							return err
						}
					}
					return tx.Put("b", "counter", []byte(strconv.Itoa(n+1)))
				})
				if err != nil {
					errc <- err
					return
				}
			}
		}()
		go func() { // readers alongside: never a torn or failing read
			defer wg.Done()
			for range each {
				err := h.s.View(context.Background(), func(tx store.Tx) error {
					v, err := tx.Get("b", "counter")
					if err != nil || v == nil {
						return err
					}
					_, err = strconv.Atoi(string(v))
					return err
				})
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	h.wantValue("b", "counter", strconv.Itoa(workers*each))
}

func testValuesCopied(t *testing.T, h *harness) {
	in := []byte("original")
	h.update(func(tx store.Tx) error {
		if err := tx.Put("b", "k", in); err != nil {
			return err
		}
		copy(in, "XXXXXXXX") // after Put, before commit
		v, err := tx.Get("b", "k")
		if err != nil {
			return err
		}
		if string(v) != "original" {
			t.Errorf("Get after changing Put's slice = %q", v)
		}
		copy(v, "YYYYYYYY") // a slice from Get, inside a write tx
		return nil
	})
	h.wantValue("b", "k", "original")

	var kept, fromEach []byte
	h.view(func(tx store.Tx) error {
		var err error
		if kept, err = tx.Get("b", "k"); err != nil {
			return err
		}
		copy(kept, "ZZZZZZZZ") // inside a read tx: must not fault
		return tx.ForEach("b", "", func(_ string, v []byte) error {
			fromEach = v
			copy(v, "WWWWWWWW")
			return nil
		})
	})
	h.wantValue("b", "k", "original")
	// Slices kept past the end of the tx stay valid and keep their bytes.
	if string(kept) != "ZZZZZZZZ" || string(fromEach) != "WWWWWWWW" {
		t.Errorf("kept slices changed after the tx: %q %q", kept, fromEach)
	}
	h.put("b", "k", "replaced")
	if string(kept) != "ZZZZZZZZ" {
		t.Errorf("a later Put changed a slice returned earlier: %q", kept)
	}
}

func testContextDone(t *testing.T, h *harness) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	fn := func(tx store.Tx) error {
		ran = true
		return tx.Put("b", "k", []byte("v"))
	}
	if err := h.s.Update(ctx, fn); !errors.Is(err, context.Canceled) {
		t.Errorf("Update with a cancelled ctx = %v, want context.Canceled", err)
	}
	if err := h.s.View(ctx, func(store.Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("View with a cancelled ctx = %v, want context.Canceled", err)
	}
	if ran {
		t.Error("fn ran under a cancelled ctx")
	}
	h.wantAbsent("b", "k")
}

func testTxAfterEnd(t *testing.T, h *harness) {
	h.put("b", "k", "v")
	var leaked store.Tx
	h.update(func(tx store.Tx) error { leaked = tx; return nil })
	if err := leaked.Put("b", "k", []byte("late")); err == nil {
		t.Error("Put on an ended Update's tx succeeded")
	}
	h.view(func(tx store.Tx) error { leaked = tx; return nil })
	if _, err := leaked.Get("b", "k"); err == nil {
		t.Error("Get on an ended View's tx succeeded")
	}
	if err := leaked.ForEach("b", "", func(string, []byte) error { return nil }); err == nil {
		t.Error("ForEach on an ended View's tx succeeded")
	}
	h.wantValue("b", "k", "v")
}

func testReopen(t *testing.T, h *harness) {
	h.update(func(tx store.Tx) error {
		for i := range 100 {
			if err := tx.Put("b"+strconv.Itoa(i%3), fmt.Sprintf("k%03d", i), []byte(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		return nil
	})
	h.put("b0", "k000", "changed")
	h.update(func(tx store.Tx) error { return tx.Delete("b1", "k001") })
	_ = h.s.Update(context.Background(), func(tx store.Tx) error {
		_ = tx.Put("b0", "rolledback", []byte("x"))
		return errBoom
	})
	h.reopen()
	h.wantValue("b0", "k000", "changed")
	h.wantAbsent("b1", "k001")
	h.wantAbsent("b0", "rolledback")
	h.wantValue("b2", "k098", "98")
	if n := len(h.keys("b1", "")); n != 32 {
		t.Fatalf("b1 has %d keys after reopen, want 32", n)
	}
	// Reopen twice: still there, still writable.
	h.reopen()
	h.put("b0", "after", "1")
	h.wantValue("b0", "k000", "changed")
	h.wantValue("b0", "after", "1")
}
