package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/pecgate/pecgate/backend"
	"github.com/pecgate/pecgate/config"
	"github.com/pecgate/pecgate/internal/dovetest"
	"github.com/pecgate/pecgate/store"
	"github.com/pecgate/pecgate/store/bolt"
	"github.com/pecgate/pecgate/sync"
	"github.com/pecgate/pecgate/sync/verify"
)

const testUser = "giulia.verdi@pec.ordine.example"

// migration is an old and a new Dovecot, the new side logged into with
// its master user, and a bbolt store: the setup of the proxy's migration
// tests (proxy/migrate_dovecot_test.go startMigration), without a gateway.
type migration struct {
	old, new *dovetest.Server
	cfg      *config.Config
	st       store.Store
	bs       *backend.Set
	maps     *store.MapCache
	fixtures []dovetest.Fixture
}

func startMigration(t *testing.T, users ...string) *migration {
	t.Helper()
	dovetest.Require(t)
	old, nw := dovetest.StartPair(t, users...)
	return migrationOn(t, old, nw, users[0])
}

// migrationOn is startMigration on given old and new servers.
func migrationOn(t *testing.T, old, nw *dovetest.Server, firstUser string) *migration {
	t.Helper()
	fixtures := dovetest.LoadFixtures(t)
	users := []string{firstUser}
	dir := t.TempDir()
	masterFile := filepath.Join(dir, "new.master")
	if err := os.WriteFile(masterFile, []byte(nw.MasterPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	domain := users[0][strings.IndexByte(users[0], '@')+1:]
	cfg := &config.Config{
		Server: config.Server{Hostname: "localhost"},
		Providers: map[string]*config.Provider{
			"old": {IMAP: "imaps://" + old.IMAPSAddr, Auth: config.AuthPassthrough, CA: old.CAFile},
			"new": {IMAP: "imaps://" + nw.IMAPSAddr, Auth: config.AuthMaster, CA: nw.CAFile,
				MasterUser: nw.MasterUser, MasterPasswordFile: masterFile, MasterStyle: config.MasterStyleSASL},
		},
		Domains: map[string]*config.Domain{domain: {Old: "old", New: "new", State: config.StateMigrating}},
	}
	for name, p := range cfg.Providers {
		p.Name = name
	}
	for name, d := range cfg.Domains {
		d.Name = name
	}
	st, err := bolt.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	bs, err := backend.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &migration{old: old, new: nw, cfg: cfg, st: st, bs: bs, maps: store.NewMapCache(st, 100), fixtures: fixtures}
}

// seedFixtures puts every PEC fixture in user's old mailbox, in the
// manifest's folders (INBOX, "Posta inviata", "Pratiche.Città"), with its
// flags and INTERNALDATE.
func (m *migration) seedFixtures(t *testing.T, user string) {
	t.Helper()
	var seeds []dovetest.SeedMessage
	for _, f := range m.fixtures {
		seeds = append(seeds, f.SeedMessage(m.old, f.Body))
	}
	m.old.SeedMaildir(t, user, seeds)
}

func (m *migration) options(users ...string) verify.Options {
	return verify.Options{
		Config: m.cfg, Store: m.st, Backends: m.bs,
		Password: func(user string) (string, bool) {
			pw := m.old.Password(user)
			return pw, pw != ""
		},
	}
}

// copyAll freezes every folder of user's old mailbox (a UID map at old's
// UIDNEXT, as the gateway does when the domain leaves state old) and
// copies every message to new with the synchronous copier, as the
// back-fill will. newName maps a folder name to new's; nil means the same.
func (m *migration) copyAll(t *testing.T, user string, newName func(string) string) {
	t.Helper()
	ctx := context.Background()
	oldC, err := m.bs.Provider("old").LoginUser(ctx, user, m.old.Password(user), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer oldC.Close()
	newC, err := m.bs.Provider("new").LoginUser(ctx, user, "", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer newC.Close()
	list, err := oldC.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list {
		if slices.Contains(l.Attrs, imap.MailboxAttrNoSelect) || slices.Contains(l.Attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		mailbox, inNew := l.Mailbox, l.Mailbox
		if newName != nil {
			inNew = newName(mailbox)
		}
		sd, err := oldC.Status(mailbox, &imap.StatusOptions{UIDNext: true, UIDValidity: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		entry, err := m.maps.Get(ctx, user, mailbox)
		if err != nil {
			t.Fatal(err)
		}
		entry.Lock()
		if entry.M == nil {
			entry.M = store.NewMap(sd.UIDValidity, store.UID(sd.UIDNext))
			if err := m.maps.Save(ctx, entry, nil); err != nil {
				t.Fatal(err)
			}
		}
		entry.Unlock()
		if _, err := newC.Status(inNew, &imap.StatusOptions{NumMessages: true}).Wait(); err != nil {
			if err := newC.Create(inNew, nil).Wait(); err != nil {
				t.Fatalf("create %q in new: %v", inNew, err)
			}
		}
		if _, err := oldC.Select(mailbox, &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
			t.Fatal(err)
		}
		res, err := oldC.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range res.AllUIDs() {
			entry.Lock()
			v, ok := entry.M.ByOld(store.UID(o))
			if !ok && store.UID(o) >= entry.M.Frozen {
				v, ok = entry.M.AddOld(store.UID(o)), true
			}
			_, n, _ := entry.M.Lookup(v)
			gone := entry.M.IsGone(v)
			entry.Unlock()
			if !ok || gone || n != 0 {
				continue
			}
			if _, err := (sync.Copier{}).CopyToNew(ctx, oldC, newC, entry, m.maps, inNew, v, store.UID(o)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// verifyUser runs verify.User and checks that its three outputs agree with
// it: the JSON decodes to the same counts, the CSV has one row per message.
func (m *migration) verifyUser(t *testing.T, user string) (*verify.Report, [][]string) {
	t.Helper()
	r, err := verify.User(context.Background(), m.options(), user)
	if err != nil {
		t.Fatal(err)
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back verify.Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON report does not decode: %v", err)
	}
	if back.Counts != r.Counts || back.OK() != r.OK() {
		t.Fatalf("JSON report says %+v, the report %+v", back.Counts, r.Counts)
	}
	var cb bytes.Buffer
	if err := r.WriteCSV(&cb); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&cb).ReadAll()
	if err != nil {
		t.Fatalf("CSV report: %v", err)
	}
	want := []string{"user", "folder", "new_folder", "old_uid", "new_uid", "virtual_uid", "internaldate_old", "internaldate_new",
		"flags_old", "flags_new", "size_old", "size_new", "sha256_old", "sha256_new", "pec_kind", "status"}
	if len(rows) == 0 || !slices.Equal(rows[0][:len(want)], want) {
		t.Fatalf("CSV header %v, want it to start with %v", rows[0], want)
	}
	var n int
	for _, u := range r.Users {
		for _, f := range u.Folders {
			n += len(f.Messages)
		}
	}
	if len(rows)-1 != n {
		t.Fatalf("CSV has %d rows, the report %d messages", len(rows)-1, n)
	}
	return r, rows[1:]
}

// col returns the named column of a CSV row.
func col(row []string, name string) string {
	i := slices.Index([]string{"user", "folder", "new_folder", "old_uid", "new_uid", "virtual_uid", "internaldate_old", "internaldate_new",
		"flags_old", "flags_new", "size_old", "size_new", "sha256_old", "sha256_new", "pec_kind", "status", "pec_receipt_type", "note"}, name)
	return row[i]
}

// findMessage returns the report's row of the old message with hash sum.
func findMessage(t *testing.T, r *verify.Report, sum string) (verify.FolderReport, verify.MessageReport) {
	t.Helper()
	for _, u := range r.Users {
		for _, f := range u.Folders {
			for _, m := range f.Messages {
				if m.SHA256Old == sum {
					return f, m
				}
			}
		}
	}
	t.Fatalf("no message with SHA-256 %s in the report", sum)
	return verify.FolderReport{}, verify.MessageReport{}
}

func (m *migration) fixture(t *testing.T, prefix string) dovetest.Fixture {
	t.Helper()
	for _, f := range m.fixtures {
		if strings.HasPrefix(f.File, prefix) {
			return f
		}
	}
	t.Fatalf("no fixture %s", prefix)
	return dovetest.Fixture{}
}

// expungeInNew deletes new UID uid of mailbox directly on the new provider.
func (m *migration) expungeInNew(t *testing.T, user, mailbox string, uid uint32) {
	t.Helper()
	c := m.new.Dial(t, user)
	if _, err := c.Select(mailbox, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	set := imap.UIDSetNum(imap.UID(uid))
	if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(set).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

// appendToNew appends body to mailbox directly on the new provider.
func (m *migration) appendToNew(t *testing.T, user, mailbox string, body []byte, opts *imap.AppendOptions) uint32 {
	t.Helper()
	c := m.new.Dial(t, user)
	ap := c.Append(mailbox, int64(len(body)), opts)
	ap.Write(body)
	ap.Close()
	data, err := ap.Wait()
	if err != nil || data.UID == 0 {
		t.Fatalf("APPEND to new: %v %+v", err, data)
	}
	c.Logout().Wait()
	return uint32(data.UID)
}

func copiedMigration(t *testing.T) *migration {
	t.Helper()
	m := startMigration(t, testUser)
	m.seedFixtures(t, testUser)
	m.copyAll(t, testUser, nil)
	return m
}

// TestVerifyComplete: a mailbox copied whole (3 folders with PEC
// envelopes, receipts sharing X-Riferimento-Message-ID, a 3 MB message,
// keywords) verifies: every message ok, PEC kinds read from the headers,
// and a name-free, sorted hash list of exactly new's messages.
func TestVerifyComplete(t *testing.T) {
	t.Parallel()
	m := copiedMigration(t)
	oldFiles, newFiles := maildirFiles(t, m.old.MaildirPath(testUser)), maildirFiles(t, m.new.MaildirPath(testUser))
	r, rows := m.verifyUser(t, testUser)
	// Verifying changed nothing on either side: same files (names carry
	// the flags), same bytes.
	if !maps.Equal(maildirFiles(t, m.old.MaildirPath(testUser)), oldFiles) || !maps.Equal(maildirFiles(t, m.new.MaildirPath(testUser)), newFiles) {
		t.Error("verify changed a Maildir")
	}
	if !r.OK() || r.Missing != 0 || r.Duplicates != 0 || r.Mismatches != 0 || r.Errors != 0 {
		for _, u := range r.Users {
			t.Logf("user %s: %s", u.User, u.Error)
			for _, f := range u.Folders {
				t.Logf("folder %q -> %q: %+v %v", f.Folder, f.NewFolder, f.Counts, f.Problems)
			}
		}
		t.Fatalf("complete copy: OK %v, counts %+v", r.OK(), r.Counts)
	}
	n := len(m.fixtures)
	if r.MessagesOld != n || r.MessagesNew != n || r.Matching != n || r.FlagDiffs != 0 || r.NewOnly != 0 {
		t.Fatalf("counts %+v, want %d messages ok on both sides, no flag differences", r.Counts, n)
	}
	var folders []string
	for _, f := range r.Users[0].Folders {
		if f.Old.Messages > 0 {
			folders = append(folders, f.Folder)
			if f.Map == nil || f.Map.UIDValidity != f.Old.UIDValidity || f.Old.Bytes != f.New.Bytes || f.Old.Messages != f.New.Messages {
				t.Errorf("folder %q: map %+v, old %+v, new %+v", f.Folder, f.Map, f.Old, f.New)
			}
		}
	}
	if want := []string{"INBOX", "Posta inviata", "Pratiche.Città"}; !slices.Equal(folders, want) {
		t.Errorf("folders with mail: %q, want %q", folders, want)
	}

	wantKind := map[string]string{
		"01": "busta", "02": "accettazione", "03": "avvenuta-consegna", "04": "avvenuta-consegna",
		"05": "avvenuta-consegna", "06": "errore-consegna", "07": "non-accettazione",
		"08": "preavviso-errore-consegna", "09": "anomalia", "10": "", "11": "busta",
		"12": "accettazione", "13": "busta", "14": "busta",
	}
	// 04 names its receipt type only inside postacert.eml, not in the outer header.
	wantReceiptType := map[string]string{"01": "completa", "11": "completa", "13": "completa", "14": "completa"}
	bySum := map[string][]string{}
	for _, row := range rows {
		bySum[col(row, "sha256_old")] = row
	}
	for _, f := range m.fixtures {
		row, ok := bySum[f.SHA256]
		if !ok {
			t.Errorf("%s: no CSV row", f.File)
			continue
		}
		id := f.File[:2]
		if col(row, "status") != "ok" || col(row, "sha256_new") != f.SHA256 || col(row, "folder") != m.old.MailboxName(f.Folder) {
			t.Errorf("%s: CSV row %q", f.File, row)
		}
		if got := col(row, "pec_kind"); got != wantKind[id] {
			t.Errorf("%s: pec_kind %q, want %q", f.File, got, wantKind[id])
		}
		if got := col(row, "pec_receipt_type"); got != wantReceiptType[id] {
			t.Errorf("%s: pec_receipt_type %q, want %q", f.File, got, wantReceiptType[id])
		}
		if got := col(row, "flags_new"); !strings.EqualFold(got, strings.Join(sortedFold(f.Flags), " ")) {
			t.Errorf("%s: flags_new %q, want %q", f.File, got, f.Flags)
		}
		if col(row, "old_uid") == "" || col(row, "old_uid") != col(row, "virtual_uid") || col(row, "new_uid") == "" {
			t.Errorf("%s: UIDs old %s, virtual %s, new %s; want virtual = old (frozen) and a new UID",
				f.File, col(row, "old_uid"), col(row, "virtual_uid"), col(row, "new_uid"))
		}
	}

	// The hash list: every message in new, sorted, names left out.
	var hl bytes.Buffer
	if err := r.WriteHashList(&hl); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(hl.String(), "\n"), "\n")
	if len(lines) != n || !slices.IsSorted(lines) {
		t.Fatalf("hash list: %d lines (want %d), sorted %v", len(lines), n, slices.IsSorted(lines))
	}
	hexLine := regexp.MustCompile(`^[0-9a-f]{64}$`)
	var want []string
	for _, f := range m.fixtures {
		want = append(want, f.SHA256)
	}
	slices.Sort(want)
	for i, l := range lines {
		if !hexLine.MatchString(l) {
			t.Fatalf("hash list line %d is %q", i+1, l)
		}
	}
	if !slices.Equal(lines, want) {
		t.Fatal("hash list differs from the fixtures' SHA-256s")
	}

	r2, _ := m.verifyUser(t, testUser)
	if r2.Counts != r.Counts {
		t.Fatalf("a second verify says %+v, the first %+v", r2.Counts, r.Counts)
	}

	// The domain's members known to the store: this user (its maps).
	users, err := verify.KnownUsers(context.Background(), m.st, "PEC.ordine.example")
	if err != nil || !slices.Equal(users, []string{testUser}) {
		t.Fatalf("KnownUsers: %v %v", users, err)
	}
	rd, err := verify.Domain(context.Background(), m.options(), "pec.ordine.example", nil)
	if err != nil || !rd.OK() || len(rd.Users) != 1 || rd.Counts != r.Counts {
		t.Fatalf("Domain: %v, %+v", err, rd)
	}
}

// maildirFiles hashes every message file of a Maildir, by path relative to
// root (the names carry the flags).
func maildirFiles(t *testing.T, root string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if dir := filepath.Base(filepath.Dir(path)); dir != "cur" && dir != "new" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		out[rel] = sha256.Sum256(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("no message files in %s", root)
	}
	return out
}

func sortedFold(fs []string) []string {
	out := slices.Clone(fs)
	slices.SortFunc(out, func(a, b string) int { return strings.Compare(strings.ToLower(a), strings.ToLower(b)) })
	return out
}

// TestVerifyMissing: a copy deleted from new behind the gateway's back is
// missing, and the report is not OK.
func TestVerifyMissing(t *testing.T) {
	t.Parallel()
	m := copiedMigration(t)
	r, _ := m.verifyUser(t, testUser)
	f := m.fixture(t, "02-")
	_, before := findMessage(t, r, f.SHA256)
	m.expungeInNew(t, testUser, "INBOX", before.NewUID)

	r, rows := m.verifyUser(t, testUser)
	if r.OK() || r.Missing != 1 || r.Duplicates != 0 || r.Mismatches != 0 || r.Matching != len(m.fixtures)-1 {
		t.Fatalf("after deleting one copy in new: OK %v, counts %+v; want missing 1", r.OK(), r.Counts)
	}
	fr, got := findMessage(t, r, f.SHA256)
	if got.Status != verify.StatusMissing || got.OldUID != before.OldUID || got.NewUID != 0 || fr.Folder != "INBOX" || fr.Missing != 1 {
		t.Fatalf("missing message: %+v", got)
	}
	if !strings.Contains(got.Note, "which new does not hold") {
		t.Errorf("note %q does not say the mapped copy is gone", got.Note)
	}
	var missing int
	for _, row := range rows {
		if col(row, "status") == "missing" {
			missing++
		}
	}
	if missing != 1 {
		t.Fatalf("CSV has %d missing rows", missing)
	}
}

// TestVerifyDuplicate: a second copy of an old message appended to new is
// a duplicate; a flag changed in new is information only.
func TestVerifyDuplicate(t *testing.T) {
	t.Parallel()
	m := copiedMigration(t)
	f := m.fixture(t, "01-")
	uid := m.appendToNew(t, testUser, "INBOX", f.Body, &imap.AppendOptions{Time: f.InternalDate})

	// A flag the user set during the migration (in new only).
	r, _ := m.verifyUser(t, testUser)
	_, flagged := findMessage(t, r, m.fixture(t, "07-").SHA256)
	c := m.new.Dial(t, testUser)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.UIDSetNum(imap.UID(flagged.NewUID)), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{"$label2"}}, nil).Close(); err != nil {
		t.Fatal(err)
	}

	r, _ = m.verifyUser(t, testUser)
	if r.OK() || r.Duplicates != 1 || r.Missing != 0 || r.Mismatches != 0 || r.FlagDiffs != 1 || r.MessagesNew != len(m.fixtures)+1 {
		t.Fatalf("after appending a copy to new: OK %v, counts %+v; want duplicates 1, flag diffs 1", r.OK(), r.Counts)
	}
	var dup verify.MessageReport
	for _, fr := range r.Users[0].Folders {
		for _, msg := range fr.Messages {
			if msg.Status == verify.StatusDuplicate {
				dup = msg
			}
		}
	}
	if dup.NewUID != uid || dup.SHA256New != f.SHA256 || dup.OldUID != 0 || dup.PECKind != "busta" {
		t.Fatalf("duplicate row: %+v (appended UID %d)", dup, uid)
	}
	if _, msg := findMessage(t, r, m.fixture(t, "07-").SHA256); msg.Status != verify.StatusOK || !strings.Contains(msg.Note, "flags differ") {
		t.Fatalf("message with a flag changed in new: %+v", msg)
	}
}

// TestVerifyMismatch: the map pointing at a copy with other bytes is a
// mismatch.
func TestVerifyMismatch(t *testing.T) {
	t.Parallel()
	m := copiedMigration(t)
	r, _ := m.verifyUser(t, testUser)
	f := m.fixture(t, "04-")
	_, before := findMessage(t, r, f.SHA256)
	m.expungeInNew(t, testUser, "INBOX", before.NewUID)
	flags := make([]imap.Flag, len(f.Flags))
	for i, fl := range f.Flags {
		flags[i] = imap.Flag(fl)
	}
	altered := f.Variant(1)
	n2 := m.appendToNew(t, testUser, "INBOX", altered, &imap.AppendOptions{Flags: flags, Time: f.InternalDate})

	// Point the map at the altered copy: rebuild it with the same sides
	// except that one.
	ctx := context.Background()
	err := m.st.Update(ctx, func(tx store.Tx) error {
		old, err := store.GetMap(tx, testUser, "INBOX")
		if err != nil {
			return err
		}
		nm := store.NewMap(old.UIDValidity, old.Frozen)
		for v := store.UID(1); v < old.Next; v++ {
			_, n, ok := old.Lookup(v)
			if !ok || n == 0 {
				continue
			}
			if v == store.UID(before.VirtualUID) {
				n = store.UID(n2)
			}
			if err := nm.SetNew(v, n); err != nil {
				return err
			}
		}
		return store.PutMap(tx, testUser, "INBOX", nm)
	})
	if err != nil {
		t.Fatal(err)
	}

	r, rows := m.verifyUser(t, testUser)
	if r.OK() || r.Mismatches != 1 || r.Missing != 0 || r.Duplicates != 0 {
		t.Fatalf("after altering a copy: OK %v, counts %+v; want mismatches 1", r.OK(), r.Counts)
	}
	_, got := findMessage(t, r, f.SHA256)
	sum := sha256Hex(altered)
	if got.Status != verify.StatusMismatch || got.NewUID != n2 || got.SHA256New != sum || !strings.Contains(got.Note, "bytes differ") {
		t.Fatalf("mismatched message: %+v", got)
	}
	for _, row := range rows {
		if col(row, "sha256_old") == f.SHA256 && (col(row, "status") != "mismatch" || col(row, "sha256_new") != sum) {
			t.Fatalf("CSV row %q", row)
		}
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestVerifyPassthroughNeedsPassword: without the member's password a
// passthrough provider cannot be read: the report says so and is not OK.
func TestVerifyPassthroughNeedsPassword(t *testing.T) {
	t.Parallel()
	m := startMigration(t, testUser)
	o := m.options()
	o.Password = nil
	r, err := verify.User(context.Background(), o, testUser)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || r.Errors != 1 || r.Users[0].Reason != verify.ReasonNoPassword {
		t.Fatalf("no password: OK %v, %+v", r.OK(), r.Users[0])
	}
	if _, err := verify.User(context.Background(), o, "someone@elsewhere.example"); !errors.Is(err, verify.ErrUnknownDomain) {
		t.Fatalf("user of a domain not served: %v", err)
	}
}

// TestVerifyFolderNames: old and new name folders differently (Aruba's
// "Posta inviata" with '.' against "Sent" with '/'): verify pairs them by
// special-use role first, then by name with the delimiter converted, as
// the gateway does.
func TestVerifyFolderNames(t *testing.T) {
	t.Parallel()
	dovetest.Require(t)
	old := dovetest.Start(t, dovetest.Options{Name: "old", Users: []dovetest.User{{Address: testUser}},
		Delimiter: ".", SpecialUse: map[string]string{`\Sent`: "Posta inviata", `\Trash`: "Cestino"}})
	nw := dovetest.Start(t, dovetest.Options{Name: "new", Users: []dovetest.User{{Address: testUser}},
		Delimiter: "/", SpecialUse: map[string]string{`\Sent`: "Sent", `\Trash`: "Trash"}})
	m := migrationOn(t, old, nw, testUser)
	m.seedFixtures(t, testUser)
	roles := map[string]string{"Posta inviata": "Sent", "Cestino": "Trash"}
	m.copyAll(t, testUser, func(name string) string {
		if n, ok := roles[name]; ok {
			return n
		}
		return strings.ReplaceAll(name, ".", "/")
	})
	r, _ := m.verifyUser(t, testUser)
	if !r.OK() || r.Matching != len(m.fixtures) {
		t.Fatalf("OK %v, counts %+v", r.OK(), r.Counts)
	}
	got := map[string]string{}
	for _, f := range r.Users[0].Folders {
		got[f.Folder] = f.NewFolder
		if f.NewOnlyFolder {
			t.Errorf("folder %q of new not paired with old's", f.NewFolder)
		}
	}
	want := map[string]string{"INBOX": "INBOX", "Posta inviata": "Sent", "Cestino": "Trash", "Pratiche.Città": "Pratiche/Città"}
	if !maps.Equal(got, want) {
		t.Fatalf("folders paired %q, want %q", got, want)
	}
}
