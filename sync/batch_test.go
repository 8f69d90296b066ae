package sync

import (
	"context"
	"errors"
	"testing"

	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
)

func TestWindows(t *testing.T) {
	msgs := func(sizes ...int64) []*oldMsg {
		var out []*oldMsg
		for i, s := range sizes {
			out = append(out, &oldMsg{msgMeta: msgMeta{UID: store.UID(i + 1), Size: s}})
		}
		return out
	}
	lens := func(ws [][]*oldMsg) []int {
		var out []int
		for _, w := range ws {
			out = append(out, len(w))
		}
		return out
	}
	eq := func(a, b []int) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	if got := windows(nil, batchMessages, batchBytes); len(got) != 0 {
		t.Errorf("windows(nil, batchMessages, batchBytes) = %v", lens(got))
	}
	many := make([]int64, 300)
	for i := range many {
		many[i] = 1000
	}
	if got := lens(windows(msgs(many...), batchMessages, batchBytes)); !eq(got, []int{128, 128, 44}) {
		t.Errorf("300 small messages: windows %v", got)
	}
	// A message larger than batchBytes goes alone; bytes split windows
	// (10 + half + half is over batchBytes).
	big := int64(batchBytes + 1)
	half := int64(batchBytes / 2)
	if got := lens(windows(msgs(10, big, 10, half, half, half), batchMessages, batchBytes)); !eq(got, []int{1, 1, 2, 2}) {
		t.Errorf("mixed sizes: windows %v", got)
	}
	// Under a rate limit: smaller windows.
	if got := lens(windows(msgs(many[:100]...), 35, 1<<30)); !eq(got, []int{35, 35, 30}) {
		t.Errorf("35 per window: windows %v", got)
	}
	// Order is kept.
	ws := windows(msgs(many...), batchMessages, batchBytes)
	var prev store.UID
	for _, w := range ws {
		for _, o := range w {
			if o.UID <= prev {
				t.Fatalf("windows reorder: %d after %d", o.UID, prev)
			}
			prev = o.UID
		}
	}
}

// TestBatchCrashBeforeRecord: a pass that dies after a window's APPENDs
// landed in new and before their mappings were committed leaves intents;
// the next pass adopts those copies instead of copying again (invariant
// 6), and leaves no intent behind.
func TestBatchCrashBeforeRecord(t *testing.T) {
	r := startRig(t, rigOptions{})
	fixtures := dovetest.LoadFixtures(t)
	seeds := append(corpus(fixtures, "INBOX", 0, 300), corpus(fixtures, "Pratiche.Città", 300, 20)...)
	r.old.SeedMaildir(t, testUser, seeds)
	r.eng.Remember(testUser, r.old.Password(testUser))
	ctx := context.Background()

	crash := errors.New("simulated crash")
	calls := 0
	r.eng.beforeRecord = func() error {
		calls++
		if calls == 2 { // the second window of INBOX's first chunk
			return crash
		}
		return nil
	}
	p, err := r.eng.CopyUser(ctx, testUser)
	if !errors.Is(err, crash) {
		t.Fatalf("first pass: %+v, %v; want the simulated crash", p, err)
	}
	var intents []store.Intent
	if err := r.st.View(ctx, func(tx store.Tx) error {
		var err error
		intents, err = store.ListIntents(tx, testUser, "INBOX")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(intents) == 0 {
		t.Fatalf("no intent left by the crash")
	}
	newC := r.new.Dial(t, testUser)
	inNew := len(read(t, newC, "INBOX"))
	if inNew <= int(p.MessagesDone) {
		t.Fatalf("new holds %d messages, progress %d: the crashed window's copies did not land", inNew, p.MessagesDone)
	}
	t.Logf("crash: %d intents, %d messages in new, %d recorded", len(intents), inNew, p.MessagesDone)

	r.eng.beforeRecord = nil
	p, err = r.eng.CopyUser(ctx, testUser)
	if err != nil || p.State != StateDone || p.MessagesDone != int64(len(seeds)) {
		t.Fatalf("second pass: %+v, %v", p, err)
	}
	oldC := r.old.Dial(t, testUser)
	r.checkCopied(t, oldC, newC, "INBOX", "INBOX", 0)
	r.checkCopied(t, oldC, newC, "Pratiche.Città", "Pratiche/Città", 0)
	for _, box := range []string{"INBOX", "Pratiche.Città"} {
		if err := r.st.View(ctx, func(tx store.Tx) error {
			var err error
			intents, err = store.ListIntents(tx, testUser, box)
			return err
		}); err != nil || len(intents) != 0 {
			t.Errorf("%s: %d intents left, %v", box, len(intents), err)
		}
	}
}
