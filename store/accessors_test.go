package store

import (
	"errors"
	"sort"
	"strings"
	"testing"
	"time"
)

// The accessors' behaviour on a real backend is checked by store/storetest
// (run by store/bolt's tests). These tests pin what a backend stores: the
// keys and the encodings, which a running gateway's file already holds and
// which therefore must not change by accident.

// accTx is a minimal in-memory Tx: bucket + "\x00" + key -> value.
type accTx map[string][]byte

func (m accTx) Get(bucket, key string) ([]byte, error) {
	return m[bucket+"\x00"+key], nil
}

func (m accTx) Put(bucket, key string, value []byte) error {
	m[bucket+"\x00"+key] = append([]byte{}, value...)
	return nil
}

func (m accTx) Delete(bucket, key string) error {
	delete(m, bucket+"\x00"+key)
	return nil
}

func (m accTx) ForEach(bucket, prefix string, fn func(string, []byte) error) error {
	var keys []string
	for k := range m {
		if b, key, _ := strings.Cut(k, "\x00"); b == bucket && strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn(k, m[bucket+"\x00"+k]); err != nil {
			return err
		}
	}
	return nil
}

// dump returns bucket's content as key -> value strings.
func (m accTx) dump(bucket string) map[string]string {
	out := map[string]string{}
	_ = m.ForEach(bucket, "", func(k string, v []byte) error {
		out[k] = string(v)
		return nil
	})
	return out
}

func TestCanonical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"Mario.Rossi@PEC.Ordine.Example", "mario.rossi@pec.ordine.example"},
		{"already@lower", "already@lower"},
	} {
		if got := CanonicalUser(c.in); got != c.want {
			t.Errorf("CanonicalUser(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"INBOX", "INBOX"},
		{"inbox", "INBOX"},
		{"InBoX", "INBOX"},
		{"inbox.Sent", "inbox.Sent"}, // RFC 3501 5.1 folds only INBOX itself
		{"INBOX.Inviata", "INBOX.Inviata"},
		{"Sent", "Sent"},
		{"&AMk-l&AOg-ve", "&AMk-l&AOg-ve"},
	} {
		if got := CanonicalMailbox(c.in); got != c.want {
			t.Errorf("CanonicalMailbox(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func eqDump(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d keys %q, want %q", what, len(got), got, want)
		return
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s: %q = %q (present %v), want %q", what, k, g, ok, w)
		}
	}
}

func TestAccessorsStoredFormat(t *testing.T) {
	tx := accTx{}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const user = "Mario.Rossi@PEC.ordine.example"
	at := time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)

	must(SetOverride(tx, "domain", "PEC.Ordine.Example", "migrating"))
	must(SetOverride(tx, "user", user, "new"))
	eqDump(t, BucketOverrides, tx.dump(BucketOverrides), map[string]string{
		"domain:pec.ordine.example":           "migrating",
		"user:mario.rossi@pec.ordine.example": "new",
	})

	m := NewMap(7, 3)
	m.AddNew(10)
	must(PutMap(tx, user, "inbox", m))
	must(PutMap(tx, user, "Sent", NewMap(8, 1)))
	wantMap, err := m.MarshalBinary()
	must(err)
	sent, err := NewMap(8, 1).MarshalBinary()
	must(err)
	eqDump(t, BucketMaps, tx.dump(BucketMaps), map[string]string{
		"mario.rossi@pec.ordine.example\x00INBOX": string(wantMap),
		"mario.rossi@pec.ordine.example\x00Sent":  string(sent),
	})

	must(PutFolderMap(tx, user, &FolderMap{OldDelim: ".", NewDelim: "/", Folders: []Folder{
		{Old: "INBOX", New: "INBOX", Subscribed: true},
		{Old: "INBOX.Inviata", New: "Sent", SpecialUse: `\Sent`, Created: true},
		{Old: "INBOX.Nuova"},
	}}))
	eqDump(t, BucketFolders, tx.dump(BucketFolders), map[string]string{
		"mario.rossi@pec.ordine.example": `{"old_delim":".","new_delim":"/","folders":[` +
			`{"old":"INBOX","new":"INBOX","subscribed":true},` +
			`{"old":"INBOX.Inviata","new":"Sent","special_use":"\\Sent","created":true},` +
			`{"old":"INBOX.Nuova","new":""}]}`,
	})

	must(AddPending(tx, user, Pending{Mailbox: "inbox", V: 10, Op: "flags", Flags: []string{`\Seen`}}))
	must(AddPending(tx, user, Pending{Mailbox: "INBOX", V: 10, Op: "move", Dest: "inbox"}))
	must(AddPending(tx, user, Pending{Mailbox: "Sent", V: 4294967295, Op: "expunge"}))
	eqDump(t, BucketPending, tx.dump(BucketPending), map[string]string{
		"mario.rossi@pec.ordine.example\x00INBOX\x000000000010": `[{"mailbox":"INBOX","v":10,"op":"flags","flags":["\\Seen"]},` +
			`{"mailbox":"INBOX","v":10,"op":"move","dest":"INBOX"}]`,
		"mario.rossi@pec.ordine.example\x00Sent\x004294967295": `[{"mailbox":"Sent","v":4294967295,"op":"expunge"}]`,
	})

	must(PutProgress(tx, &Progress{
		User: user, State: "copying", MessagesDone: 1, MessagesTotal: 2, BytesDone: 3, BytesTotal: 4,
		Errors:  []ProgressError{{Kind: "quota", Message: "full", Mailbox: "INBOX", V: 9, At: at}, {Kind: "login", Message: "refused", At: at}},
		Updated: at,
	}))
	eqDump(t, BucketProgress, tx.dump(BucketProgress), map[string]string{
		"mario.rossi@pec.ordine.example": `{"user":"mario.rossi@pec.ordine.example","state":"copying",` +
			`"messages_done":1,"messages_total":2,"bytes_done":3,"bytes_total":4,"errors":[` +
			`{"kind":"quota","message":"full","mailbox":"INBOX","v":9,"at":"2025-03-14T09:26:53Z"},` +
			`{"kind":"login","message":"refused","at":"2025-03-14T09:26:53Z"}],` +
			`"updated":"2025-03-14T09:26:53Z"}`,
	})
}

func TestAccessorsNotFound(t *testing.T) {
	tx := accTx{}
	const u = "nobody@example.test"
	for name, err := range map[string]error{
		"GetOverride": func() error { _, err := GetOverride(tx, "user", u); return err }(),
		"GetMap":      func() error { _, err := GetMap(tx, u, "INBOX"); return err }(),
		"GetFolderMap": func() error {
			_, err := GetFolderMap(tx, u)
			return err
		}(),
		"GetProgress": func() error { _, err := GetProgress(tx, u); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s on an empty store = %v, want ErrNotFound", name, err)
		}
	}
	for name, f := range map[string]func() (int, error){
		"ListOverrides": func() (int, error) { l, err := ListOverrides(tx); return len(l), err },
		"ListMaps":      func() (int, error) { l, err := ListMaps(tx, u); return len(l), err },
		"ListPending":   func() (int, error) { l, err := ListPending(tx, u, "INBOX"); return len(l), err },
		"ListProgress":  func() (int, error) { l, err := ListProgress(tx); return len(l), err },
	} {
		if n, err := f(); n != 0 || err != nil {
			t.Errorf("%s on an empty store = %d, %v", name, n, err)
		}
	}
}

// TestAccessorsCorruptValues checks that a value that does not decode is
// reported with its key, not returned half-filled.
func TestAccessorsCorruptValues(t *testing.T) {
	tx := accTx{}
	const u = "mario@example.test"
	_ = tx.Put(BucketMaps, u+"\x00INBOX", []byte{0xff, 0xff})
	_ = tx.Put(BucketFolders, u, []byte("{"))
	_ = tx.Put(BucketPending, u+"\x00INBOX\x000000000001", []byte("{}"))
	_ = tx.Put(BucketProgress, u, []byte("[]"))
	if _, err := GetMap(tx, u, "INBOX"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("GetMap of garbage: %v", err)
	}
	if _, err := GetFolderMap(tx, u); err == nil || !strings.Contains(err.Error(), BucketFolders) {
		t.Errorf("GetFolderMap of garbage: %v", err)
	}
	if _, err := ListPending(tx, u, "INBOX"); err == nil {
		t.Error("ListPending of garbage succeeded")
	}
	if err := AddPending(tx, u, Pending{Mailbox: "INBOX", V: 1, Op: "expunge"}); err == nil {
		t.Error("AddPending onto garbage succeeded")
	}
	if _, err := ListProgress(tx); err == nil {
		t.Error("ListProgress of garbage succeeded")
	}
	_ = tx.Put(BucketOverrides, "nocolon", []byte("new"))
	if _, err := ListOverrides(tx); err == nil {
		t.Error("ListOverrides with a malformed key succeeded")
	}
}
