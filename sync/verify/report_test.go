package verify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
)

func TestPECKind(t *testing.T) {
	for _, tc := range []struct {
		name, hdr, kind, receiptType string
	}{
		{"envelope", "X-Trasporto: posta-certificata\r\nX-TipoRicevuta: completa\r\n\r\n", "busta", "completa"},
		{"anomaly", "X-Trasporto: errore\r\n\r\n", "anomalia", ""},
		{"acceptance", "X-Ricevuta: accettazione\r\n\r\n", "accettazione", ""},
		{"delivery, upper case", "X-RICEVUTA: Avvenuta-Consegna\r\n\r\n", "avvenuta-consegna", ""},
		{"aruba spelling", "X-Trasporto: posta-certificata\r\nX-Tiporicevuta: breve\r\n\r\n", "busta", "breve"},
		{"folded", "X-Ricevuta:\r\n errore-consegna\r\n\r\n", "errore-consegna", ""},
		{"first occurrence counts", "X-Ricevuta: accettazione\r\nX-Ricevuta: avvenuta-consegna\r\n\r\n", "accettazione", ""},
		{"ordinary mail", "\r\n", "", ""},
		{"unknown transport", "X-Trasporto: altro\r\n\r\n", "altro", ""},
		{"LF only", "X-Ricevuta: non-accettazione\n\n", "non-accettazione", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, rt := pecKind([]byte(tc.hdr))
			if kind != tc.kind || rt != tc.receiptType {
				t.Fatalf("pecKind(%q) = %q, %q; want %q, %q", tc.hdr, kind, rt, tc.kind, tc.receiptType)
			}
		})
	}
}

var t0 = time.Date(2025, 3, 21, 16, 2, 46, 0, time.FixedZone("CET", 3600))

// msg is a message with bytes body.
func msg(uid store.UID, body string, flags ...string) message {
	fs := make([]imap.Flag, len(flags))
	for i, f := range flags {
		fs[i] = imap.Flag(f)
	}
	return message{uid: uid, sum: sha256.Sum256([]byte(body)), size: int64(len(body)), date: t0, flags: normFlags(fs)}
}

func sideOf(uidValidity uint32, msgs ...message) *side {
	s := &side{exists: true, uidValidity: uidValidity, msgs: msgs}
	for _, m := range msgs {
		s.bytes += m.size
		s.uidNext = max(s.uidNext, m.uid+1)
	}
	return s
}

func statuses(fr *FolderReport) []string {
	var out []string
	for _, m := range fr.Messages {
		out = append(out, m.Status)
	}
	return out
}

func TestClassify(t *testing.T) {
	// Old holds a..e at UIDs 1..5, frozen at 6.
	old := sideOf(100, msg(1, "a"), msg(2, "b"), msg(3, "c"), msg(4, "d"), msg(5, "e"))
	mapped := func(t *testing.T, pairs map[store.UID]store.UID, gone ...store.UID) *store.Map {
		m := store.NewMap(100, 6)
		for _, v := range slices.Sorted(func(yield func(store.UID) bool) {
			for v := range pairs {
				if !yield(v) {
					return
				}
			}
		}) {
			if err := m.SetNew(v, pairs[v]); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range gone {
			m.Expunge(v)
		}
		return m
	}
	t.Run("all copied, one flag changed, one arrival", func(t *testing.T) {
		m := mapped(t, map[store.UID]store.UID{1: 11, 2: 12, 3: 13, 4: 14, 5: 15})
		m.AddNew(16)
		nw := sideOf(7, msg(11, "a"), msg(12, "b", `\Seen`), msg(13, "c"), msg(14, "d"), msg(15, "e"), msg(16, "f"))
		fr := &FolderReport{Folder: "INBOX", NewFolder: "INBOX"}
		classify(fr, old, nw, m, false)
		if want := []string{"ok", "ok", "ok", "ok", "ok", "new-only"}; !slices.Equal(statuses(fr), want) {
			t.Fatalf("statuses %v, want %v", statuses(fr), want)
		}
		if fr.Matching != 5 || fr.FlagDiffs != 1 || fr.NewOnly != 1 || fr.Errors != 0 || fr.Messages[5].VirtualUID != 6 {
			t.Fatalf("counts %+v, rows %+v", fr.Counts, fr.Messages)
		}
	})
	t.Run("expunged, missing, adoptable, duplicate, mismatch", func(t *testing.T) {
		// 1 copied; 2 expunged by the user (its copy 12 expunged from new
		// too); 3 expunged before its copy; 4 not mapped but new holds its
		// bytes; 5 mapped to a copy with other bytes. 17 duplicates 1.
		m := mapped(t, map[store.UID]store.UID{1: 11, 2: 12, 5: 15}, 2, 3)
		nw := sideOf(7, msg(11, "a"), msg(14, "d"), msg(15, "E"), msg(17, "a"))
		fr := &FolderReport{Folder: "INBOX", NewFolder: "INBOX"}
		classify(fr, old, nw, m, false)
		if want := []string{"ok", "expunged", "expunged", "missing", "mismatch", "duplicate"}; !slices.Equal(statuses(fr), want) {
			t.Fatalf("statuses %v, want %v (%+v)", statuses(fr), want, fr.Messages)
		}
		if r := fr.Messages[3]; r.NewUID != 14 || !strings.Contains(r.Note, "adopts") {
			t.Errorf("unmapped copy: %+v", r)
		}
		if r := fr.Messages[5]; r.NewUID != 17 || r.OldUID != 0 || !strings.Contains(r.Note, "old UID 1") {
			t.Errorf("duplicate: %+v", r)
		}
		if fr.Missing != 1 || fr.Duplicates != 1 || fr.Mismatches != 1 || fr.Expunged != 2 || fr.Map.Gone != 2 {
			t.Fatalf("counts %+v map %+v", fr.Counts, fr.Map)
		}
	})
	t.Run("expunged but still in new", func(t *testing.T) {
		m := mapped(t, map[store.UID]store.UID{1: 11}, 1)
		nw := sideOf(7, msg(11, "a"))
		fr := &FolderReport{Folder: "INBOX", NewFolder: "INBOX"}
		classify(fr, sideOf(100, msg(1, "a")), nw, m, false)
		if len(fr.Messages) != 1 || fr.Messages[0].Status != StatusExpunged || fr.Messages[0].NewUID != 11 || fr.Errors != 0 {
			t.Fatalf("rows %+v", fr.Messages)
		}
	})
	t.Run("no map", func(t *testing.T) {
		fr := &FolderReport{Folder: "Archivio", NewFolder: "Archivio"}
		classify(fr, sideOf(100, msg(1, "a")), &side{}, nil, false)
		if fr.Missing != 1 || fr.Map != nil || !strings.Contains(fr.Messages[0].Note, "no UID map") {
			t.Fatalf("%+v", fr)
		}
	})
	t.Run("UIDVALIDITY changed on old", func(t *testing.T) {
		m := mapped(t, map[store.UID]store.UID{1: 11})
		fr := &FolderReport{Folder: "INBOX", NewFolder: "INBOX"}
		classify(fr, sideOf(101, msg(1, "a")), sideOf(7, msg(11, "a")), m, false)
		if fr.Errors != 1 || len(fr.Problems) != 1 || fr.Missing != 1 {
			t.Fatalf("%+v", fr)
		}
	})
	t.Run("folder deleted by the user", func(t *testing.T) {
		fr := &FolderReport{Folder: "Vecchia"}
		classify(fr, sideOf(100, msg(1, "a"), msg(2, "b")), &side{}, nil, true)
		if fr.Expunged != 2 || fr.Missing != 0 || !fr.Deleted {
			t.Fatalf("%+v", fr)
		}
	})
	t.Run("target of a rename", func(t *testing.T) {
		m := mapped(t, map[store.UID]store.UID{1: 21})
		fr := &FolderReport{Folder: "Nuova", NewFolder: "Nuova", NewOnlyFolder: true}
		classify(fr, &side{}, sideOf(9, msg(21, "a")), m, false)
		if fr.NewOnly != 1 || fr.Errors != 0 || !strings.Contains(fr.Messages[0].Note, "renamed") {
			t.Fatalf("%+v", fr)
		}
	})
}

func TestReportWriters(t *testing.T) {
	m := store.NewMap(100, 3)
	m.SetNew(1, 11)
	m.SetNew(2, 12)
	fr := FolderReport{Folder: "=SUM(A1)", NewFolder: "=SUM(A1)"}
	classify(&fr, sideOf(100, msg(1, "a", "$label1", `\Seen`), msg(2, "b")), sideOf(7, msg(11, "a", `\seen`, "$Label1"), msg(12, "b"), msg(13, "z")), m, false)
	r := &Report{}
	r.add(UserReport{User: "u@d", Folders: []FolderReport{fr}})
	if !r.OK() || r.Matching != 2 || r.NewOnly != 1 || r.FlagDiffs != 0 || r.FolderCount != 1 {
		t.Fatalf("counts %+v (flags differing only in case are the same flags)", r.Counts)
	}
	var b bytes.Buffer
	if err := r.WriteCSV(&b); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil || len(rows) != 4 || len(rows[0]) != len(csvHeader) {
		t.Fatalf("CSV: %v %q", err, rows)
	}
	if rows[1][1] != "'=SUM(A1)" || rows[1][8] != `$label1 \Seen` || rows[1][6] != "2025-03-21T16:02:46+01:00" || rows[3][3] != "" || rows[3][10] != "" {
		t.Fatalf("CSV rows %q", rows[1:])
	}
	b.Reset()
	if err := r.WriteHashList(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(b.String())
	if len(lines) != 3 || !slices.IsSorted(lines) {
		t.Fatalf("hash list %q", lines)
	}
	if (&Report{}).OK() {
		t.Fatal("an empty report is OK")
	}
}

func TestKnownUsers(t *testing.T) {
	st, err := bolt.Open(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	err = st.Update(ctx, func(tx store.Tx) error {
		for _, kv := range [][2]string{
			{store.BucketVault, "infocert\x00a@pec.example"},
			{store.BucketVerifiers, "B@PEC.example"},
			{store.BucketMaps, "c@pec.example\x00INBOX"},
			{store.BucketMaps, "c@pec.example\x00Sent"},
			{store.BucketProgress, "d@pec.example"},
			{store.BucketOverrides, "user:e@pec.example"},
			{store.BucketOverrides, "domain:pec.example"},
			{store.BucketVerifiers, "x@other.example"},
			{store.BucketVerifiers, "y@sub.pec.example"},
		} {
			if err := tx.Put(kv[0], kv[1], []byte("x")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := KnownUsers(ctx, st, "PEC.example")
	want := []string{"a@pec.example", "b@pec.example", "c@pec.example", "d@pec.example", "e@pec.example"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("KnownUsers = %v, %v; want %v", got, err, want)
	}
}
