package verify

import (
	"bufio"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pecgate/pecgate/store"
)

// Message statuses (see the package doc).
const (
	StatusOK        = "ok"
	StatusMissing   = "missing"
	StatusDuplicate = "duplicate"
	StatusMismatch  = "mismatch"
	StatusNewOnly   = "new-only"
	StatusExpunged  = "expunged"
)

// Reasons a user could not be verified (UserReport.Reason).
const (
	ReasonNoPassword   = "no-password"   // a passthrough provider, and no password given
	ReasonNoCredential = "no-credential" // a vault provider without the member's credentials
	ReasonAuthRefused  = "auth-refused"  // a provider refused the credentials
	ReasonUnavailable  = "unavailable"   // a provider could not be reached, or is at its connection limit
	ReasonError        = "error"         // anything else
)

// Counts are the totals of a folder, a user or a whole report.
type Counts struct {
	FolderCount int   `json:"folder_count,omitempty"` // folders verified (users and reports)
	MessagesOld int   `json:"messages_old"`
	MessagesNew int   `json:"messages_new"`
	BytesOld    int64 `json:"bytes_old"`
	BytesNew    int64 `json:"bytes_new"`
	Matching    int   `json:"ok"` // status ok: the copy matches
	Missing     int   `json:"missing"`
	Duplicates  int   `json:"duplicates"`
	Mismatches  int   `json:"mismatches"`
	NewOnly     int   `json:"new_only"`
	Expunged    int   `json:"expunged"`
	// FlagDiffs counts copies whose flags differ from the old message's:
	// information, not an error (the user may have changed them).
	FlagDiffs int `json:"flag_diffs"`
	// Errors counts users and folders that could not be read.
	Errors int `json:"errors"`
}

func (c *Counts) addCounts(o Counts) {
	c.FolderCount += o.FolderCount
	c.MessagesOld += o.MessagesOld
	c.MessagesNew += o.MessagesNew
	c.BytesOld += o.BytesOld
	c.BytesNew += o.BytesNew
	c.Matching += o.Matching
	c.Missing += o.Missing
	c.Duplicates += o.Duplicates
	c.Mismatches += o.Mismatches
	c.NewOnly += o.NewOnly
	c.Expunged += o.Expunged
	c.FlagDiffs += o.FlagDiffs
	c.Errors += o.Errors
}

// Report is the result of a verification. Its Counts (Missing, Duplicates,
// Mismatches, ...) are the sums over Users.
type Report struct {
	Counts
	Users    []UserReport `json:"users"`
	Started  time.Time    `json:"started"`
	Finished time.Time    `json:"finished"`
}

// OK reports whether the migration of every user in the report is proven
// complete: at least one user verified, no message missing, duplicated or
// mismatched, and every user and folder read. Flag differences and
// new-only messages do not count against it.
func (r *Report) OK() bool {
	return len(r.Users) > 0 && r.Missing == 0 && r.Duplicates == 0 && r.Mismatches == 0 && r.Errors == 0
}

// add appends ur, computing its totals from its folders.
func (r *Report) add(ur UserReport) {
	ur.Counts = Counts{}
	if ur.Error != "" {
		ur.Errors++
	}
	for _, f := range ur.Folders {
		ur.addCounts(f.Counts)
		ur.FolderCount++
	}
	r.Users = append(r.Users, ur)
	r.addCounts(ur.Counts)
}

// UserReport is one member's verification.
type UserReport struct {
	Counts
	User        string `json:"user"`
	Domain      string `json:"domain"`
	State       string `json:"state"` // the routing state when verified
	OldProvider string `json:"old_provider"`
	NewProvider string `json:"new_provider"`
	// Error says why the user could not be verified (a refused login, an
	// unreachable provider); "" when it was.
	Error string `json:"error,omitempty"`
	// Reason classifies Error: one of the Reason constants; "" when the
	// user was verified.
	Reason  string         `json:"reason,omitempty"`
	Folders []FolderReport `json:"folders"`
}

// FolderReport is one folder on both sides.
type FolderReport struct {
	Counts
	// Folder is the old provider's name, the one the client sees and the
	// UID map is kept under; NewFolder the new provider's, "" when the user
	// deleted or renamed the folder during the migration.
	Folder    string `json:"folder"`
	NewFolder string `json:"new_folder"`
	// Deleted is true when the user deleted or renamed the folder during
	// the migration: its old messages are not expected in new.
	Deleted bool `json:"deleted,omitempty"`
	// NewOnlyFolder is true for a folder that exists only in new (made by
	// the user during the migration, or the target of a rename).
	NewOnlyFolder bool      `json:"new_only_folder,omitempty"`
	Old           SideStats `json:"old"`
	New           SideStats `json:"new"`
	// Map is the folder's UID map; nil when it has none (the folder never
	// left state old, so nothing was copied).
	Map *MapStats `json:"map,omitempty"`
	// Problems are what kept the folder from being verified, or made the
	// map unusable for it; each counts as an error.
	Problems []string        `json:"problems,omitempty"`
	Messages []MessageReport `json:"messages"`
}

// SideStats describe a folder on one provider.
type SideStats struct {
	Exists      bool   `json:"exists"`
	UIDValidity uint32 `json:"uidvalidity,omitempty"`
	UIDNext     uint32 `json:"uidnext,omitempty"`
	Messages    int    `json:"messages"`
	Bytes       int64  `json:"bytes"`
}

// MapStats describe a folder's UID map.
type MapStats struct {
	UIDValidity    uint32 `json:"uidvalidity"`     // virtual = old's when the folder left state old
	NewUIDValidity uint32 `json:"new_uidvalidity"` // 0: not recorded
	Frozen         uint32 `json:"frozen"`
	Next           uint32 `json:"next"`
	Runs           int    `json:"runs"`
	Gone           int    `json:"gone"` // virtual UIDs expunged by the user
}

// MessageReport is one message: an old message and its copy, an old
// message alone, or a message of new alone. A zero UID, size or time and
// an empty hash mean that side has no message.
type MessageReport struct {
	OldUID          uint32    `json:"old_uid,omitempty"`
	NewUID          uint32    `json:"new_uid,omitempty"`
	VirtualUID      uint32    `json:"virtual_uid,omitempty"`
	InternalDateOld time.Time `json:"internaldate_old,omitzero"`
	InternalDateNew time.Time `json:"internaldate_new,omitzero"`
	FlagsOld        []string  `json:"flags_old,omitempty"`
	FlagsNew        []string  `json:"flags_new,omitempty"`
	SizeOld         int64     `json:"size_old,omitempty"`
	SizeNew         int64     `json:"size_new,omitempty"`
	SHA256Old       string    `json:"sha256_old,omitempty"`
	SHA256New       string    `json:"sha256_new,omitempty"`
	// PECKind is "busta" (X-Trasporto: posta-certificata), "anomalia"
	// (X-Trasporto: errore), a receipt's X-Ricevuta (accettazione,
	// avvenuta-consegna, ...), or "" for ordinary mail.
	PECKind string `json:"pec_kind,omitempty"`
	// PECReceiptType is X-TipoRicevuta (completa, breve, sintetica).
	PECReceiptType string `json:"pec_receipt_type,omitempty"`
	Status         string `json:"status"`
	// Note explains a status, or gives information (flags that differ).
	Note string `json:"note,omitempty"`
}

func (mr *MessageReport) setOld(m message) {
	mr.OldUID, mr.InternalDateOld, mr.FlagsOld, mr.SizeOld = m.uid, m.date, m.flags, m.size
	mr.SHA256Old = hex.EncodeToString(m.sum[:])
	mr.PECKind, mr.PECReceiptType = m.kind, m.receiptType
}

func (mr *MessageReport) setNew(m message) {
	mr.NewUID, mr.InternalDateNew, mr.FlagsNew, mr.SizeNew = m.uid, m.date, m.flags, m.size
	mr.SHA256New = hex.EncodeToString(m.sum[:])
	if mr.OldUID == 0 {
		mr.PECKind, mr.PECReceiptType = m.kind, m.receiptType
	}
}

func (mr *MessageReport) addNote(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if mr.Note != "" {
		mr.Note += "; " + s
	} else {
		mr.Note = s
	}
}

// classify fills fr from what old (o) and new (n) hold and the folder's
// UID map m (nil: none). deleted says the user deleted or renamed the
// folder during the migration.
func classify(fr *FolderReport, o, n *side, m *store.Map, deleted bool) {
	fr.Deleted = deleted
	fr.Old = SideStats{Exists: o.exists, UIDValidity: o.uidValidity, UIDNext: o.uidNext, Messages: len(o.msgs), Bytes: o.bytes}
	fr.New = SideStats{Exists: n.exists, UIDValidity: n.uidValidity, UIDNext: n.uidNext, Messages: len(n.msgs), Bytes: n.bytes}
	if m != nil {
		ms := &MapStats{UIDValidity: m.UIDValidity, NewUIDValidity: m.NewUIDValidity, Frozen: m.Frozen, Next: m.Next, Runs: len(m.Runs)}
		for _, g := range m.Gone {
			ms.Gone += int(g.Hi-g.Lo) + 1
		}
		fr.Map = ms
		// A changed UIDVALIDITY makes the map's UIDs name other messages
		// (RFC 3501 section 2.3.1.1): pair nothing through it.
		switch {
		case o.exists && !fr.NewOnlyFolder && m.UIDValidity != o.uidValidity:
			fr.Problems = append(fr.Problems, fmt.Sprintf("the old folder's UIDVALIDITY is %d, the UID map's %d: the map's old UIDs name other messages, so nothing is paired through it", o.uidValidity, m.UIDValidity))
			m = nil
		case n.exists && m.NewUIDValidity != 0 && m.NewUIDValidity != n.uidValidity:
			fr.Problems = append(fr.Problems, fmt.Sprintf("the new folder's UIDVALIDITY is %d, the UID map's %d: the map's new UIDs name other messages, so nothing is paired through it", n.uidValidity, m.NewUIDValidity))
			m = nil
		}
	}
	rx := newRawIndex(m)
	newAt := make(map[store.UID]int, len(n.msgs))
	for i, nm := range n.msgs {
		newAt[nm.uid] = i
	}
	claimed := make([]bool, len(n.msgs))
	oldBySum := map[[32]byte]store.UID{} // first old UID with these bytes
	unpaired := map[[32]byte][]int{}     // missing rows with no copy, by bytes
	rows := make([]MessageReport, 0, max(len(o.msgs), len(n.msgs)))

	for _, om := range o.msgs {
		var row MessageReport
		row.setOld(om)
		if deleted {
			row.Status = StatusExpunged
			row.Note = "folder deleted or renamed by the user during the migration"
			rows = append(rows, row)
			continue
		}
		var (
			v  store.UID
			ok bool
		)
		if m != nil {
			v, ok = m.ByOld(om.uid)
		}
		if !ok {
			if gv, gone := rx.goneOld(om.uid); gone {
				row.VirtualUID = gv
				row.Status = StatusExpunged
				row.Note = "expunged by the user during the migration"
				if nu := rx.newOf(gv); nu != 0 {
					if i, ok := newAt[nu]; ok && !claimed[i] {
						claimed[i] = true
						row.setNew(n.msgs[i])
						row.addNote("its copy is still in new, hidden by the UID map")
					}
				}
				rows = append(rows, row)
				continue
			}
			row.Status = StatusMissing
			if m == nil {
				row.Note = "not copied: the folder has no UID map (it never left state old)"
			} else {
				row.Note = "not copied yet"
			}
		} else {
			row.VirtualUID = v
			_, nu, _ := m.Lookup(v)
			i, inNew := newAt[nu]
			switch {
			case nu == 0:
				row.Status, row.Note = StatusMissing, "not copied yet"
			case !inNew:
				row.Status = StatusMissing
				row.Note = fmt.Sprintf("the UID map names new UID %d, which new does not hold", nu)
			case claimed[i]:
				row.Status, row.NewUID = StatusDuplicate, nu
				row.Note = fmt.Sprintf("new UID %d is also the copy of another old message", nu)
			default:
				claimed[i] = true
				nm := n.msgs[i]
				row.setNew(nm)
				compare(&row, om, nm)
			}
		}
		if _, dup := oldBySum[om.sum]; !dup {
			oldBySum[om.sum] = om.uid
		}
		if row.Status == StatusMissing {
			unpaired[om.sum] = append(unpaired[om.sum], len(rows))
		}
		rows = append(rows, row)
	}

	for i, nm := range n.msgs {
		if claimed[i] {
			continue
		}
		var (
			row    MessageReport
			mapped bool
			from   store.UID // the old UID the map says this is the copy of
		)
		row.setNew(nm)
		if m != nil {
			if v, ok := m.ByNew(nm.uid); ok {
				row.VirtualUID, mapped = v, true
				from, _, _ = m.Lookup(v)
			} else if gv, gone := rx.goneNew(nm.uid); gone {
				row.VirtualUID = gv
				row.Status = StatusExpunged
				row.Note = "expunged by the user during the migration; still in new, hidden by the UID map"
				rows = append(rows, row)
				continue
			}
		}
		if list := unpaired[nm.sum]; !mapped && len(list) > 0 {
			// The copy of a missing message, which the map does not know.
			unpaired[nm.sum] = list[1:]
			r := &rows[list[0]]
			r.setNew(nm)
			r.Note = fmt.Sprintf("new holds a copy with the same bytes at UID %d that the UID map does not know: the back-fill adopts it", nm.uid)
			continue
		}
		switch ou, inOld := oldBySum[nm.sum]; {
		case from != 0 && fr.NewOnlyFolder:
			row.Status = StatusNewOnly
			row.Note = fmt.Sprintf("copied from old UID %d of a folder renamed during the migration; not compared again", from)
		case inOld:
			row.Status = StatusDuplicate
			row.Note = fmt.Sprintf("same bytes as old UID %d, whose copy is already in new", ou)
			if mapped {
				row.addNote("the client sees it as virtual UID %d: if the user copied it on purpose, this is not an error", row.VirtualUID)
			}
		case from != 0:
			row.Status = StatusNewOnly
			row.Note = fmt.Sprintf("the UID map says it is the copy of old UID %d, which old no longer holds", from)
		default:
			row.Status = StatusNewOnly
			if m != nil && !mapped {
				row.Note = "not in the UID map yet (arrived after the gateway last looked)"
			}
		}
		rows = append(rows, row)
	}

	fr.Messages = rows
	fr.Counts = Counts{MessagesOld: len(o.msgs), MessagesNew: len(n.msgs), BytesOld: o.bytes, BytesNew: n.bytes, Errors: len(fr.Problems)}
	for _, r := range rows {
		switch r.Status {
		case StatusOK:
			fr.Matching++
		case StatusMissing:
			fr.Missing++
		case StatusDuplicate:
			fr.Duplicates++
		case StatusMismatch:
			fr.Mismatches++
		case StatusNewOnly:
			fr.NewOnly++
		case StatusExpunged:
			fr.Expunged++
		}
		if r.OldUID != 0 && r.SHA256New != "" && r.Status != StatusExpunged && !sameFlags(r.FlagsOld, r.FlagsNew) {
			fr.FlagDiffs++
		}
	}
}

// compare sets the status of an old message and its mapped copy.
func compare(row *MessageReport, om, nm message) {
	var diffs []string
	if om.sum != nm.sum {
		diffs = append(diffs, fmt.Sprintf("bytes differ (%d bytes in old, %d in new)", om.size, nm.size))
	}
	if !om.date.Equal(nm.date) {
		diffs = append(diffs, fmt.Sprintf("INTERNALDATE differs (%s in old, %s in new)", om.date.UTC().Format(time.RFC3339), nm.date.UTC().Format(time.RFC3339)))
	}
	if len(diffs) > 0 {
		row.Status, row.Note = StatusMismatch, strings.Join(diffs, "; ")
	} else {
		row.Status = StatusOK
	}
	if !sameFlags(om.flags, nm.flags) {
		row.addNote("flags differ (information: the user may have changed them during the migration)")
	}
}

// rawIndex finds a UID map's sides for expunged virtual UIDs, which the
// map's lookups do not report.
type rawIndex struct {
	m             *store.Map
	byOld, byNew  []store.Run // runs with that side, sorted by it
	hasGone, none bool
}

func newRawIndex(m *store.Map) *rawIndex {
	x := &rawIndex{m: m, none: m == nil}
	if m == nil || len(m.Gone) == 0 {
		return x
	}
	x.hasGone = true
	for _, r := range m.Runs {
		if r.Old != 0 {
			x.byOld = append(x.byOld, r)
		}
		if r.New != 0 {
			x.byNew = append(x.byNew, r)
		}
	}
	slices.SortFunc(x.byOld, func(a, b store.Run) int { return cmpUID(a.Old, b.Old) })
	slices.SortFunc(x.byNew, func(a, b store.Run) int { return cmpUID(a.New, b.New) })
	return x
}

// findRun returns the run of rs (sorted by key) whose key range holds u.
func findRun(rs []store.Run, key func(store.Run) store.UID, u store.UID) (store.Run, bool) {
	i, _ := slices.BinarySearchFunc(rs, u, func(r store.Run, u store.UID) int {
		if key(r) <= u {
			return -1
		}
		return 1
	})
	if i == 0 {
		return store.Run{}, false
	}
	r := rs[i-1]
	if uint64(u) >= uint64(key(r))+uint64(r.N) {
		return store.Run{}, false
	}
	return r, true
}

// goneOld returns the virtual UID of old UID o when the user expunged it.
func (x *rawIndex) goneOld(o store.UID) (store.UID, bool) {
	if x.none || !x.hasGone {
		return 0, false
	}
	var v store.UID
	if r, ok := findRun(x.byOld, func(r store.Run) store.UID { return r.Old }, o); ok {
		v = r.V + (o - r.Old)
	} else if o < x.m.Frozen {
		v = o // below Frozen, never copied: the identity
	} else {
		return 0, false
	}
	return v, x.m.IsGone(v)
}

// goneNew returns the virtual UID of new UID n when the user expunged it.
func (x *rawIndex) goneNew(n store.UID) (store.UID, bool) {
	if x.none || !x.hasGone {
		return 0, false
	}
	r, ok := findRun(x.byNew, func(r store.Run) store.UID { return r.New }, n)
	if !ok {
		return 0, false
	}
	v := r.V + (n - r.New)
	return v, x.m.IsGone(v)
}

// newOf returns the new UID the run of virtual UID v names, expunged or
// not; 0 when none.
func (x *rawIndex) newOf(v store.UID) store.UID {
	if x.none {
		return 0
	}
	r, ok := findRun(x.m.Runs, func(r store.Run) store.UID { return r.V }, v)
	if !ok || r.New == 0 {
		return 0
	}
	return r.New + (v - r.V)
}

// csvHeader are the columns of WriteCSV.
var csvHeader = []string{
	"user", "folder", "new_folder", "old_uid", "new_uid", "virtual_uid",
	"internaldate_old", "internaldate_new", "flags_old", "flags_new",
	"size_old", "size_new", "sha256_old", "sha256_new", "pec_kind", "status",
	"pec_receipt_type", "note",
}

// WriteJSON writes the whole report, indented.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteCSV writes one row per message (csvHeader's columns, with a header
// line): dates in RFC 3339, flags space-separated, an empty cell for a side
// without the message. A folder name that a spreadsheet would take for a
// formula (starting with =, +, -, @) is written with a leading '.
func (r *Report) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	uid := func(u uint32) string {
		if u == 0 {
			return ""
		}
		return strconv.FormatUint(uint64(u), 10)
	}
	date := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format(time.RFC3339)
	}
	size := func(n int64, hash string) string {
		if hash == "" {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	for _, u := range r.Users {
		for _, f := range u.Folders {
			for _, m := range f.Messages {
				rec := []string{
					u.User, cell(f.Folder), cell(f.NewFolder), uid(m.OldUID), uid(m.NewUID), uid(m.VirtualUID),
					date(m.InternalDateOld), date(m.InternalDateNew), strings.Join(m.FlagsOld, " "), strings.Join(m.FlagsNew, " "),
					size(m.SizeOld, m.SHA256Old), size(m.SizeNew, m.SHA256New), m.SHA256Old, m.SHA256New, m.PECKind, m.Status,
					m.PECReceiptType, m.Note,
				}
				if err := cw.Write(rec); err != nil {
					return err
				}
			}
		}
	}
	cw.Flush()
	return cw.Error()
}

// cell defuses a value a spreadsheet would run as a formula.
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@", rune(s[0])) {
		return "'" + s
	}
	return s
}

// WriteHashList writes the SHA-256 of every message found in new, one
// lower-case hex digest per line, sorted, with no names: a list that can
// be handed over or compared without disclosing anything but the digests.
// A message held twice in new is listed twice.
func (r *Report) WriteHashList(w io.Writer) error {
	var sums []string
	for _, u := range r.Users {
		for _, f := range u.Folders {
			for _, m := range f.Messages {
				if m.SHA256New != "" {
					sums = append(sums, m.SHA256New)
				}
			}
		}
	}
	slices.Sort(sums)
	bw := bufio.NewWriter(w)
	for _, s := range sums {
		bw.WriteString(s)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}
