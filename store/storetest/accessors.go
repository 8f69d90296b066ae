package storetest

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/pecgate/pecgate/store"
)

// The typed accessors run on the backend under test: they only use Tx, but
// a backend that mangles keys with NUL or orders them wrongly breaks them.

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("%s: err = %v, want ErrNotFound", what, err)
	}
}

func testOverrides(t *testing.T, h *harness) {
	h.view(func(tx store.Tx) error {
		_, err := store.GetOverride(tx, "domain", "pec.ordine.example")
		wantNotFound(t, "GetOverride before any", err)
		l, err := store.ListOverrides(tx)
		if err != nil || len(l) != 0 {
			t.Errorf("ListOverrides on an empty store = %v, %v", l, err)
		}
		return nil
	})
	h.update(func(tx store.Tx) error {
		for _, o := range []store.Override{
			{Kind: "user", Name: "Mario.Rossi@PEC.Ordine.Example", State: "new"},
			{Kind: "domain", Name: "PEC.Ordine.Example", State: "migrating"},
			{Kind: "domain", Name: "b.example", State: "old"},
			{Kind: "user", Name: "anna@pec.ordine.example", State: "migrating"},
		} {
			if err := store.SetOverride(tx, o.Kind, o.Name, o.State); err != nil {
				return err
			}
		}
		// Overwrite through another spelling.
		return store.SetOverride(tx, "domain", "pec.ordine.EXAMPLE", "new")
	})
	h.view(func(tx store.Tx) error {
		for _, c := range []struct{ kind, name, want string }{
			{"domain", "pec.ordine.example", "new"},
			{"domain", "B.EXAMPLE", "old"},
			{"user", "mario.rossi@pec.ordine.example", "new"},
			{"user", "ANNA@pec.ordine.example", "migrating"},
		} {
			got, err := store.GetOverride(tx, c.kind, c.name)
			if err != nil || got != c.want {
				t.Errorf("GetOverride(%s, %s) = %q, %v; want %q", c.kind, c.name, got, err, c.want)
			}
		}
		// A user override is not a domain override of the same name.
		_, err := store.GetOverride(tx, "user", "pec.ordine.example")
		wantNotFound(t, "GetOverride(user, DOMAIN)", err)
		l, err := store.ListOverrides(tx)
		if err != nil {
			return err
		}
		want := []store.Override{
			{Kind: "domain", Name: "b.example", State: "old"},
			{Kind: "domain", Name: "pec.ordine.example", State: "new"},
			{Kind: "user", Name: "anna@pec.ordine.example", State: "migrating"},
			{Kind: "user", Name: "mario.rossi@pec.ordine.example", State: "new"},
		}
		if !reflect.DeepEqual(l, want) {
			t.Errorf("ListOverrides = %v, want %v", l, want)
		}
		return nil
	})
	h.update(func(tx store.Tx) error {
		if err := store.DeleteOverride(tx, "domain", "B.example"); err != nil {
			return err
		}
		return store.DeleteOverride(tx, "user", "nobody@b.example") // absent: fine
	})
	h.view(func(tx store.Tx) error {
		_, err := store.GetOverride(tx, "domain", "b.example")
		wantNotFound(t, "GetOverride after DeleteOverride", err)
		return nil
	})
	h.update(func(tx store.Tx) error {
		for _, c := range []struct{ kind, name, state string }{
			{"group", "x", "new"},
			{"", "x", "new"},
			{"domain", "", "new"},
			{"domain", "x.example", "flipped"},
			{"domain", "x.example", ""},
		} {
			if err := store.SetOverride(tx, c.kind, c.name, c.state); err == nil {
				t.Errorf("SetOverride(%q, %q, %q) succeeded", c.kind, c.name, c.state)
			}
		}
		if _, err := store.GetOverride(tx, "group", "x"); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetOverride of a bad kind = %v, want a validation error", err)
		}
		return nil
	})
}

// testMap is a valid map (see store/uidmap_ops.go) with every field set,
// several runs (one side missing in some) and gone ranges.
func testMap() *store.Map {
	return &store.Map{
		UIDValidity:    1700000000,
		Frozen:         5001,
		Next:           5210,
		NewUIDValidity: 42,
		Runs: []store.Run{
			{V: 1, N: 4000, Old: 1, New: 1},
			{V: 4003, N: 2, Old: 4003, New: 0},
			{V: 4005, N: 996, Old: 4005, New: 4001},
			{V: 5001, N: 100, Old: 0, New: 4997},
			{V: 5101, N: 1, Old: 5003, New: 0},
			{V: 5102, N: 98, Old: 0, New: 5200},
			{V: 5200, N: 10, Old: 0, New: 6000},
		},
		Gone: []store.Range{{Lo: 7, Hi: 7}, {Lo: 100, Hi: 250}, {Lo: 5105, Hi: 5199}},
	}
}

// mapEqual compares the durable state of two maps (not their indexes),
// with nil and empty slices equal.
func mapEqual(a, b *store.Map) bool {
	return a.UIDValidity == b.UIDValidity && a.Frozen == b.Frozen && a.Next == b.Next &&
		a.NewUIDValidity == b.NewUIDValidity &&
		slices.Equal(a.Runs, b.Runs) && slices.Equal(a.Gone, b.Gone)
}

func testMaps(t *testing.T, h *harness) {
	const user = "Mario.Rossi@pec.ordine.example"
	m := testMap()
	small := &store.Map{UIDValidity: 1, Frozen: 1, Next: 1}
	h.view(func(tx store.Tx) error {
		_, err := store.GetMap(tx, user, "INBOX")
		wantNotFound(t, "GetMap before any", err)
		return nil
	})
	h.update(func(tx store.Tx) error {
		if err := store.PutMap(tx, user, "inbox", m); err != nil {
			return err
		}
		if err := store.PutMap(tx, user, "INBOX.Inviata", small); err != nil {
			return err
		}
		if err := store.PutMap(tx, user, "&AMk-l&AOg-ve", small); err != nil { // "Élève" in modified UTF-7
			return err
		}
		if err := store.PutMap(tx, user, "inbox.inviata", small); err != nil { // only INBOX itself folds
			return err
		}
		// Another user, whose name extends this one's: not listed below.
		return store.PutMap(tx, user+".it", "INBOX", small)
	})
	h.view(func(tx store.Tx) error {
		for _, u := range []string{user, "mario.rossi@pec.ordine.example", "MARIO.ROSSI@PEC.ORDINE.EXAMPLE"} {
			for _, mb := range []string{"INBOX", "inbox", "Inbox"} {
				got, err := store.GetMap(tx, u, mb)
				if err != nil {
					t.Errorf("GetMap(%s, %s): %v", u, mb, err)
					continue
				}
				if !mapEqual(got, m) {
					t.Errorf("GetMap(%s, %s) = %+v, want %+v", u, mb, got, m)
				}
			}
		}
		_, err := store.GetMap(tx, user, "Inbox.Inviata")
		wantNotFound(t, "GetMap of a child of INBOX in another case", err)
		mbs, err := store.ListMaps(tx, "MARIO.rossi@pec.ordine.example")
		if err != nil {
			return err
		}
		if want := []string{"&AMk-l&AOg-ve", "INBOX", "INBOX.Inviata", "inbox.inviata"}; !reflect.DeepEqual(mbs, want) {
			t.Errorf("ListMaps = %q, want %q", mbs, want)
		}
		mbs, err = store.ListMaps(tx, "nobody@pec.ordine.example")
		if err != nil || len(mbs) != 0 {
			t.Errorf("ListMaps of a user without maps = %q, %v", mbs, err)
		}
		return nil
	})
	// The stored map is not the caller's: changing it after PutMap or
	// after GetMap changes nothing stored.
	m.Runs[0].N = 1
	m.Gone = append(m.Gone, store.Range{Lo: 9000, Hi: 9001})
	h.view(func(tx store.Tx) error {
		got, err := store.GetMap(tx, user, "INBOX")
		if err != nil {
			return err
		}
		if !mapEqual(got, testMap()) {
			t.Errorf("stored map changed with the caller's copy: %+v", got)
		}
		return nil
	})
	h.update(func(tx store.Tx) error {
		if err := store.DeleteMap(tx, user, "Inbox"); err != nil {
			return err
		}
		return store.DeleteMap(tx, user, "Nonexistent")
	})
	h.view(func(tx store.Tx) error {
		_, err := store.GetMap(tx, user, "INBOX")
		wantNotFound(t, "GetMap after DeleteMap", err)
		mbs, err := store.ListMaps(tx, user)
		if err != nil {
			return err
		}
		if want := []string{"&AMk-l&AOg-ve", "INBOX.Inviata", "inbox.inviata"}; !reflect.DeepEqual(mbs, want) {
			t.Errorf("ListMaps after DeleteMap = %q, want %q", mbs, want)
		}
		if _, err := store.GetMap(tx, user+".it", "INBOX"); err != nil {
			t.Errorf("the other user's map: %v", err)
		}
		return nil
	})
	h.update(func(tx store.Tx) error {
		for _, c := range []struct{ user, mailbox string }{
			{"", "INBOX"}, {user, ""}, {"a\x00b", "INBOX"}, {user, "a\x00b"},
		} {
			if err := store.PutMap(tx, c.user, c.mailbox, small); err == nil {
				t.Errorf("PutMap(%q, %q) succeeded", c.user, c.mailbox)
			}
		}
		if err := store.PutMap(tx, user, "INBOX", nil); err == nil {
			t.Error("PutMap of a nil map succeeded")
		}
		return nil
	})
}

func testFolderMap(t *testing.T, h *harness) {
	const user = "Anna.Bianchi@pec.ordine.example"
	fm := &store.FolderMap{
		OldDelim: ".",
		NewDelim: "/",
		Folders: []store.Folder{
			{Old: "INBOX", New: "INBOX", Subscribed: true},
			{Old: "INBOX.Inviata", New: "Sent", SpecialUse: `\Sent`, Subscribed: true},
			{Old: "INBOX.Cestino", New: "Trash", SpecialUse: `\Trash`},
			{Old: "INBOX.Pratiche.&AMk-l&AOg-ve", New: "INBOX/Pratiche/&AMk-l&AOg-ve", Subscribed: true, Created: true},
			{Old: "INBOX.Nuova", New: ""},
		},
	}
	h.view(func(tx store.Tx) error {
		_, err := store.GetFolderMap(tx, user)
		wantNotFound(t, "GetFolderMap before any", err)
		return nil
	})
	h.update(func(tx store.Tx) error { return store.PutFolderMap(tx, user, fm) })
	h.view(func(tx store.Tx) error {
		got, err := store.GetFolderMap(tx, "anna.bianchi@PEC.ordine.example")
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, fm) {
			t.Errorf("GetFolderMap = %+v, want %+v", got, fm)
		}
		return nil
	})
	fm2 := &store.FolderMap{OldDelim: "/", NewDelim: "/"}
	h.update(func(tx store.Tx) error { return store.PutFolderMap(tx, "ANNA.BIANCHI@pec.ordine.example", fm2) })
	h.view(func(tx store.Tx) error {
		got, err := store.GetFolderMap(tx, user)
		if err != nil {
			return err
		}
		if got.OldDelim != "/" || len(got.Folders) != 0 {
			t.Errorf("GetFolderMap after replacing = %+v", got)
		}
		return nil
	})
	h.update(func(tx store.Tx) error {
		if err := store.PutFolderMap(tx, user, nil); err == nil {
			t.Error("PutFolderMap of nil succeeded")
		}
		if err := store.PutFolderMap(tx, "", fm); err == nil {
			t.Error("PutFolderMap for an empty user succeeded")
		}
		return nil
	})
}

func testPending(t *testing.T, h *harness) {
	const user = "Mario.Rossi@pec.ordine.example"
	adds := []struct {
		user string
		p    store.Pending
	}{
		{user, store.Pending{Mailbox: "INBOX", V: 10, Op: "flags", Flags: []string{`\Seen`}}},
		{user, store.Pending{Mailbox: "inbox", V: 9, Op: "flags", Flags: []string{`\Seen`, `\Flagged`, "$Label1"}}},
		{user, store.Pending{Mailbox: "INBOX", V: 100, Op: "expunge"}},
		{"MARIO.ROSSI@pec.ordine.example", store.Pending{Mailbox: "Inbox", V: 10, Op: "move", Dest: "INBOX.Pratiche"}},
		{user, store.Pending{Mailbox: "INBOX", V: 4294967295, Op: "flags"}},
		{user, store.Pending{Mailbox: "INBOX.Pratiche", V: 1, Op: "expunge"}},
		{user + ".it", store.Pending{Mailbox: "INBOX", V: 1, Op: "expunge"}},
	}
	h.update(func(tx store.Tx) error {
		for _, a := range adds {
			if err := store.AddPending(tx, a.user, a.p); err != nil {
				return err
			}
		}
		return nil
	})
	want := []store.Pending{
		{Mailbox: "INBOX", V: 9, Op: "flags", Flags: []string{`\Seen`, `\Flagged`, "$Label1"}},
		{Mailbox: "INBOX", V: 10, Op: "flags", Flags: []string{`\Seen`}},
		{Mailbox: "INBOX", V: 10, Op: "move", Dest: "INBOX.Pratiche"},
		{Mailbox: "INBOX", V: 100, Op: "expunge"},
		{Mailbox: "INBOX", V: 4294967295, Op: "flags"},
	}
	list := func(user, mailbox string) []store.Pending {
		t.Helper()
		var l []store.Pending
		h.view(func(tx store.Tx) error {
			var err error
			l, err = store.ListPending(tx, user, mailbox)
			return err
		})
		return l
	}
	if got := list("mario.rossi@PEC.ORDINE.EXAMPLE", "inbox"); !reflect.DeepEqual(got, want) {
		t.Errorf("ListPending = %+v,\nwant %+v", got, want)
	}
	if got := list(user, "INBOX.Pratiche"); len(got) != 1 || got[0].V != 1 {
		t.Errorf("ListPending(INBOX.Pratiche) = %+v", got)
	}
	if got := list(user, "Other"); len(got) != 0 {
		t.Errorf("ListPending of a mailbox without changes = %+v", got)
	}
	h.update(func(tx store.Tx) error {
		if err := store.DeletePending(tx, user, "Inbox", 10); err != nil {
			return err
		}
		return store.DeletePending(tx, user, "INBOX", 11) // none: fine
	})
	want = append(want[:1], want[3:]...)
	if got := list(user, "INBOX"); !reflect.DeepEqual(got, want) {
		t.Errorf("ListPending after DeletePending(10) = %+v,\nwant %+v", got, want)
	}
	if got := list(user+".it", "INBOX"); len(got) != 1 {
		t.Errorf("the other user's pending changes = %+v", got)
	}
	h.update(func(tx store.Tx) error {
		for _, p := range []store.Pending{
			{Mailbox: "INBOX", V: 0, Op: "flags"},
			{Mailbox: "INBOX", V: 1, Op: "copy"},
			{Mailbox: "INBOX", V: 1, Op: "move"},
			{Mailbox: "", V: 1, Op: "expunge"},
		} {
			if err := store.AddPending(tx, user, p); err == nil {
				t.Errorf("AddPending(%+v) succeeded", p)
			}
		}
		return nil
	})
}

func testProgress(t *testing.T, h *harness) {
	at := time.Date(2025, 3, 14, 9, 26, 53, 589793238, time.FixedZone("CET", 3600))
	p := &store.Progress{
		User:          "Mario.Rossi@pec.ordine.example",
		State:         "copying",
		MessagesDone:  1234,
		MessagesTotal: 100000,
		BytesDone:     5 << 30,
		BytesTotal:    1 << 40,
		Errors: []store.ProgressError{
			{Kind: "quota", Message: "over quota on new", At: at},
			{Kind: "append", Message: "NO [LIMIT] too big", Mailbox: "INBOX.Inviata", V: 77, At: at.Add(time.Second)},
		},
		Updated: at.Add(time.Minute),
	}
	h.view(func(tx store.Tx) error {
		_, err := store.GetProgress(tx, p.User)
		wantNotFound(t, "GetProgress before any", err)
		return nil
	})
	h.update(func(tx store.Tx) error {
		if err := store.PutProgress(tx, p); err != nil {
			return err
		}
		return store.PutProgress(tx, &store.Progress{User: "anna@pec.ordine.example", State: "done", Updated: at})
	})
	if p.User != "Mario.Rossi@pec.ordine.example" {
		t.Errorf("PutProgress changed its argument: User = %q", p.User)
	}
	h.view(func(tx store.Tx) error {
		got, err := store.GetProgress(tx, "MARIO.ROSSI@PEC.ORDINE.EXAMPLE")
		if err != nil {
			return err
		}
		want := *p
		want.User = "mario.rossi@pec.ordine.example"
		if !progressEqual(got, &want) {
			t.Errorf("GetProgress = %+v,\nwant %+v", got, &want)
		}
		all, err := store.ListProgress(tx)
		if err != nil {
			return err
		}
		if len(all) != 2 || all[0].User != "anna@pec.ordine.example" || !progressEqual(all[1], &want) {
			t.Errorf("ListProgress = %+v", all)
		}
		return nil
	})
	h.update(func(tx store.Tx) error {
		if err := store.PutProgress(tx, nil); err == nil {
			t.Error("PutProgress(nil) succeeded")
		}
		if err := store.PutProgress(tx, &store.Progress{}); err == nil {
			t.Error("PutProgress without a user succeeded")
		}
		return nil
	})
}

// progressEqual compares times as instants (a round trip keeps the
// instant, not the location).
func progressEqual(a, b *store.Progress) bool {
	if !a.Updated.Equal(b.Updated) || len(a.Errors) != len(b.Errors) {
		return false
	}
	for i := range a.Errors {
		x, y := a.Errors[i], b.Errors[i]
		if !x.At.Equal(y.At) {
			return false
		}
		x.At, y.At = time.Time{}, time.Time{}
		if x != y {
			return false
		}
	}
	x, y := *a, *b
	x.Updated, y.Updated = time.Time{}, time.Time{}
	x.Errors, y.Errors = nil, nil
	return reflect.DeepEqual(x, y)
}

// testAccessorsReopen checks that what the accessors wrote is read back
// after a restart.
func testAccessorsReopen(t *testing.T, h *harness) {
	const user = "mario.rossi@pec.ordine.example"
	h.update(func(tx store.Tx) error {
		if err := store.SetOverride(tx, "domain", "pec.ordine.example", "migrating"); err != nil {
			return err
		}
		if err := store.PutMap(tx, user, "INBOX", testMap()); err != nil {
			return err
		}
		if err := store.PutFolderMap(tx, user, &store.FolderMap{OldDelim: ".", NewDelim: "/", Folders: []store.Folder{{Old: "INBOX", New: "INBOX"}}}); err != nil {
			return err
		}
		if err := store.AddPending(tx, user, store.Pending{Mailbox: "INBOX", V: 3, Op: "expunge"}); err != nil {
			return err
		}
		return store.PutProgress(tx, &store.Progress{User: user, State: "copying", MessagesDone: 3})
	})
	h.reopen()
	h.view(func(tx store.Tx) error {
		if s, err := store.GetOverride(tx, "domain", "pec.ordine.example"); err != nil || s != "migrating" {
			t.Errorf("override after reopen = %q, %v", s, err)
		}
		if m, err := store.GetMap(tx, user, "INBOX"); err != nil || !mapEqual(m, testMap()) {
			t.Errorf("map after reopen = %+v, %v", m, err)
		}
		if fm, err := store.GetFolderMap(tx, user); err != nil || len(fm.Folders) != 1 {
			t.Errorf("folder map after reopen = %+v, %v", fm, err)
		}
		if l, err := store.ListPending(tx, user, "INBOX"); err != nil || len(l) != 1 || l[0].V != 3 {
			t.Errorf("pending after reopen = %+v, %v", l, err)
		}
		if p, err := store.GetProgress(tx, user); err != nil || p.MessagesDone != 3 {
			t.Errorf("progress after reopen = %+v, %v", p, err)
		}
		return nil
	})
}
